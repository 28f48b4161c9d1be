"""Text data: raw texts (or text pairs) with labels, file loaders, and the batcher that tokenises them.

Data stays raw text, so loading it never needs a model. The `TextBatcher` tokenises every text once with
the backbone's tokenizer (from its spec), pads each batch only to its own longest text, and groups texts
of similar length into the same training batch, so CPU time goes into the model rather than pad tokens.
"""
from __future__ import annotations

import csv
import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence, Union

import numpy as np
import torch

from ..errors import DataError
from .batcher import BATCHERS, SplitBatcher
from .batches import iterate_batches
from .images import hash_tensor, is_missing_label, require_two_classes, row_indices, stratified_split
from .splits import DataSplits, Labelled
from .token_store import encode_texts, file_entry, token_source

Text = Union[str, tuple[str, str]]
TEXT_FILE_SUFFIXES: tuple[str, ...] = (".csv", ".tsv", ".jsonl", ".ndjson", ".json", ".parquet")
JOIN = "\n"  # between several text columns joined into one text
_SHOWN = 5  # bad rows named in an error message


def _rows(indices: Sequence[int], what: str = "rows") -> str:
    shown = ", ".join(str(i) for i in indices[:_SHOWN])
    more = f" and {len(indices) - _SHOWN} more" if len(indices) > _SHOWN else ""
    return f"{what} {shown}{more}"


@dataclass
class TextData(Labelled):
    """Texts (or text pairs), their targets and class names.

    targets: (N,) int64 class indices; (N, K) float32 multi-hot for multi-label data; or (N,) float32 for
    regression (with no classes). `columns` records which file columns the texts came from, so a saved model
    can read the same columns at prediction time. `tokens`, for rows of a text file on the disk store
    (docs/data_store.md), is where the batcher reads their token ids instead of tokenising them.
    """

    texts: list[Text]
    targets: torch.Tensor
    classes: list[str]
    columns: dict[str, Any] | None = None
    tokens: Any = field(default=None, repr=False, compare=False)  # a token_store.TextTokens, or None

    modality: ClassVar[str] = "text"

    def __post_init__(self) -> None:
        self.texts = list(self.texts)
        _check_text_data(self.texts, self.targets, self.classes)

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def is_pair(self) -> bool:
        return bool(self.texts) and isinstance(self.texts[0], tuple)

    def subset(self, indices: torch.Tensor | Sequence[int] | np.ndarray) -> "TextData":
        """A new TextData holding the given rows (int indices or a boolean mask), in that order."""
        idx = row_indices(indices, len(self))
        return TextData([self.texts[i] for i in idx.tolist()], self.targets[idx], list(self.classes),
                        self.columns, self.tokens.take(idx) if self.tokens is not None else None)

    def fingerprint(self) -> str:
        """sha256 hex digest of the texts, targets and class names (identifies the data's content)."""
        h = hashlib.sha256()
        h.update(json.dumps([len(self), str(self.targets.dtype), list(self.targets.shape), self.classes]).encode())
        h.update(json.dumps(self.texts, ensure_ascii=False).encode("utf-8"))
        hash_tensor(h, self.targets)
        return h.hexdigest()


def _bad_texts(texts: Sequence[Any]) -> tuple[list[int], list[int]]:
    """(indices of non-text items, indices of empty texts)."""
    non_str, empty = [], []
    for i, t in enumerate(texts):
        parts = t if isinstance(t, tuple) and len(t) == 2 else (t,)
        if not all(isinstance(p, str) for p in parts):
            non_str.append(i)
        elif not all(p.strip() for p in parts):
            empty.append(i)
    return non_str, empty


def _check_text_data(texts: list, targets: Any, classes: Any) -> None:
    non_str, empty = _bad_texts(texts)
    if non_str:
        i = non_str[0]
        raise DataError(f"TextData.texts must be strings (or pairs of strings), but {_rows(non_str, 'items')} are "
                        f"not; e.g. item {i} is {type(texts[i]).__name__} {str(texts[i])[:60]!r}.")
    if empty:
        raise DataError(f"TextData has empty texts at {_rows(empty, 'items')}; every text needs some "
                        f"non-space characters. Drop those rows or fill them in.")
    if len({isinstance(t, tuple) for t in texts}) > 1:
        raise DataError("TextData mixes single texts and text pairs; use one kind for all rows.")
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise DataError(f"TextData.classes must be a list of str, got {type(classes).__name__}.")
    ok_dtype = isinstance(targets, torch.Tensor) and (
        (targets.ndim == 1 and targets.dtype in (torch.int64, torch.float32))
        or (targets.ndim == 2 and targets.dtype == torch.float32))
    if not ok_dtype:
        got = f"{type(targets).__name__}" + (f" {targets.dtype} of shape {tuple(targets.shape)}"
                                             if isinstance(targets, torch.Tensor) else "")
        raise DataError(f"TextData.targets must be (N,) int64 class indices, (N, K) float32 multi-hot labels or "
                        f"(N,) float32 regression targets, got {got}.")
    if targets.shape[0] != len(texts):
        raise DataError(f"TextData has {len(texts)} texts but {targets.shape[0]} targets; they must match one "
                        f"to one.")
    if targets.ndim == 2 and targets.shape[1] != len(classes):
        raise DataError(f"multi-label targets have {targets.shape[1]} columns but there are {len(classes)} "
                        f"classes; give one column per class.")
    if targets.dtype == torch.int64:
        if not classes:
            raise DataError("TextData has integer class targets but an empty class list; give the class names.")
        if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= len(classes)):
            raise DataError(f"TextData targets must be class indices in [0, {len(classes)}), got values from "
                            f"{int(targets.min())} to {int(targets.max())}.")


# ----------------------------------------------------------------------------------------------------------
# Reading table files


def read_records(path: str | Path) -> tuple[list[str], list[dict[str, Any]]]:
    """(column names, rows as dicts) of a CSV, TSV, JSONL, JSON (a list of objects) or Parquet file."""
    try:
        return _read_records(Path(path))
    except UnicodeDecodeError as e:
        raise DataError(f"{str(path)!r} is not UTF-8 text (byte {e.object[e.start:e.start + 1]!r} at offset "
                        f"{e.start}); re-save it as UTF-8.") from None


def _read_records(path: Path) -> tuple[list[str], list[dict[str, Any]]]:
    if not path.is_file():
        raise DataError(f"text data file {str(path)!r} does not exist. Give a .csv, .tsv, .jsonl, .json or "
                        f".parquet file with a text column and a label column.")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        # Articles can be longer than csv's default 128 KiB field limit.
        csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ",")
            columns = list(reader.fieldnames or [])
            if not columns:
                raise DataError(f"{str(path)!r} is empty or has no header row; the first line must name the "
                                f"columns (e.g. text,label).")
            return columns, list(reader)
    if suffix in (".jsonl", ".ndjson"):
        rows, columns = [], {}
        with open(path, encoding="utf-8") as fh:
            for line_no, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{str(path)!r} line {line_no} is not valid JSON ({e.msg}); JSONL needs one "
                                    f"JSON object per line.") from None
                if not isinstance(row, dict):
                    raise DataError(f"{str(path)!r} line {line_no} holds a {type(row).__name__}, not a JSON "
                                    f"object; JSONL needs one object per line, e.g. {{\"text\": ..., \"label\": ...}}.")
                rows.append(row)
                columns.update(dict.fromkeys(row))
        return list(columns), rows
    if suffix == ".json":
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"{str(path)!r} is not valid JSON ({e.msg} at line {e.lineno}).") from None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise DataError(f"{str(path)!r} must hold a JSON list of objects ([{{\"text\": ..., \"label\": ...}}, "
                            f"...]); for one object per line use .jsonl.")
        columns = {}
        for row in rows:
            columns.update(dict.fromkeys(row))
        return list(columns), rows
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(f"reading {str(path)!r} needs pyarrow: pip install pyarrow (or convert the file to "
                            f"CSV or JSONL).") from None
        table = pq.read_table(path)
        return list(table.column_names), table.to_pylist()
    raise DataError(f"cannot read {str(path)!r}: unknown file type {suffix or '(none)'!r}. Allowed: "
                    f"{', '.join(TEXT_FILE_SUFFIXES)}.")


def is_text_file(path: str | Path) -> bool:
    """True for a file whose suffix is one of the table formats text data loads from."""
    return Path(path).suffix.lower() in TEXT_FILE_SUFFIXES and not Path(path).is_dir()


def _column_list(text_column: str | Sequence[str]) -> list[str]:
    cols = [text_column] if isinstance(text_column, str) else list(text_column)
    if not cols or not all(isinstance(c, str) and c for c in cols):
        raise DataError(f"text_column must be a column name or a non-empty list of names, got {text_column!r}.")
    if len(set(cols)) != len(cols):
        raise DataError(f"text_column names a column twice: {cols}.")
    return cols


def _require_columns(wanted: list[str], columns: list[str], what: str, source: str) -> None:
    missing = [c for c in wanted if c not in columns]
    if missing:
        flag = "--text-column" if what == "text" else "--label-column"
        raise DataError(f"{what} column {', '.join(repr(c) for c in missing)} is not in {source}; its columns are: "
                        f"{', '.join(columns) or '(none)'}. Choose one of those ({what}_column=... or {flag}).")


def _texts_from_rows(rows: list[dict], cols: list[str], pair: bool, source: str) -> list[Text]:
    """Texts from the chosen columns: one column as is, several joined, or two as a pair."""
    non_str: list[int] = []
    empty: list[int] = []
    example = None
    texts: list[Text] = []
    for i, row in enumerate(rows, 1):
        cells = [row.get(c) for c in cols]
        bad = [v for v in cells if v is not None and not isinstance(v, str)]
        if bad:
            non_str.append(i)
            example = example or bad[0]
            continue
        parts = [v.strip() for v in cells if v is not None]
        if pair:
            if len(parts) != 2 or not all(parts):
                empty.append(i)
                continue
            texts.append((cells[0], cells[1]))
        else:
            joined = JOIN.join(p for p in parts if p)
            if not joined:
                empty.append(i)
                continue
            texts.append(joined if len(cols) > 1 else cells[0])
    if non_str:
        raise DataError(f"{source}: the text column(s) {cols} hold non-text values in {_rows(non_str)} (rows count "
                        f"from 1, header not counted), e.g. {type(example).__name__} {str(example)[:40]!r}. Store the "
                        f"texts as strings, or pick the right column with text_column / --text-column.")
    if empty:
        what = "both texts of the pair must be non-empty" if pair else "a text needs some non-space characters"
        raise DataError(f"{source}: empty or missing text in {_rows(empty)} (rows count from 1, header not counted); "
                        f"{what}. Drop or fill those rows.")
    return texts


def read_texts(path: str | Path, text_column: str | Sequence[str] = "text", text_pair: bool = False) -> list[Text]:
    """The texts of a table file (no labels needed): what prediction reads.

    Example:
        texts = hs.data.read_texts("new_articles.csv", ["title", "body"])
    """
    cols = _column_list(text_column)
    if text_pair and len(cols) != 2:
        raise DataError(f"text_pair=True needs exactly two text columns, got {cols}.")
    columns, rows = read_records(path)
    _require_columns(cols, columns, "text", str(path))
    if not rows:
        raise DataError(f"{str(path)!r} has no rows; it needs at least one text.")
    return _texts_from_rows(rows, cols, text_pair, str(path))


def _label_key(value: str) -> tuple:
    # Integer-like labels sort as numbers (2 before 10); everything else alphabetically.
    try:
        return (0, int(value), "")
    except ValueError:
        return (1, 0, value)


def _map_name(value: Any, label_names: Mapping[str, str] | Sequence[str] | None, source: str) -> str:
    raw = value if isinstance(value, str) else (str(int(value)) if isinstance(value, (bool, int)) or
                                                (isinstance(value, float) and value.is_integer()) else str(value))
    if label_names is None:
        return raw
    if isinstance(label_names, Mapping):
        names = {str(k): str(v) for k, v in label_names.items()}
        if raw not in names:
            raise DataError(f"{source}: label {raw!r} has no entry in label_names ({sorted(names)[:20]}); add it.")
        return names[raw]
    try:
        return str(label_names[int(raw)])
    except (ValueError, IndexError):
        raise DataError(f"{source}: label {raw!r} is not an index into label_names (0..{len(label_names) - 1}); "
                        f"with a list, labels must be integer positions.") from None


def _label_lists(rows: list[dict], column: str, multi_label: bool, delimiter: str | None,
                 label_names, source: str) -> list[list[str]]:
    """Each row's labels as names: exactly one for single-label data, any number for multi-label."""
    out: list[list[str]] = []
    missing: list[int] = []
    listed: list[int] = []
    for i, row in enumerate(rows, 1):
        value = row.get(column)
        if multi_label:
            if value is None or (isinstance(value, str) and not value.strip()):
                items: list[Any] = []  # a row without labels
            elif is_missing_label(value):
                missing.append(i)
                continue
            elif isinstance(value, (list, tuple)):
                items = list(value)
            elif isinstance(value, str) and delimiter is not None:
                items = [v.strip() for v in value.split(delimiter) if v.strip()]
            elif isinstance(value, str) and value.lstrip().startswith("["):
                try:
                    items = json.loads(value)
                except json.JSONDecodeError:
                    raise DataError(f"{source}: row {i} label {value[:40]!r} looks like a JSON list but is not "
                                    f"valid JSON; write it as [\"a\", \"b\"] or use label_delimiter.") from None
            else:
                items = [value]
            if any(is_missing_label(v) for v in items):
                missing.append(i)
                continue
            out.append(sorted({_map_name(v, label_names, source) for v in items}))
            continue
        if isinstance(value, (list, tuple)):
            listed.append(i)
        elif is_missing_label(value):
            missing.append(i)
        else:
            out.append([_map_name(value.strip() if isinstance(value, str) else value, label_names, source)])
    if listed:
        raise DataError(f"{source}: label column {column!r} holds lists in {_rows(listed)}; that is multi-label "
                        f"data: pass multi_label=True (CLI: --set data.multi_label=true).")
    if missing and multi_label:
        raise DataError(f"{source}: null or NaN label in {_rows(missing)} (rows count from 1, header not counted) "
                        f"of column {column!r}. Fill in those labels or drop those rows; a row without labels is "
                        f"written as [] or an empty cell.")
    if missing:
        # A NaN must not become a class named "nan": it is a gap in the data, not a label.
        raise DataError(f"{source}: missing label in {_rows(missing)} (empty, null or NaN; rows count from 1, "
                        f"header not counted) of column {column!r}; every row needs a label. Fill in those labels "
                        f"or drop those rows.")
    return out


def _targets(labels: list[list[str]], classes: list[str], multi_label: bool, what: str) -> torch.Tensor:
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({lab for labs in labels for lab in labs if lab not in index}, key=_label_key)
    if unknown:
        raise DataError(f"{what} has labels {unknown[:10]} that are not among the training labels "
                        f"{classes[:20]}: a model cannot predict a class it never saw in training. Drop those rows "
                        f"or add training examples of them.")
    if multi_label:
        targets = torch.zeros(len(labels), len(classes), dtype=torch.float32)
        for i, labs in enumerate(labels):
            targets[i, [index[lab] for lab in labs]] = 1.0
        return targets
    return torch.tensor([index[labs[0]] for labs in labels], dtype=torch.long)


def _part(rows: list[dict], columns: list[str], source: str, spec: dict, classes: list[str] | None,
          what: str) -> TextData:
    cols = spec["text_columns"]
    _require_columns(cols, columns, "text", source)
    _require_columns([spec["label_column"]], columns, "label", source)
    if not rows:
        raise DataError(f"{source} has a header but no rows; it needs at least one text.")
    texts = _texts_from_rows(rows, cols, spec["text_pair"], source)
    labels = _label_lists(rows, spec["label_column"], spec["multi_label"], spec["label_delimiter"],
                          spec.get("label_names"), source)
    if classes is None:
        classes = sorted({lab for labs in labels for lab in labs}, key=_label_key)
        if not classes:
            raise DataError(f"{source}: no row has a label in column {spec['label_column']!r}.")
    targets = _targets(labels, classes, spec["multi_label"], what)
    meta = {k: v for k, v in spec.items() if k != "label_names"}
    return TextData(texts, targets, list(classes), meta)


def _split_parts(full: TextData, val: TextData | None, test: TextData | None, val_fraction: float,
                 test_fraction: float, seed: int) -> tuple[TextData, TextData | None, TextData | None]:
    if test is None and test_fraction:
        keep, held = stratified_split(full.targets, test_fraction, seed)
        full, test = full.subset(keep), full.subset(held)
    if val is None and val_fraction:
        keep, held = stratified_split(full.targets, val_fraction, seed)
        full, val = full.subset(keep), full.subset(held)
    return full, val, test


def text_file(path: str | Path, text_column: str | Sequence[str] = "text", label_column: str = "label", *,
              text_pair: bool = False, multi_label: bool = False, label_delimiter: str | None = None,
              classes: Sequence[str] | None = None, label_names: Mapping[str, str] | Sequence[str] | None = None,
              val: str | Path | None = None, test: str | Path | None = None, val_fraction: float = 0.1,
              test_fraction: float = 0.0, seed: int = 0, name: str | None = None, store: str = "auto",
              store_dir: str | Path | None = None, store_threshold: float | None = None) -> DataSplits:
    """Load labelled texts from a CSV, TSV, JSONL, JSON or Parquet file into train / val / test splits.

    Args:
        text_column: the column with the text; several columns are joined with a newline, or with
            `text_pair=True` two columns form a sentence pair (e.g. question and passage).
        label_column: the label column. Labels are names (or numbers, used as names); `label_names` maps raw
            labels to names (a dict, or a list indexed by integer labels); `classes` fixes the class order.
        multi_label: each row has any number of labels: a list (JSONL/Parquet), a JSON list string, or a
            string split at `label_delimiter` (which implies multi_label). Targets become float multi-hot.
        val, test: separate files with the same columns; otherwise seeded stratified `test_fraction` and then
            `val_fraction` of the rest are held out. Labels in val/test that training never has are an error.
        store: "memory" tokenises the texts in memory whenever a model batches them; "disk" tokenises each
            file once per tokenizer into a memory-mapped store under `store_dir` (docs/data_store.md) that
            later runs and processes read; "auto" picks disk when tokenising in memory would take more than
            `store_threshold` GB (default: a quarter of the available memory, at most 8 GB).

    Example:
        data = hs.data.text_file("news.csv", text_column=["title", "body"], label_column="topic")
    """
    multi_label = multi_label or label_delimiter is not None
    if label_delimiter is not None and (not isinstance(label_delimiter, str) or not label_delimiter):
        raise DataError(f"label_delimiter must be a non-empty string such as ';' or '|', got {label_delimiter!r}.")
    cols = _column_list(text_column)
    if text_pair and len(cols) != 2:
        raise DataError(f"text_pair=True needs exactly two text columns (first and second text of each pair), got "
                        f"{cols}.")
    if test is not None and test_fraction:
        raise DataError(f"give a test file or test_fraction, not both (got test={str(test)!r}, "
                        f"test_fraction={test_fraction}).")
    spec = {"text_columns": cols, "text_pair": bool(text_pair), "label_column": label_column,
            "multi_label": bool(multi_label), "label_delimiter": label_delimiter, "label_names": label_names}
    path = Path(path)

    def tokens(file: Path, entry: list | None, part: TextData):  # where the part's token ids will come from
        return token_source(file, entry, part, store, store_dir, store_threshold) if entry else None

    entry = file_entry(path) if store != "memory" and path.is_file() else None  # before reading: see token_source
    columns, rows = read_records(path)
    fixed = [str(c) for c in classes] if classes is not None else None
    if fixed is not None and len(set(fixed)) != len(fixed):
        raise DataError(f"classes must be unique, got duplicates in {fixed[:20]}.")
    train = _part(rows, columns, str(path), spec, fixed, f"{path.name}")
    train.tokens = tokens(path, entry, train)
    require_two_classes(train, f"{str(path)!r} (label column {label_column!r})",
                        "Add rows with a second label to the file, or pick the right label_column.")
    parts = {}
    for what, other in (("val", val), ("test", test)):
        if other is not None:
            other_entry = file_entry(other) if store != "memory" and Path(other).is_file() else None
            other_cols, other_rows = read_records(other)
            parts[what] = _part(other_rows, other_cols, str(other), spec, train.classes,
                                f"the {what} file {Path(other).name}")
            parts[what].tokens = tokens(Path(other), other_entry, parts[what])
    train, val_part, test_part = _split_parts(train, parts.get("val"), parts.get("test"), val_fraction,
                                              test_fraction, seed)
    return DataSplits(train, val_part, test_part, list(train.classes), name=name or path.stem, modality="text")


def from_texts(texts: Sequence[Text], labels: Sequence[Any], classes: Sequence[str] | None = None, *,
               multi_label: bool = False, val_fraction: float = 0.1, test_fraction: float = 0.0, seed: int = 0,
               texts_val: Sequence[Text] | None = None, labels_val: Sequence[Any] | None = None,
               texts_test: Sequence[Text] | None = None, labels_test: Sequence[Any] | None = None,
               name: str = "texts") -> DataSplits:
    """Build text DataSplits from in-memory texts (or (text, text) pairs) and labels.

    Labels are names (numbers are used as names); with `multi_label` each label is a list of names.

    Example:
        data = hs.data.from_texts(["great film", "dull plot", ...], ["pos", "neg", ...])
    """
    def as_texts(xs):  # pairs may come as lists (e.g. from JSON); store them as tuples
        return None if xs is None else [tuple(x) if isinstance(x, list) else x for x in xs]

    texts, texts_val, texts_test = as_texts(texts), as_texts(texts_val), as_texts(texts_test)
    pair = bool(texts) and isinstance(texts[0], tuple)
    spec = {"text_columns": ["text_a", "text_b"] if pair else ["text"], "text_pair": pair, "label_column": "label",
            "multi_label": multi_label, "label_delimiter": None}

    def part(xs, ys, fixed, what):
        if xs is None or ys is None:
            if (xs is None) != (ys is None):
                raise DataError(f"give both texts_{what} and labels_{what}, or neither.")
            return None
        if len(xs) != len(ys):
            raise DataError(f"{len(xs)} texts but {len(ys)} labels ({what}); give exactly one label per text.")
        if not len(xs):
            raise DataError(f"no texts given ({what}); give at least one.")
        non_str, empty = _bad_texts(list(xs))
        if non_str:
            example = xs[non_str[0]]
            raise DataError(f"{what} texts at {_rows(non_str, 'positions')} are not strings (e.g. "
                            f"{type(example).__name__} {str(example)[:40]!r}); every text must be a non-empty "
                            f"string, or a pair of them.")
        if empty:
            raise DataError(f"{what} texts at {_rows(empty, 'positions')} are empty; every text needs some "
                            f"non-space characters.")
        rows = [{"label": y} for y in ys]
        labels_ = _label_lists(rows, "label", multi_label, None, None, f"{what} labels")
        fixed = fixed or sorted({lab for labs in labels_ for lab in labs}, key=_label_key)
        return TextData(list(xs), _targets(labels_, fixed, multi_label, f"the {what} labels"), list(fixed), spec)

    fixed = [str(c) for c in classes] if classes is not None else None
    train = part(texts, labels, fixed, "train")
    require_two_classes(train, "labels", "Add texts with a second label.")
    val = part(texts_val, labels_val, train.classes, "val")
    test = part(texts_test, labels_test, train.classes, "test")
    train, val, test = _split_parts(train, val, test, val_fraction, test_fraction, seed)
    return DataSplits(train, val, test, list(train.classes), name=name, modality="text")


# ----------------------------------------------------------------------------------------------------------
# Batches: tokenise once, length-grouped order, dynamic padding

_GROUP_SEED = 7919  # decorrelates the batch shuffle from the epoch permutation
CHUNK_BATCHES = 50  # batches per length-sorted chunk: large enough to group lengths, small enough to stay random


def length_grouped_order(lengths: torch.Tensor, batch_size: int, shuffle: bool, seed: int, epoch: int,
                         rank: int = 0, world_size: int = 1, chunk_batches: int = CHUNK_BATCHES
                         ) -> list[torch.Tensor]:
    """Batches of indices in which texts of similar length sit together; every index once per epoch.

    Training (`shuffle`): this rank's share of the seeded epoch permutation (as `iterate_batches` deals it)
    is cut into chunks of `chunk_batches` batches, each chunk sorted by length and cut into batches, and
    the batches are shuffled; it depends only on (seed, epoch, rank, world_size). Evaluation: all indices
    longest first, so the batches carry almost no padding (callers re-sort outputs into data order).
    The number of batches equals `num_batches(n, batch_size, world_size)`.
    """
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}.")
    n = int(lengths.shape[0])
    shard = list(iterate_batches(n, max(n, 1), shuffle, seed, epoch, rank, world_size))
    order = torch.cat(shard) if shard else torch.empty(0, dtype=torch.long)
    if not shuffle:
        order = order[torch.argsort(lengths[order], descending=True, stable=True)]
        return list(order.split(batch_size))
    chunk = batch_size * chunk_batches
    batches: list[torch.Tensor] = []
    for start in range(0, len(order), chunk):
        part = order[start:start + chunk]
        part = part[torch.argsort(lengths[part], descending=True, stable=True)]
        batches += list(part.split(batch_size))
    generator = torch.Generator().manual_seed(int(seed) * 1000003 + int(epoch) + _GROUP_SEED)
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


@BATCHERS.register("text")
class TextBatcher(SplitBatcher):
    """Tokenises a TextData split once with the spec's tokenizer; yields dynamically padded token dicts."""

    def __init__(self, data: TextData, spec, train: bool, augment: bool = True):
        from ..backbones.spec import TextPreprocessing

        pre = spec.preprocessing
        if not isinstance(pre, TextPreprocessing):
            raise DataError(f"text data needs a text backbone (e.g. hf:sentence-transformers/all-MiniLM-L6-v2); "
                            f"this model's backbone {spec.source} takes {spec.modality} input.")
        from ..backbones.hf_source import load_tokenizer

        self.data = data
        self.train = train
        tokenizer = load_tokenizer(pre.tokenizer)
        if tokenizer.pad_token_id is None:
            raise DataError(f"the tokenizer from {pre.tokenizer} has no padding token; batches cannot be padded.")
        self.pad_id = int(tokenizer.pad_token_id)
        # Rows of a text file on the disk store: their ids are read from its memory map, not tokenised here.
        stored = data.tokens.open(tokenizer, pre.max_length) if data.tokens is not None else None
        if stored is not None:
            self.lengths, self.offsets = stored.lengths, stored.starts  # offsets[i]: where row i's ids start
            self.input_ids, self.token_type_ids = stored.input_ids, stored.token_type_ids
            top = stored.max_id
        else:
            self._tokenise(data, tokenizer, pre.max_length)
            top = int(self.input_ids.max()) if self.input_ids.numel() else -1
        if pre.vocab_size is not None and top >= pre.vocab_size:
            raise DataError(f"the tokenizer from {pre.tokenizer} produced token id {top}, but "
                            f"the model's embedding table has {pre.vocab_size} rows: tokenizer and model do not "
                            f"match. Use the tokenizer saved with the model.")

    def _tokenise(self, data: TextData, tokenizer, max_length: int) -> None:
        enc = encode_texts(tokenizer, data.texts, max_length, data.is_pair)
        ids = enc["input_ids"]
        self.lengths = torch.tensor([len(x) for x in ids], dtype=torch.long)
        self.offsets = torch.zeros(len(ids) + 1, dtype=torch.long)
        self.offsets[1:] = torch.cumsum(self.lengths, 0)
        # One flat tensor per input instead of N small lists: cheap to slice, small to keep.
        self.input_ids = torch.tensor([t for x in ids for t in x], dtype=torch.int64)
        self.token_type_ids = None
        if "token_type_ids" in enc and "token_type_ids" in tokenizer.model_input_names:
            self.token_type_ids = torch.tensor([t for x in enc["token_type_ids"] for t in x], dtype=torch.int64)

    def order(self, batch_size: int, shuffle: bool, seed: int, epoch: int, rank: int = 0,
              world_size: int = 1) -> list[torch.Tensor]:
        return length_grouped_order(self.lengths, batch_size, shuffle, seed, epoch, rank, world_size)

    def inputs(self, idx: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Token tensors (B, L) padded to the longest text of this batch (L <= max_length)."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        lengths = self.lengths[idx]
        width = int(lengths.max()) if len(idx) else 0
        input_ids = torch.full((len(idx), width), self.pad_id, dtype=torch.int64)
        mask = torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)
        types = torch.zeros((len(idx), width), dtype=torch.int64) if self.token_type_ids is not None else None
        for row, (i, n) in enumerate(zip(idx.tolist(), lengths.tolist())):
            start = int(self.offsets[i])
            input_ids[row, :n] = self.input_ids[start:start + n]
            if types is not None:
                types[row, :n] = self.token_type_ids[start:start + n]
        out = {"input_ids": input_ids, "attention_mask": mask.to(torch.int64)}
        if types is not None:
            out["token_type_ids"] = types
        return out

    def padding_fraction(self, batch_size: int, shuffle: bool = True, seed: int = 0, epoch: int = 0) -> float:
        """Share of pad tokens in an epoch's batches (what length grouping saves, for reports and tests)."""
        real = padded = 0
        for idx in self.order(batch_size, shuffle, seed, epoch):
            lengths = self.lengths[idx]
            real += int(lengths.sum())
            padded += int(lengths.max()) * len(idx)
        return 1.0 - real / max(padded, 1)

