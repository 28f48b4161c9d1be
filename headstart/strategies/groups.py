"""Optimizer parameter groups from the backbone's layer groups: pure functions over `named_parameters()`.

Each group carries its own `lr` and `weight_decay`, so any torch scheduler honours them (schedulers scale
each group's initial lr). Biases and normalisation weights (1-d tensors) get no weight decay.
"""
from __future__ import annotations

from typing import Callable

import torch.nn as nn


def named_layer_groups(model) -> list[tuple[str, list[tuple[str, nn.Parameter]]]]:
    """[(group name, [(full param name, param)])] for every backbone layer group, then the head."""
    params = dict(model.named_parameters())
    groups = [(f"backbone.{g.name}", [(f"backbone.{p}", params[f"backbone.{p}"]) for p in g.params])
              for g in model.spec.layer_groups]
    heads = set(model.head_parameter_names())
    groups.append(("head", [(n, p) for n, p in params.items() if n in heads]))
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
