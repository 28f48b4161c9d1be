"""The ground floor every layer runs on: device placement, precision, memory format, and one way to run a
model over a split.

Fast numeric defaults: when bf16 autocast and channels_last pay off on this hardware.

Measured on the 2-core CPU machines (ASSETS.md): bf16 + channels_last speeds up CNN inference 2-4x and most
training steps 2x. Depthwise convolutions have a slow bf16 backward: under `precision: bf16` they stay in fp32
inside the autocast (`depthwise_in_fp32`), which made an EfficientNet-Lite0 step 1.2x faster than fp32 where plain
bf16 autocast was 1.4x slower (bench/results/precision_policy.md). `auto` still trains such models in fp32: full
fine-tuning of Lite0 under that bf16 policy lost accuracy (digits 0.958 -> 0.919, Fashion-MNIST 0.837 -> 0.821
in the strategy grid, bench/results/precision_bf16_depthwise.md).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn

from .errors import ConfigError


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


@dataclass(frozen=True)
class Placement:
    """Where and how a model computes when it only runs forward: device, bf16 autocast, channels_last."""

    device: torch.device
    bf16: bool
    channels_last: bool

    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments of `run_over_split`, `predict_outputs` and feature extraction."""
        return {"device": self.device, "bf16": self.bf16, "channels_last": self.channels_last}

    def move(self, model: nn.Module) -> nn.Module:
        """Put `model`'s weights on the device, in channels_last when the inputs will be."""
        model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model


def inference_placement(model: nn.Module, precision: str = "auto", channels_last: str = "auto",
                        device: torch.device | None = None) -> Placement:
    """How `model` computes forward passes: `precision` and `channels_last` resolved for it and the device."""
    device = device or torch.device("cpu")
    return Placement(device, resolve_precision(precision, model, device, training=False),
                     resolve_channels_last(channels_last, model))


def to_device(inputs: Any, device: torch.device, channels_last: bool = False) -> Any:
    """Move a batch (a tensor or a dict of tensors) to `device`; image tensors optionally channels_last."""
    if isinstance(inputs, dict):
        return {k: v.to(device, non_blocking=True) for k, v in inputs.items()}
    inputs = inputs.to(device, non_blocking=True)
    return inputs.contiguous(memory_format=torch.channels_last) if channels_last and inputs.ndim == 4 else inputs


@torch.no_grad()
def run_over_split(fn: Callable[[Any], torch.Tensor], batcher, *, batch_size: int = 128, bf16: bool = False,
                   channels_last: bool = False, device: torch.device | None = None,
                   generator: torch.Generator | None = None, shard: tuple[int, int] = (0, 1),
                   out_dtype: torch.dtype = torch.float32, progress: Callable | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """`fn` over a split in the batcher's eval order; returns (rows, indices) sorted by sample index.

    A batcher may group samples (text by length), so rows come back in data order. With `shard=(rank, world)`
    only every world-th batch runs, and the indices say which samples those rows are. Rows are kept on the
    CPU in `out_dtype`.
    """
    device = device or torch.device("cpu")
    rank, world = shard
    outs, order = [], []
    batches = batcher.order(batch_size, shuffle=False, seed=0, epoch=0)[rank::world]
    for idx in progress(batches) if progress else batches:
        x = to_device(batcher.inputs(idx, generator), device, channels_last)
        with autocast(device, bf16):
            outs.append(fn(x).to(out_dtype).cpu())
        order.append(idx)
    if not outs:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
    rows, idx = torch.cat(outs), torch.cat(order)
    sort = torch.argsort(idx)
    return rows[sort], idx[sort]


def predict_outputs(model: nn.Module, batcher, *, batch_size: int = 128, bf16: bool = False,
                    channels_last: bool = False, device: torch.device | None = None) -> torch.Tensor:
    """Model outputs (N, num_outputs) in fp32 for every sample, in data order (eval mode)."""
    model.eval()
    return run_over_split(model, batcher, batch_size=batch_size, bf16=bf16, channels_last=channels_last,
                          device=device)[0]


def task_outputs(model: nn.Module, batcher, sizes: dict[str, int], **kwargs) -> dict[str, torch.Tensor]:
    """Every head's outputs (eval mode, fp32) for every sample of a split, in data order, by head name, in one
    pass; `sizes` gives each head's number of outputs, in the model's head order."""
    model.eval()
    rows = run_over_split(lambda x: torch.cat([o.reshape(o.shape[0], -1).float()
                                                for o in model(x, with_features=True)[0].values()], 1),
                          batcher, **kwargs)[0]
    return dict(zip(sizes, torch.split(rows, list(sizes.values()), 1)))


def activation_bytes(model: nn.Module, sample: Any) -> int | None:
    """Bytes of the outputs of every leaf module for one training forward pass on `sample`.

    Measured on a copy of the model on the meta device (shapes only: no memory, no compute, no RNG draw),
    without the model's own hooks, so nothing of the model or its users' hooks sees the pass. What a
    backward pass keeps is close to this; a frozen backbone keeps far less (no graph). None when the model
    cannot run on shapes alone (a data-dependent step, such as some text encoders' mask handling).
    """
    import copy

    memo: dict[int, Any] = {}
    for t in [*model.parameters(), *model.buffers()]:
        meta = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else meta
    shadow = copy.deepcopy(model, memo)  # the tensors come from `memo`: nothing is copied
    total = 0

    def count(module, inputs, output) -> None:
        nonlocal total
        for t in output if isinstance(output, (tuple, list)) else [output]:
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()

    for module in shadow.modules():
        module._forward_hooks.clear()  # the copy's own hook tables: the user's hooks stay on `model`
        module._forward_pre_hooks.clear()
        if not list(module.children()):
            module.register_forward_hook(count)
    shadow.train()
    try:
        shadow(to_device(sample, torch.device("meta")))
    except (RuntimeError, NotImplementedError, ValueError):  # an op that needs values, not shapes: no estimate
        return None
    return total


def available_bytes(device: torch.device) -> int | None:
    """Memory free for a run on `device` (MemAvailable on a Linux CPU, free memory on a GPU); None if unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as fh:
            fields = dict(line.split(":", 1) for line in fh)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None
