"""Regularised fine-tuning: loss terms that keep a fine-tuned model close to what pre-training gave it.

The objective adds them (`with_regularizers`); a strategy only says which. TLlib's tables: little gain with
full data, large gains with few labels (CUB with 15% of labels: 51.2 -> 57.6).
"""
from __future__ import annotations

import torch

from . import STRATEGIES
from .freezing import Full


class L2SP:
    """L2-SP (Li, Grandvalet & Davoine, ICML 2018, "Explicit inductive bias for transfer learning").

        Omega(w) = alpha/2 * ||w_S - w0_S||^2 + beta/2 * ||w_new||^2

    w_S are the backbone parameters with pretrained values w0_S (a snapshot taken when this term is built),
    w_new the head's. Only trainable backbone parameters contribute (frozen ones equal w0 anyway), in fp32.
    Build it before a resumed state is loaded, so w0 is the pretrained weights, not the checkpoint's.
    """

    needs_features = False

    def __init__(self, model, alpha: float = 0.01, beta: float = 0.01):
        self.alpha, self.beta = alpha, beta
        self.reference = {n: p.detach().clone().float() for n, p in model.backbone.named_parameters()}

    def __call__(self, model, features: torch.Tensor | None = None) -> torch.Tensor:
        total = torch.zeros((), device=next(model.parameters()).device)
        if self.alpha:
            for name, p in model.backbone.named_parameters():
                if p.requires_grad and name in self.reference:
                    ref = self.reference[name]
                    if ref.device != p.device:  # the snapshot was taken before the model moved to its device
                        ref = self.reference[name] = ref.to(p.device)
                    total = total + 0.5 * self.alpha * (p.float() - ref).pow(2).sum()
        if self.beta:
            for p in model.head.parameters():
                if p.requires_grad:
                    total = total + 0.5 * self.beta * p.float().pow(2).sum()
        return total


class BatchSpectralShrinkage:
    """BSS (Chen et al., NeurIPS 2019, "Catastrophic forgetting meets negative transfer: batch spectral
    shrinkage for safe transfer learning").

        L_bss = eta * sum_{i=1..k} sigma_{-i}^2

    sigma_{-i} are the k smallest singular values of the batch feature matrix F of shape (N, F) (the
    backbone's pooled features). Shrinking them suppresses the spectral components that carry little
    transferable knowledge and most of the negative transfer. In fp32: bf16 singular values are too coarse.
    """

    needs_features = True

    def __init__(self, eta: float = 0.001, k: int = 1):
        self.eta, self.k = eta, k

    def __call__(self, model, features: torch.Tensor | None = None) -> torch.Tensor:
        assert features is not None, "BSS needs the batch features"
        with torch.autocast(features.device.type, enabled=False):
            # svdvals (not svd) keeps the backward stable when singular values repeat.
            sigma = torch.linalg.svdvals(features.float())  # descending, min(N, F) values
        k = min(self.k, sigma.numel())
        return self.eta * sigma[-k:].pow(2).sum()


class RegularizedObjective:
    """An objective plus loss terms: ``loss = base loss + sum(term(model, features))``.

    The base objective runs unchanged; the features are read with a forward pre-hook on the head, so the
    forward still goes through ``model(x)``: calling `forward_features` on an unwrapped model would bypass
    DDP's gradient hooks. `loss(outputs, y)` (evaluation) stays the plain base loss.
    """

    def __init__(self, base, terms: list):
        self.base, self.terms = base, list(terms)

    def loss(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.base.loss(outputs, y)

    def __call__(self, model, x, y: torch.Tensor) -> dict:
        core = model
        while not hasattr(core, "forward_head"):  # DDP keeps the model in .module, a cached-feature step in .model
            core = getattr(core, "module", None) or core.model
        captured: list[torch.Tensor] = []
        hook = None
        if any(t.needs_features for t in self.terms):
            hook = core.head.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
        try:
            out = dict(self.base(model, x, y))
        finally:
            if hook is not None:
                hook.remove()
        features = captured[-1] if captured else None
        for term in self.terms:
            value = term(core, features)
            out[f"reg/{type(term).__name__}"] = value.detach()
            out["loss"] = out["loss"] + value
        return out


def with_regularizers(objective, terms: list):
    """`objective` with `terms` added, or `objective` itself when there are none."""
    return RegularizedObjective(objective, terms) if terms else objective


@STRATEGIES.register("l2-sp")
class L2SPFineTune(Full):
    """Full fine-tuning with L2-SP: a pull towards the pretrained weights instead of weight decay."""

    name = "l2-sp"

    def __init__(self, l2sp_alpha: float = 0.01, l2sp_beta: float = 0.01, **common):
        super().__init__(l2sp_alpha=l2sp_alpha, l2sp_beta=l2sp_beta, **common)


@STRATEGIES.register("bss")
class BSSFineTune(Full):
    """Full fine-tuning with batch spectral shrinkage of the features' smallest singular values."""

    name = "bss"

    def __init__(self, bss_eta: float = 0.001, bss_k: int = 1, **common):
        super().__init__(bss_eta=bss_eta, bss_k=bss_k, **common)
