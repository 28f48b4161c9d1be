"""`headstart` command line: argument parsing only; everything else is the public API."""
from __future__ import annotations

import csv
import io
import json
import os
import sys
import warnings
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Transfer learning on PyTorch: pretrained backbone + new head; train, evaluate, ship.")


def fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def guarded(fn):
    """Turn user-input errors into one clear line and exit code 2, instead of a traceback."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .errors import HeadstartError

        try:
            return fn(*args, **kwargs)
        except HeadstartError as e:
            fail(str(e))

    return wrapper


@app.command()
@guarded
def fit(config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML run config"),
        set_: List[str] = typer.Option([], "--set", help="override a config key: --set train.epochs=3"),
        backbone: Optional[str] = typer.Option(None, help="e.g. timm:resnet50 (model.backbone)"),
        weights: Optional[str] = typer.Option(None, help="package:..., a file, or hub (model.weights)"),
        data: Optional[str] = typer.Option(None, help="a built-in data set name, an image folder, or a text "
                                                      "file (.csv, .tsv, .jsonl, .json, .parquet)"),
        text_column: List[str] = typer.Option([], "--text-column", help="text file: the text column; repeat "
                                                                        "to join several (data.text_column)"),
        label_column: Optional[str] = typer.Option(None, "--label-column", help="text file: data.label_column"),
        task: List[str] = typer.Option([], "--task", help="multi-task table: NAME=COLUMN, one per task, the main "
                                                          "task first (tasks)"),
        weighting: Optional[str] = typer.Option(None, help="multi-task: equal, fixed, uncertainty, dwa, pcgrad "
                                                           "(multitask.weighting)"),
        target_data: Optional[str] = typer.Option(None, "--target-data", help="domain adaptation: unlabeled "
                                                  "target data, a built-in data set, folder or table (data.target)"),
        objective: Optional[str] = typer.Option(None, help="domain adaptation term: coral, mmd, dann, cdan, mcc "
                                                           "(domain.method)"),
        strategy: Optional[str] = typer.Option(None, help="linear-probe, full, ... (strategy.name)"),
        epochs: Optional[int] = typer.Option(None, help="train.epochs"),
        lr: Optional[str] = typer.Option(None, help="train.lr: a number, or auto (the LR finder's suggestion, "
                                                    "found before training; see headstart lr-find)"),
        budget: Optional[str] = typer.Option(None, help="time budget for --strategy auto, e.g. 10m, from the command's "
                                                        "start to its written results (strategy.budget)"),
        time_limit: Optional[str] = typer.Option(None, "--time-limit", help="stop any strategy's training in time "
                                                 "to finish within this, e.g. 90s (train.time_limit)"),
        metric: Optional[str] = typer.Option(None, help="what picks the best epoch: accuracy, balanced_accuracy, "
                                                        "macro_f1, f1, auroc (train.metric)"),
        positive_class: Optional[str] = typer.Option(None, "--positive-class",
                                                     help="--metric f1: the class it scores (train.positive_class)"),
        out: Optional[str] = typer.Option(None, help="run folder"),
        resume: Optional[Path] = typer.Option(None, help="continue the run in this folder from its last checkpoint"),
        nproc: int = typer.Option(1, "--nproc", min=1, help="train on N local processes (DDP through torchrun's "
                                                            "launcher; train.batch_size stays the global batch)"),
        ) -> None:
    """Train a model; writes a run folder (config, metrics, checkpoints, best model bundle)."""
    from .api import fit_from_config
    from .config import load_config
    from .run.deadline import process_started
    from .run.distributed import launch, launched, without_flag

    if nproc > 1 and not launched():
        from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

        try:
            launch(nproc, without_flag(sys.argv[1:], "--nproc"))
        except ChildFailedError as e:
            failures = "; ".join(f"rank {f.local_rank}: exit code {f.exitcode}" for f in e.failures.values())
            fail(f"the distributed run failed ({failures}); the failing rank's error is printed above. The run "
                 "folder keeps its last good checkpoint: fix the cause and add --resume RUN to continue.")
        return

    if resume is not None:
        saved = resume / "config.yaml"
        if not saved.is_file():
            fail(f"{str(resume)!r} is not a run folder (no config.yaml); nothing to resume")
        config = config or saved
    overrides = list(set_)
    for key, value in (("model.backbone", backbone), ("model.weights", weights), ("strategy.name", strategy),
                       ("train.epochs", epochs), ("train.lr", lr), ("strategy.budget", budget),
                       ("train.time_limit", time_limit),
                       ("train.metric", metric), ("train.positive_class", positive_class),
                       ("multitask.weighting", weighting),
                       ("data.target", target_data), ("domain.method", objective),
                       ("out", out or (str(resume) if resume else None))):
        if value is not None:
            overrides.append(f"{key}={value}")
    overrides += data_overrides(data, text_column, label_column)
    if task:
        overrides.append(f"tasks={json.dumps(task_list(task))}")
    cfg = load_config(config, overrides)
    result = fit_from_config(cfg, resume=resume is not None, started=process_started())
    shipped = result.extra.get("contender")  # auto shipped its raw-input contender instead of the trained model
    best = f"best: {shipped['model']}" if shipped else f"best epoch {result.best_epoch}"
    typer.echo(f"{best}: " + format_metrics(result.best_metrics))
    if result.test_metrics:
        typer.echo("test: " + format_metrics(result.test_metrics))
    typer.echo(f"run folder: {result.run_dir}")
    if result.extra.get("report"):
        typer.echo(f"report: {result.extra['report']}")


def data_overrides(data: Optional[str], text_column: List[str], label_column: Optional[str]) -> list[str]:
    """--data, --text-column and --label-column as config overrides."""
    from .data.sources import is_builtin

    overrides = []
    if data is not None:
        overrides += [f"data.dataset={data}", "data.path=null"] if is_builtin(data) else \
            [f"data.path={data}", "data.dataset=null"]
    if text_column:  # JSON is valid YAML: column names with spaces or commas survive the override parser
        overrides.append(f"data.text_column={json.dumps(text_column[0] if len(text_column) == 1 else text_column)}")
    if label_column is not None:
        overrides.append(f"data.label_column={json.dumps(label_column)}")
    return overrides


@app.command(name="lr-find")
@guarded
def lr_find(config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML run config"),
            set_: List[str] = typer.Option([], "--set", help="override a config key: --set train.batch_size=64"),
            backbone: Optional[str] = typer.Option(None, help="e.g. timm:resnet50 (model.backbone)"),
            weights: Optional[str] = typer.Option(None, help="package:..., a file, or hub (model.weights)"),
            data: Optional[str] = typer.Option(None, help="a built-in data set name, an image folder, or a text "
                                                          "file"),
            text_column: List[str] = typer.Option([], "--text-column", help="text file: data.text_column"),
            label_column: Optional[str] = typer.Option(None, "--label-column", help="text file: data.label_column"),
            strategy: Optional[str] = typer.Option(None, help="the strategy whose training is swept (strategy.name)"),
            out: Path = typer.Option(Path("lr_find"), help="folder for lr_find.json and lr_find.png"),
            sweeps: int = typer.Option(3, min=1, help="seeded range tests; their suggestions make the band"),
            steps: int = typer.Option(80, min=10, help="optimizer steps per range test"),
            min_lr: float = typer.Option(1e-6, "--min-lr", help="first learning rate of each test"),
            max_lr: float = typer.Option(10.0, "--max-lr", help="last learning rate (a test stops earlier when "
                                                                "the loss diverges)"),
            ) -> None:
    """Suggest a learning rate: several short seeded LR range tests of the strategy's training, the band of
    their suggestions and a plot (docs/lr_find.md). `headstart fit --lr auto` runs the same before training."""
    from .api import lr_find_from_config
    from .config import load_config

    overrides = list(set_)
    for key, value in (("model.backbone", backbone), ("model.weights", weights), ("strategy.name", strategy)):
        if value is not None:
            overrides.append(f"{key}={value}")
    cfg = load_config(config, overrides + data_overrides(data, text_column, label_column))
    found = lr_find_from_config(cfg, out, sweeps=sweeps, steps=steps, min_lr=min_lr, max_lr=max_lr)
    typer.echo(found.explain())
    typer.echo(f"wrote {out / 'lr_find.json'}" + (f" and {out / 'lr_find.png'}" if (out / "lr_find.png").is_file()
                                                  else " (no plot: install matplotlib, headstart[report])"))
    typer.echo(f"train with it: headstart fit ... --lr {found.lr:.3g}" +
               (f" --set train.head_lr={found.head_lr:.3g}" if found.head_lr is not None else "") +
               " (or --lr auto)")


def task_list(specs: List[str]) -> list[dict]:
    """--task NAME=COLUMN flags as the config's tasks (NAME alone: the column of that name)."""
    tasks = []
    for spec in specs:
        name, _, column = spec.partition("=")
        if not name.strip():
            fail(f"--task {spec!r}: give NAME=COLUMN, e.g. --task topic=category")
        tasks.append({"name": name.strip(), "column": column.strip() or name.strip()})
    return tasks


@app.command()
@guarded
def evaluate(run: Path = typer.Argument(..., help="run folder or bundle"),
             data: str = typer.Option(..., help="a built-in data set name, an image folder of labelled images, "
                                                "or a labelled text file"),
             split: str = typer.Option("test", help="split of a built-in data set: train, val or test"),
             text_column: List[str] = typer.Option([], "--text-column", help="text file: text column(s); "
                                                                             "default: the ones trained on"),
             label_column: Optional[str] = typer.Option(None, "--label-column", help="text file: label column"),
             max_bad_fraction: float = typer.Option(0.1, "--max-bad-fraction", min=0.0, max=0.99,
                                                    help="image folder: share of unreadable files skipped"),
             ) -> None:
    """Metrics of a trained model on labelled data."""
    from .data.sources import is_builtin, resolve_source
    from .inference import load

    predictor = load(run)
    cols = predictor.columns or {}  # a text model reads the columns it was trained on, unless told others
    if predictor.tasks is not None:
        from .data.tasks import table_tasks

        if not cols.get("tasks") or is_builtin(data):
            fail(f"this model has tasks {predictor.tasks}; evaluate reads them from a table with the label "
                 "columns it was trained on. For a built-in or combined data set, use Python: "
                 "hs.load(RUN).evaluate(multi_task_data)")
        splits = table_tasks(data, cols["tasks"], list(text_column) or cols.get("text_columns") or "text",
                             text_pair=bool(cols.get("text_pair")) and not text_column, val_fraction=0.0)
        typer.echo(format_metrics(predictor.evaluate(splits.train, name=Path(data).stem)))
        return
    whole = not is_builtin(data)  # a whole folder or file is evaluated: all of it in the training split
    splits = resolve_source(data, predictor.model.spec, **({"val_fraction": 0.0} if whole else {}),
                            text_column=list(text_column) or cols.get("text_columns") or "text",
                            label_column=label_column or cols.get("label_column") or "label",
                            text_pair=bool(cols.get("text_pair")) and not text_column,
                            multi_label=predictor.model.task == "multilabel",
                            label_delimiter=cols.get("label_delimiter"), max_bad_fraction=max_bad_fraction)
    # A folder or file is evaluated whole (it all lands in the training part) and named after itself.
    metrics = predictor.evaluate(splits.train, name=Path(data).stem) if whole else predictor.evaluate(splits, split)
    typer.echo(format_metrics(metrics))


@app.command()
@guarded
def predict(run: Path = typer.Argument(..., help="run folder or bundle"),
            inputs: List[Path] = typer.Argument(..., help="image files or folders; for a text model, text files "
                                                          "(.csv, .tsv, .jsonl, .json, .parquet)"),
            out: Optional[Path] = typer.Option(None, help="write the predictions as CSV (path,label,probability"
                                                          "[,row,text]) to this file; a missing folder is created. "
                                                          "Without it, the same rows, without the header, are "
                                                          "printed"),
            text_column: List[str] = typer.Option([], "--text-column", help="text files: text column(s); "
                                                                            "default: the ones trained on"),
            max_bad_fraction: float = typer.Option(0.1, "--max-bad-fraction",
                                                   help="images: the share of files that may be unreadable; they "
                                                        "are skipped with a warning. Above it, nothing is "
                                                        "predicted"),
            ) -> None:
    """Predict labels for images or texts."""
    from .atomic import atomic_write_text
    from .inference import UnreadableFilesError, load

    if not 0 <= max_bad_fraction < 1:
        fail(f"--max-bad-fraction must be at least 0 and below 1 (the share of image files that may be "
             f"unreadable), got {max_bad_fraction:g}; e.g. --max-bad-fraction 0.2")
    if out is not None:
        check_out_path(out, inputs)
    predictor = load(run)
    if predictor.model.spec.modality == "text":
        header, rows = text_prediction_rows(predictor, inputs, list(text_column) or None)
    else:
        header = ("path", "label", "probability")
        with warnings.catch_warnings(record=True) as caught:  # skipped files: one line each, not Python warnings
            warnings.simplefilter("always")
            try:
                paths, preds = predictor.predict_files(inputs, max_bad_fraction=max_bad_fraction)
            except UnreadableFilesError as e:
                fail(f"{e} On the command line that is --max-bad-fraction (now {max_bad_fraction:g}).")
        for w in caught:
            typer.secho(f"warning: {w.message}", fg=typer.colors.YELLOW, err=True)
        if isinstance(preds, dict):  # a multi-task model: a row per input and task
            header = ("path", "task", "label", "probability")
            rows = [(p, t, *prediction_cells(pred)) for t, task_preds in preds.items()
                    for p, pred in zip(paths, task_preds)]
        else:
            rows = [(p, label, f"{prob:.4f}") for p, (label, prob) in zip(paths, preds)]
    if out is not None:
        try:
            atomic_write_text(out, csv_text([header, *rows]))
        except OSError as e:
            fail(f"cannot write {str(out)!r}: {e.strerror or e}. Give --out a file path in a folder you can "
                 "write to, e.g. --out preds.csv")
        typer.echo(f"wrote {len(rows)} predictions to {out}")
    else:
        if header[-1] == "text":  # long texts shortened on screen; the CSV file keeps them whole
            rows = [(*row[:-1], shorten(row[-1])) for row in rows]
        typer.echo(csv_text(rows), nl=False)


@app.command(name="export")
@guarded
def export_(run: Path = typer.Argument(..., help="run folder"),
            format: str = typer.Option("onnx", "--format", help="onnx or torchscript"),
            out: Optional[Path] = typer.Option(None, help="the file to write; default RUN/export/model.onnx "
                                                          "(model.pt for torchscript)")) -> None:
    """Export the best model for inference (adapters merged, BatchNorm folded, preprocessing in its metadata)
    and check it against PyTorch on the run's validation data; writes RUN/export/parity.json."""
    from .api import data_from_config
    from .config import load_config
    from .export import export

    if not (run / "config.yaml").is_file():
        fail(f"{str(run)!r} is not a run folder (no config.yaml): the parity check reloads the run's validation "
             "data as its config names it. To export a bundle, use Python: hs.export(bundle, data=...)")
    cfg = load_config(run / "config.yaml")
    path = export(run, format, out, data=lambda model: data_from_config(cfg, model), echo=typer.echo)
    parity = json.loads(path.with_name(path.name + ".json").read_text())["parity"]
    if not parity["passed"]:
        fail(f"the export {str(path)!r} was written but does not match the PyTorch model (see "
             f"{str(run / 'export' / 'parity.json')!r}); do not ship it")


WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


def check_out_path(out: Path, inputs: List[Path]) -> None:
    """Refuse an --out that would destroy data or cannot be a file: an input, a folder, a path under a file, or
    a name with an image, data or weights extension. Called before anything is read or written."""
    from .data import IMAGE_EXTENSIONS
    from .data.text import TEXT_FILE_SUFFIXES

    target = out.expanduser().resolve()
    if target.is_dir():
        fail(f"--out {str(out)!r} is a folder; give a file path for the CSV, e.g. --out {str(out / 'preds.csv')!r}")
    given = [p.expanduser().resolve() for p in inputs]
    in_folder = out.suffix.lower() in IMAGE_EXTENSIONS and any(target.is_relative_to(p) for p in given if p.is_dir())
    if target in given or (in_folder and target.is_file()):
        fail(f"--out {str(out)!r} is one of the input files; writing the predictions there would overwrite it. "
             "Give another path, e.g. --out preds.csv")
    blocking = next((p for p in target.parents if p.exists()), None)
    if blocking is not None and not blocking.is_dir():
        fail(f"--out {str(out)!r} cannot be written: {str(blocking)!r} is a file, not a folder. Give another path, "
             "e.g. --out preds.csv")
    # Input folders are searched by image extension, so refusing those names keeps every input image safe.
    data_like = (set(IMAGE_EXTENSIONS) | set(TEXT_FILE_SUFFIXES) | set(WEIGHT_SUFFIXES)) - {".csv"}
    if out.suffix.lower() in data_like:
        fail(f"--out {str(out)!r} is named like an image, data or weights file ({out.suffix}), but the predictions "
             f"are CSV; give a path ending in .csv, e.g. --out {str(out.with_suffix('.csv'))!r}")


def csv_text(rows: list[tuple[str, ...]]) -> str:
    """Rows as CSV that csv.reader reads back whole: fields with commas, quotes or line breaks are quoted.

    The line ends stay csv's default \\r\\n: with a bare \\n, a \\r inside a field would go unquoted and break
    the row when read back.
    """
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    return buffer.getvalue()


def shorten(text: str, width: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 3] + "..."


def text_prediction_rows(predictor, files: List[Path], text_column: Optional[List[str]]):
    """(header, rows) of predictions for every text of every file; multi-label joins labels with ';'."""
    multi = predictor.tasks is not None
    header = ("path", *(("task",) if multi else ()), "label", "probability", "row", "text")
    rows = []
    for path in files:
        texts = predictor.read_texts(path, text_column)
        preds = predictor.predict(texts)
        for task, task_preds in (preds.items() if multi else [(None, preds)]):
            for i, (text, pred) in enumerate(zip(texts, task_preds)):
                shown = " | ".join(text) if isinstance(text, tuple) else text
                rows.append((str(path), *((task,) if multi else ()), *prediction_cells(pred), str(i), shown))
    return header, rows


def prediction_cells(pred) -> tuple[str, str]:
    """(label, probability) cells of one prediction; a multi-label one joins its labels with ';', a regression
    value fills the label cell."""
    if isinstance(pred, (float, int)) or (isinstance(pred, list) and pred and isinstance(pred[0], float)):
        return (";".join(f"{v:.6g}" for v in (pred if isinstance(pred, list) else [pred])), "")
    pairs = pred if isinstance(pred, list) else [pred]
    return ";".join(lab for lab, _ in pairs), ";".join(f"{p:.4f}" for _, p in pairs)


@app.command()
@guarded
def demo(kind: str = typer.Argument("image", help="image (EfficientNet-Lite0 on Fashion-MNIST), text (MiniLM on "
                                                   "BBC News), multitask (Fashion-MNIST items and kinds) or domain "
                                                   "(scikit-learn digits to OpenCV digits)"),
         out: Optional[str] = typer.Option(None, help="run folder (a new one if it exists); default runs/demo "
                                                      "or runs/demo-text"),
         subset: Optional[int] = typer.Option(None, help="training examples per class (image default 200, "
                                                         "text default all)"),
         epochs: Optional[int] = typer.Option(None, help="image default 3, text default 2")) -> None:
    """A pretrained backbone fine-tuned on real data, the whole workflow in minutes: `headstart demo` is
    EfficientNet-Lite0 (ImageNet weights) on Fashion-MNIST, `headstart demo text` MiniLM on BBC News,
    `headstart demo multitask` one Lite0 with two heads: the ten Fashion-MNIST items and four kinds."""
    from .demo import run_demo, run_domain_demo, run_multitask_demo, run_text_demo

    if kind == "image":
        run_demo(out or "runs/demo", subset=subset or 200, epochs=epochs or 3)
    elif kind == "text":
        run_text_demo(out or "runs/demo-text", subset=subset, epochs=epochs or 2)
    elif kind == "multitask":
        run_multitask_demo(out or "runs/demo-multitask", subset=subset or 200, epochs=epochs or 3)
    elif kind == "domain":
        run_domain_demo(out or "runs/demo-domain", subset=subset or 100, epochs=epochs or 6)
    else:
        fail(f"unknown demo {kind!r}; choose image (the default), text, multitask or domain")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@guarded
def rank(ctx: typer.Context,
         backbones: List[str] = typer.Option([], "--backbones", "-b", help="NAME or NAME@WEIGHTS, several after "
                                             "one flag: --backbones timm:tf_efficientnet_lite0@package:"
                                             "efficientnet-lite0 timm:tf_efficientnet_lite0"),
         data: str = typer.Option(..., help="a built-in data set name, an image folder, or a text file"),
         score: List[str] = typer.Option(["logme"], "--score", help="logme, h_score, linear_probe, leep or nce; "
                                                                    "repeat for more columns (the first ranks)"),
         confirm: int = typer.Option(0, help="fine-tune the top k briefly and recommend by val accuracy"),
         image_size: Optional[int] = typer.Option(None, "--image-size", help="input size of image backbones"),
         subset: Optional[int] = typer.Option(None, help="at most this many training examples per class"),
         proxy_strategy: str = typer.Option("lp-ft", "--proxy-strategy", help="strategy of the --confirm runs"),
         proxy_epochs: int = typer.Option(2, "--proxy-epochs", help="epochs of each --confirm run"),
         text_column: List[str] = typer.Option([], "--text-column", help="text file: the text column(s)"),
         label_column: str = typer.Option("label", "--label-column", help="text file: the label column"),
         out: Optional[str] = typer.Option(None, help="write rank.json, rank.md and the proxy runs here"),
         seed: int = typer.Option(0, help="data subset, random-init weights and proxy runs"),
         ) -> None:
    """Rank backbones for a data set by a transferability score (one feature pass each), optionally confirm."""
    from .api import rank as rank_backbones
    from .plan.rank import load_data

    unknown = [a for a in ctx.args if a.startswith("-")]
    if unknown:
        fail(f"no such option {unknown[0]!r} for rank; see `headstart rank --help`")
    names = list(backbones) + list(ctx.args)  # --backbones A B C: click hands B and C over as extra arguments
    splits = load_data(data, subset=subset, image_size=image_size, seed=seed,
                       text_column=list(text_column) or "text", label_column=label_column)
    result = rank_backbones(names, splits, list(score), confirm, image_size=image_size, seed=seed, out=out,
                            proxy_strategy=proxy_strategy, proxy_epochs=proxy_epochs, progress=True)
    typer.echo(result.to_markdown())


@app.command()
@guarded
def report(run: Path = typer.Argument(..., help="run folder")) -> None:
    """(Re)write a run's report.html: curves, learning rate, what trains, confusion matrix, per-class scores,
    calibration and the most confident mistakes (the data is reloaded as the run's config.yaml names it)."""
    from .api import write_report as write

    typer.echo(f"report: {write(run)}")


@app.command()
@guarded
def compare(runs: List[Path] = typer.Argument(..., help="two or more run folders"),
            out: Path = typer.Option(Path("compare.html"), help="the page to write")) -> None:
    """Set runs side by side in one page: their config, best and test metrics, training time and curves."""
    from .report import compare_runs

    typer.echo(f"comparison: {compare_runs(runs, out)}")


@app.command(name="list")
@guarded
def list_(what: str = typer.Argument(..., help="backbones, strategies, datasets, heads, metrics, weights, "
                                               "weightings or domains"),
          pattern: str = typer.Argument("*", help="wildcard filter, e.g. 'timm:resnet*'")) -> None:
    """List registered names."""
    from .catalog import CATALOG

    for line in CATALOG.get(what)(pattern):
        typer.echo(line)


data_app = typer.Typer(no_args_is_help=True, help="Stores: image folders decoded, and text files tokenised, once "
                                                   "into memory-mapped files on disk (docs/data_store.md).")
app.add_typer(data_app, name="data")


@data_app.command("prepare")
@guarded
def data_prepare(path: Path = typer.Argument(..., help="an image folder with one sub-folder per class, or a text "
                                                         "file (.csv, .tsv, .jsonl, .json, .parquet)"),
                 image_size: Optional[int] = typer.Option(None, "--image-size", help="the model's input size (the "
                                                          "store keeps images at size / 0.875; default 256 px)"),
                 store_dir: Optional[Path] = typer.Option(None, "--store-dir", help="default $HEADSTART_STORE_DIR "
                                                          "or ~/.cache/headstart/stores"),
                 workers: Optional[int] = typer.Option(None, help="decoding processes (0: threads in this one)"),
                 backbone: Optional[str] = typer.Option(None, "--backbone", help="text file: the hf: backbone "
                                                        "whose tokenizer and max_length the store is for"),
                 text_column: List[str] = typer.Option([], "--text-column", help="text file: text column(s)"),
                 label_column: str = typer.Option("label", "--label-column", help="text file: label column"),
                 text_pair: bool = typer.Option(False, "--text-pair", help="text file: two text columns form a pair"),
                 ) -> None:
    """Decode an image folder, or tokenise a text file, into its store ahead of time."""
    from .data.text import is_text_file

    if is_text_file(path):
        _prepare_text(path, backbone, list(text_column) or ["text"], label_column, text_pair, store_dir)
        return
    from .data.store import describe, prepare, size_for

    store = prepare(path, size_for(image_size), store_dir, workers=workers, progress=True)
    typer.echo(json.dumps(describe(store.path), indent=2))


def _prepare_text(path: Path, backbone: Optional[str], text_column: list[str], label_column: str, text_pair: bool,
                  store_dir: Optional[Path]) -> None:
    """Tokenise a text file into its token store with a backbone's tokenizer and max_length."""
    if not backbone:
        fail(f"a text file's store holds token ids of one tokenizer: give the text backbone, e.g. `headstart data "
             f"prepare {path} --backbone hf:sentence-transformers/all-MiniLM-L6-v2` (the one you will fit with)")
    from .backbones import create_backbone
    from .data import make_batcher
    from .data.text import text_file
    from .data.token_store import describe_tokens, token_stores_of

    _, spec = create_backbone(backbone)
    if spec.modality != "text":
        fail(f"{backbone} takes {spec.modality} input; a text file needs a text backbone (hf:...)")
    data = text_file(path, text_column, label_column, text_pair=text_pair, val_fraction=0.0, store="disk",
                     store_dir=store_dir)
    make_batcher(data.train, spec, train=False)  # builds the store, or finds it current
    typer.echo(json.dumps([describe_tokens(p) for p in token_stores_of(path, store_dir)], indent=2))


@data_app.command("info")
@guarded
def data_info(path: Path = typer.Argument(..., help="an image folder or a text file"),
              store_dir: Optional[Path] = typer.Option(None, "--store-dir")) -> None:
    """Show the stores of an image folder or text file: counts, classes, size on disk, complete or not, where."""
    from .data.store import default_store_dir, describe, stores_of
    from .data.text import is_text_file
    from .data.token_store import describe_tokens, token_stores_of

    text = is_text_file(path)
    found = token_stores_of(path, store_dir) if text else stores_of(path, store_dir)
    if not found:
        how = " --backbone hf:<the text backbone>" if text else ""
        fail(f"no {'token' if text else 'image'} store for {str(path)!r} under {store_dir or default_store_dir()}; "
             f"build one with `headstart data prepare {path}{how}`")
    typer.echo(json.dumps([(describe_tokens if text else describe)(p) for p in found], indent=2))


@data_app.command("clean")
@guarded
def data_clean(path: Optional[Path] = typer.Argument(None, help="an image folder or text file; omit with --all"),
               all_: bool = typer.Option(False, "--all", help="every store under the store folder"),
               store_dir: Optional[Path] = typer.Option(None, "--store-dir")) -> None:
    """Delete the stores of an image folder or text file (or all stores); they are rebuilt on next use."""
    from .data.store import remove_stores
    from .data.token_store import remove_token_stores

    if (path is None) == (not all_):
        fail("give an image folder, a text file or --all (not both)")
    for p in remove_stores(path, store_dir) + remove_token_stores(path, store_dir):
        typer.echo(f"removed {p}")


def format_metrics(metrics: dict) -> str:
    return "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())


def main() -> None:
    code = 0
    try:
        app(prog_name="headstart")
    except SystemExit as done:
        code = done.code
    leave(code)


def leave(code) -> None:
    """Exit with `code` (SystemExit's: None, an int, or a message). A single process whose work is done and
    written skips the interpreter's teardown: freeing torch's and timm's modules took 0.6-1.4 s after every
    command here, which a budget of seconds (`--budget`) pays and nothing gains. A distributed rank, or a
    process with a thread still running (a write in flight), exits the usual way."""
    import logging
    import threading

    busy = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    if busy or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.exit(code)
    if isinstance(code, str):
        print(code, file=sys.stderr)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can reach it
            pass
    os._exit(code if isinstance(code, int) else (0 if code is None else 1))


if __name__ == "__main__":
    sys.exit(main())
