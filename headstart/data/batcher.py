"""Batchers: what the training loop asks a data split for, whatever its modality.

A batcher decides the batch order of an epoch (`order`) and turns a batch of indices into model inputs
(`inputs`): a float image tensor for images, a dict of token tensors for text, feature rows for cached
features. `batch` gives a whole `Batch`: inputs, targets (by head), and any further input stream. The loop
never looks inside.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from ..registry import Registry
from ..runtime import to_device
from .batches import iterate_batches
from .images import ImageData
from .transforms import BatchTransform


class Batcher(Protocol):
    data: Any  # the split: has `targets` and `__len__`

    def order(self, batch_size: int, shuffle: bool, seed: int, epoch: int, rank: int = 0,
              world_size: int = 1) -> list[torch.Tensor]: ...

    def inputs(self, idx: torch.Tensor, generator: torch.Generator | None = None) -> Any: ...

    def batch(self, idx: torch.Tensor, generator: torch.Generator | None = None) -> "Batch": ...


@dataclass
class Batch:
    """One training batch: inputs and targets of the labelled stream, and further streams by name.

    `targets` is one tensor for a single-head model, or {head name: tensor} for several heads; `streams`
    holds inputs without labels (domain adaptation's target domain), e.g. {"unlabeled": x}.
    """

    inputs: Any
    targets: Any
    streams: dict[str, Any] = field(default_factory=dict)

    def target(self, head: str) -> torch.Tensor:
        """The targets of one head."""
        return self.targets[head] if isinstance(self.targets, dict) else self.targets

    def to(self, device: torch.device, channels_last: bool = False) -> "Batch":
        move = (lambda t: {k: v.to(device) for k, v in t.items()}) if isinstance(self.targets, dict) \
            else (lambda t: t.to(device))
        return Batch(to_device(self.inputs, device, channels_last), move(self.targets),
                     {k: to_device(v, device, channels_last) for k, v in self.streams.items()})


class SplitBatcher:
    """Shared by the batchers of one split: a plain batch order and whole batches of inputs and targets."""

    data: Any

    def order(self, batch_size: int, shuffle: bool, seed: int, epoch: int, rank: int = 0,
              world_size: int = 1) -> list[torch.Tensor]:
        mixed = getattr(self.data, "batch_order", None)  # multi-task data may mix its data sets per batch
        order = mixed(batch_size, shuffle, seed, epoch, rank, world_size) if mixed is not None else None
        if order is not None:
            return order
        return list(iterate_batches(len(self.data), batch_size, shuffle, seed, epoch, rank, world_size))

    def inputs(self, idx: torch.Tensor, generator: torch.Generator | None = None) -> Any:
        raise NotImplementedError

    def batch(self, idx: torch.Tensor, generator: torch.Generator | None = None) -> Batch:
        return Batch(self.inputs(idx, generator), take(self.data.targets, idx))


def take(targets: Any, idx: torch.Tensor) -> Any:
    """Rows `idx` of a target tensor, or of each task's tensor in a {task: targets} dict."""
    return {k: v[idx] for k, v in targets.items()} if isinstance(targets, dict) else targets[idx]


BATCHERS: Registry = Registry("data modality")


@BATCHERS.register("image")
class ImageBatcher(SplitBatcher):
    """Images stored as uint8 are transformed batch by batch (resize, crop, normalise, augment)."""

    def __init__(self, data: ImageData, spec, train: bool, augment: bool = True):
        self.data = data
        self.transform = BatchTransform(spec.preprocessing, train=train, augment=augment)

    def inputs(self, idx: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.transform(self.data.images[idx], generator)


class FeatureData:
    """A split whose inputs are precomputed rows (cached features or activations); same targets, classes and
    batch order (multi-task mixing) as its source split."""

    modality = "features"

    def __init__(self, features: torch.Tensor, source):
        if features.shape[0] != len(source):
            raise ValueError(f"{features.shape[0]} feature rows for a split of {len(source)} samples")
        self.features, self.targets, self.classes = features, source.targets, list(source.classes)
        self.batch_order = getattr(source, "batch_order", None)

    def __len__(self) -> int:
        return self.features.shape[0]


@BATCHERS.register("features")
class FeatureBatcher(SplitBatcher):
    """Batches of precomputed rows, in the same order an image batcher would give (same shuffles)."""

    def __init__(self, data: FeatureData, spec=None, train: bool = False, augment: bool = False):
        self.data = data

    def inputs(self, idx: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.data.features[idx].float()  # bf16-stored activations: compute dtype is autocast's call


class TwoStreamBatcher:
    """The labelled batcher's batches, each with a batch of a second, unlabeled split beside it.

    The epoch is the labelled split's. Labelled sample i meets unlabeled sample perm[i % n], with perm a
    permutation of the n unlabeled samples drawn per epoch from (seed, epoch): batches keep their size,
    every epoch pairs afresh, and a resumed run draws the same pairs.
    """

    def __init__(self, labelled, unlabeled, name: str = "unlabeled"):
        self.labelled, self.unlabeled, self.name = labelled, unlabeled, name
        self.data = labelled.data
        self._perm = torch.arange(len(unlabeled.data))
        self._augment = torch.Generator().manual_seed(0)

    def order(self, batch_size: int, shuffle: bool, seed: int, epoch: int, rank: int = 0,
              world_size: int = 1) -> list[torch.Tensor]:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        self._perm = torch.randperm(len(self.unlabeled.data), generator=gen)
        # The second stream draws its augmentation from its own generator: the labelled batches are
        # augmented exactly as they would be without it.
        self._augment = torch.Generator().manual_seed(seed * 1_000_003 + epoch + 500_009)
        return self.labelled.order(batch_size, shuffle, seed, epoch, rank, world_size)

    def inputs(self, idx: torch.Tensor, generator: torch.Generator | None = None) -> Any:
        return self.labelled.inputs(idx, generator)

    def batch(self, idx: torch.Tensor, generator: torch.Generator | None = None) -> Batch:
        batch = self.labelled.batch(idx, generator)
        own = self._augment if generator is not None else None
        batch.streams[self.name] = self.unlabeled.inputs(self._perm[idx % len(self._perm)], own)
        return batch


def make_batcher(data, spec, train: bool, augment: bool = True) -> Batcher:
    """The batcher for a split of `data.modality` (image, text or features)."""
    return BATCHERS.get(data.modality)(data, spec, train, augment)
