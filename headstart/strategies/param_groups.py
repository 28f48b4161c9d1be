"""Optimizer parameter groups from the backbone's layer groups, the strategies that set per-group learning
rates (layer-wise decay, discriminative), and a truthful summary of what trains.

Each group carries its own `lr` and `weight_decay`, so any torch scheduler honours them (schedulers scale
each group's initial lr). Biases and normalisation weights (1-d tensors) get no weight decay.
"""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

from ..errors import ConfigError
from . import STRATEGIES
from .base import Strategy, set_trainable


def named_layer_groups(model) -> list[tuple[str, list[tuple[str, nn.Parameter]]]]:
    """[(group name, [(full param name, param)])] for every backbone layer group, then the head."""
    params = dict(model.named_parameters())
    groups = [(f"backbone.{g.name}", [(f"backbone.{p}", params[f"backbone.{p}"]) for p in g.params])
              for g in model.spec.layer_groups]
    groups.append(("head", [(n, p) for n, p in params.items() if n.startswith("head.")]))
    return groups


def build_param_groups(model, lr: float, weight_decay: float, head_lr: float | None = None,
                       group_lrs: dict[str, float] | None = None,
                       no_decay: Callable[[str, nn.Parameter], bool] | None = None) -> list[dict]:
    """Optimizer groups holding exactly the trainable parameters, in layer-group order (input to head).

    Args:
        lr: learning rate of backbone groups; `head_lr` (default `lr`) for the head.
        group_lrs: per layer-group overrides, keyed by group name (``backbone.layer4``, ``head``).
        no_decay: `(name, param) -> True` for parameters without weight decay (default: 1-d tensors).
    """
    skip_decay = no_decay or (lambda name, p: p.ndim <= 1)
    out = []
    for name, named in named_layer_groups(model):
        group_lr = (group_lrs or {}).get(name, (head_lr or lr) if name == "head" else lr)
        decay = [p for n, p in named if p.requires_grad and not skip_decay(n, p)]
        plain = [p for n, p in named if p.requires_grad and skip_decay(n, p)]
        for suffix, ps, wd in (("", decay, weight_decay), ("/no_decay", plain, 0.0)):
            if ps:
                out.append({"params": ps, "lr": group_lr, "weight_decay": wd, "name": name + suffix})
    return out


@STRATEGIES.register("layer-decay")
class LayerDecay(Strategy):
    """Train everything; each backbone group's lr is lr x decay^depth, depth counted from the head.

    With n backbone groups (input to output) group i gets ``lr * layer_decay ** (n - i)``, so the group next
    to the head gets ``lr * layer_decay`` and the stem the smallest rate; the head gets `head_lr` (or `lr`).
    Early layers hold general features that need little change (BEiT, Bao et al. 2022; ELECTRA).
    """

    name = "layer-decay"
    default_bn = "train"

    def __init__(self, layer_decay: float = 0.75, **common):
        super().__init__(**common)
        if not 0 < layer_decay <= 1:
            raise ConfigError(f"layer_decay must be in (0, 1], received {layer_decay}; 0.65-0.85 is usual")
        self.layer_decay = layer_decay

    def apply(self, model, epoch: int = 0) -> None:
        set_trainable(model, [n for n, _ in model.named_parameters()], self.bn)

    def group_lrs(self, model, epoch: int, lr: float, head_lr: float | None) -> dict[str, float]:
        names = model.spec.group_names
        return {f"backbone.{g}": lr * self.layer_decay ** (len(names) - i) for i, g in enumerate(names)}


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

    def __init__(self, group_lrs: list[float] | None = None, **common):
        super().__init__(**common)
        if group_lrs is not None and (not group_lrs or any(not x > 0 for x in group_lrs)):
            raise ConfigError(f"group_lrs must be a non-empty list of rates > 0, one per backbone layer group "
                              f"(input to output) and optionally one for the head; received {group_lrs!r}")
        self.lrs = None if group_lrs is None else [float(x) for x in group_lrs]

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


def _norm_state(model, names: list[str]) -> str:
    """How the norm layers owning `names` treat their statistics: frozen, train, mixed or - (none)."""
    modules = dict(model.named_modules())
    states = set()
    for n in names:
        owner = n.rsplit(".", 1)[0]
        if isinstance(modules.get(owner), nn.modules.batchnorm._NormBase):
            kept = any(owner == k or owner.startswith(k + ".") for k in model.keep_eval)
            states.add("frozen" if kept else "train")
    return "-" if not states else states.pop() if len(states) == 1 else "mixed"


def trainable_summary(model, optimizer=None) -> str:
    """A table of trainable/total parameters per layer group, the learning rate each group gets (the peak
    rate, before the schedule scales it), and whether its BatchNorm statistics update."""
    lrs: dict[int, float] = {}
    if optimizer is not None:
        for g in optimizer.param_groups:
            for p in g["params"]:
                lrs[id(p)] = g.get("initial_lr", g["lr"])
    rows = [("group", "trainable", "total", "lr", "bn stats")]
    total_t = total = 0
    for name, named in named_layer_groups(model):
        t = sum(p.numel() for _, p in named if p.requires_grad)
        n = sum(p.numel() for _, p in named)
        group_lrs = sorted({lrs[id(p)] for _, p in named if id(p) in lrs})
        lr = ", ".join(f"{x:.2e}" for x in group_lrs) if group_lrs else "-"
        rows.append((name, f"{t:,}", f"{n:,}", lr, _norm_state(model, [m for m, _ in named])))
        total_t, total = total_t + t, total + n
    rows.append(("total", f"{total_t:,}", f"{total:,}", f"{100 * total_t / max(total, 1):.2f}% trainable", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    adapters = getattr(model, "adapters", None)
    if adapters:
        from .peft import adapter_parameter_names

        count = sum(p.numel() for n, p in model.named_parameters() if n in set(adapter_parameter_names(model)))
        where = f" on {len(adapters['targets'])} layers" if adapters.get("targets") else ""
        knobs = ", ".join(f"{k}={v}" for k, v in adapters.items() if k not in ("method", "targets"))
        rest = "the wrapped base weights stay frozen" if adapters.get("targets") else "trained in place"
        lines.append(f"adapters: {adapters['method']}{where}{f' ({knobs})' if knobs else ''}: {count:,} "
                     f"adapter parameters; {rest}")
    return "\n".join(lines)
