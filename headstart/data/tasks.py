"""Multi-task data: one set of inputs with several named targets, some of them missing.

A `MultiTaskSplit` holds the inputs of one split (an `ImageData` or `TextData`, whose own targets are not
used) and a target tensor per task. A missing label is -1 for a classification task and NaN for a
multi-label row or a regression value; the task losses leave those samples out (`labelled`).

Two ways to get such data:
- `derive_tasks`: further tasks on the same samples, each a mapping of the data's classes (e.g. Fashion-MNIST's
  ten items grouped into tops, bottoms, footwear and bags);
- `combine_tasks`: several data sets, one per task, concatenated; each sample carries its own task's label
  only. How batches draw from the data sets is the `Mixing`:

  - ``proportional``: one epoch is one pass over every sample, shuffled together, so each task appears in
    proportion to its size;
  - ``round-robin``: each batch holds one task's samples and the tasks take turns; an epoch is as many
    batches per task as the largest task has (a smaller task starts a fresh pass when it runs out);
  - ``temperature``: each batch holds one task's samples, the task drawn with probability proportional to
    n_t^(1/T) (T=1 is proportional, a large T uniform); an epoch is as many batches as one pass over every
    sample takes, each task's samples drawn without replacement and reshuffled when exhausted.

  Evaluation always reads every sample once, in order.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from ..errors import DataError
from .batcher import BATCHERS, Batch, make_batcher, take
from .images import ImageData, hash_tensor, is_missing_label, row_indices, stratified_split
from .splits import DataSplits
from .text import TextData, _label_key

KINDS = ("classification", "multilabel", "regression")
MIXINGS = ("proportional", "round-robin", "temperature")


@dataclass(frozen=True)
class Task:
    """What the data knows of one task: its name, its kind and its class names (none for regression)."""

    name: str
    kind: str = "classification"
    classes: tuple[str, ...] = ()
    outputs: int = 0  # head outputs: the number of classes, or of regression targets

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise DataError(f"task name {self.name!r} must be a Python identifier (letters, digits, _), e.g. "
                            "'topic' or 'coarse_class'")
        if self.kind not in KINDS:
            raise DataError(f"task {self.name!r}: unknown type {self.kind!r}; choose one of {', '.join(KINDS)}")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "classes": list(self.classes), "outputs": self.outputs}


@dataclass(frozen=True)
class Mixing:
    """How training batches draw from several data sets (see the module docstring)."""

    method: str = "proportional"
    temperature: float = 2.0

    def __post_init__(self) -> None:
        if self.method not in MIXINGS:
            raise DataError(f"unknown task mixing {self.method!r}; choose one of {', '.join(MIXINGS)}")
        if not self.temperature > 0:
            raise DataError(f"the mixing temperature must be > 0, got {self.temperature}")


def labelled(targets: torch.Tensor) -> torch.Tensor:
    """(N,) bool: which samples carry a label (class index >= 0, or no NaN in a float row)."""
    if not targets.is_floating_point():
        return targets >= 0
    missing = torch.isnan(targets)
    return ~(missing.any(1) if targets.ndim == 2 else missing)


def missing_like(kind: str, n: int, outputs: int) -> torch.Tensor:
    """`n` missing labels of a task of `kind` with `outputs` head outputs."""
    if kind == "classification":
        return torch.full((n,), -1, dtype=torch.long)
    if kind == "multilabel":
        return torch.full((n, outputs), math.nan)
    return torch.full((n,) if outputs == 1 else (n, outputs), math.nan)


@dataclass
class MultiTaskSplit:
    """One split of multi-task data: the inputs, a target tensor per task and, for data combined from
    several data sets, the data set each sample came from (`sources`, used by the mixing)."""

    inputs: Any  # ImageData or TextData; its own targets are not used
    targets: dict[str, torch.Tensor]
    tasks: tuple[Task, ...]
    sources: torch.Tensor | None = None
    mixing: Mixing = field(default_factory=Mixing)
    modality = "multitask"

    def __post_init__(self) -> None:
        names = [t.name for t in self.tasks]
        if list(self.targets) != names:
            raise DataError(f"targets for tasks {list(self.targets)} but the tasks are {names}")
        for t in self.tasks:
            y = self.targets[t.name]
            if y.shape[0] != len(self.inputs):
                raise DataError(f"task {t.name!r} has {y.shape[0]} targets for {len(self.inputs)} inputs")
        if self.mixing.method != "proportional" and self.sources is None:
            raise DataError(f"mixing {self.mixing.method!r} draws batches from several data sets; this data is "
                            "one table (every sample may carry every task), so only 'proportional' applies")

    @property
    def classes(self) -> list[str]:
        """The first (main) task's classes: what single-task code reads."""
        return list(self.tasks[0].classes)

    @property
    def columns(self):
        return self.inputs.columns

    def __len__(self) -> int:
        return len(self.inputs)

    def subset(self, indices) -> "MultiTaskSplit":
        idx = row_indices(indices, len(self))
        return MultiTaskSplit(self.inputs.subset(idx), take(self.targets, idx), self.tasks,
                              None if self.sources is None else self.sources[idx], self.mixing)

    def fingerprint(self) -> str:
        h = hashlib.sha256(self.inputs.fingerprint().encode())
        h.update(json.dumps([t.to_dict() for t in self.tasks]).encode())
        for y in self.targets.values():
            hash_tensor(h, y)
        if self.sources is not None:
            hash_tensor(h, self.sources)
        return h.hexdigest()

    def batch_order(self, batch_size: int, shuffle: bool, seed: int, epoch: int, rank: int = 0,
                    world_size: int = 1) -> list[torch.Tensor] | None:
        """This epoch's batches under round-robin or temperature mixing; None for the plain order."""
        if not shuffle or self.sources is None or self.mixing.method == "proportional":
            return None
        groups = [(self.sources == s).nonzero().flatten() for s in range(int(self.sources.max()) + 1)]
        groups = [g for g in groups if len(g)]
        size = batch_size * world_size  # a global batch, shared out among the ranks below
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        cursors = [_Cycle(g, gen) for g in groups]
        if self.mixing.method == "round-robin":
            rounds = max(math.ceil(len(g) / size) for g in groups)
            picks = [s for _ in range(rounds) for s in range(len(groups))]
        else:
            weights = torch.tensor([len(g) ** (1.0 / self.mixing.temperature) for g in groups], dtype=torch.float64)
            picks = torch.multinomial(weights, math.ceil(len(self) / size), replacement=True,
                                      generator=gen).tolist()
        return [cursors[s].next(size)[rank::world_size] for s in picks]


class _Cycle:
    """Draws a group's samples in shuffled passes, reshuffling when one pass is used up."""

    def __init__(self, indices: torch.Tensor, gen: torch.Generator):
        self.indices, self.gen, self.order, self.pos = indices, gen, torch.empty(0, dtype=torch.long), 0

    def next(self, n: int) -> torch.Tensor:
        n = min(n, len(self.indices))
        if self.pos + n > len(self.order):
            self.order = self.indices[torch.randperm(len(self.indices), generator=self.gen)]
            self.pos = 0
        out = self.order[self.pos:self.pos + n]
        self.pos += n
        return out


@BATCHERS.register("multitask")
class MultiTaskBatcher:
    """The inputs' own batcher (image transforms, text tokenisation) with every task's targets by name."""

    def __init__(self, data: MultiTaskSplit, spec, train: bool, augment: bool = True):
        self.data = data
        self.inner = make_batcher(data.inputs, spec, train, augment)

    def order(self, batch_size: int, shuffle: bool, seed: int, epoch: int, rank: int = 0,
              world_size: int = 1) -> list[torch.Tensor]:
        mixed = self.data.batch_order(batch_size, shuffle, seed, epoch, rank, world_size)
        return mixed if mixed is not None else self.inner.order(batch_size, shuffle, seed, epoch, rank, world_size)

    def inputs(self, idx: torch.Tensor, generator: torch.Generator | None = None) -> Any:
        return self.inner.inputs(idx, generator)

    def batch(self, idx: torch.Tensor, generator: torch.Generator | None = None) -> Batch:
        return Batch(self.inputs(idx, generator), take(self.data.targets, idx))


# ------------------------------------------------------------------------------------------------ building


def _task_of(part, name: str) -> Task:
    if part.is_regression:
        outputs = 1 if part.targets.ndim == 1 else part.targets.shape[1]
        return Task(name, "regression", (), outputs)
    return Task(name, "multilabel" if part.multi_label else "classification", tuple(part.classes),
                len(part.classes))


def _bare(part):
    """The split's inputs with placeholder targets (float zeros: no class list to check)."""
    if isinstance(part, ImageData):
        return ImageData(part.images, torch.zeros(len(part)), [], part.paths)
    return TextData(part.texts, torch.zeros(len(part)), [], part.columns)


def derive_tasks(data: DataSplits, main: str, **mappings: Mapping[str, str]) -> DataSplits:
    """The data with its own labels as task `main` and each further task a grouping of its classes.

    Example:
        data = hs.data.derive_tasks(fmnist, "item", kind={"T-shirt/top": "top", "Trouser": "bottom", ...})
    """
    if isinstance(data.train, MultiTaskSplit):
        raise DataError("derive_tasks takes single-task data; this data already has tasks")
    if data.train.multi_label or data.train.is_regression:
        raise DataError("derive_tasks groups the classes of single-label classification data")
    if not mappings:
        raise DataError("derive_tasks needs at least one further task: name=mapping of every class to a group")
    tasks = [_task_of(data.train, main)]
    lookups = []
    for name, mapping in mappings.items():
        mapping = {str(k): str(v) for k, v in mapping.items()}
        unmapped = [c for c in data.classes if c not in mapping]
        unknown = [c for c in mapping if c not in data.classes]
        if unmapped or unknown:
            raise DataError(f"task {name!r}: the mapping must give every class a group; "
                            + (f"classes without one: {unmapped[:10]}" if unmapped else "")
                            + (f"; not classes of the data: {unknown[:10]}" if unknown else ""))
        groups = sorted(set(mapping.values()))
        tasks.append(Task(name, "classification", tuple(groups), len(groups)))
        lookups.append(torch.tensor([groups.index(mapping[c]) for c in data.classes]))
    _check_names([t.name for t in tasks])

    def convert(part):
        if part is None:
            return None
        targets = {main: part.targets, **{t.name: lut[part.targets] for t, lut in zip(tasks[1:], lookups)}}
        return MultiTaskSplit(_bare(part), targets, tuple(tasks))

    return DataSplits(convert(data.train), convert(data.val), convert(data.test), list(data.classes),
                      data.name, data.modality)


def combine_tasks(datasets: Mapping[str, DataSplits], mixing: str | Mixing = "proportional",
                  temperature: float = 2.0, name: str | None = None) -> DataSplits:
    """Several data sets, one per task, as one multi-task data set (the first task is the main one).

    Inputs are concatenated split by split; every sample carries its own data set's label and a missing
    label for every other task. The data sets must share a modality (and, for images, a stored size).

    Example:
        data = hs.data.combine_tasks({"topic": bbc, "sentiment": tweets}, mixing="temperature")
    """
    if len(datasets) < 2:
        raise DataError(f"combine_tasks needs two or more data sets (one per task), got {len(datasets)}")
    _check_names(list(datasets))
    modalities = {d.modality for d in datasets.values()}
    if len(modalities) > 1:
        raise DataError(f"the data sets are of different modalities {sorted(modalities)}; one backbone reads one "
                        "modality")
    if any(isinstance(d.train, MultiTaskSplit) for d in datasets.values()):
        raise DataError("combine_tasks takes single-task data sets")
    mix = mixing if isinstance(mixing, Mixing) else Mixing(mixing, temperature)
    tasks = tuple(_task_of(d.train, n) for n, d in datasets.items())

    def concat(parts: dict[str, Any]) -> MultiTaskSplit | None:
        present = {n: p for n, p in parts.items() if p is not None}
        if not present:
            return None
        inputs = _concat_inputs(list(present.values()))
        targets = {}
        for t in tasks:
            rows = [p.targets if n == t.name else missing_like(t.kind, len(p), t.outputs) for n, p in present.items()]
            targets[t.name] = torch.cat([r.to(rows[0].dtype) if t.kind != "classification" else r for r in rows])
        sources = torch.cat([torch.full((len(p),), i, dtype=torch.long)
                             for i, p in enumerate(parts.values()) if p is not None])
        return MultiTaskSplit(inputs, targets, tasks, sources, mix)

    train = concat({n: d.train for n, d in datasets.items()})
    val = concat({n: d.val for n, d in datasets.items()})
    missing_val = [n for n, d in datasets.items() if d.val is None]
    if missing_val:
        raise DataError(f"data sets {missing_val} have no val split; every task needs val data for its metrics "
                        "(load them with val_fraction > 0)")
    test = concat({n: d.test for n, d in datasets.items()})
    first = next(iter(datasets.values()))
    return DataSplits(train, val, test, list(tasks[0].classes), name or "+".join(datasets), first.modality)


def _concat_inputs(parts: Sequence[Any]):
    if isinstance(parts[0], ImageData):
        shapes = {tuple(p.images.shape[1:]) for p in parts}
        if len(shapes) > 1:
            raise DataError(f"the image data sets are stored at different sizes {sorted(shapes)}; load them at one "
                            "size (and channel count) to share a batch")
        paths = None if any(p.paths is None for p in parts) else [q for p in parts for q in p.paths]
        return ImageData(torch.cat([p.images for p in parts]), torch.zeros(sum(len(p) for p in parts)), [], paths)
    kinds = {p.is_pair for p in parts}
    if len(kinds) > 1:
        raise DataError("some data sets hold text pairs and others single texts; one text encoder reads one form")
    return TextData([t for p in parts for t in p.texts], torch.zeros(sum(len(p) for p in parts)), [],
                    parts[0].columns)


def _check_names(names: list[str]) -> None:
    seen = [n for i, n in enumerate(names) if n in names[:i]]
    if seen:
        raise DataError(f"two tasks are named {seen[0]!r}; every task needs its own name")
    for n in names:
        Task(n)  # checks the name


def single_task(data: DataSplits, name: str) -> DataSplits:
    """One task of multi-task data as single-task data (its labelled samples only): the single-task
    reference a multi-task model is measured against."""
    tasks = tasks_of(data)
    if tasks is None or name not in [t.name for t in tasks]:
        raise DataError(f"no task {name!r} in this data (its tasks: {[t.name for t in tasks or ()]})")
    task = next(t for t in tasks if t.name == name)

    def part(split):
        if split is None:
            return None
        keep = labelled(split.targets[name]).nonzero().flatten()
        inputs = split.inputs.subset(keep)
        y = split.targets[name][keep]
        classes = list(task.classes)
        if isinstance(inputs, ImageData):
            return ImageData(inputs.images, y, classes, inputs.paths)
        return TextData(inputs.texts, y, classes, inputs.columns)

    return DataSplits(part(data.train), part(data.val), part(data.test), list(task.classes), f"{data.name}:{name}",
                      data.modality)


def tasks_of(data: DataSplits) -> tuple[Task, ...] | None:
    """The tasks of multi-task data, or None for single-task data."""
    return data.train.tasks if isinstance(data.train, MultiTaskSplit) else None


# ------------------------------------------------------------------------------------------------ tables


def _task_spec(name: str, spec: str | Mapping[str, Any] | None) -> dict[str, Any]:
    if spec is None or isinstance(spec, str):
        spec = {"column": spec or name}
    unknown = set(spec) - {"column", "type", "label_delimiter"}
    if unknown:
        raise DataError(f"task {name!r}: unknown key(s) {sorted(unknown)}; a task reads 'column', 'type' "
                        "(classification, multilabel, regression) and 'label_delimiter'")
    out = {"column": spec.get("column", name), "type": spec.get("type", "classification"),
           "label_delimiter": spec.get("label_delimiter")}
    Task(name, out["type"])  # checks the name and type
    return out


def _column_labels(rows: list[dict], name: str, spec: dict, source: str) -> list[Any]:
    """Each row's label of one task: a class name, a list of names (multi-label), a float (regression) or
    None where the row has no label for the task."""
    from .text import _map_name

    out: list[Any] = []
    for i, row in enumerate(rows, 1):
        value = row.get(spec["column"])
        if is_missing_label(value) or (isinstance(value, list) and not value and spec["type"] != "multilabel"):
            out.append(None)
        elif spec["type"] == "regression":
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise DataError(f"{source}: task {name!r} is a regression task, but row {i} of column "
                                f"{spec['column']!r} holds {str(value)[:40]!r}, not a number. Fix the value, leave "
                                "it empty for a missing label, or declare the task type: classification.") from None
            out.append(number)
        elif spec["type"] == "multilabel":
            if isinstance(value, (list, tuple)):
                items = list(value)
            elif isinstance(value, str) and value.lstrip().startswith("["):
                items = json.loads(value)
            else:
                delim = spec["label_delimiter"] or ";"
                items = [v.strip() for v in str(value).split(delim) if v.strip()]
            out.append(sorted({_map_name(v, None, source) for v in items}))
        else:
            out.append(_map_name(value.strip() if isinstance(value, str) else value, None, source))
    return out


def _column_targets(labels: list[Any], kind: str, classes: list[str] | None, name: str,
                    what: str) -> tuple[torch.Tensor, list[str]]:
    if kind == "regression":
        return torch.tensor([math.nan if v is None else v for v in labels], dtype=torch.float32), []
    if classes is None:
        names = {c for v in labels if v is not None for c in (v if kind == "multilabel" else [v])}
        classes = sorted(names, key=_label_key)
        if len(classes) < 2:
            raise DataError(f"task {name!r}: {what} has {len(classes)} class ({classes}); a task needs at least two "
                            "to tell apart")
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({c for v in labels if v is not None for c in (v if kind == "multilabel" else [v])} - set(index))
    if unknown:
        raise DataError(f"task {name!r}: {what} has labels {unknown[:10]} that training never has ({classes[:20]})")
    if kind == "multilabel":
        y = torch.zeros(len(labels), len(classes))
        for i, v in enumerate(labels):
            if v is None:
                y[i] = math.nan
            else:
                y[i, [index[c] for c in v]] = 1.0
        return y, classes
    return torch.tensor([-1 if v is None else index[v] for v in labels], dtype=torch.long), classes


def table_tasks(path, tasks: Mapping[str, str | Mapping[str, Any] | None], text_column: str | Sequence[str] = "text",
                *, text_pair: bool = False, val=None, test=None, val_fraction: float = 0.1, test_fraction: float = 0.0,
                seed: int = 0, name: str | None = None) -> DataSplits:
    """Texts of one table with several label columns, one task each; an empty cell is a missing label.

    `tasks` maps each task's name to its column (a string), or to {"column", "type", "label_delimiter"}; the first
    task is the main one and stratifies the held-out splits.

    Example:
        data = hs.data.table_tasks("tickets.csv", {"topic": "topic", "urgent": {"type": "classification"}})
    """
    from .text import _column_list, _require_columns, _texts_from_rows, read_records

    if not tasks:
        raise DataError("table_tasks needs at least one task: {name: label column}")
    _check_names(list(tasks))
    specs = {n: _task_spec(n, s) for n, s in tasks.items()}
    cols = _column_list(text_column)
    # What a saved model records of its data: `headstart evaluate` reads the same columns from a new table.
    meta = {"text_columns": cols, "text_pair": bool(text_pair), "label_column": specs[next(iter(specs))]["column"],
            "multi_label": False, "label_delimiter": None, "tasks": specs}

    def part(file, fixed: dict[str, list[str]] | None, what: str):
        columns, rows = read_records(file)
        _require_columns(cols, columns, "text", str(file))
        missing = [f"{s['column']!r} (task {n!r})" for n, s in specs.items() if s["column"] not in columns]
        if missing:
            raise DataError(f"{file}: label column {', '.join(missing)} is not in the file; its columns are "
                            f"{', '.join(columns)}. Name the task's column (tasks: - name: ..., column: ...).")
        if not rows:
            raise DataError(f"{file} has a header but no rows")
        texts = _texts_from_rows(rows, cols, text_pair, str(file))
        targets, task_list = {}, []
        for n, s in specs.items():
            y, classes = _column_targets(_column_labels(rows, n, s, str(file)), s["type"],
                                         None if fixed is None else fixed[n], n, what)
            if not bool(labelled(y).any()) and fixed is None:
                raise DataError(f"task {n!r}: no row of {file} has a label in column {s['column']!r}")
            targets[n] = y
            task_list.append(Task(n, s["type"], tuple(classes), len(classes) or 1))
        inputs = TextData(texts, torch.zeros(len(texts)), [], meta)
        return MultiTaskSplit(inputs, targets, tuple(task_list))

    train = part(path, None, "the training file")
    fixed = {t.name: list(t.classes) for t in train.tasks}
    parts = {what: part(f, fixed, f"the {what} file") for what, f in (("val", val), ("test", test)) if f is not None}
    main = train.targets[train.tasks[0].name]
    strat = main if not main.is_floating_point() else torch.zeros(len(main), dtype=torch.long)
    if "test" not in parts and test_fraction:
        keep, held = stratified_split(strat, test_fraction, seed)
        train, parts["test"], strat = train.subset(keep), train.subset(held), strat[keep]
    if "val" not in parts and val_fraction:
        keep, held = stratified_split(strat, val_fraction, seed)
        train, parts["val"] = train.subset(keep), train.subset(held)
    return DataSplits(train, parts.get("val"), parts.get("test"), train.classes, name or Path(path).stem, "text")
