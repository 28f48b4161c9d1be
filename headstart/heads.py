"""Heads: the new, task-specific layers put on a backbone's features."""
from __future__ import annotations

import torch.nn as nn

from .registry import Registry

HEADS: Registry = Registry("head")


@HEADS.register("linear")
def linear_head(in_features: int, num_outputs: int, dropout: float = 0.0, hidden: int = 0) -> nn.Module:
    """Dropout (optional) then one Linear layer: the classic linear-probe head."""
    layers: list[nn.Module] = [nn.Dropout(dropout)] if dropout > 0 else []
    return nn.Sequential(*layers, nn.Linear(in_features, num_outputs))


@HEADS.register("mlp")
def mlp_head(in_features: int, num_outputs: int, dropout: float = 0.0, hidden: int = 512) -> nn.Module:
    """Linear -> GELU -> Dropout -> Linear: more capacity when the features are far from the task."""
    return nn.Sequential(nn.Linear(in_features, hidden), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(hidden, num_outputs))


def build_head(kind: str, in_features: int, num_outputs: int, dropout: float = 0.0, hidden: int = 512) -> nn.Module:
    return HEADS.get(kind)(in_features, num_outputs, dropout=dropout, hidden=hidden)
