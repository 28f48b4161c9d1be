"""Task losses, one per head type: `loss(outputs, targets)` gives a scalar (in fp32 under autocast).

A `TaskTerm` puts one on a head inside an `Objective`; evaluation scores collected outputs with it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..options import check_bounds, option
from ..registry import Registry

OBJECTIVES: Registry = Registry("task loss")


@OBJECTIVES.register("cross_entropy")
class CrossEntropy:
    """Softmax cross-entropy, with optional label smoothing and per-class weights."""

    def __init__(self, label_smoothing: float = 0.0, class_weights: torch.Tensor | None = None):
        self.label_smoothing = label_smoothing
        self.class_weights = class_weights

    def __str__(self) -> str:
        extras = [f"label smoothing {self.label_smoothing:g}"] if self.label_smoothing else []
        extras += ["class-balanced weights (imbalanced classes)"] if self.class_weights is not None else []
        return "cross-entropy" + (f" ({', '.join(extras)})" if extras else "")

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # The loss in fp32 even under bf16 autocast: log-softmax over bf16 loses the small differences.
        weight = None if self.class_weights is None else self.class_weights.to(logits.device)
        return F.cross_entropy(logits.float(), y, weight=weight, label_smoothing=self.label_smoothing)



@OBJECTIVES.register("mse")
class MeanSquaredError:
    """Mean squared error for regression targets of shape (N,) or (N, num_outputs)."""

    def __init__(self, **_):
        pass

    def __str__(self) -> str:
        return "mean squared error"

    def loss(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(outputs.float().reshape(y.shape), y.float())



@OBJECTIVES.register("bce")
class BinaryCrossEntropy:
    """Multi-label: an independent sigmoid per class, binary cross-entropy against (N, K) multi-hot targets.

    loss = mean over samples and classes of -[w_k y log s(z) + (1 - y) log(1 - s(z))], with s the sigmoid and
    w_k an optional positive weight per class (`pos_weight`, e.g. negatives / positives of class k).
    """

    def __init__(self, pos_weight: torch.Tensor | None = None):
        self.pos_weight = pos_weight

    def __str__(self) -> str:
        return "binary cross-entropy" + (" (balanced positive weights)" if self.pos_weight is not None else "")

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # fp32 like cross-entropy: the log-sigmoid of bf16 logits is too coarse near 0 and 1.
        weight = None if self.pos_weight is None else self.pos_weight.to(logits.device)
        return F.binary_cross_entropy_with_logits(logits.float(), y.float(), pos_weight=weight)



def balanced_pos_weights(targets: torch.Tensor) -> torch.Tensor:
    """negatives / positives per class for (N, K) multi-hot targets: each class's positives weigh as its negatives."""
    positives = targets.float().sum(0)
    if (positives == 0).any():
        missing = (positives == 0).nonzero().flatten().tolist()
        raise ConfigError(f"class_weights='balanced' needs every class in the training data; classes "
                          f"{missing} have no positive samples. Use class_weights='none' or add samples.")
    return (targets.shape[0] - positives) / positives


def balanced_class_weights(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """n / (k * n_c): each class contributes equally to the loss (scikit-learn's 'balanced')."""
    counts = torch.bincount(targets, minlength=num_classes).float()
    if (counts == 0).any():
        missing = (counts == 0).nonzero().flatten().tolist()
        raise ConfigError(f"class_weights='balanced' needs every class in the training data; classes "
                          f"{missing} have no samples. Use class_weights='none' or add samples.")
    return counts.sum() / (num_classes * counts)


@dataclass(frozen=True)
class LossSettings:
    """The task loss of a run (the ``train.loss`` / ``label_smoothing`` / ``class_weights`` config keys)."""

    loss: Literal["cross_entropy", "bce", "mse"] = "cross_entropy"  # bce: multi-label (the default there)
    label_smoothing: float = option(0.0, ge=0.0, lt=1.0)
    # auto: balanced where the rarest class has under a quarter of the commonest one's samples (IMBALANCED)
    class_weights: Literal["auto", "none", "balanced"] = "auto"

    def __post_init__(self) -> None:
        check_bounds(self)


IMBALANCED = 4.0  # commonest / rarest class count from which class_weights=auto weighs the classes


def is_imbalanced(targets: torch.Tensor, num_outputs: int) -> bool:
    """True when single-label class targets have a rarest class IMBALANCED times (or more) rarer than the
    commonest: an unweighted loss then learns to favour the common classes."""
    if targets.ndim != 1 or targets.is_floating_point():
        return False
    counts = torch.bincount(targets, minlength=num_outputs).float()
    return bool(counts.min() > 0 and counts.max() / counts.min() >= IMBALANCED)


def task_loss(task: str, targets: torch.Tensor, num_outputs: int, settings: LossSettings = LossSettings()):
    """The loss of a head of `task` (classification, multilabel, regression) trained on `targets`."""
    if task == "regression":
        return OBJECTIVES.get("mse")()
    if task == "multilabel":
        if settings.loss not in ("cross_entropy", "bce"):  # cross_entropy is the default: binary for multi-label
            raise ConfigError(f"loss {settings.loss!r} does not fit a multi-label model; use 'bce'")
        pos = balanced_pos_weights(targets) if settings.class_weights == "balanced" else None
        return OBJECTIVES.get("bce")(pos_weight=pos)
    if settings.loss != "cross_entropy":
        raise ConfigError(f"loss {settings.loss!r} is for regression; a classification model uses 'cross_entropy'")
    balanced = settings.class_weights == "balanced" or (settings.class_weights == "auto"
                                                        and is_imbalanced(targets, num_outputs))
    weights = balanced_class_weights(targets, num_outputs) if balanced else None
    return OBJECTIVES.get("cross_entropy")(label_smoothing=settings.label_smoothing, class_weights=weights)
