"""Freezing strategies: linear probe, full, partial (a freeze spec), gradual unfreezing and LP-FT.

What trains is chosen through the backbone's layer groups only (`select.py`), so every strategy works the
same on CNNs, ViTs and text encoders. The new head always trains.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from ..options import option
from .base import STRATEGIES, Strategy, StrategyOptions, head_params, set_trainable
from .select import parse_spec, select_params


def _all(model) -> list[str]:
    return [n for n, _ in model.named_parameters()]


def _last_groups(model, count: int) -> list[str]:
    """Full parameter names of the last `count` backbone layer groups (nearest the head)."""
    groups = model.spec.layer_groups[len(model.spec.layer_groups) - count:] if count else []
    return [f"backbone.{p}" for g in groups for p in g.params]


SOLVERS = ("auto", "fit", "sgd")


@STRATEGIES.register("linear-probe")
class LinearProbe(Strategy):
    """Train only the head; the whole backbone stays frozen and in eval mode (BatchNorm, dropout)."""

    name = "linear-probe"
    default_bn = "frozen"

    @dataclass(frozen=True)
    class Options(StrategyOptions):
        solver: str = option("auto", "how the head learns: fit (logistic or ridge regression on the cached "
                                     "features, L2 chosen on val; run/head_fit.py), sgd (epochs), or auto (fit "
                                     "where that problem is convex)")

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.solver not in SOLVERS:
                raise ConfigError(f"unknown solver {self.solver!r}; choose one of {', '.join(SOLVERS)}")

    def __init__(self, **options):
        super().__init__(**options)
        if self.bn == "train":
            raise ConfigError("bn='train' with linear-probe would let the frozen backbone's BatchNorm "
                              "statistics drift while the head learns (13 points lost on Fashion-MNIST). "
                              "Use bn='frozen' (the default), or strategy 'full' to train BatchNorm.")

    def apply(self, model, epoch: int = 0) -> None:
        set_trainable(model, head_params(model), self.bn)


@STRATEGIES.register("full")
class Full(Strategy):
    """Train every parameter; BatchNorm statistics update unless bn='frozen'."""

    name = "full"
    default_bn = "train"

    def apply(self, model, epoch: int = 0) -> None:
        set_trainable(model, _all(model), self.bn)


@STRATEGIES.register("partial")
class Partial(Strategy):
    """Train the head and the backbone layers a freeze spec selects; the rest stays frozen (eval mode).

    Args:
        trainable: freeze spec of the backbone layers that train (default ``last:1``), e.g. ``last:2``,
            ``from:blocks.3``, ``*norm*``; see `select.py`.
        freeze: the other way round: the spec of what stays frozen; everything else trains.
    """

    name = "partial"
    default_bn = "train"

    @dataclass(frozen=True)
    class Options(StrategyOptions):
        trainable: str | None = option(None, "freeze spec of the backbone layers that train (default last:1)")
        freeze: str | None = option(None, "freeze spec of the backbone layers that stay frozen")

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.trainable is not None and self.freeze is not None:
                raise ConfigError(f"give either trainable ({self.trainable!r}) or freeze ({self.freeze!r}), not "
                                  "both: one is the complement of the other")
            parse_spec(self.freeze if self.freeze is not None else (self.trainable or "last:1"))

    def __init__(self, **options):
        super().__init__(**options)
        self.freeze = self.options.freeze
        self.trainable = None if self.freeze is not None else (self.options.trainable or "last:1")

    def apply(self, model, epoch: int = 0) -> None:
        everything, head = _all(model), set(head_params(model))
        if self.freeze is not None:
            frozen = select_params(self.freeze, model)
            if frozen >= set(everything):
                raise ConfigError(f"freeze spec {self.freeze!r} freezes everything, the head included: nothing "
                                  "would train. Freeze backbone layer groups only, e.g. 'first:2'.")
            if frozen & head:
                raise ConfigError(f"freeze spec {self.freeze!r} selects the head ({sorted(frozen & head)}); the "
                                  "head is new and always trains. Select backbone layer groups only.")
            trainable = [n for n in everything if n not in frozen]
            spec = f"freeze={self.freeze!r}"
        else:
            chosen = select_params(self.trainable, model)
            trainable = [n for n in everything if n in chosen or n in head]
            spec = f"trainable={self.trainable!r}"
        backbone = [n for n in trainable if n not in head]
        if not backbone:
            raise ConfigError(f"{spec} leaves no backbone parameter trainable; that is strategy 'linear-probe'. "
                              f"Layer groups: {', '.join(model.spec.group_names)}.")
        if len(backbone) == len(everything) - len(head):
            raise ConfigError(f"{spec} leaves nothing frozen; that is strategy 'full'. "
                              f"Layer groups: {', '.join(model.spec.group_names)}.")
        set_trainable(model, trainable, self.bn)


@STRATEGIES.register("gradual")
class Gradual(Strategy):
    """Gradual unfreezing (ULMFiT): the head first, then one more layer group every `unfreeze_every` epochs.

    Howard & Ruder 2018. Groups unfreeze from the top (the group nearest the head) down to the input: at
    epoch e the last ``min(e // unfreeze_every, n)`` of the n backbone groups train. Newly unfrozen groups
    join the optimizer at the base learning rate, scaled by the schedule from there on.
    """

    name = "gradual"
    default_bn = "train"

    @dataclass(frozen=True)
    class Options(StrategyOptions):
        unfreeze_every: int = option(1, "epochs between unfreezing steps", ge=1)

    def __init__(self, **options):
        super().__init__(**options)
        self.every = self.options.unfreeze_every
        self.num_groups: int | None = None  # known once applied to a model

    def unfrozen(self, model, epoch: int) -> int:
        return min(epoch // self.every, len(model.spec.layer_groups))

    def apply(self, model, epoch: int = 0) -> None:
        self.num_groups = len(model.spec.layer_groups)
        set_trainable(model, head_params(model) + _last_groups(model, self.unfrozen(model, epoch)), self.bn)

    def changes_at(self, epoch: int) -> bool:
        unfreezes = epoch > 0 and epoch % self.every == 0
        return unfreezes and (self.num_groups is None or epoch // self.every <= self.num_groups)

    def check_schedule(self, epochs: int) -> None:
        if epochs <= self.every:
            raise ConfigError(f"gradual with unfreeze_every={self.every} unfreezes its first backbone group at "
                              f"epoch {self.every + 1}, but the run has {epochs} epochs: it would be a linear "
                              "probe. Train longer or lower unfreeze_every.")


@STRATEGIES.register("lp-ft")
class LinearProbeThenFineTune(Strategy):
    """LP-FT: train the head alone for `lp_epochs`, then fine-tune everything at lr * ft_lr_scale.

    Kumar et al., ICLR 2022. In the second phase the head learns at ``(head_lr or lr) * ft_lr_scale``. A
    converged head means the first fine-tuning steps do not send large random gradients into the pretrained
    features: about +1% in distribution and +10% out of distribution against full fine-tuning.
    One schedule spans both phases (no second warmup).

    BatchNorm statistics stay frozen by default (`bn="frozen"`): the head was fitted to features computed
    with the running statistics, and switching to batch statistics when fine-tuning starts moves every
    feature at once. Measured on the strategy grid's Fashion-MNIST cell (Lite0, 128 px, 100 per class, 4
    epochs): frozen 0.843 test accuracy, train-mode BN 0.739 (validation fell from 0.76 to 0.42 on the
    first fine-tuning epoch); full fine-tuning 0.837, linear probe 0.830.
    """

    name = "lp-ft"
    default_bn = "frozen"

    @dataclass(frozen=True)
    class Options(StrategyOptions):
        lp_epochs: int = option(1, "epochs of linear probing before fine-tuning", ge=1)
        ft_lr_scale: float = option(0.1, "fine-tuning lr = lr x ft_lr_scale (the head's too), e.g. 0.1", gt=0.0,
                                    le=1.0)

    def __init__(self, **options):
        super().__init__(**options)
        self.lp_epochs, self.ft_lr_scale = self.options.lp_epochs, self.options.ft_lr_scale

    def apply(self, model, epoch: int = 0) -> None:
        set_trainable(model, head_params(model) if epoch < self.lp_epochs else _all(model), self.bn)

    def changes_at(self, epoch: int) -> bool:
        return epoch == self.lp_epochs

    def check_schedule(self, epochs: int) -> None:
        if self.lp_epochs >= epochs:
            raise ConfigError(f"lp-ft with lp_epochs={self.lp_epochs} never reaches fine-tuning in a run of "
                              f"{epochs} epochs; set lp_epochs < epochs (or use strategy 'linear-probe').")

    def group_lrs(self, model, epoch: int, lr: float, head_lr: float | None) -> dict[str, float]:
        if epoch < self.lp_epochs:
            return {}
        scale = self.ft_lr_scale
        return {**{f"backbone.{g}": lr * scale for g in model.spec.group_names}, "head": (head_lr or lr) * scale}
