"""A frozen backbone's inference copy for feature extraction: BatchNorm and "same" padding folded into the convs.

Three rewrites, each exact up to rounding, that only a frozen, eval-mode network at a fixed input size allows:
- **BatchNorm folding.** An eval-mode BatchNorm is a fixed per-channel affine map; absorbed into the preceding
  convolution's weight and bias it costs nothing instead of a memory pass.
- **Static "same" padding.** TensorFlow-ported models (timm's ``tf_*``, EfficientNet-Lite among them) pad
  every stride-2 convolution with an explicit ``F.pad`` copy, asymmetric (one more zero row and column at the
  end). At a known input size the padding is known, so the convolution pads itself: symmetric padding becomes
  the conv's own ``padding``, and the asymmetric case becomes a kernel one tap larger whose first tap is zero,
  padded symmetrically (the same window over the same inputs).
- **Activation fused into the convolution.** A folded norm's own activation (timm's BatchNormAct2d with ReLU or
  ReLU6) becomes a oneDNN post-op of the convolution on CPU, so the activation is applied while the output is
  still in cache instead of in another pass over memory. The op is torch's own (``mkldnn._convolution_pointwise``,
  what ``torch.compile`` emits for the same pattern); where it is missing, or off the CPU, the pair runs unfused.
Measured on EfficientNet-Lite0 in bf16, 2 cores, batch 128: the explicit pad took 139 ms on one 112x112
activation where the padded convolution takes 66 ms in all; extraction went from about 120 to 170 images/s
with BatchNorm folding alone; the clamp of ReLU6 then took 30% of the pass, and fusing it took the folded copy
from about 205 to 280 images/s (bench/results/speed.md has the end-to-end figure).

Which convolution feeds which BatchNorm, and each convolution's input size, are read from one forward pass
on a sample through hooks, not from attribute names, so any backbone works. A convolution whose output is
also used elsewhere (a residual taken before the norm, say) would change that other use, which hooks cannot
see; so the copy is checked against the original on the sample and discarded if they differ. A padded
convolution that later meets another input size falls back to padding explicitly.
"""
from __future__ import annotations

import copy
import itertools
import weakref
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


def _after_norm(bn: nn.Module) -> nn.Module | None:
    """What a BatchNorm module does after normalising: nothing for torch's own, drop + act for timm's
    BatchNormAct2d; None for other subclasses (not folded)."""
    if type(bn) is nn.BatchNorm2d:
        return nn.Identity()
    if type(bn).__name__ == "BatchNormAct2d" and hasattr(bn, "act") and hasattr(bn, "drop"):
        return nn.Sequential(bn.drop, bn.act)
    return None


def _pads_itself(conv: nn.Module) -> bool:
    """timm's Conv2dSame: pads its input explicitly on every call (dilation 1 handled)."""
    return type(conv).__name__ == "Conv2dSame" and tuple(conv.dilation) == (1, 1)


class _PaddedConv(nn.Module):
    """A "same" convolution at a fixed input size with its padding built in (see the module docstring)."""

    def __init__(self, conv: nn.Conv2d, size: tuple[int, int]):
        super().__init__()
        self.original, self.size = conv, size
        weight, padding = conv.weight, []
        for dim, (n, k, s) in enumerate(zip(size, conv.kernel_size, conv.stride)):
            total = max((-(-n // s) - 1) * s + k - n, 0)
            if total % 2:  # one more zero at the end: a zero first tap shifts the window by one
                pad = [0, 0, 0, 0]
                pad[2 * (1 - dim)] = 1  # F.pad lists the last dimension first
                weight = F.pad(weight, pad)
            padding.append(total - total // 2)
        layout = torch.channels_last if conv.weight.is_contiguous(memory_format=torch.channels_last) \
            else torch.contiguous_format
        self.weight = nn.Parameter(weight.detach().contiguous(memory_format=layout), requires_grad=False)
        self.padding = tuple(padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.size:
            return self.original(x)
        c = self.original
        return F.conv2d(x, self.weight, c.bias, c.stride, self.padding, c.dilation, c.groups)


def _post_op(after: nn.Module) -> tuple[str, list[float]] | None:
    """The oneDNN post-op equal to what follows a folded norm (drop, act), or None: drop must be a no-op."""
    if not (isinstance(after, nn.Sequential) and len(after) == 2 and type(after[0]) is nn.Identity):
        return None
    act = after[1]
    if type(act) is nn.ReLU:
        return "relu", []
    if type(act) in (nn.ReLU6, nn.Hardtanh):
        return "hardtanh", [float(act.min_val), float(act.max_val)]
    return None


_FUSED_OP = getattr(getattr(torch.ops, "mkldnn", None), "_convolution_pointwise", None)


def _can_fuse(conv: nn.Module) -> bool:
    base = conv.original if isinstance(conv, _PaddedConv) else conv
    return (_FUSED_OP is not None and torch.backends.mkldnn.is_available() and base.weight.device.type == "cpu"
            and base.weight.ndim == 4 and base.padding_mode == "zeros" and not isinstance(base.padding, str))


class _ConvAct(nn.Module):
    """A convolution with its activation applied by oneDNN as a post-op (CPU, fp32 or bf16 autocast)."""

    def __init__(self, conv: nn.Module, act: nn.Module, attr: str, scalars: list[float]):
        super().__init__()
        self.conv, self.act, self.attr, self.scalars = conv, act, attr, scalars
        self._cast: dict[torch.dtype, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padded = isinstance(self.conv, _PaddedConv)
        base = self.conv.original if padded else self.conv
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        if (x.device.type != "cpu" or dtype not in (torch.float32, torch.bfloat16)
                or (padded and tuple(x.shape[-2:]) != self.conv.size)):
            return self.act(self.conv(x))
        if dtype not in self._cast:  # autocast would cast the weights on every call; once is enough when frozen
            bias = None if base.bias is None else base.bias.to(dtype)
            self._cast[dtype] = (self.conv.weight.to(dtype), bias)
        weight, bias = self._cast[dtype]
        # a _PaddedConv carries its own (enlarged) weight and padding; the rest is the original conv's
        return _FUSED_OP(x.to(dtype), weight, bias, list(self.conv.padding), list(base.stride), list(base.dilation),
                         base.groups, self.attr, self.scalars, "")


def _set_child(root: nn.Module, target: nn.Module, replacement: nn.Module) -> None:
    for parent in root.modules():
        for name, child in parent.named_children():
            if child is target:
                setattr(parent, name, replacement)
                return


@torch.no_grad()
def fold_for_inference(module: nn.Module, run: Callable[[nn.Module], torch.Tensor], *,
                       rtol: float = 1e-3, atol: float = 1e-4) -> tuple[nn.Module, dict[str, int]]:
    """An eval-mode copy of `module` with conv -> BatchNorm pairs folded and "same" padding made static.

    Args:
        run: calls a module on a small sample of the real inputs and returns its output, e.g.
            ``lambda m: m.forward_features(x[:2])``; used to find what folds and to check the copy.
    Returns:
        (copy, {"batchnorm": pairs folded, "padding": convolutions padded statically, "activation":
        activations fused into their convolution}); the module itself and zero counts when nothing folds or
        the check fails.
    """
    none = {"batchnorm": 0, "padding": 0, "activation": 0}
    if not any(isinstance(m, nn.BatchNorm2d) and _after_norm(m) is not None or _pads_itself(m)
               for m in module.modules()):
        return module, none  # text encoders, LayerNorm models: no copy, no sample pass
    was_training = module.training
    module.eval()
    try:
        reference = run(module).float()
    finally:
        module.train(was_training)
    folded = copy.deepcopy(module).eval()
    made_by: dict[int, nn.Module] = {}
    pairs: list[tuple[nn.Module, nn.Module]] = []
    sizes: dict[nn.Module, tuple[int, int]] = {}

    def remember(conv: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        made_by[id(out)] = conv
        if _pads_itself(conv):
            sizes[conv] = tuple(inputs[0].shape[-2:])

    def match(bn: nn.Module, inputs: tuple) -> None:
        conv = made_by.get(id(inputs[0]))
        if conv is not None and bn.track_running_stats and bn.running_var is not None:
            pairs.append((conv, bn))

    hooks = [m.register_forward_hook(remember) for m in folded.modules() if isinstance(m, nn.Conv2d)]
    hooks += [m.register_forward_pre_hook(match) for m in folded.modules()
              if isinstance(m, nn.BatchNorm2d) and _after_norm(m) is not None]
    try:
        run(folded)
    finally:
        for h in hooks:
            h.remove()
    for conv, bn in pairs:
        scale = (bn.weight if bn.affine else torch.ones_like(bn.running_var)) / torch.sqrt(bn.running_var + bn.eps)
        shift = (bn.bias if bn.affine else torch.zeros_like(bn.running_mean)) - bn.running_mean * scale
        if conv.bias is not None:
            shift = shift + conv.bias * scale
        conv.weight = nn.Parameter(conv.weight * scale.reshape(-1, *[1] * (conv.weight.ndim - 1)))
        conv.bias = nn.Parameter(shift.detach().clone())
    replaced = {conv: _PaddedConv(conv, size) for conv, size in sizes.items()}
    fused = 0
    for conv, bn in pairs:
        after = _after_norm(bn)
        post = _post_op(after)
        target = replaced.get(conv, conv)
        if post is not None and _can_fuse(target):
            replaced[conv], after = _ConvAct(target, after[1], *post), nn.Identity()
            fused += 1
        _set_child(folded, bn, after)
    for conv, replacement in replaced.items():
        _set_child(folded, conv, replacement)
    if not pairs and not sizes:
        return module, none
    for p in folded.parameters():
        p.requires_grad_(False)
    out = run(folded).float()
    if out.shape != reference.shape or not torch.allclose(out, reference, rtol=rtol,
                                                          atol=atol * max(1.0, reference.abs().max().item())):
        return module, none
    return folded, {"batchnorm": len(pairs), "padding": len(sizes), "activation": fused}


_COPIES: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple, nn.Module | None]]" = weakref.WeakKeyDictionary()


def inference_module(module: nn.Module, run: Callable[[nn.Module], torch.Tensor]) -> nn.Module:
    """`fold_for_inference(module, run)[0]`, reused while none of the module's tensors has changed (a run
    extracts its train, val and test splits with one copy; a fine-tuned backbone gets a fresh one)."""
    state = tuple((t.data_ptr(), t._version) for t in itertools.chain(module.parameters(), module.buffers()))
    saved = _COPIES.get(module)
    if saved is not None and saved[0] == state:
        return module if saved[1] is None else saved[1]
    folded, _ = fold_for_inference(module, run)
    _COPIES[module] = (state, None if folded is module else folded)  # never a reference to the weak key itself
    return folded
