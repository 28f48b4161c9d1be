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


@METRICS.register("balanced_accuracy")
def balanced_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean recall over the classes present: accuracy that a majority-class guess cannot inflate."""
    pred = logits.argmax(1)
    present = targets.unique()
    return torch.stack([(pred[targets == c] == c).float().mean() for c in present]).mean().item()


def _auroc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Area under the ROC curve of `scores` for the boolean labels `positive` (Mann-Whitney U, ties halved)."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = scores.double().argsort()
    ranks = torch.empty_like(order, dtype=torch.float64)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    for value in scores[order].unique_consecutive():  # average ranks over ties
        tied = scores == value
        ranks[tied] = ranks[tied].mean()
    return ((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)).item()


@METRICS.register("auroc")
def auroc(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Binary: AUROC of the second class's probability; more classes: the mean one-vs-rest AUROC."""
    probs = logits.float().softmax(1)
    if probs.shape[1] == 2:
        return _auroc(probs[:, 1], targets == 1)
    values = [_auroc(probs[:, c], targets == c) for c in range(probs.shape[1]) if (targets == c).any()]
    return float(torch.tensor(values).nanmean())


def class_f1(positive: int, threshold: float | None = None) -> Callable[[torch.Tensor, torch.Tensor], float]:
    """F1 of one class: predicted where its probability reaches `threshold` (binary), else by argmax."""
    def f1(logits: torch.Tensor, targets: torch.Tensor) -> float:
        if threshold is not None:
            pred = logits.float().softmax(1)[:, positive] >= threshold
        else:
            pred = logits.argmax(1) == positive
        truth = targets == positive
        tp = (pred & truth).sum().item()
        return 2 * tp / max(int(pred.sum()) + int(truth.sum()), 1)
    return f1


METRICS.register("f1", help="F1 of the positive class (train.positive_class; a binary task's second class by "
                  "default)")(class_f1(1))
SELECTABLE = ("accuracy", "balanced_accuracy", "macro_f1", "f1", "auroc")  # train.metric: what picks the best epoch


def best_threshold(logits: torch.Tensor, targets: torch.Tensor, positive: int) -> float:
    """The probability threshold for class `positive` of a binary task that maximises its F1 on these
    outputs (ties: the one nearest 0.5, the argmax rule)."""
    probs = logits.float().softmax(1)[:, positive]
    candidates = torch.cat([probs.unique(), torch.tensor([0.5])])
    scores = torch.tensor([class_f1(positive, float(t))(logits, targets) for t in candidates])
    best = candidates[scores == scores.max()]
    return float(best[(best - 0.5).abs().argmin()])


def delta_m(multi: dict[str, float], single: dict[str, float], lower_is_better: set[str] = frozenset()) -> float:
    """Mean relative change (in %) of a multi-task model's metric per task against the single-task models'
    (Maninis et al. 2019): 100/T * sum_t s_t (M_multi,t - M_single,t) / M_single,t, with s_t = -1 where lower
    is better (errors, losses). Positive: the shared model does better on average."""
    if set(multi) != set(single) or not multi:
        raise ValueError(f"delta_m needs the same tasks on both sides, got {sorted(multi)} and {sorted(single)}")
    changes = [(-1 if t in lower_is_better else 1) * (multi[t] - single[t]) / single[t] for t in multi]
    return 100.0 * sum(changes) / len(changes)


def mean_entropy(logits: torch.Tensor) -> float:
    """Mean entropy (nats) of the softmax predictions: a label-free validator, lower is more confident."""
    p = logits.float().softmax(1)
    return float(-(p * p.clamp_min(1e-12).log()).sum(1).mean())


def information_maximization(logits: torch.Tensor) -> float:
    """H(mean prediction) - mean H(prediction): high when predictions are confident and spread over the
    classes (Gomes et al. 2010; Shi and Sha 2012). A label-free validator for unlabeled target data that, unlike
    entropy alone, penalises collapsing onto one class."""
    p = logits.float().softmax(1)
    mean = p.mean(0)
    return float(-(mean * mean.clamp_min(1e-12).log()).sum()) - mean_entropy(logits)


def default_metrics(task: str, num_outputs: int) -> list[str]:
    if task == "regression":
        return ["mse", "mae"]
    if task == "multilabel":
        return ["micro_f1", "macro_f1", "mAP"]
    return ["accuracy", "macro_f1"] + (["top5"] if num_outputs > 5 else [])


def compute_metrics(outputs: torch.Tensor, targets: torch.Tensor, names: list[str], prefix: str = "",
                    positive: int | None = None, threshold: float | None = None) -> dict:
    """Metrics by name; ``f1`` is the F1 of class index `positive` (at `threshold`, for a binary task)."""
    outputs = outputs.float()
    return {f"{prefix}{n}": (class_f1(positive, threshold) if n == "f1" else METRICS.get(n))(outputs, targets)
            for n in names}
