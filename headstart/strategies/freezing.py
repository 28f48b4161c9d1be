"""Freezing strategies: linear probe (backbone frozen) and full fine-tuning."""
from __future__ import annotations

from ..errors import ConfigError
from . import STRATEGIES
from .base import Strategy, norm_layers


@STRATEGIES.register("linear-probe")
class LinearProbe(Strategy):
    """Train only the head; the whole backbone stays frozen and in eval mode (BatchNorm, dropout)."""

    name = "linear-probe"
    default_bn = "frozen"

    def __init__(self, bn: str = "auto"):
        super().__init__(bn)
        if self.bn == "train":
            raise ConfigError("bn='train' with linear-probe would let the frozen backbone's BatchNorm "
                              "statistics drift while the head learns (13 points lost on Fashion-MNIST). "
                              "Use bn='frozen' (the default), or strategy 'full' to train BatchNorm.")

    def apply(self, model, epoch: int = 0) -> None:
        model.backbone.requires_grad_(False)
        model.head.requires_grad_(True)
        model.keep_eval = ("backbone",)


@STRATEGIES.register("full")
class Full(Strategy):
    """Train every parameter; BatchNorm statistics update unless bn='frozen'."""

    name = "full"
    default_bn = "train"

    def apply(self, model, epoch: int = 0) -> None:
        model.requires_grad_(True)
        model.keep_eval = tuple(norm_layers(model.backbone, "backbone")) if self.bn == "frozen" else ()
