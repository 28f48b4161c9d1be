"""Which epoch a run keeps as its best: the monitored val metric, read with the noise of the val split in mind.

On a small val split accuracy moves in steps of one sample: 120 images score 0.842 and 0.833 one image apart,
well inside the sampling error (about 0.033 there). Keeping whichever epoch happens to be one image ahead picks
an epoch by noise; the val loss, which every sample moves a little, tells such epochs apart far better. So for a
proportion (accuracy, top-5) an epoch replaces the kept one when it is clearly more accurate (by more than one
standard error), or when it is about as accurate as the best seen so far (within one standard error) and has a
lower val loss: the one-standard-error rule of model selection (Breiman et al., CART, 1984). Other metrics
(losses, F1, mAP, errors) keep the strict rule: better wins, and a tie goes to the lower val loss.

Measured: the linear probe of bench/speed.py (Lite0, Fashion-MNIST, 120 val images) kept epoch 5 of 10 by
0.842 against 0.833, at a val loss of 0.550 against epoch 9's 0.509, and scored 0.838 on the test set, 0.8
points below the textbook loop (which keeps its last epoch); under this rule it keeps epoch 9 and scores 0.845.
"""
from __future__ import annotations

import math

from ..errors import ConfigError

PROPORTIONS = ("val/accuracy", "val/top5")


def proportion_se(p: float, n: int) -> float:
    """Standard error of a proportion p measured on n samples."""
    return math.sqrt(p * (1 - p) / max(n, 1))


class BestEpoch:
    """The kept epoch's metric and val loss, updated online (a run can only save the epoch it is on)."""

    def __init__(self, monitor: str, mode: str, val_size: int):
        self.monitor = monitor
        self.sign = 1.0 if mode == "max" else -1.0
        self.val_size = val_size if monitor in PROPORTIONS and mode == "max" else 0
        self.value: float | None = None  # the kept epoch's metric
        self.loss: float | None = None  # the kept epoch's val loss
        self.top: float | None = None  # the best metric seen so far (in max terms)
        self.epoch = 0

    def band(self) -> float:
        """One standard error of a proportion at the best value seen (0 for other metrics)."""
        if not self.val_size or self.top is None:
            return 0.0
        return proportion_se(min(max(self.top, 0.0), 1.0), self.val_size)

    def offer(self, value: float, loss: float | None, epoch: int) -> bool:
        """Record an epoch's val metric and loss; True when it becomes the kept epoch (never a NaN one)."""
        if not math.isfinite(value) or (loss is not None and not math.isfinite(loss)):
            return False
        v = self.sign * value
        self.top = v if self.top is None else max(self.top, v)
        if self.value is None:
            keep = True
        else:
            band = self.band()
            lower_loss = loss is not None and self.loss is not None and loss < self.loss
            keep = v > self.sign * self.value + band or (v >= self.top - band and lower_loss)
        if keep:
            self.value, self.loss, self.epoch = value, loss, epoch
        return keep

    def offer_row(self, row: dict, epoch: int) -> bool:
        """`offer` the monitored metric and val loss of an epoch's metrics row."""
        if self.monitor not in row:
            raise ConfigError(f"early_stopping.metric {self.monitor!r} is not logged; choose one of "
                              f"{', '.join(k for k in row if '/' in k)}")
        return self.offer(row[self.monitor], row.get("val/loss"), epoch)

    def state_dict(self) -> dict:
        return {"best": self.value, "best_loss": self.loss, "best_epoch": self.epoch,
                "best_top": None if self.top is None else self.sign * self.top}

    def load_state_dict(self, state: dict) -> None:
        """Also reads checkpoints written before `best_top` existed (the kept value was the best seen)."""
        self.value, self.loss, self.epoch = state["best"], state.get("best_loss"), state["best_epoch"]
        top = state.get("best_top", self.value)
        self.top = None if top is None else self.sign * top


def monitored_metric(task: str, early_stopping, metric: str = "accuracy",
                     task_kinds: tuple[str, ...] = ()) -> tuple[str, str]:
    """(metric, mode) that picks the best epoch: early_stopping.metric when set, else the run's metric (val/mse
    for regression, val/mAP for multi-label unless another metric is asked for). A multi-task run is judged
    by val/tasks_mean (the mean of the tasks' accuracies and mAPs), or by the sum of the tasks' val losses
    when a task is a regression."""
    if early_stopping.metric is not None:
        return early_stopping.metric, early_stopping.mode
    if task_kinds:  # a multi-task run
        if metric != "accuracy":
            raise ConfigError(f"train.metric {metric!r} applies to single-task runs; a multi-task run reports "
                              "every task's metrics (add some per task) and picks its best epoch by "
                              "val/tasks_mean, or by early_stopping.metric (e.g. val/<task>/macro_f1)")
        return ("val/loss", "min") if "regression" in task_kinds else ("val/tasks_mean", "max")
    if task == "regression":
        return "val/mse", "min"
    if task == "multilabel" and metric == "accuracy":  # threshold-free ranking quality
        return "val/mAP", "max"
    return f"val/{metric}", "max"


def metric_setup(task: str, classes: list[str], targets, metric: str, positive_class: str | None) -> dict:
    """The positive class index the run's metric needs ({"positive": i} for f1, else {}), checked against the
    task and the classes, with a clear error for what cannot work."""
    if task == "regression" and metric != "accuracy":
        raise ConfigError(f"train.metric {metric!r} is for classification; a regression run is judged by val/mse")
    if task == "multilabel" and metric not in ("accuracy", "macro_f1"):
        raise ConfigError(f"train.metric {metric!r} does not apply to multi-label data; use macro_f1 (or leave "
                          "the default, mAP)")
    if positive_class is not None and positive_class not in classes:
        raise ConfigError(f"train.positive_class {positive_class!r} is not a class of the data; its classes are "
                          f"{classes[:20]}")
    if metric != "f1":
        return {}
    if positive_class is not None:
        return {"positive": classes.index(positive_class)}
    if len(classes) != 2:
        raise ConfigError(f"train.metric f1 scores one class, and this task has {len(classes)}: name it with "
                          f"train.positive_class (one of {classes[:20]}), or use macro_f1 or balanced_accuracy.")
    counts = [int((targets == i).sum()) for i in range(2)]
    return {"positive": int(counts[1] <= counts[0])}  # the rarer class, the usual "positive" of a binary task
