"""Regularised fine-tuning: loss terms that keep a fine-tuned model close to what pre-training gave it.

A strategy says which (its l2sp_* / bss_* options); the objective adds them. TLlib's tables: little gain with
full data, large gains with few labels (CUB with 15% of labels: 51.2 -> 57.6).
"""
from __future__ import annotations

import torch


class L2SP:
    """L2-SP (Li, Grandvalet & Davoine, ICML 2018, "Explicit inductive bias for transfer learning").

        Omega(w) = alpha/2 * ||w_S - w0_S||^2 + beta/2 * ||w_new||^2

    w_S are the backbone parameters with pretrained values w0_S (a snapshot taken when this term is built),
    w_new the head's. Only trainable backbone parameters contribute (frozen ones equal w0 anyway), in fp32.
    Build it before a resumed state is loaded, so w0 is the pretrained weights, not the checkpoint's.
    """

    name = "reg/L2SP"

    def __init__(self, model, alpha: float = 0.01, beta: float = 0.01):
        self.alpha, self.beta = alpha, beta
        self.reference = {n: p.detach().clone().float() for n, p in model.backbone.named_parameters()}

    def __call__(self, step) -> torch.Tensor:
        model = step.model
        total = torch.zeros((), device=next(model.parameters()).device)
        if self.alpha:
            for name, p in model.backbone.named_parameters():
                if p.requires_grad and name in self.reference:
                    ref = self.reference[name]
                    if ref.device != p.device:  # the snapshot was taken before the model moved to its device
                        ref = self.reference[name] = ref.to(p.device)
                    total = total + 0.5 * self.alpha * (p.float() - ref).pow(2).sum()
        if self.beta:
            for p in (p for head in model.heads.values() for p in head.parameters()):
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

    name = "reg/BSS"

    def __init__(self, eta: float = 0.001, k: int = 1):
        self.eta, self.k = eta, k

    def __call__(self, step) -> torch.Tensor:
        features = step.features
        with torch.autocast(features.device.type, enabled=False):
            # svdvals (not svd) keeps the backward stable when singular values repeat.
            sigma = torch.linalg.svdvals(features.float())  # descending, min(N, F) values
        k = min(self.k, sigma.numel())
        return self.eta * sigma[-k:].pow(2).sum()
