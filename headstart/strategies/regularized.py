"""Full fine-tuning with a regulariser switched on by default: L2-SP and batch spectral shrinkage."""
from __future__ import annotations

from dataclasses import dataclass

from ..options import option
from .base import STRATEGIES, StrategyOptions
from .freezing import Full


@STRATEGIES.register("l2-sp")
class L2SPFineTune(Full):
    """Full fine-tuning with L2-SP: a pull towards the pretrained weights instead of weight decay."""

    name = "l2-sp"

    @dataclass(frozen=True)
    class Options(StrategyOptions):
        l2sp_alpha: float = option(0.01, "L2-SP pull towards the pretrained weights")
        l2sp_beta: float = option(0.01, "L2-SP's L2 penalty on the head")


@STRATEGIES.register("bss")
class BSSFineTune(Full):
    """Full fine-tuning with batch spectral shrinkage of the features' smallest singular values."""

    name = "bss"

    @dataclass(frozen=True)
    class Options(StrategyOptions):
        bss_eta: float = option(0.001, "batch spectral shrinkage strength")
