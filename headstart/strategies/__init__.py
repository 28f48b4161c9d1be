"""Strategies decide what trains and how fast: `requires_grad`, BatchNorm mode and optimizer groups.

A strategy is applied before the optimizer is built and re-applied identically on resume:
freezing (linear-probe, full, partial, gradual, lp-ft), per-group learning rates (layer-decay,
discriminative), PEFT (lora, ia3, bitfit, norm-tuning) and regularised fine-tuning (l2-sp, bss).
"""
from __future__ import annotations

import inspect

from ..errors import ConfigError
from ..registry import Registry
from .base import Strategy

STRATEGIES: Registry[type[Strategy]] = Registry("strategy")


def strategy_options(name: str) -> list[str]:
    """The keyword options a registered strategy takes (its own and the common ones: bn, regularisers)."""
    names: list[str] = []
    for cls in STRATEGIES.get(name).__mro__:
        init = cls.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names += [p.name for p in params if p.name != "self" and p.kind is p.POSITIONAL_OR_KEYWORD
                  and p.name not in names]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return names


def get_strategy(name: str, **options) -> Strategy:
    """Instantiate a registered strategy by name, e.g. ``get_strategy("gradual", unfreeze_every=2)``.

    Options left at None take the strategy's default. An option the strategy does not take is an error.
    """
    options = {k: v for k, v in options.items() if v is not None}
    allowed = strategy_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(f"strategy {name!r} does not take {', '.join(unknown)}; its options are "
                          f"{', '.join(allowed)}. Remove them or choose a strategy that uses them.")
    return STRATEGIES.get(name)(**options)


from . import freezing, param_groups, peft, regularizers  # noqa: E402,F401  (registers the strategies)
from .param_groups import build_param_groups, trainable_summary  # noqa: E402
from .peft import merge_adapters  # noqa: E402
from .select import select_params  # noqa: E402

__all__ = ["STRATEGIES", "Strategy", "build_param_groups", "get_strategy", "merge_adapters", "select_params",
           "strategy_options", "trainable_summary"]
