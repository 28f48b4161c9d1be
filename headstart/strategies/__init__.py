"""Strategies decide what trains and how fast: `requires_grad`, BatchNorm mode and optimizer groups.

A strategy is applied before the optimizer is built and re-applied identically on resume:
freezing (linear-probe, full, partial, gradual, lp-ft), per-group learning rates (layer-decay,
discriminative), PEFT (lora, ia3, bitfit, norm-tuning) and regularised fine-tuning (l2-sp, bss).
Each declares its options once, as a dataclass (`Strategy.Options`).
"""
from . import freezing, layer_rates, peft, regularized  # noqa: F401  (importing them registers the strategies)
from .base import STRATEGIES, Strategy, StrategyOptions, get_strategy, strategy_options
from .groups import build_param_groups, named_layer_groups
from .select import select_params
from .summary import trainable_summary

__all__ = ["STRATEGIES", "Strategy", "StrategyOptions", "build_param_groups", "get_strategy", "named_layer_groups",
           "select_params", "strategy_options", "trainable_summary"]
