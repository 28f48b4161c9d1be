"""Does transfer help here? `auto`'s raw-input contender, judged against the trained model on val.

Pretrained features do not always beat the pixels: on Fashion-MNIST blurred to half contrast, logistic
regression on raw pixels scored 12.6 points above auto's fine-tuned EfficientNet, and ridge regression on
pixels predicted the rotation angle of digits better than any fine-tuning (bench/auto_suite.py). No signal
measured before training predicted which side wins (a pixel linear probe against the pretrained one was 8
points ahead on a task where fine-tuning won), so the check comes after training: a well-tuned linear model
on the image pooled to a grid (`pixels:16` or `pixels:32`) is fitted on the training split, and where its
5-fold cross-validated score on the training split beats the trained model's val score by more than the
cross-validated score's standard error, auto ships it and says why.

Why cross-validation on train and not the contender's val score: its side and L2 strength are the best of 8
fits on val, and val holds 50-150 images, so its val score ran up to 10.5 points (3.6 on average) above its
test score on the suite's image tasks (bench/results/contender_evidence.md), while the cross-validated score,
on 4-10x as many images, stayed within 4 points of it. Judged on val, the pixels were shipped once where they
scored 6.5 points below the trained model on test, and kept out once where they scored 10 points above it;
judged by their cross-validated score, neither.

The linear model is fitted, not trained by SGD: logistic regression (L-BFGS) or ridge regression (closed
form) on centred features scaled by one common factor, its L2 strength chosen on val from a short grid. The
scaling is folded into the head's Linear layer, so the result is an ordinary headstart model (`pixels:<side>` + a linear
head) that saves, loads, predicts and exports like any other.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write_text
from ..bundle import save_bundle
from ..data import make_batcher
from ..features import extract_features
from ..linear_fit import FOLDS, fit_linear, out_of_fold
from ..metrics import best_threshold, compute_metrics, default_metrics
from ..model import TransferModel, create_model
from ..run.folder import TEST_FILE
from ..run.loop import score_outputs
from ..run.selection import metric_setup, monitored_metric, proportion_se
from ..run.trainer import RunResult, bundle_meta
from ..runtime import predict_outputs

# Grid sides tried, the better on val kept (ties: the smaller): 16 was best for blurred clothing (test 0.783
# against 0.775 at 32), 32 for the rotation angle of digits (R^2 0.972 against 0.963 at 16).
PIXEL_GRIDS = (16, 32)
TRANSFER_DIR = "transfer"  # where a run that ships the contender keeps the trained model's bundle and test metrics


@dataclass
class Contender:
    model: TransferModel
    l2: float
    val_metrics: dict[str, float]  # as the run logs them: val/<metric>
    monitor: str  # the run's best-epoch metric: the contender is judged by it
    cv_score: float  # the monitor on the training split, each sample predicted by a fit on the other folds
    metric_names: list[str]
    positive: int | None = None  # the class train.metric f1 scores
    threshold: float | None = None  # its decision threshold, chosen on val


def applies(model: TransferModel, data) -> bool:
    """Image classification (single label) or regression, with a val split to judge on."""
    return (model.spec.modality == "image" and not model.spec.is_custom and data.val is not None
            and model.task in ("classification", "regression") and len(data.val) > 0)


def grey_copies(x: torch.Tensor, channels: int) -> bool:
    """Whether pooled pixel features (N, channels * side * side) hold the same values in every channel."""
    per_channel = x.reshape(len(x), channels, -1)
    return channels > 1 and bool((per_channel == per_channel[:, :1]).all())


def raw_input_contender(model: TransferModel, data, train, *, batch_size: int = 256) -> Contender:
    """`pixels:<side>` with a linear head fitted on the training split, its side and L2 chosen on val by the run's
    own best-epoch metric (``val/accuracy``, ``val/mse``, ...; `train` is the run's validated train config),
    and that metric cross-validated on the training split at the chosen side and L2."""
    monitor, _ = monitored_metric(model.task, train.early_stopping, train.metric)
    metric_names = default_metrics(model.task, model.num_outputs)
    metric_names += [train.metric] if train.metric not in metric_names and model.task == "classification" else []
    positive = metric_setup(model.task, list(data.classes), data.train.targets, train.metric,
                            train.positive_class).get("positive")
    names = list(dict.fromkeys([*metric_names, monitor.removeprefix("val/")]))
    sign = -1.0 if monitor in ("val/mse", "val/mae") else 1.0

    def scores(outputs: torch.Tensor, threshold: float | None = None) -> dict[str, float]:
        return compute_metrics(outputs, data.val.targets, names, prefix="val/", positive=positive,
                               threshold=threshold)

    # The whole image, uncropped: a pretrained model's eval crop (crop_pct 0.875) is its training convention, and
    # cropping cost the pixels 3.2 points on blurred clothing (0.751 against 0.783 on test).
    whole = dataclasses.replace(model.spec.preprocessing, crop_pct=1.0)
    best = None
    for side in PIXEL_GRIDS:
        with torch.random.fork_rng():  # its head's initial weights are replaced: leave the run's random stream be
            candidate = create_model(f"pixels:{side}", model.num_outputs, labels=model.labels, task=model.task,
                                     preprocessing=whole)
        feats = {name: extract_features(candidate.backbone, make_batcher(split, candidate.spec, train=False),
                                        batch_size=batch_size)
                 for name, split in (("train", data.train), ("val", data.val))}
        channels = feats["train"].shape[1] // side ** 2
        # Grey pictures stored as RGB repeat one channel three times: fitted on one copy (a third of the
        # features, about 3x faster: 1.6 s against 4.9 s for 1,000 Fashion-MNIST images at 32 x 32), the
        # weights then spread evenly over the copies, which gives the same outputs on such pictures.
        grey = grey_copies(feats["train"], channels) and grey_copies(feats["val"], channels)
        used = {k: v[:, :side ** 2] for k, v in feats.items()} if grey else feats
        fitted = fit_linear(used["train"], data.train.targets, used["val"], model.task, model.num_outputs,
                            lambda out: sign * scores(out)[monitor])
        if best is None or fitted[3] > best[1][3]:
            best = (candidate, fitted, feats["val"], used["train"], channels if grey else 1)
    contender, (weight, bias, l2, _), val_x, train_x, copies = best
    held_out = out_of_fold(train_x, data.train.targets, model.task, model.num_outputs, l2, weight, bias)
    weight = weight.repeat(1, copies) / copies  # grey pictures: one channel's weights spread over the copies
    layer = contender.head[-1]  # a linear head: (Dropout,) Linear
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    contender.eval()
    outputs = val_x @ weight.T + bias
    threshold = None
    if train.metric == "f1" and model.num_outputs == 2:  # as the trained model's: the best F1 on val
        threshold = best_threshold(outputs, data.val.targets, positive)
        contender.set_decision(positive, threshold)
    val = scores(outputs, threshold)
    cv = compute_metrics(held_out, data.train.targets, [monitor.removeprefix("val/")], prefix="val/",
                         positive=positive, threshold=threshold)[monitor]
    return Contender(contender, l2, val, monitor, cv, metric_names, positive, threshold)


def contender_wins(mine: float, theirs: float, monitor: str, n_train: int) -> tuple[bool, float]:
    """(switch?, margin): the contender's cross-validated score (`theirs`, on `n_train` samples) must beat the
    trained model's val score by more than its own standard error (a proportion's, for a classification
    metric), so a lead within the noise of its estimate keeps the trained model. No more than that: the
    trained model's score is its best epoch's on val, which leans its way already. For val/mse and val/mae:
    a tenth below the trained model's (the suite's rotation task: ridge 0.011 against fine-tuning's 0.021)."""
    if monitor in ("val/mse", "val/mae"):
        margin = 0.1 * mine
        return theirs < mine - margin, margin
    margin = proportion_se(min(max(theirs, 0.05), 0.95), n_train)
    return theirs > mine + margin, margin


def settle(contender: Contender, result: RunResult, data, *, writes: bool = True) -> dict[str, Any]:
    """Judge the contender's cross-validated score against the run's best epoch on val; where it wins, ship
    it: the trained model's bundle and test metrics move to `transfer/` in the run folder, the contender's
    bundle becomes `best/`, and its test metrics and outputs replace the run's (`result` is updated in place).
    Returns the record for auto.json."""
    monitor = contender.monitor
    mine, theirs = result.best_metrics.get(monitor), contender.cv_score
    record = {"model": f"{contender.model.spec.source} + linear head "
                       f"({'ridge' if contender.model.task == 'regression' else 'logistic'} regression, "
                       f"l2 {contender.l2:g}, fitted)", "metric": monitor, "cv_score": round(theirs, 4),
              "folds": FOLDS, "val_score": round(contender.val_metrics[monitor], 4),
              "trained_val_score": None if mine is None else round(mine, 4), "shipped": False}
    if mine is None or not math.isfinite(mine):
        return record
    wins, margin = contender_wins(mine, theirs, monitor, len(data.train))
    record["margin"] = round(margin, 4)
    if not wins:
        return record
    record["shipped"] = True
    run = Path(result.run_dir)
    outputs = None
    if data.test is not None:
        outputs = predict_outputs(contender.model, make_batcher(data.test, contender.model.spec, train=False))
        result.test_metrics = score_outputs(outputs, data.test.targets, contender.metric_names, "test",
                                            positive=contender.positive, threshold=contender.threshold)
    result.test_outputs, result.best_metrics = outputs, dict(contender.val_metrics)
    result.extra["contender"] = record
    if writes:
        kept = run / TRANSFER_DIR
        kept.mkdir(exist_ok=True)
        staged = run / "best.contender"
        shutil.rmtree(staged, ignore_errors=True)
        save_bundle(contender.model, staged, {"contender": record, "metrics": contender.val_metrics,
                                              **bundle_meta(data)})
        os.replace(run / "best", kept / "best")
        os.replace(staged, run / "best")
        if (run / TEST_FILE).is_file():
            os.replace(run / TEST_FILE, kept / TEST_FILE)
        if result.test_metrics is not None:
            atomic_write_text(run / TEST_FILE, json.dumps(result.test_metrics, indent=2))
    return record


def explain(record: dict[str, Any], strategy: str) -> str:
    """auto's reason for keeping or replacing the trained model."""
    mine, metric = record["trained_val_score"], record["metric"]
    theirs = (f"{record['model']} ({metric.removeprefix('val/')} {record['cv_score']:.3f} in {record['folds']}-fold "
              f"cross-validation on the training split, {record['val_score']:.3f} on val where its grid and L2 "
              f"were chosen)")
    if record["shipped"]:
        return (f"transfer did not help: {theirs} against the trained {strategy} model's {mine:.3f} on val (a "
                f"switch needs more than {record['margin']:.3f}); shipped it as best/ (the trained model is in "
                f"{TRANSFER_DIR}/)")
    score = "no val score" if mine is None else f"{metric.removeprefix('val/')} {mine:.3f} on val"
    return f"kept the trained {strategy} model ({score}) over {theirs}"


def unsettle(run_dir: str | Path) -> None:
    """Undo a shipped contender before a run resumes: the trained model's bundle and test metrics go back to
    their places, so training continues from what it trained (and `settle` judges again at its end)."""
    run, kept = Path(run_dir), Path(run_dir) / TRANSFER_DIR
    if not (kept / "best").is_dir():
        return
    shutil.rmtree(run / "best", ignore_errors=True)
    os.replace(kept / "best", run / "best")
    if (kept / TEST_FILE).is_file():
        os.replace(kept / TEST_FILE, run / TEST_FILE)
    shutil.rmtree(kept)
