"""Parameter-efficient fine-tuning as ordinary strategies: LoRA and IA3 through HF peft, BitFit and norm tuning.

The model carries the adapters (`TransferModel.add_adapters`, machinery in `adapters.py`); a strategy only
says which to add and what trains: the adapters and the head, while the base weights stay frozen. Bundles of
an adapted model hold the adapters and the head only when the base weights can be rebuilt (`bundle.py`).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..adapters import discover_targets
from ..errors import ConfigError
from ..options import option
from .base import STRATEGIES, Strategy, StrategyOptions, head_params, set_trainable


class PeftStrategy(Strategy):
    """Base of the PEFT strategies: the base weights freeze, the adapters and the head train.

    BatchNorm statistics of the frozen base stay fixed (bn='frozen' by default).
    """

    default_bn = "frozen"
    default_lrs = {"image": (3e-3, None), "text": (1e-3, None)}  # adapters start at zero: they need larger steps
    method = "none"

    def adapters(self, model) -> dict:
        return {"method": self.method}

    def apply(self, model, epoch: int = 0) -> None:
        current = model.adapters
        if current is None:
            model.add_adapters(self.adapters(model))
        elif current["method"] != self.method or any(current.get(k) != v for k, v in self.adapter_options().items()):
            raise ConfigError(f"this model already carries {current['method']} adapters ({current}); build a "
                              "fresh model for another PEFT setting, or model.merge_adapters() first")
        trainable = model.adapter_parameter_names()
        if not trainable:
            raise ConfigError(f"strategy {self.name!r} found nothing to train in this backbone "
                              f"({type(self).__doc__.splitlines()[0]})")
        set_trainable(model, trainable + head_params(model), self.bn)

    def adapter_options(self) -> dict:
        return {}


@STRATEGIES.register("lora")
class LoRA(PeftStrategy):
    """LoRA on Linear and Conv2d layers (HF peft): W x + (alpha / r) * B A x, base weights frozen.

    Hu et al. 2021. B starts at zero, so the adapted model starts as the base model. Targets are found
    automatically (every Linear and ungrouped Conv2d wider than r) or named with `peft_targets` patterns,
    e.g. ``["qkv", "fc*"]``.
    """

    name, method = "lora", "lora"

    @dataclass(frozen=True)
    class Options(StrategyOptions):
        lora_r: int = option(8, "rank of the low-rank update", ge=1)
        lora_alpha: float = option(16.0, "scale: the update is (alpha / r) * B A", gt=0.0)
        lora_dropout: float = option(0.0, "dropout on the adapter's input", ge=0.0, lt=1.0)
        peft_targets: list[str] | None = option(None, "layer name patterns to adapt (default: found automatically)")

    def adapter_options(self) -> dict:
        o = self.options
        return {"r": o.lora_r, "alpha": float(o.lora_alpha), "dropout": float(o.lora_dropout)}

    def adapters(self, model) -> dict:
        return {"method": "lora", **self.adapter_options(),
                "targets": discover_targets(model.backbone, self.options.peft_targets, self.options.lora_r)}


@STRATEGIES.register("ia3")
class IA3(PeftStrategy):
    """IA3 (HF peft): learned vectors rescale the outputs of Linear and Conv2d layers, base weights frozen.

    Liu et al. 2022. The vectors start at one, so the adapted model starts as the base model. They get no
    weight decay: decay would pull them towards zero, not towards their start.
    """

    name, method = "ia3", "ia3"

    @dataclass(frozen=True)
    class Options(StrategyOptions):
        peft_targets: list[str] | None = option(None, "layer name patterns to adapt (default: found automatically)")

    def adapters(self, model) -> dict:
        return {"method": "ia3", "targets": discover_targets(model.backbone, self.options.peft_targets)}

    def no_decay(self, name: str, param) -> bool:
        return param.ndim <= 1 or ".ia3_" in name


@STRATEGIES.register("bitfit")
class BitFit(PeftStrategy):
    """BitFit (Ben Zaken et al. 2022): train only the backbone's biases (and the head)."""

    name, method = "bitfit", "bitfit"


@STRATEGIES.register("norm-tuning")
class NormTuning(PeftStrategy):
    """Norm tuning: train only the backbone's normalisation layers (weights and biases) and the head.

    LayerNorm, BatchNorm, GroupNorm, RMSNorm, ...; BatchNorm statistics stay fixed unless bn='train'."""

    name, method = "norm-tuning", "norm"
