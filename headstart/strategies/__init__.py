"""Strategies decide what trains and how fast: `requires_grad`, BatchNorm mode and optimizer groups.

A strategy is applied before the optimizer is built and re-applied identically on resume. Later strategies
(partial, gradual, lp-ft, layer decay, PEFT) register here the same way.
"""
from __future__ import annotations

from ..registry import Registry
from .base import Strategy

STRATEGIES: Registry[type[Strategy]] = Registry("strategy")


def get_strategy(name: str, **kwargs) -> Strategy:
    """Instantiate a registered strategy by name, e.g. ``get_strategy("linear-probe")``."""
    return STRATEGIES.get(name)(**kwargs)


from . import freezing  # noqa: E402,F401  (registers the strategies)
from .param_groups import build_param_groups, trainable_summary  # noqa: E402

__all__ = ["STRATEGIES", "Strategy", "build_param_groups", "get_strategy", "trainable_summary"]
