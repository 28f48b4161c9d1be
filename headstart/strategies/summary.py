"""A truthful table of what trains: parameters, learning rate and BatchNorm mode per layer group."""
from __future__ import annotations

import torch.nn as nn

from .groups import named_layer_groups


def _norm_state(model, names: list[str]) -> str:
    """How the norm layers owning `names` treat their statistics: frozen, train, mixed or - (none)."""
    modules = dict(model.named_modules())
    states = set()
    for n in names:
        owner = n.rsplit(".", 1)[0]
        if isinstance(modules.get(owner), nn.modules.batchnorm._NormBase):
            kept = any(owner == k or owner.startswith(k + ".") for k in model.eval_modules)
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
    adapters = model.adapters
    if adapters:
        names = set(model.adapter_parameter_names())
        count = sum(p.numel() for n, p in model.named_parameters() if n in names)
        where = f" on {len(adapters['targets'])} layers" if adapters.get("targets") else ""
        knobs = ", ".join(f"{k}={v}" for k, v in adapters.items() if k not in ("method", "targets"))
        rest = "the wrapped base weights stay frozen" if adapters.get("targets") else "trained in place"
        lines.append(f"adapters: {adapters['method']}{where}{f' ({knobs})' if knobs else ''}: {count:,} "
                     f"adapter parameters; {rest}")
    return "\n".join(lines)
