"""The Strategy interface, its registry and options, the BatchNorm policy every strategy shares, and the one
way to set what trains.

A strategy declares its options once, as a frozen dataclass (`Strategy.Options`, like peft's `LoraConfig`):
its fields, defaults and checks. `get_strategy`, the run config's schema and `headstart list strategies` are
all derived from it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Literal

import torch.nn as nn

from ..errors import ConfigError
from ..objectives.regularizers import L2SP, BatchSpectralShrinkage
from ..options import check_bounds, declared, option
from ..registry import Registry
from .groups import build_param_groups

BN_POLICIES = ("auto", "frozen", "train")


@dataclass(frozen=True)
class StrategyOptions:
    """Options every strategy takes: the BatchNorm policy and the regularisers any strategy may add.

    When L2-SP is on, weight decay is off: L2-SP replaces it (decay towards zero would fight the pull).
    """

    bn: Literal["auto", "frozen", "train"] = option("auto", "BatchNorm statistics: auto (the strategy's default), frozen or train")
    l2sp_alpha: float = option(0.0, "L2-SP pull towards the pretrained weights (0 = off)", ge=0.0)
    l2sp_beta: float = option(0.0, "L2-SP's L2 penalty on the head (0 = off)", ge=0.0)
    bss_eta: float = option(0.0, "batch spectral shrinkage strength (0 = off)", ge=0.0)
    bss_k: int = option(1, "number of smallest singular values BSS shrinks", ge=1)

    def __post_init__(self) -> None:
        if self.bn not in BN_POLICIES:
            raise ConfigError(f"unknown BatchNorm policy {self.bn!r}; choose one of {', '.join(BN_POLICIES)}")
        check_bounds(self)  # every subclass's bounded options too


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
    model.keep_in_eval(eval_modules(model, bn))


def head_params(model) -> list[str]:
    return model.head_parameter_names()


class Strategy:
    """Base class: decides `requires_grad`, BatchNorm mode and optimizer groups, nothing else.

    Subclasses declare their `Options` (a subclass of `StrategyOptions`) and implement `apply` (what trains
    at an epoch) and, where learning rates differ per layer group, `group_lrs`. Any strategy may add the
    regularisers of `objectives/regularizers.py` through the common options.
    """

    name = "base"
    default_bn = "train"
    # Learning rates when the run names none, per backbone modality: (backbone, head). A text encoder
    # fine-tuned whole takes a BERT-range rate (Devlin et al. 2019) and its new head a higher one; at the CNN
    # rate of 1e-3 a MiniLM fine-tune collapsed to one class (issue 15). None for the head: the backbone's.
    default_lrs: dict[str, tuple[float, float | None]] = {"image": (1e-3, None), "text": (5e-5, 1e-3)}
    Options: type[StrategyOptions] = StrategyOptions

    def __init__(self, **options: Any):
        unknown = sorted(set(options) - set(declared(self.Options)))
        if unknown:
            raise ConfigError(f"strategy {self.name!r} does not take {', '.join(unknown)}; its options are "
                              f"{', '.join(declared(self.Options))}. Remove them or choose a strategy that uses them.")
        self.options = self.Options(**options)
        self.bn = self.default_bn if self.options.bn == "auto" else self.options.bn

    def apply(self, model, epoch: int = 0) -> None:
        """Set what trains at `epoch` (0-based). Must be a pure function of (model structure, epoch)."""
        raise NotImplementedError

    def default_rates(self, modality: str) -> tuple[float, float | None]:
        """(lr, head_lr) for a run that names none (see `default_lrs`)."""
        return self.default_lrs.get(modality, self.default_lrs["image"])

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
        if self.options.l2sp_alpha or self.options.l2sp_beta:
            weight_decay = 0.0
        return build_param_groups(model, lr, weight_decay, head_lr, self.group_lrs(model, epoch, lr, head_lr),
                                  no_decay=self.no_decay)

    @property
    def regularised(self) -> bool:
        """Whether `regularizers` adds any term (L2-SP or BSS is on)."""
        o = self.options
        return bool(o.l2sp_alpha or o.l2sp_beta or o.bss_eta)

    def regularizers(self, model) -> list:
        """Loss terms the objective adds; built before a resumed state is loaded, so L2-SP's reference is the
        pretrained weights."""
        o = self.options
        terms: list = []
        if o.l2sp_alpha or o.l2sp_beta:
            terms.append(L2SP(model, o.l2sp_alpha, o.l2sp_beta))
        if o.bss_eta:
            terms.append(BatchSpectralShrinkage(o.bss_eta, o.bss_k))
        return terms

    def describe(self) -> dict:
        return {"name": self.name, "bn": self.bn}


STRATEGIES: Registry[type[Strategy]] = Registry("strategy")


def strategy_options(name: str) -> list[str]:
    """The keyword options a registered strategy takes (its own and the common ones: bn, regularisers)."""
    return list(declared(STRATEGIES.get(name).Options))


def get_strategy(name: str, **options) -> Strategy:
    """Instantiate a registered strategy by name, e.g. ``get_strategy("gradual", unfreeze_every=2)``.

    Options left at None take the strategy's default. An option the strategy does not take is an error.
    """
    return STRATEGIES.get(name)(**{k: v for k, v in options.items() if v is not None})
