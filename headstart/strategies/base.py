"""The Strategy interface and the BatchNorm policy every strategy shares."""
from __future__ import annotations

import torch.nn as nn

from ..errors import ConfigError

BN_POLICIES = ("auto", "frozen", "train")


def norm_layers(module: nn.Module, prefix: str) -> list[str]:
    """Names (under `prefix`) of the normalisation layers that keep running statistics."""
    return [f"{prefix}.{n}" if n else prefix for n, m in module.named_modules()
            if isinstance(m, nn.modules.batchnorm._NormBase)]


class Strategy:
    """Base class: subclasses set `requires_grad` and `model.keep_eval` in `apply`.

    Args:
        bn: ``frozen`` keeps BatchNorm statistics fixed (eval mode), ``train`` updates them;
            ``auto`` takes the strategy's default.
    """

    name = "base"
    default_bn = "train"

    def __init__(self, bn: str = "auto"):
        if bn not in BN_POLICIES:
            raise ConfigError(f"unknown BatchNorm policy {bn!r}; choose one of {', '.join(BN_POLICIES)}")
        self.bn = self.default_bn if bn == "auto" else bn

    def apply(self, model, epoch: int = 0) -> None:
        """Set what trains at `epoch` (0-based). Must be a pure function of (model structure, epoch)."""
        raise NotImplementedError

    def changes_at(self, epoch: int) -> bool:
        """True when the trainable set at `epoch` differs from `epoch - 1` (the loop then re-applies)."""
        return False

    def describe(self) -> dict:
        return {"name": self.name, "bn": self.bn}
