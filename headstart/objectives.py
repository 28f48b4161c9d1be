"""Objectives turn a batch into a dict with "loss" plus what they log; one loop serves them all.

Each objective also exposes `loss(outputs, targets)`, used to score collected outputs at evaluation.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import ConfigError
from .registry import Registry

OBJECTIVES: Registry = Registry("objective")


@OBJECTIVES.register("cross_entropy")
class CrossEntropy:
    """Softmax cross-entropy, with optional label smoothing and per-class weights."""

    def __init__(self, label_smoothing: float = 0.0, class_weights: torch.Tensor | None = None):
        self.label_smoothing = label_smoothing
        self.class_weights = class_weights

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # The loss in fp32 even under bf16 autocast: log-softmax over bf16 loses the small differences.
        weight = None if self.class_weights is None else self.class_weights.to(logits.device)
        return F.cross_entropy(logits.float(), y, weight=weight, label_smoothing=self.label_smoothing)

    def __call__(self, model, x, y: torch.Tensor) -> dict:
        logits = model(x)
        return {"loss": self.loss(logits, y), "outputs": logits}


@OBJECTIVES.register("mse")
class MeanSquaredError:
    """Mean squared error for regression targets of shape (N,) or (N, num_outputs)."""

    def __init__(self, **_):
        pass

    def loss(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(outputs.float().reshape(y.shape), y.float())

    def __call__(self, model, x, y: torch.Tensor) -> dict:
        out = model(x)
        return {"loss": self.loss(out, y), "outputs": out}


def balanced_class_weights(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """n / (k * n_c): each class contributes equally to the loss (scikit-learn's 'balanced')."""
    counts = torch.bincount(targets, minlength=num_classes).float()
    if (counts == 0).any():
        missing = (counts == 0).nonzero().flatten().tolist()
        raise ConfigError(f"class_weights='balanced' needs every class in the training data; classes "
                          f"{missing} have no samples. Use class_weights='none' or add samples.")
    return counts.sum() / (num_classes * counts)
