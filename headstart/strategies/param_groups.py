"""Optimizer parameter groups from the backbone's layer groups, and a truthful summary of them.

Each group carries its own `lr` and `weight_decay`, so any torch scheduler honours them (schedulers scale
each group's initial lr). Biases and normalisation weights (1-d tensors) get no weight decay.
"""
from __future__ import annotations

import torch.nn as nn


def named_layer_groups(model) -> list[tuple[str, list[tuple[str, nn.Parameter]]]]:
    """[(group name, [(full param name, param)])] for every backbone layer group, then the head."""
    params = dict(model.named_parameters())
    groups = [(f"backbone.{g.name}", [(f"backbone.{p}", params[f"backbone.{p}"]) for p in g.params])
              for g in model.spec.layer_groups]
    groups.append(("head", [(n, p) for n, p in params.items() if n.startswith("head.")]))
    return groups


def build_param_groups(model, lr: float, weight_decay: float, head_lr: float | None = None,
                       group_lrs: dict[str, float] | None = None) -> list[dict]:
    """Optimizer groups holding exactly the trainable parameters.

    Args:
        lr: learning rate of backbone groups; `head_lr` (default `lr`) for the head.
        group_lrs: per layer-group overrides, keyed by group name (``backbone.layer4``, ``head``).
    """
    out = []
    for name, named in named_layer_groups(model):
        group_lr = (group_lrs or {}).get(name, (head_lr or lr) if name == "head" else lr)
        decay = [p for _, p in named if p.requires_grad and p.ndim > 1]
        no_decay = [p for _, p in named if p.requires_grad and p.ndim <= 1]
        for suffix, ps, wd in (("", decay, weight_decay), ("/no_decay", no_decay, 0.0)):
            if ps:
                out.append({"params": ps, "lr": group_lr, "weight_decay": wd, "name": name + suffix})
    return out


def trainable_summary(model, optimizer=None) -> str:
    """A table of trainable/total parameters per layer group and the learning rate each group gets."""
    lrs: dict[int, float] = {}
    if optimizer is not None:
        for g in optimizer.param_groups:
            for p in g["params"]:
                lrs[id(p)] = g["lr"]
    rows = [("group", "trainable", "total", "lr")]
    total_t = total = 0
    for name, named in named_layer_groups(model):
        t = sum(p.numel() for _, p in named if p.requires_grad)
        n = sum(p.numel() for _, p in named)
        group_lrs = sorted({lrs[id(p)] for _, p in named if id(p) in lrs})
        lr = ", ".join(f"{x:.2e}" for x in group_lrs) if group_lrs else "-"
        rows.append((name, f"{t:,}", f"{n:,}", lr))
        total_t, total = total_t + t, total + n
    rows.append(("total", f"{total_t:,}", f"{total:,}", f"{100 * total_t / max(total, 1):.2f}% trainable"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)
