"""A faster dropout for CPU training: the same Bernoulli mask, drawn with a quarter of the RNG calls.

Why: on the CPU, torch's dropout draws one Mersenne-Twister number per element, on one thread. Fine-tuning
MiniLM at 128 tokens (batch 32) spent about half of each step there, most of it in the attention-probability
dropout (batch x heads x tokens x tokens elements per layer). Here one 64-bit draw (`random_` on int64)
gives four 15-bit uniforms, so an element is kept when its 15-bit number is below round((1 - p) * 2^15):
keep probability within 2^-16 of 1 - p, kept values scaled by 1 / (1 - p) as usual. Draws come from torch's
global generator, so `torch.manual_seed` and saved RNG states (exact resume) cover them.

`install(model)` swaps every `nn.Dropout` (p > 0) for `FastDropout` and routes transformers' attention
through `fast_dropout_attention` (attention dropout drawn the same way; without dropout it calls SDPA, so
evaluation and inference are unchanged). On other devices torch's own dropout runs (GPU RNG is fast).
`train.fast_dropout: false` keeps the model's own dropout.
"""
from __future__ import annotations

import torch
import torch.nn as nn

LANE_BITS = 15  # int64 random_ draws from [0, 2^63): four 16-bit lanes with the top bit of each masked off
LANE_MASK = (1 << LANE_BITS) - 1
ATTENTION_NAME = "headstart_fast_dropout"


def keep_mask(shape: torch.Size, p: float) -> torch.Tensor:
    """Boolean mask, each element True with probability 1 - p (to 2^-16), from torch's global CPU generator."""
    numel = 1
    for size in shape:
        numel *= size
    words = torch.empty((numel + 3) // 4, dtype=torch.int64).random_()
    lanes = words.view(torch.int16)[:numel] & LANE_MASK
    # `<= threshold - 1` rather than `< threshold`: 2^15 itself does not fit in int16 (p near 0 keeps all).
    return (lanes <= round((1.0 - p) * (1 << LANE_BITS)) - 1).view(shape)


def fast_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Dropout with the CPU mask from `keep_mask`; torch's dropout elsewhere and for p outside (0, 1)."""
    if not training or p <= 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return nn.functional.dropout(x, p, training)
    return x * keep_mask(x.shape, p) * (1.0 / (1.0 - p))


class FastDropout(nn.Dropout):
    """`nn.Dropout` (same `p`, same state dict: none) drawing its CPU mask with `keep_mask`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_dropout(x, self.p, self.training)


def fast_dropout_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention function: SDPA without dropout, eager attention with `fast_dropout` with it."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if dropout == 0.0 or query.device.type != "cpu":
        return ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask, scaling=scaling,
                                              dropout=dropout, **kwargs)
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    key = _repeat_kv(key, query.size(1) // key.size(1))
    value = _repeat_kv(value, query.size(1) // value.size(1))
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:  # True = attend
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask[..., : key.size(-2)]
    weights = fast_dropout(torch.softmax(scores, dim=-1), dropout, True)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def _repeat_kv(x: torch.Tensor, times: int) -> torch.Tensor:
    """Grouped-query attention: each key/value head serves `times` query heads."""
    return x if times == 1 else x.repeat_interleave(times, dim=1)


def _register_attention() -> bool:
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
    except ImportError:
        return False
    AttentionInterface.register(ATTENTION_NAME, fast_dropout_attention)
    # Masks in SDPA's format (boolean, True = attend, or None when nothing is masked), which both paths take.
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION_NAME, sdpa_mask)
    return True


def install(model: nn.Module) -> dict[str, int]:
    """Swap in the fast dropout (in place); returns how many dropout layers and attention stacks changed."""
    swapped = 0
    for parent in model.modules():
        for name, child in parent.named_children():
            if type(child) is nn.Dropout and child.p > 0.0:
                setattr(parent, name, FastDropout(child.p).train(child.training))
                swapped += 1
    attention = 0
    for sub in model.modules():
        config = getattr(sub, "config", None)
        if (getattr(sub, "_supports_attention_backend", False) and hasattr(sub, "set_attn_implementation")
                and getattr(config, "_attn_implementation", None) in ("sdpa", "eager")
                and _register_attention()):
            try:
                sub.set_attn_implementation(ATTENTION_NAME)
                attention += 1
            except (ValueError, TypeError, AttributeError):
                pass  # a model that cannot take a custom attention function keeps its own
    return {"dropout_layers": swapped, "attention_models": attention}
