"""What each epoch trains on: raw inputs, or the cached outputs of the frozen part of the model.

A frozen backbone gives the same features every epoch, and a frozen prefix of a chain backbone the same
activations: `EpochInputs` trains the head (or the trainable suffix) on them instead, exactly, and drops a
cache as soon as the part it covers trains. Each epoch's choice is one `EpochPlan`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..backbones.stages import StageChain, frozen_prefix_length, sequential_stages
from ..data import FeatureBatcher, FeatureData, TwoStreamBatcher, make_batcher
from ..features import cached_features
from ..runtime import run_over_split


@dataclass(frozen=True)
class EpochPlan:
    """What one epoch trains and evaluates on."""

    step_model: nn.Module  # runs the training steps (a DDP wrapper under several processes)
    eval_model: nn.Module
    train: Any  # batcher of the training split
    val: Any  # batcher of the val split
    source: str  # logged as the row's "inputs": raw inputs, cached features, cached activations after k stages
    # Steps on cached features run the head alone, in fp32: bf16 saves nothing on one small matmul and costs
    # the head precision (the benchmark's cached linear probe lost about a point in bf16).
    head_only: bool = False


class HeadOnly(nn.Module):
    """The model as seen by a step on cached features: features in, head out."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, features: torch.Tensor, with_features: bool = False):
        if with_features:
            return self.model.forward_heads(features), features
        return self.model.forward_head(features)

    def train(self, mode: bool = True) -> "HeadOnly":
        self.model.train(mode)  # the model's own BN policy decides what really goes to train mode
        self.training = mode
        return self


def cached_feature_batchers(model, train, val, *, augment: bool, views: int, seed: int,
                            cache_dir: str | Path | None, bf16: bool, channels_last: bool, batch_size: int,
                            device: torch.device | None = None) -> tuple[list[FeatureBatcher], FeatureBatcher]:
    """Cached features of the train split (one batcher per view) and of the val split (plain view).

    View 0 is the plain (eval-transform) view; with augmentation and views > 1, view v is the training
    transform drawn with a generator seeded by (seed, v), so epochs cycle through a few augmented copies at
    the cost of `views` extraction passes instead of one per epoch.
    """
    kwargs = dict(cache_dir=cache_dir, bf16=bf16, channels_last=channels_last, batch_size=batch_size, device=device)
    fp = train.fingerprint()
    train_views = []
    for v in range(views if augment else 1):
        batcher = make_batcher(train, model.spec, train=v > 0, augment=augment)
        gen = torch.Generator().manual_seed(seed * 1_000_003 + v) if v else None
        feats, _ = cached_features(model.backbone, model.spec, batcher, fp, view="plain" if v == 0 else
                                   f"aug-{seed}-{v}", generator=gen, **kwargs)
        train_views.append(FeatureBatcher(FeatureData(feats, train)))
    val_feats, _ = cached_features(model.backbone, model.spec, make_batcher(val, model.spec, train=False),
                                   val.fingerprint(), **kwargs)
    return train_views, FeatureBatcher(FeatureData(val_feats, val))


class SuffixModel(nn.Module):
    """The model as seen by a step on cached prefix activations: the trainable stages, pooling, head."""

    def __init__(self, model: nn.Module, stages: list[nn.Module]):
        super().__init__()
        self.model = model
        self.chain = StageChain(stages, finish=True)

    def forward(self, activations: torch.Tensor, with_features: bool = False):
        features = self.chain(activations)
        if with_features:
            return self.model.forward_heads(features), features
        return self.model.forward_head(features)

    def train(self, mode: bool = True) -> "SuffixModel":
        self.model.train(mode)
        self.training = mode
        return self


@torch.no_grad()
def prefix_activations(stages: list[nn.Module], batcher, *, bf16: bool, channels_last: bool, batch_size: int,
                       device: torch.device | None = None) -> torch.Tensor:
    """Outputs of the frozen leading stages for a whole split (plain view), in data order.

    Stored in bf16 when the run computes in bf16 (half the memory; the values were bf16 anyway).
    """
    chain = StageChain(stages, finish=False)
    return run_over_split(chain, batcher, batch_size=batch_size, bf16=bf16, channels_last=channels_last,
                          device=device, out_dtype=torch.bfloat16 if bf16 else torch.float32)[0]


def prefix_cache_batchers(model, stages: list[nn.Module], k: int, train, val, *, bf16: bool, channels_last: bool,
                          batch_size: int, budget_gb: float, device: torch.device | None = None):
    """Batchers over activations after the first `k` (frozen) stages, or None when they exceed the budget."""
    probe = prefix_activations(stages[:k], make_batcher(train.subset(torch.arange(1)), model.spec, train=False),
                               bf16=bf16, channels_last=channels_last, batch_size=1, device=device)
    needed_gb = probe.element_size() * probe.numel() * (len(train) + len(val)) / 1e9
    if needed_gb > budget_gb:
        return None
    acts = [prefix_activations(stages[:k], make_batcher(part, model.spec, train=False), bf16=bf16,
                               channels_last=channels_last, batch_size=batch_size, device=device)
            for part in (train, val)]
    return FeatureBatcher(FeatureData(acts[0], train)), FeatureBatcher(FeatureData(acts[1], val))


def chain_stages(model, train) -> list[nn.Module] | None:
    """The backbone's stages in forward order, checked on (up to) two training samples; None when its forward
    is not such a chain."""
    example = make_batcher(train.subset(torch.arange(min(2, len(train)))), model.spec, train=False)
    return sequential_stages(model.backbone, example.inputs(torch.arange(len(example.data))))


class PrefixCache:
    """Activations at the frozen boundary of a partially trainable chain backbone, reused across epochs.

    Recomputed when the boundary moves (gradual unfreezing) and dropped when nothing leading is frozen.
    Used only on the plain view, so `cache: auto` enables it only when augmentation is off.
    """

    def __init__(self, budget_gb: float = 4.0):
        self.budget_gb = budget_gb
        self.stages: list[nn.Module] | None = None
        self.checked = False
        self.k = 0
        self.batchers = None

    def plan(self, model, train, val, *, bf16: bool, channels_last: bool, batch_size: int, device=None):
        """The epoch's plan on cached activations, or None."""
        if not self.checked:
            self.stages = chain_stages(model, train)
            self.checked = True
        if self.stages is None:
            return None
        model.train()  # the BN policy decides which stages act the same in train mode
        k = frozen_prefix_length(self.stages)
        if k == 0:
            self.batchers, self.k = None, 0
            return None
        if k != self.k or self.batchers is None:
            self.k = k
            self.batchers = prefix_cache_batchers(model, self.stages, k, train, val, bf16=bf16,
                                                  channels_last=channels_last, batch_size=batch_size,
                                                  budget_gb=self.budget_gb, device=device)
            if self.batchers is None:
                return None
        suffix = SuffixModel(model, self.stages[k:])
        return EpochPlan(suffix, suffix, self.batchers[0], self.batchers[1],
                         f"cached activations after {k} frozen stages")


class EpochInputs:
    """Per epoch, what the loop trains on: images through the full model, cached backbone features through
    the head, or cached prefix activations through the trainable suffix. Every choice is exact for frozen
    parts; caches are dropped as soon as the part they cover trains.

    cache: ``auto`` uses features whenever the whole backbone is frozen (epochs cycle over `views` views under
    augmentation) and prefix activations when augmentation is off; ``on`` uses both always (plain view);
    ``off`` never caches. Under DDP (`wrap` = the accelerator's prepare_model) feature extraction is sharded
    across the ranks, the plain view only, and the head trains wrapped so its gradients are averaged; the
    prefix cache is single-process (each rank would hold every row's activations). Data with an unlabeled
    stream trains on raw inputs: its second stream goes through the whole model.
    """

    def __init__(self, model, data, *, cache: str, augment: bool, views: int, seed: int, cache_dir, bf16: bool,
                 channels_last: bool, batch_size: int, device, processes: int, budget_gb: float = 4.0, wrap=None):
        self.data = data
        self.images = make_batcher(data.train, model.spec, train=True, augment=augment)
        if data.unlabeled is not None:
            self.images = TwoStreamBatcher(self.images, make_batcher(data.unlabeled, model.spec, train=True,
                                                                     augment=augment))
        self.val_images = make_batcher(data.val, model.spec, train=False)
        self.enabled = cache != "off" and data.unlabeled is None
        self.prefix_enabled = self.enabled and processes == 1 and (cache == "on" or not augment)
        self.augment, self.seed, self.cache_dir = augment, seed, cache_dir
        self.views = views if processes == 1 else 1  # augmented views draw in batch order: not shardable
        self.wrap = wrap if processes > 1 else None
        self.head_step = None
        self.kwargs = dict(bf16=bf16, channels_last=channels_last, batch_size=batch_size, device=device)
        self.features = None
        self.prefix = PrefixCache(budget_gb)
        self.last: EpochPlan | None = None

    def for_epoch(self, core, model, epoch: int) -> EpochPlan:
        """This epoch's plan (`core` is the model itself, `model` what trains it: maybe a DDP wrapper)."""
        self.last = self._plan(core, model, epoch)
        return self.last

    def _plan(self, core, model, epoch: int) -> EpochPlan:
        if self.enabled and not core.backbone_trainable():
            if self.features is None:
                self.features = cached_feature_batchers(core, self.data.train, self.data.val, augment=self.augment,
                                                        views=self.views, seed=self.seed, cache_dir=self.cache_dir,
                                                        **self.kwargs)
            views, val = self.features
            if self.head_step is None:
                self.head_step = self.wrap(HeadOnly(core)) if self.wrap else HeadOnly(core)
            return EpochPlan(self.head_step, HeadOnly(core), views[epoch % len(views)], val, "cached features",
                             head_only=True)
        self.features, self.head_step = None, None  # stale once the backbone trains
        if self.prefix_enabled:
            plan = self.prefix.plan(core, self.data.train, self.data.val, **self.kwargs)
            if plan is not None:
                return plan
        return EpochPlan(model, core, self.images, self.val_images, "raw inputs")

    def test_inputs(self, best_model, test):
        """(model, batcher, head_only) for the test pass: cached features when the run ended with a frozen
        backbone, else the raw test inputs.

        The key holds the best model's own backbone weights, so features are reused only when they are its
        features; a later run on the same backbone and test data (another probe) skips the pass entirely.
        """
        if not (self.enabled and self.last is not None and self.last.head_only):
            return best_model, make_batcher(test, best_model.spec, train=False), False
        feats, _ = cached_features(best_model.backbone, best_model.spec, make_batcher(test, best_model.spec,
                                                                                     train=False),
                                   test.fingerprint(), cache_dir=self.cache_dir, **self.kwargs)
        return HeadOnly(best_model), FeatureBatcher(FeatureData(feats, test)), True
