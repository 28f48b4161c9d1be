"""Fast numeric defaults: when bf16 autocast and channels_last pay off on this hardware.

Measured on the 2-core CPU machines (ASSETS.md): bf16 + channels_last speeds up CNN inference 2-4x and most
training steps 2x, but depthwise convolutions have a slow bf16 backward, so models with them train in fp32.
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


def has_depthwise_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels for m in model.modules())


def has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def resolve_precision(precision: str, model: nn.Module, device: torch.device, training: bool) -> bool:
    """True when this phase runs under bf16 autocast. `auto` picks bf16 where it is measured faster."""
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


def resolve_channels_last(channels_last: str, model: nn.Module) -> bool:
    if channels_last in ("on", "off"):
        return channels_last == "on"
    return has_conv(model)


def autocast(device: torch.device, enabled: bool):
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
