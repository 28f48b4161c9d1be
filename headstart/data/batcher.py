"""Batchers: what the training loop asks a data split for, whatever its modality.

A batcher decides the batch order of an epoch (`order`) and turns a batch of indices into model inputs
(`inputs`): a float image tensor for images, a dict of token tensors for text. The loop never looks inside.
"""
from __future__ import annotations

from typing import Any, Protocol

import torch

from ..registry import Registry
from .batches import iterate_batches
from .images import ImageData
from .transforms import BatchTransform


class Batcher(Protocol):
    data: Any  # the split: has `targets` and `__len__`

    def order(self, batch_size: int, shuffle: bool, seed: int, epoch: int, rank: int = 0,
              world_size: int = 1) -> list[torch.Tensor]: ...

    def inputs(self, idx: torch.Tensor, generator: torch.Generator | None = None) -> Any: ...


BATCHERS: Registry = Registry("data modality")


@BATCHERS.register("image")
class ImageBatcher:
    """Images stored as uint8 are transformed batch by batch (resize, crop, normalise, augment)."""

    def __init__(self, data: ImageData, spec, train: bool, augment: bool = True):
        self.data = data
        self.transform = BatchTransform(spec.preprocessing, train=train, augment=augment)

    def order(self, batch_size: int, shuffle: bool, seed: int, epoch: int, rank: int = 0,
              world_size: int = 1) -> list[torch.Tensor]:
        return list(iterate_batches(len(self.data), batch_size, shuffle, seed, epoch, rank, world_size))

    def inputs(self, idx: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.transform(self.data.images[idx], generator)


def make_batcher(data, spec, train: bool, augment: bool = True) -> Batcher:
    """The batcher for a split of `data.modality` ("image" unless the split says otherwise)."""
    return BATCHERS.get(getattr(data, "modality", "image"))(data, spec, train, augment)
