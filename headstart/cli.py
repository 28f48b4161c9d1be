"""`headstart` command line: argument parsing only; everything else is the public API."""
from __future__ import annotations

import csv
import sys
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
        data: Optional[str] = typer.Option(None, help="a built-in data set name or an image folder"),
        strategy: Optional[str] = typer.Option(None, help="linear-probe, full, ... (strategy.name)"),
        epochs: Optional[int] = typer.Option(None, help="train.epochs"),
        out: Optional[str] = typer.Option(None, help="run folder"),
        resume: Optional[Path] = typer.Option(None, help="continue the run in this folder from its last checkpoint"),
        ) -> None:
    """Train a model; writes a run folder (config, metrics, checkpoints, best model bundle)."""
    from .config import load_config
    from .data import list_datasets
    from .run.from_config import fit_from_config

    if resume is not None:
        saved = resume / "config.yaml"
        if not saved.is_file():
            fail(f"{str(resume)!r} is not a run folder (no config.yaml); nothing to resume")
        config = config or saved
    overrides = list(set_)
    for key, value in (("model.backbone", backbone), ("model.weights", weights), ("strategy.name", strategy),
                       ("train.epochs", epochs), ("out", out or (str(resume) if resume else None))):
        if value is not None:
            overrides.append(f"{key}={value}")
    if data is not None:
        is_name = data in list_datasets() and not Path(data).exists()
        overrides += [f"data.dataset={data}", "data.path=null"] if is_name else [f"data.path={data}", "data.dataset=null"]
    cfg = load_config(config, overrides)
    result = fit_from_config(cfg, resume=resume is not None)
    typer.echo(f"best epoch {result.best_epoch}: " + format_metrics(result.best_metrics))
    if result.test_metrics:
        typer.echo("test: " + format_metrics(result.test_metrics))
    typer.echo(f"run folder: {result.run_dir}")


@app.command()
@guarded
def evaluate(run: Path = typer.Argument(..., help="run folder or bundle"),
             data: str = typer.Option(..., help="a built-in data set name or an image folder of labelled images"),
             split: str = typer.Option("test", help="split of a built-in data set: train, val or test"),
             ) -> None:
    """Metrics of a trained model on labelled data."""
    from .data import image_folder, list_datasets
    from .data import datasets as builtin
    from .inference import load

    predictor = load(run)
    if data in list_datasets():
        splits = builtin.load(data)
    else:  # a folder of class sub-folders, all of it evaluated
        pre = predictor.model.spec.preprocessing
        splits = image_folder(data, val=None, val_fraction=0.0, stored_size=int(max(pre.image_size) / pre.crop_pct) + 1)
        split = "train"
    typer.echo(format_metrics(predictor.evaluate(splits, split)))


@app.command()
@guarded
def predict(run: Path = typer.Argument(..., help="run folder or bundle"),
            inputs: List[Path] = typer.Argument(..., help="image files or folders"),
            out: Optional[Path] = typer.Option(None, help="write a CSV (path,label,probability) here"),
            ) -> None:
    """Predict labels for images."""
    from .inference import load

    predictor = load(run)
    paths: list[str] = []
    for item in inputs:
        paths += predictor.image_paths(item)
    rows = [(p, label, f"{prob:.4f}") for p, (label, prob) in zip(paths, predictor.predict(paths))]
    if out:
        with open(out, "w", newline="") as fh:
            csv.writer(fh).writerows([("path", "label", "probability"), *rows])
        typer.echo(f"wrote {len(rows)} predictions to {out}")
    else:
        for row in rows:
            typer.echo("\t".join(row))


@app.command()
@guarded
def demo(out: str = typer.Option("runs/demo", help="run folder (a new one if it exists)"),
         subset: int = typer.Option(200, help="training images per class"),
         epochs: int = typer.Option(3)) -> None:
    """EfficientNet-Lite0 (ImageNet weights) fine-tuned on Fashion-MNIST: the whole workflow in minutes."""
    from .demo import run_demo

    run_demo(out, subset=subset, epochs=epochs)


@app.command(name="list")
@guarded
def list_(what: str = typer.Argument(..., help="backbones, strategies, datasets, heads, metrics or weights"),
          pattern: str = typer.Argument("*", help="wildcard filter, e.g. 'timm:resnet*'")) -> None:
    """List registered names."""
    from .catalog import CATALOG

    for line in CATALOG.get(what)(pattern):
        typer.echo(line)


def format_metrics(metrics: dict) -> str:
    return "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())


def main() -> None:
    app(prog_name="headstart")


if __name__ == "__main__":
    sys.exit(main())
