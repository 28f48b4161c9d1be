"""The Strategy interface, the BatchNorm policy every strategy shares, and the one way to set what trains."""
from __future__ import annotations

from typing import Iterable

import torch.nn as nn

from ..errors import ConfigError

BN_POLICIES = ("auto", "frozen", "train")


def norm_layers(module: nn.Module, prefix: str) -> list[str]:
    """Names (under `prefix`) of the normalisation layers that keep running statistics."""
    return [f"{prefix}.{n}" if n else prefix for n, m in module.named_modules()
            if isinstance(m, nn.modules.batchnorm._NormBase)]


def eval_modules(model, bn: str) -> tuple[str, ...]:
    """Backbone modules kept in eval mode whenever the model trains.

    Every maximal submodule whose parameters are all frozen: a frozen layer is a fixed function, so its
    BatchNorm statistics must not drift and its dropout must not fire. With ``bn='frozen'`` also every norm
    layer with running statistics in the trainable part.
    """
    out: list[str] = []

    def visit(name: str, module: nn.Module) -> None:
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            out.append(name)
            return
        for child_name, child in module.named_children():
            visit(f"{name}.{child_name}", child)

    visit("backbone", model.backbone)
    if bn == "frozen":
        covered = tuple(out)
        out += [n for n in norm_layers(model.backbone, "backbone")
                if not any(n == c or n.startswith(c + ".") for c in covered)]
    return tuple(out)


def set_trainable(model, trainable: Iterable[str], bn: str) -> None:
    """Make exactly the parameters named in `trainable` (full names) trainable and set the BN policy."""
    names = set(trainable)
    for name, p in model.named_parameters():
        p.requires_grad_(name in names)
    model.keep_eval = eval_modules(model, bn)


def head_params(model) -> list[str]:
    return [n for n, _ in model.named_parameters() if n.startswith("head.")]


class Strategy:
    """Base class: decides `requires_grad`, BatchNorm mode and optimizer groups, nothing else.

    Subclasses implement `apply` (what trains at an epoch) and, where learning rates differ per layer group,
    `group_lrs`. Any strategy may add the regularisers of `regularizers.py`.

    Args:
        bn: ``frozen`` keeps BatchNorm statistics fixed (eval mode), ``train`` updates them in the layers that
            train; ``auto`` takes the strategy's default. Frozen layers always keep their statistics.
        l2sp_alpha, l2sp_beta: L2-SP strengths (pull to the pretrained weights; L2 on the head); 0 = off.
            When on, weight decay is off: L2-SP replaces it (decay towards zero would fight the pull).
        bss_eta, bss_k: batch spectral shrinkage strength and number of smallest singular values; 0 = off.
    """

    name = "base"
    default_bn = "train"

    def __init__(self, bn: str = "auto", l2sp_alpha: float = 0.0, l2sp_beta: float = 0.0, bss_eta: float = 0.0,
                 bss_k: int = 1):
        if bn not in BN_POLICIES:
            raise ConfigError(f"unknown BatchNorm policy {bn!r}; choose one of {', '.join(BN_POLICIES)}")
        for key, value in (("l2sp_alpha", l2sp_alpha), ("l2sp_beta", l2sp_beta), ("bss_eta", bss_eta)):
            if value < 0:
                raise ConfigError(f"{key} must be >= 0 (0 turns it off), received {value}")
        if bss_k < 1:
            raise ConfigError(f"bss_k is the number of smallest singular values to shrink, >= 1; received {bss_k}")
        self.bn = self.default_bn if bn == "auto" else bn
        self.l2sp_alpha, self.l2sp_beta, self.bss_eta, self.bss_k = l2sp_alpha, l2sp_beta, bss_eta, bss_k

    def apply(self, model, epoch: int = 0) -> None:
        """Set what trains at `epoch` (0-based). Must be a pure function of (model structure, epoch)."""
        raise NotImplementedError

    def changes_at(self, epoch: int) -> bool:
        """True when the trainable set or the group learning rates at `epoch` differ from `epoch - 1`."""
        return False

    def check_schedule(self, epochs: int) -> None:
        """Raise ConfigError when a run of `epochs` epochs would never reach the strategy's later phases."""

    def group_lrs(self, model, epoch: int, lr: float, head_lr: float | None) -> dict[str, float]:
        """Learning rate per layer group (``backbone.<group>``, ``head``) where it differs from the default
        (`lr` for backbone groups, `head_lr` or `lr` for the head)."""
        return {}

    def no_decay(self, name: str, param) -> bool:
        """Parameters without weight decay: biases and norm weights (1-d)."""
        return param.ndim <= 1

    def param_groups(self, model, epoch: int, lr: float, weight_decay: float,
                     head_lr: float | None = None) -> list[dict]:
        """Optimizer groups of exactly the parameters trainable at `epoch`, each with its own lr and decay."""
        from .param_groups import build_param_groups

        if self.l2sp_alpha or self.l2sp_beta:
            weight_decay = 0.0
        return build_param_groups(model, lr, weight_decay, head_lr, self.group_lrs(model, epoch, lr, head_lr),
                                  no_decay=self.no_decay)

    def regularizers(self, model) -> list:
        """Loss terms the objective adds (see `regularizers.py`); built before a resumed state is loaded,
        so L2-SP's reference is the pretrained weights."""
        from .regularizers import BatchSpectralShrinkage, L2SP

        terms: list = []
        if self.l2sp_alpha or self.l2sp_beta:
            terms.append(L2SP(model, self.l2sp_alpha, self.l2sp_beta))
        if self.bss_eta:
            terms.append(BatchSpectralShrinkage(self.bss_eta, self.bss_k))
        return terms

    def describe(self) -> dict:
        return {"name": self.name, "bn": self.bn}
