"""Unsupervised domain adaptation: terms that pull the features of unlabeled target-domain inputs toward the
labelled source's. Each is an objective term over the step's two streams: the labelled batch and the batch of
target inputs beside it (`batch.streams["unlabeled"]`, from `data.TwoStreamBatcher`).

| term | loss | paper |
|---|---|---|
| `coral` | ||C_s - C_t||_F^2 / (4 d^2), C the feature covariance | Sun and Saenko, ECCV-W 2016 (Deep CORAL) |
| `mmd` | sum over Gaussian kernels of the biased MMD^2 between feature batches | Long et al., ICML 2015 (DAN) |
| `dann` | BCE of a domain discriminator on features through a gradient reversal layer | Ganin et al., JMLR 2016 |
| `cdan` | as dann, on features conditioned on the predictions (multilinear map); +E: entropy weights | Long et al., NeurIPS 2018 |
| `mcc` | minimum class confusion of the target predictions | Jin et al., ECCV 2020 |

The adversarial terms own a discriminator (`parameters`, trained with the heads, saved in checkpoints) and
ramp their reversal coefficient up with training progress, lambda(p) = 2 / (1 + exp(-10 p)) - 1, p the
fraction of epochs done (Ganin et al.), so a resumed run continues the same schedule.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from ..registry import Registry

DOMAIN_TERMS: Registry = Registry("domain adaptation method")
STREAM = "unlabeled"


class _Reverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, coeff: float):
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.coeff * grad, None


def reverse_gradient(x: torch.Tensor, coeff: float = 1.0) -> torch.Tensor:
    """Identity forward; the gradient flows back multiplied by -coeff (the gradient reversal layer)."""
    return _Reverse.apply(x, coeff)


def ramp(progress: float) -> float:
    """Ganin et al.'s reversal schedule: 0 at the start, near 1 by the end."""
    return 2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0


def target_features(step) -> torch.Tensor:
    """The target stream's pooled features, computed once per step (every term of the step shares them)."""
    cache = step.__dict__.setdefault("_streams", {})
    if STREAM not in cache:
        if STREAM not in step.batch.streams:
            raise ConfigError("a domain adaptation term needs unlabeled target data beside the labelled batch "
                              "(data with an unlabeled split: hs.data.with_target(data, target) or --target-data)")
        cache[STREAM] = step.model.forward_features(step.batch.streams[STREAM])
    return cache[STREAM]


def target_logits(step) -> torch.Tensor:
    cache = step.__dict__.setdefault("_streams", {})
    key = STREAM + "/logits"
    if key not in cache:
        cache[key] = step.model.forward_head(target_features(step))
    return cache[key]


class DomainTerm:
    """Base: no parameters, no state, no schedule."""

    name = "domain"

    def parameters(self) -> list[torch.Tensor]:
        return []

    def to(self, device) -> "DomainTerm":
        return self

    def begin_epoch(self, epoch: int, epochs: int) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


@DOMAIN_TERMS.register("coral", help="Deep CORAL: align the feature covariances (Sun and Saenko 2016)")
class Coral(DomainTerm):
    name = "domain/coral"

    def __init__(self, num_features: int, num_classes: int):
        pass

    def __call__(self, step) -> torch.Tensor:
        return coral(step.features.float(), target_features(step).float())


def coral(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """||C_s - C_t||_F^2 / (4 d^2) of two (N, d) feature batches."""
    d = source.shape[1]

    def cov(x):
        x = x - x.mean(0, keepdim=True)
        return x.T @ x / max(x.shape[0] - 1, 1)

    return (cov(source) - cov(target)).pow(2).sum() / (4 * d * d)


@DOMAIN_TERMS.register("mmd", help="multi-kernel maximum mean discrepancy (DAN, Long et al. 2015)")
class MultiKernelMMD(DomainTerm):
    name = "domain/mmd"

    def __init__(self, num_features: int, num_classes: int):
        pass

    def __call__(self, step) -> torch.Tensor:
        return mmd(step.features.float(), target_features(step).float())


def mmd(source: torch.Tensor, target: torch.Tensor, scales: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
        ) -> torch.Tensor:
    """Biased MMD^2 with a sum of Gaussian kernels whose bandwidths are `scales` times the mean squared
    distance of the joint batch."""
    x = torch.cat([source, target])
    dist = torch.cdist(x, x).pow(2)
    base = dist.detach().sum() / max(x.shape[0] ** 2 - x.shape[0], 1)
    kernel = sum(torch.exp(-dist / (base * s).clamp_min(1e-12)) for s in scales)
    n = source.shape[0]
    return kernel[:n, :n].mean() + kernel[n:, n:].mean() - 2 * kernel[:n, n:].mean()


class Discriminator(nn.Module):
    """The domain classifier of the adversarial terms: two hidden layers of 1024 (as the papers' code)."""

    def __init__(self, num_inputs: int, hidden: int = 1024):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(num_inputs, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


class _Adversarial(DomainTerm):
    """A discriminator trained to tell the domains apart, the features trained (through the reversal) to fool it."""

    def __init__(self, num_inputs: int, seed: int = 0):
        generator_state = torch.get_rng_state()
        torch.manual_seed(seed + 7)  # its own initialisation: the model's draws stay as they were
        self.discriminator = Discriminator(num_inputs)
        torch.set_rng_state(generator_state)
        self.coeff = 0.0

    def parameters(self) -> list[torch.Tensor]:
        return list(self.discriminator.parameters())

    def to(self, device) -> "_Adversarial":
        self.discriminator.to(device)
        return self

    def begin_epoch(self, epoch: int, epochs: int) -> None:
        self.coeff = ramp(epoch / max(epochs, 1))
        self.discriminator.train()

    def domain_loss(self, source: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None
                    ) -> torch.Tensor:
        inputs = reverse_gradient(torch.cat([source, target]).float(), self.coeff)
        logits = self.discriminator(inputs)
        labels = torch.cat([torch.ones(len(source)), torch.zeros(len(target))]).to(logits.device)
        return F.binary_cross_entropy_with_logits(logits, labels, weight=weights)

    def state_dict(self) -> dict[str, Any]:
        return {"discriminator": self.discriminator.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.discriminator.load_state_dict(state["discriminator"])


@DOMAIN_TERMS.register("dann", help="domain-adversarial training with gradient reversal (Ganin et al. 2016)")
class DANN(_Adversarial):
    name = "domain/dann"

    def __init__(self, num_features: int, num_classes: int, seed: int = 0):
        super().__init__(num_features, seed)

    def __call__(self, step) -> torch.Tensor:
        return self.domain_loss(step.features, target_features(step))


@DOMAIN_TERMS.register("cdan", help="conditional adversarial adaptation with entropy weights, CDAN+E (Long et al. "
                                    "2018)")
class CDAN(_Adversarial):
    """The discriminator sees f (x) g, the features conditioned on the (detached) predictions: their outer
    product, or a random multilinear map of 1024 dims when F x K is larger. Samples are weighted by
    1 + exp(-H(g)), so confident predictions count more (+E)."""

    name = "domain/cdan"
    RANDOM_DIM = 1024

    def __init__(self, num_features: int, num_classes: int, seed: int = 0):
        self.random = num_features * num_classes > 4096
        if self.random:
            gen = torch.Generator().manual_seed(seed + 11)
            self.rf = torch.randn(num_features, self.RANDOM_DIM, generator=gen)
            self.rg = torch.randn(num_classes, self.RANDOM_DIM, generator=gen)
        super().__init__(self.RANDOM_DIM if self.random else num_features * num_classes, seed)

    def to(self, device) -> "CDAN":
        super().to(device)
        if self.random:
            self.rf, self.rg = self.rf.to(device), self.rg.to(device)
        return self

    def condition(self, features: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g = logits.float().softmax(1).detach()
        f = features.float()
        if self.random:
            h = (f @ self.rf) * (g @ self.rg) / math.sqrt(self.RANDOM_DIM)
        else:
            h = torch.bmm(g.unsqueeze(2), f.unsqueeze(1)).flatten(1)
        entropy = -(g * g.clamp_min(1e-12).log()).sum(1)
        return h, 1.0 + torch.exp(-entropy)

    def __call__(self, step) -> torch.Tensor:
        hs, ws = self.condition(step.features, step.outputs[step.model.main_name])
        ht, wt = self.condition(target_features(step), target_logits(step))
        weights = torch.cat([ws / ws.sum(), wt / wt.sum()]) * (len(ws) + len(wt)) / 2
        return self.domain_loss(hs, ht, weights.detach())


@DOMAIN_TERMS.register("mcc", help="minimum class confusion on the target predictions (Jin et al. 2020)")
class MCC(DomainTerm):
    """Class confusion C = Y^T W Y of the temperature-scaled target predictions Y (T = 2.5), W weighting
    confident samples more; rows normalised; the loss is the off-diagonal mass over the classes."""

    name = "domain/mcc"

    def __init__(self, num_features: int, num_classes: int, temperature: float = 2.5):
        self.temperature = temperature

    def __call__(self, step) -> torch.Tensor:
        return class_confusion(target_logits(step).float(), self.temperature)


def class_confusion(logits: torch.Tensor, temperature: float = 2.5) -> torch.Tensor:
    n, k = logits.shape
    y = (logits / temperature).softmax(1)
    entropy = -(y * y.clamp_min(1e-12).log()).sum(1).detach()
    w = 1.0 + torch.exp(-entropy)
    w = (n * w / w.sum()).unsqueeze(1)
    confusion = (y * w).T @ y
    confusion = confusion / confusion.sum(1, keepdim=True)
    return (confusion.sum() - confusion.trace()) / k


def domain_term(name: str, num_features: int, num_classes: int, seed: int = 0):
    cls = DOMAIN_TERMS.get(name)
    return cls(num_features, num_classes, seed=seed) if issubclass(cls, _Adversarial) else cls(num_features,
                                                                                              num_classes)
