"""Strategies that set a learning rate per layer group: layer-wise decay and discriminative rates."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from ..options import option
from .base import STRATEGIES, Strategy, StrategyOptions, set_trainable


@STRATEGIES.register("layer-decay")
class LayerDecay(Strategy):
    """Train everything; each backbone group's lr is lr x decay^depth, depth counted from the head.

    With n backbone groups (input to output) group i gets ``lr * layer_decay ** (n - i)``, so the group next
    to the head gets ``lr * layer_decay`` and the stem the smallest rate; the head gets `head_lr` (or `lr`).
    Early layers hold general features that need little change (BEiT, Bao et al. 2022; ELECTRA).
    """

    name = "layer-decay"
    default_bn = "train"

    @dataclass(frozen=True)
    class Options(StrategyOptions):
        layer_decay: float = option(0.75, "lr x layer_decay ** depth, depth counted from the head; 0.65-0.85 is "
                                          "usual", gt=0.0, le=1.0)

    def apply(self, model, epoch: int = 0) -> None:
        set_trainable(model, [n for n, _ in model.named_parameters()], self.bn)

    def group_lrs(self, model, epoch: int, lr: float, head_lr: float | None) -> dict[str, float]:
        names = model.spec.group_names
        return {f"backbone.{g}": lr * self.options.layer_decay ** (len(names) - i) for i, g in enumerate(names)}


@STRATEGIES.register("discriminative")
class Discriminative(Strategy):
    """Train everything with an explicit learning rate per layer group (ULMFiT's discriminative rates).

    `group_lrs` lists one rate per backbone layer group, input to output, optionally followed by the head's
    (otherwise the head gets `head_lr` or `lr`). Without it, ULMFiT's rule (Howard & Ruder 2018): each group
    learns 2.6x slower than the one above it, ``lr / 2.6 ** depth`` with depth 1 next to the head.
    """

    name = "discriminative"
    default_bn = "train"
    ULMFIT_FACTOR = 2.6

    @dataclass(frozen=True)
    class Options(StrategyOptions):
        group_lrs: list[float] | None = option(None, "one lr per layer group, input to output [+ head]")

        def __post_init__(self) -> None:
            super().__post_init__()
            lrs = self.group_lrs
            if lrs is not None and (not lrs or any(not x > 0 for x in lrs)):
                raise ConfigError(f"group_lrs must be a non-empty list of rates > 0, one per backbone layer group "
                                  f"(input to output) and optionally one for the head; received {lrs!r}")

    def __init__(self, **options):
        super().__init__(**options)
        self.lrs = None if self.options.group_lrs is None else [float(x) for x in self.options.group_lrs]

    def apply(self, model, epoch: int = 0) -> None:
        self.group_lrs(model, epoch, 1.0, None)  # check the length before anything trains
        set_trainable(model, [n for n, _ in model.named_parameters()], self.bn)

    def group_lrs(self, model, epoch: int, lr: float, head_lr: float | None) -> dict[str, float]:
        names = [f"backbone.{g}" for g in model.spec.group_names]
        if self.lrs is None:
            return {g: lr / self.ULMFIT_FACTOR ** (len(names) - i) for i, g in enumerate(names)}
        if len(self.lrs) not in (len(names), len(names) + 1):
            raise ConfigError(f"group_lrs has {len(self.lrs)} learning rates but this backbone has "
                              f"{len(names)} layer groups ({', '.join(names)}) and then the head: give "
                              f"{len(names)} (the head gets head_lr or lr) or {len(names) + 1} (the last is "
                              "the head's).")
        return dict(zip(names + ["head"], self.lrs))
