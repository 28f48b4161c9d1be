"""Metrics computed from collected outputs and targets: accuracy, micro/macro-F1, mAP, top-k, MSE, MAE."""
from __future__ import annotations

from typing import Callable

import torch

from .registry import Registry

METRICS: Registry[Callable[[torch.Tensor, torch.Tensor], float]] = Registry("metric")


@METRICS.register("accuracy")
def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of samples whose arg-max class is the target."""
    return (logits.argmax(1) == targets).float().mean().item()


def _multilabel_counts(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per-class (TP, FP, FN) of multi-label predictions at probability 0.5 (logit > 0)."""
    pred, truth = logits > 0, targets > 0.5
    tp = (pred & truth).sum(0).double()
    return tp, (pred & ~truth).sum(0).double(), (~pred & truth).sum(0).double()


@METRICS.register("macro_f1")
def macro_f1(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Unweighted mean over classes of F1 = 2TP / (2TP + FP + FN); classes absent from both count as 0-free.

    Single-label: predictions are the arg-max. Multi-label ((N, K) multi-hot targets): each class whose
    probability is at least 0.5.
    """
    if targets.ndim == 2:
        tp, fp, fn = _multilabel_counts(logits, targets)
        denom = 2 * tp + fp + fn
        present = denom > 0
        return (2 * tp[present] / denom[present]).mean().item() if present.any() else 0.0
    k = logits.shape[1]
    pred = logits.argmax(1)
    cm = torch.bincount(targets * k + pred, minlength=k * k).reshape(k, k).double()
    tp = cm.diag()
    denom = cm.sum(0) + cm.sum(1)  # (TP + FP) + (TP + FN)
    present = denom > 0
    return (2 * tp[present] / denom[present]).mean().item() if present.any() else 0.0


@METRICS.register("micro_f1")
def micro_f1(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """F1 = 2TP / (2TP + FP + FN) over all (sample, class) decisions; multi-label at probability 0.5.

    For single-label data every sample is one decision, so micro-F1 equals accuracy.
    """
    if targets.ndim == 2:
        tp, fp, fn = (c.sum() for c in _multilabel_counts(logits, targets))
        denom = 2 * tp + fp + fn
        return (2 * tp / denom).item() if denom > 0 else 0.0
    return accuracy(logits, targets)


@METRICS.register("mAP")
def mean_average_precision(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean over classes of average precision (AP): threshold-free quality of each class's ranking.

    AP of a class is the mean, over its positives, of the precision among the samples scored at least as high;
    classes without positives are skipped.

    Threshold-free, so it ranks models by how well they order samples, not by where 0.5 falls.
    Single-label targets count as one-hot.
    """
    truth = targets if targets.ndim == 2 else torch.nn.functional.one_hot(targets, logits.shape[1])
    truth = truth > 0.5
    aps = []
    for k in range(logits.shape[1]):
        positives = int(truth[:, k].sum())
        if positives == 0:
            continue
        order = torch.argsort(logits[:, k].float(), descending=True, stable=True)
        hits = truth[order, k].double()
        precision_at = hits.cumsum(0) / torch.arange(1, len(hits) + 1, dtype=torch.float64)
        aps.append((precision_at * hits).sum().item() / positives)
    return sum(aps) / len(aps) if aps else 0.0


def top_k(k: int) -> Callable[[torch.Tensor, torch.Tensor], float]:
    def metric(logits: torch.Tensor, targets: torch.Tensor) -> float:
        top = logits.topk(min(k, logits.shape[1]), dim=1).indices
        return (top == targets[:, None]).any(1).float().mean().item()

    metric.__doc__ = f"Fraction of samples whose target is among the {k} highest scores."
    return metric


METRICS.register("top5")(top_k(5))


@METRICS.register("mse")
def mse(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean squared error."""
    return torch.mean((outputs.reshape(targets.shape).float() - targets.float()) ** 2).item()


@METRICS.register("mae")
def mae(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean absolute error."""
    return torch.mean((outputs.reshape(targets.shape).float() - targets.float()).abs()).item()


def default_metrics(task: str, num_outputs: int) -> list[str]:
    if task == "regression":
        return ["mse", "mae"]
    if task == "multilabel":
        return ["micro_f1", "macro_f1", "mAP"]
    return ["accuracy", "macro_f1"] + (["top5"] if num_outputs > 5 else [])


def compute_metrics(outputs: torch.Tensor, targets: torch.Tensor, names: list[str], prefix: str = "") -> dict:
    outputs = outputs.float()
    return {f"{prefix}{n}": METRICS.get(n)(outputs, targets) for n in names}
