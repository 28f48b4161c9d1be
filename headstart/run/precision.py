"""Fast numeric defaults: when bf16 autocast and channels_last pay off on this hardware.

Measured on the 2-core CPU machines (ASSETS.md): bf16 + channels_last speeds up CNN inference 2-4x and most
training steps 2x. Depthwise convolutions have a slow bf16 backward: under `precision: bf16` they stay in fp32
inside the autocast (`depthwise_in_fp32`), which made an EfficientNet-Lite0 step 1.2x faster than fp32 where plain
bf16 autocast was 1.4x slower (bench/results/precision_policy.md). `auto` still trains such models in fp32: full
fine-tuning of Lite0 under that bf16 policy lost accuracy (digits 0.958 -> 0.919, Fashion-MNIST 0.837 -> 0.821
in the strategy grid, bench/results/precision_bf16_depthwise.md).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

from ..errors import ConfigError


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels


def has_depthwise_conv(model: nn.Module) -> bool:
    return any(is_depthwise(m) for m in model.modules())


_FP32_CLASSES: dict[type, type] = {}


def _fp32_class(cls: type) -> type:
    """A subclass of `cls` whose forward leaves autocast: same parameters, same state_dict keys, and the
    subclass's own forward (timm's Conv2dSame pads first) still runs."""
    if cls not in _FP32_CLASSES:
        def forward(self, x):
            with torch.autocast(x.device.type, enabled=False):
                return cls.forward(self, x.float())

        _FP32_CLASSES[cls] = type(f"Fp32{cls.__name__}", (cls,), {"forward": forward, "__module__": __name__})
    return _FP32_CLASSES[cls]


@contextlib.contextmanager
def depthwise_in_fp32(model: nn.Module, enabled: bool = True):
    """Run the depthwise convolutions of `model` in fp32 inside bf16 autocast; everything else stays bf16.

    Why: oneDNN's bf16 depthwise backward is slower than its fp32 one, while the pointwise convolutions, which
    hold most of a MobileNet/EfficientNet's FLOPs, run on the CPU's bf16 matrix units. The swap is undone on
    exit; a module already swapped by an outer call is left to it."""
    pinned_classes = set(_FP32_CLASSES.values())
    swapped = [m for m in model.modules() if is_depthwise(m) and type(m) not in pinned_classes] if enabled else []
    for m in swapped:
        m.__class__ = _fp32_class(type(m))
    try:
        yield len(swapped)
    finally:
        for m in swapped:
            m.__class__ = m.__class__.__bases__[0]


def has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def resolve_precision(precision: str, model: nn.Module, device: torch.device, training: bool) -> bool:
    """True when this phase runs under bf16 autocast. `auto` picks bf16 where it is measured faster and as
    accurate: not for training a model with depthwise convolutions on a CPU (see the module's docstring)."""
    if precision == "fp32":
        return False
    if precision == "bf16":
        if not bf16_supported(device):
            raise ConfigError(f"precision='bf16' but this {device.type} has no bf16 support; use 'fp32' or 'auto'")
        return True
    if precision != "auto":
        raise ConfigError(f"unknown precision {precision!r}; choose auto, bf16 or fp32")
    if not bf16_supported(device):
        return False
    return not (training and device.type == "cpu" and has_depthwise_conv(model))


def pin_depthwise(bf16: bool, model: nn.Module, device: torch.device) -> bool:
    """True when a CPU training step under bf16 autocast should keep `model`'s depthwise convolutions in fp32."""
    return bf16 and device.type == "cpu" and has_depthwise_conv(model)


def resolve_channels_last(channels_last: str, model: nn.Module) -> bool:
    if channels_last in ("on", "off"):
        return channels_last == "on"
    return has_conv(model)


def autocast(device: torch.device, enabled: bool):
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
