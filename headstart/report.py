"""The run report: one self-contained HTML page of what a run did and how its best model behaves, and a page
that sets several runs side by side.

`write_report(run_dir, data)` reads the run folder (metrics.jsonl, config.yaml, trainable.txt, auto.json, the
best bundle) and, given the run's data, scores the best model on its test split (val without one) for the
confusion matrix, per-class scores, calibration and the most confident mistakes. Figures are drawn with
matplotlib's Agg canvas (no pyplot, no global backend change), saved as PNGs under `<run>/report/` and inlined
in `<run>/report.html` as data URIs, so the page can be mailed or moved alone.
"""
from __future__ import annotations

import base64
import html
import io
import json
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import yaml

from .bundle import load_model, read_meta
from .data import DataSplits, make_batcher
from .data.tasks import tasks_of
from .errors import ConfigError, DataError
from .inference import align_labels
from .plan.auto import DECISION_FILE
from .run.folder import CONFIG_FILE, METRICS_FILE, TEST_FILE, read_metrics
from .run.trainer import TRAINABLE_FILE
from .runtime import inference_placement, predict_outputs

REPORT_FILE, FIGURE_DIR = "report.html", "report"
BINS = 10  # reliability diagram: equal-width confidence bins
MISTAKES = 12  # most confident mistakes shown
DPI = 80  # small figures keep a report cheap to draw (it is written after every fit)


# ----------------------------------------------------------------------------------------------- the report

def write_report(run_dir: str | Path, data: DataSplits | None = None, *, module: torch.nn.Module | None = None,
                 data_note: str | None = None, test_outputs: torch.Tensor | None = None) -> Path:
    """Write `<run_dir>/report.html` (and its figures under `<run_dir>/report/`); returns the page's path.

    Args:
        data: the run's data; without it the sections that need predictions say so (`data_note`: why).
        module: the architecture of a custom ``nn.Module`` backbone, to load its best bundle.
        test_outputs: the best model's outputs on ``data.test``, in its order, as the run's test pass
            computed them (the report then scores those instead of running the model again).
    """
    run = check_run(run_dir)
    best = run / "best"
    if not (best / "model.safetensors").is_file():
        raise DataError(f"run folder {str(run)!r} has no best model (best/model.safetensors): the run finished "
                        "no epoch. Resume it (headstart fit --resume RUN) or report on a finished run.")
    figures = run / FIGURE_DIR
    figures.mkdir(exist_ok=True)
    for old in figures.glob("*.png"):  # a rebuilt report may have fewer mistakes to show
        old.unlink()
    config = read_config(run)
    history = read_metrics(run)
    meta = read_meta(best)
    page = Page(f"headstart report: {run.name}", figures)
    page.section("overview", "Run", overview(run, config, history, meta))
    page.section("curves", "Learning curves", page.figure("curves", curves_figure(history),
                                                          "training and validation loss and metrics by epoch"))
    lrs = [(r["epoch"], r["lr"]) for r in history if isinstance(r.get("lr"), (int, float))]
    page.section("lr", "Learning rate", page.figure("lr", lr_figure(lrs), "learning rate at the end of each epoch")
                 if lrs else note("the head was fitted in one pass (strategy.solver fit), at no learning rate."
                                  if head_fitted(history) else
                                  "no learning rate was logged (metrics.jsonl has no lr column)."))
    page.section("strategy", "Strategy and what trains", strategy_html(run, config))
    if (run / DECISION_FILE).is_file():
        page.section("auto", "auto's decision", auto_html(json.loads((run / DECISION_FILE).read_text())))
    evaluation_sections(page, best, meta, data, module, data_note, test_outputs)
    return page.write(run / REPORT_FILE)


def report_after_fit(run_dir: str | Path, data: DataSplits, module: torch.nn.Module | None = None,
                     test_outputs: torch.Tensor | None = None) -> Path | None:
    """`write_report` at the end of a fit: a failure warns with its reason and never loses the run."""
    try:
        return write_report(run_dir, data, module=module, test_outputs=test_outputs)
    except Exception as e:  # noqa: BLE001  the run is done and saved; the page is a convenience
        warnings.warn(f"the run's report could not be written ({type(e).__name__}: {e}); the run itself is "
                      f"complete. Rebuild it with: headstart report {run_dir}", stacklevel=2)
        return None


def check_run(run_dir: str | Path) -> Path:
    """`run_dir` as a Path, after checking that it is a run folder."""
    run = Path(run_dir)
    if not run.is_dir():
        raise ConfigError(f"run folder {str(run)!r} does not exist; give the folder a fit wrote (its out)")
    if not (run / METRICS_FILE).is_file() and not (run / CONFIG_FILE).is_file():
        raise ConfigError(f"{str(run)!r} is not a run folder (no {METRICS_FILE} or {CONFIG_FILE}); give the folder "
                          "a fit wrote (its out)")
    return run


def read_config(run: Path) -> dict[str, Any]:
    path = run / CONFIG_FILE
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def read_test_metrics(run: Path) -> dict[str, float]:
    path = run / TEST_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def head_fitted(history: list[dict]) -> bool:
    """Whether the run fitted its head in one pass (run/head_fit.py logs the chosen L2 as head_l2)."""
    return any("head_l2" in r for r in history)


def overview(run: Path, config: dict, history: list[dict], meta: dict) -> str:
    model, train, strategy = config.get("model", {}), config.get("train", {}), config.get("strategy", {})
    rows = [("folder", str(run)), ("backbone", model.get("backbone") or meta.get("backbone", {}).get("source")),
            ("weights", model.get("weights")), ("strategy", strategy.get("name")),
            ("epochs run", "1 (the head was fitted in one pass)" if head_fitted(history)
             else f"{len(history)} of {train.get('epochs', '?')}"),
            ("training time", f"{training_seconds(history):.1f} s (sum of the epochs' seconds)"),
            ("best epoch", meta.get("epoch"))]
    if meta.get("contender"):  # auto shipped its raw-input contender (plan/contender.py)
        rows += [("shipped model", f"{meta['contender']['model']}: auto's raw-input contender, which beat the "
                                   "trained model on val (that model is in transfer/)")]
    best = {k: v for k, v in (meta.get("metrics") or {}).items() if "/" in k and not k.startswith("train/")}
    test = read_test_metrics(run)
    return ('<div class="row"><div>' + table(["", ""], [(k, v) for k, v in rows if v is not None], header=False)
            + "</div><div><h3>Best epoch (validation)</h3>" + metrics_table(best) + "</div><div>"
            + ("<h3>Test split (best model)</h3>" + metrics_table(test) if test else note("no test split."))
            + "</div></div>")


def training_seconds(history: list[dict]) -> float:
    return sum(r.get("seconds", 0.0) for r in history)


def strategy_html(run: Path, config: dict) -> str:
    strategy = {k: v for k, v in config.get("strategy", {}).items() if v is not None}
    parts = [table(["option", "value"], sorted(strategy.items()))] if strategy else []
    path = run / TRAINABLE_FILE
    parts.append(f"<pre>{esc(path.read_text())}</pre>" if path.is_file() else
                 note(f"the trainable-parameter table was not recorded ({TRAINABLE_FILE} is missing)."))
    return "".join(parts)


def auto_html(decision: dict) -> str:
    rows = [("strategy", decision.get("strategy")), ("options", json.dumps(decision.get("options") or {})),
            ("settings", json.dumps(decision.get("train") or {}))]
    estimates = decision.get("estimates_s") or {}
    if estimates:
        rows.append(("estimated seconds", ", ".join(f"{k} {v:.0f}" for k, v in estimates.items())))
    reasons = "".join(f"<li>{esc(r)}</li>" for r in decision.get("reasons", []))
    return table(["", ""], rows, header=False) + (f"<h3>Reasons</h3><ul>{reasons}</ul>" if reasons else "")


# ----------------------------------------------------------------------------------- the best model's scores

EVALUATION = ("confusion", "per-class", "calibration", "mistakes")
TITLES = {"confusion": "Confusion matrix", "per-class": "Per-class precision, recall and F1",
          "calibration": "Calibration", "mistakes": "Most confident mistakes"}


def evaluation_sections(page: Page, best: Path, meta: dict, data: DataSplits | None,
                        module: torch.nn.Module | None, data_note: str | None,
                        test_outputs: torch.Tensor | None = None) -> None:
    """The sections that score the best model on the data; each says why when it cannot be shown."""
    reason = None
    if meta.get("extra_heads") or (data is not None and tasks_of(data) is not None):
        reason = "not shown for multi-task runs: the overview gives every task's metrics."
        page.section("tasks", "Tasks", tasks_html(meta))
    elif meta.get("task") == "regression":
        reason = "not shown for regression: these sections are for classifiers (see the mse and mae curves)."
    elif meta.get("task") == "multilabel":
        reason = "not shown for multi-label classification: the overview gives micro/macro F1 and mAP."
    elif data is None:
        reason = f"not shown: {data_note or 'the run data was not given'}."
    if reason is not None:  # one note instead of the four sections
        page.section("evaluation", "The best model's predictions", note("Confusion matrix, per-class scores, "
                                                                         f"calibration and mistakes: {reason}"))
        return
    split_name = "test" if data.test is not None else "val"
    model = load_model(best, module=module)
    split = align_labels(getattr(data, split_name), model.labels)
    if split_name == "test" and test_outputs is not None and len(test_outputs) == len(split):
        outputs = test_outputs  # the run's own test pass: the figures agree with test_metrics.json
    else:
        placement = inference_placement(model)  # as predict computes: bf16 and channels_last where faster
        outputs = predict_outputs(placement.move(model), make_batcher(split, model.spec, train=False),
                                  batch_size=128, **placement.kwargs())
    probs = outputs.float().softmax(1).numpy()
    preds = decide(probs, model.decision)
    truth = split.targets.numpy()
    labels = list(model.labels)
    where = f"<p>The best model (epoch {meta.get('epoch')}) on the {split_name} split ({len(truth)} samples).</p>"
    cm = confusion(truth, preds, len(labels))
    page.section("confusion", TITLES["confusion"],
                 where + page.figure("confusion", confusion_figure(cm, labels), "confusion matrix"))
    page.section("per-class", TITLES["per-class"], per_class_html(cm, labels))
    confidence = probs[np.arange(len(preds)), preds]
    ece, bins = calibration(confidence, preds == truth)
    page.section("calibration", TITLES["calibration"],
                 f"<p>Expected calibration error (ECE, {BINS} bins): <b>{ece:.4f}</b>: the gap between confidence "
                 "and accuracy, weighted by how many predictions fall in each bin.</p>"
                 + page.figure("reliability", reliability_figure(bins, ece), "reliability diagram"))
    page.section("mistakes", TITLES["mistakes"], mistakes_html(page, split, truth, preds, confidence, labels))


def decide(probs: np.ndarray, decision: dict | None) -> np.ndarray:
    """Predicted classes as `predict` makes them: argmax, or a binary head's saved threshold."""
    if decision:
        pos, t = decision["positive"], decision["threshold"]
        return np.where(probs[:, pos] >= t, pos, 1 - pos)
    return probs.argmax(1)


def confusion(truth: np.ndarray, preds: np.ndarray, k: int) -> np.ndarray:
    """(k, k) counts: rows are true classes, columns predicted ones."""
    return np.bincount(truth * k + preds, minlength=k * k).reshape(k, k)


def per_class(cm: np.ndarray) -> list[tuple[float, float, float, int]]:
    """(precision, recall, F1, support) of each class from a confusion matrix."""
    tp = np.diag(cm).astype(float)
    predicted, support = cm.sum(0), cm.sum(1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=precision + recall > 0)
    return [(float(p), float(r), float(f), int(n)) for p, r, f, n in zip(precision, recall, f1, support)]


def per_class_html(cm: np.ndarray, labels: list[str]) -> str:
    rows = [(label, f"{p:.3f}", f"{r:.3f}", f"{f:.3f}", n) for label, (p, r, f, n) in zip(labels, per_class(cm))]
    return table(["class", "precision", "recall", "F1", "support"], rows)


def calibration(confidence: np.ndarray, correct: np.ndarray) -> tuple[float, list[tuple[float, float, int]]]:
    """ECE and each bin's (mean confidence, accuracy, count) over `BINS` equal-width confidence bins."""
    which = np.minimum((confidence * BINS).astype(int), BINS - 1)
    bins, ece = [], 0.0
    for b in range(BINS):
        inside = which == b
        n = int(inside.sum())
        conf = float(confidence[inside].mean()) if n else (b + 0.5) / BINS
        acc = float(correct[inside].mean()) if n else 0.0
        ece += n / max(len(confidence), 1) * abs(acc - conf)
        bins.append((conf, acc, n))
    return ece, bins


def mistakes_html(page: Page, split, truth, preds, confidence, labels: list[str]) -> str:
    wrong = np.flatnonzero(preds != truth)
    if not len(wrong):
        return note("no mistakes on this split.")
    top = wrong[np.argsort(-confidence[wrong], kind="stable")][:MISTAKES]
    if hasattr(split, "images"):
        cells = "".join(f"<figure>{page.image(f'mistake-{n + 1:02d}', thumbnail(split.images[i]), 'a mistake')}"
                        f"<figcaption>true <b>{esc(labels[truth[i]])}</b><br>predicted <b>{esc(labels[preds[i]])}"
                        f"</b> ({confidence[i]:.2f})</figcaption></figure>" for n, i in enumerate(top))
        return f'<div class="thumbs">{cells}</div>'
    rows = [(labels[truth[i]], labels[preds[i]], f"{confidence[i]:.3f}", snippet(split.texts[i])) for i in top]
    return table(["true", "predicted", "confidence", "text"], rows)


def thumbnail(image: torch.Tensor, size: int = 96) -> bytes:
    """A PNG of one stored (C, H, W) uint8 image, its longer side scaled to `size` (small images stay sharp)."""
    from PIL import Image

    pixels = image.permute(1, 2, 0).cpu().numpy()
    picture = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    scale = size / max(picture.size)
    resample = Image.Resampling.NEAREST if scale >= 2 else Image.Resampling.BILINEAR
    picture = picture.resize((max(1, round(picture.width * scale)), max(1, round(picture.height * scale))), resample)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def snippet(text, limit: int = 240) -> str:
    text = " | ".join(text) if isinstance(text, (tuple, list)) else str(text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def tasks_html(meta: dict) -> str:
    heads = {meta.get("main_task") or "main": meta.get("task")}
    heads.update({name: h.get("task") for name, h in (meta.get("extra_heads") or {}).items()})
    return table(["task", "type"], list(heads.items()))


# ---------------------------------------------------------------------------------------------------- figures

def new_figure(width: float, height: float, **margins: float):
    """A figure on its own Agg canvas (no pyplot state, no backend switch), with fixed margins: automatic
    layout would double the drawing time."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    fig.subplots_adjust(**{"left": 0.12, "right": 0.97, "bottom": 0.16, "top": 0.9, "wspace": 0.25, **margins})
    return fig


def epoch_axis(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole


def plot_column(ax, history: list[dict], key: str, **style) -> None:
    """One metrics column against the epoch (rows without a number for it are skipped)."""
    points = [(r["epoch"], r[key]) for r in history if isinstance(r.get(key), (int, float))]
    if points:
        xs, ys = zip(*points)
        ax.plot(xs, ys, marker="o", markersize=3, **style)


def finish_epoch_panel(ax, title: str) -> None:
    ax.set_title(title)
    epoch_axis(ax)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def curve_keys(history: list[dict]) -> tuple[list[str], list[str]]:
    """Loss columns and validation metric columns of metrics.jsonl, in their first appearance order."""
    keys: list[str] = []
    for r in history:
        keys += [k for k, v in r.items() if k not in keys and isinstance(v, (int, float)) and not isinstance(v, bool)]
    losses = [k for k in keys if k.endswith("loss") and k.split("/")[0] in ("train", "val")]
    metrics = [k for k in keys if k.startswith(("val/", "target/")) and not k.endswith("loss")]
    return losses, metrics


def curves_figure(history: list[dict]):
    losses, metrics = curve_keys(history)
    fig = new_figure(10, 3.4, left=0.07)
    left, right = fig.subplots(1, 2)
    for ax, keys, title in ((left, losses, "loss"), (right, metrics, "validation metrics")):
        for key in keys[:10]:
            plot_column(ax, history, key, label=key, linestyle="--" if key.startswith("train") else "-")
        finish_epoch_panel(ax, title)
    return fig


def lr_figure(lrs: list[tuple[int, float]]):
    fig = new_figure(5, 2.8, left=0.16, bottom=0.18)
    ax = fig.subplots()
    xs, ys = zip(*lrs)
    ax.plot(xs, ys, marker="o", markersize=3)
    epoch_axis(ax)
    ax.set_ylabel("lr (head group)")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    ax.grid(alpha=0.3)
    return fig


def confusion_figure(cm: np.ndarray, labels: list[str]):
    k = len(labels)
    side = min(2.5 + 0.3 * k, 7.0)  # the matrix, in inches
    margin = max(len(short(x)) for x in labels) * 0.07 + 0.6  # room for the tick labels and axis title
    width, height = margin + side + 1.4, margin + side + 0.2
    fig = new_figure(width, height)
    ax = fig.add_axes((margin / width, margin / height, side / width, side / height))
    bar = fig.add_axes(((margin + side + 0.15) / width, margin / height, 0.15 / width, side / height))
    rates = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, cax=bar, label="share of the true class")
    ax.set_xticks(range(k), [short(x) for x in labels], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), [short(x) for x in labels], fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if rates[i, j] > 0.5 else "black")
    return fig


def reliability_figure(bins: list[tuple[float, float, int]], ece: float):
    fig = new_figure(4.5, 3.6, left=0.15, bottom=0.14)
    ax = fig.subplots()
    edges = np.linspace(0, 1, BINS + 1)
    accs = [acc if n else 0.0 for _, acc, n in bins]
    ax.bar(edges[:-1], accs, width=1 / BINS, align="edge", edgecolor="black", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    for left, (_, _, n) in zip(edges[:-1], bins):
        if n:
            ax.text(left + 0.5 / BINS, 0.02, str(n), ha="center", fontsize=6, rotation=90)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy", title=f"ECE {ece:.4f}")
    ax.legend(fontsize=7, loc="best", framealpha=0.9)
    return fig


def short(label: str, limit: int = 14) -> str:
    return label if len(label) <= limit else label[:limit - 1] + "…"


# ------------------------------------------------------------------------------------------------ comparison

def compare_runs(runs: Sequence[str | Path], out: str | Path = "compare.html") -> Path:
    """One page setting runs side by side: their config (the keys that differ, and the main ones), best and
    test metrics, training time, and their learning curves overlaid; returns the page's path."""
    if len(runs) < 2:
        raise ConfigError(f"compare needs at least two run folders, got {len(runs)}")
    folders = [check_run(r) for r in runs]
    names = [f.name for f in folders]
    if len(set(names)) < len(names):
        names = [str(f) for f in folders]
    configs = [flatten(read_config(f)) for f in folders]
    histories = [read_metrics(f) for f in folders]
    main = ("model.backbone", "model.weights", "strategy.name", "train.epochs", "train.lr", "train.batch_size")
    keys = [k for k in dict.fromkeys([*main, *(k for c in configs for k in c)])
            if k in main or len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1]
    keys = [k for k in keys if k != "out"]
    page = Page("headstart: runs compared", None)
    page.section("config", "Config", table(["key", *names], [(k, *(fmt(c.get(k)) for c in configs)) for k in keys])
                 + note("keys equal in every run are left out, except the main ones."))
    results = []
    for f, history in zip(folders, histories):
        best = read_meta(f / "best") if (f / "best" / "model.safetensors").is_file() else {}
        results.append({"best epoch": best.get("epoch"), "training seconds": round(training_seconds(history), 1),
                        **{k: v for k, v in (best.get("metrics") or {}).items() if k.startswith("val/")},
                        **read_test_metrics(f)})
    rows = list(dict.fromkeys(k for r in results for k in r))
    page.section("results", "Results", table(["", *names], [(k, *(fmt(r.get(k)) for r in results)) for k in rows]))
    metric = configs[0].get("train.metric") or "accuracy"
    page.section("curves", "Learning curves", page.figure("compare", compare_figure(names, histories, metric),
                                                          "learning curves of every run"))
    return page.write(Path(out))


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in config.items():
        if isinstance(v, dict) and v:
            flat.update(flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def compare_figure(names: list[str], histories: list[list[dict]], metric: str):
    panels = ["train/loss", "val/loss"]
    headline = next((k for k in (f"val/{metric}", "val/tasks_mean", "val/mse")
                     if any(k in r for h in histories for r in h)), None)
    panels += [headline] if headline else []
    fig = new_figure(3.6 * len(panels), 3.2, left=0.2 / len(panels))
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, key in zip(axes, panels):
        for name, history in zip(names, histories):
            plot_column(ax, history, key, label=short(name, 24))
        finish_epoch_panel(ax, key)
    return fig


# --------------------------------------------------------------------------------------------------- the page

class Page:
    """An HTML page of sections, with a contents line; figures saved as PNGs (when `figures` is a folder) and
    inlined as data URIs."""

    def __init__(self, title: str, figures: Path | None):
        self.title, self.figures, self.sections = title, figures, []

    def section(self, sid: str, title: str, body: str) -> None:
        self.sections.append((sid, title, body))

    def figure(self, name: str, fig, alt: str) -> str:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        return self.image(name, buffer.getvalue(), alt)

    def image(self, name: str, png: bytes, alt: str) -> str:
        """An <img> of `png`, inlined; also saved as <figures>/<name>.png."""
        if self.figures is not None:
            (self.figures / f"{name}.png").write_bytes(png)
        return (f'<img src="data:image/png;base64,{base64.b64encode(png).decode()}" alt="{esc(alt)}" '
                f'data-figure="{esc(name)}">')

    def write(self, path: Path) -> Path:
        from .atomic import atomic_write_text

        nav = " · ".join(f'<a href="#{sid}">{esc(title)}</a>' for sid, title, _ in self.sections)
        body = "\n".join(f'<section id="{sid}"><h2>{esc(title)}</h2>\n{content}</section>'
                         for sid, title, content in self.sections)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                                f"<title>{esc(self.title)}</title><style>{STYLE}</style></head><body>\n"
                                f"<h1>{esc(self.title)}</h1><nav>{nav}</nav>\n{body}\n</body></html>\n")
        return path


STYLE = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:1.5em auto;padding:0 1em;color:#222}"
         "h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}"
         "h3{font-size:1em}table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ddd;"
         "padding:.2em .6em;text-align:left;vertical-align:top}th{background:#f4f4f4}pre{background:#f8f8f8;"
         "padding:.6em;overflow-x:auto;font-size:.8em}img{max-width:100%}.note{color:#666;font-style:italic}"
         "nav{font-size:.9em;margin-bottom:1em}.thumbs{display:flex;flex-wrap:wrap;gap:.8em}"
         "figure{margin:0;font-size:.75em;text-align:center}.row{display:flex;flex-wrap:wrap;gap:2em;"
         "align-items:flex-start}.row h3{margin-top:0}")


def esc(value: Any) -> str:
    return html.escape(str(value))


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return "" if value is None else str(value)


def table(columns: list[str], rows: list[Sequence[Any]], header: bool = True) -> str:
    head = "<tr>" + "".join(f"<th>{esc(c)}</th>" for c in columns) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{esc(fmt(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def metrics_table(metrics: dict[str, float]) -> str:
    if not metrics:
        return note("none recorded.")
    return table(["metric", "value"], sorted(metrics.items()))


__all__ = ["REPORT_FILE", "compare_runs", "report_after_fit", "write_report"]
