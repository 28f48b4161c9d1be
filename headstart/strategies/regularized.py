"""Full fine-tuning with a regulariser switched on by default: L2-SP and batch spectral shrinkage."""
from __future__ import annotations

from ..options import with_defaults
from .base import STRATEGIES, StrategyOptions
from .freezing import Full


@STRATEGIES.register("l2-sp")
class L2SPFineTune(Full):
    """Full fine-tuning with L2-SP: a pull towards the pretrained weights instead of weight decay."""

    name = "l2-sp"
    Options = with_defaults(StrategyOptions, l2sp_alpha=0.01, l2sp_beta=0.01)


@STRATEGIES.register("bss")
class BSSFineTune(Full):
    """Full fine-tuning with batch spectral shrinkage of the features' smallest singular values."""

    name = "bss"
    Options = with_defaults(StrategyOptions, bss_eta=0.001)
