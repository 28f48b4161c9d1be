"""Metrics computed from collected outputs and targets: accuracy, macro-F1, top-k, MSE, MAE."""
from __future__ import annotations

from typing import Callable

import torch

from .registry import Registry

METRICS: Registry[Callable[[torch.Tensor, torch.Tensor], float]] = Registry("metric")


@METRICS.register("accuracy")
def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of samples whose arg-max class is the target."""
    return (logits.argmax(1) == targets).float().mean().item()


@METRICS.register("macro_f1")
def macro_f1(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Unweighted mean over classes of F1 = 2TP / (2TP + FP + FN); classes absent from both count as 0-free."""
    k = logits.shape[1]
    pred = logits.argmax(1)
    cm = torch.bincount(targets * k + pred, minlength=k * k).reshape(k, k).double()
    tp = cm.diag()
    denom = cm.sum(0) + cm.sum(1)  # (TP + FP) + (TP + FN)
    present = denom > 0
    return (2 * tp[present] / denom[present]).mean().item() if present.any() else 0.0


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
    return ["accuracy", "macro_f1"] + (["top5"] if num_outputs > 5 else [])


def compute_metrics(outputs: torch.Tensor, targets: torch.Tensor, names: list[str], prefix: str = "") -> dict:
    outputs = outputs.float()
    return {f"{prefix}{n}": METRICS.get(n)(outputs, targets) for n in names}
