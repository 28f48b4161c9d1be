"""Batch index order: seeded per epoch, sharded across ranks, reproducible when a run resumes."""
from __future__ import annotations

import math
from typing import Iterator

import torch

from ..errors import DataError

_EPOCH_STRIDE = 1000003  # a prime, so (seed, epoch) pairs map to distinct generator seeds


def _check(n: int, batch_size: int, rank: int, world_size: int) -> None:
    if n < 0:
        raise DataError(f"the number of samples must be >= 0, got {n}.")
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}.")
    if world_size < 1 or not 0 <= rank < world_size:
        raise DataError(f"rank must be in [0, world_size) with world_size >= 1, got rank={rank}, "
                        f"world_size={world_size}.")


def epoch_permutation(n: int, shuffle: bool, seed: int, epoch: int) -> torch.Tensor:
    """The order of all `n` indices in one epoch; it depends only on (seed, epoch)."""
    if not shuffle:
        return torch.arange(n)
    generator = torch.Generator().manual_seed(int(seed) * _EPOCH_STRIDE + int(epoch))
    return torch.randperm(n, generator=generator)


def _samples_per_rank(n: int, world_size: int) -> int:
    return math.ceil(n / world_size) if n else 0


def iterate_batches(n: int, batch_size: int, shuffle: bool, seed: int, epoch: int, rank: int = 0,
                    world_size: int = 1, drop_last: bool = False) -> Iterator[torch.Tensor]:
    """Yield int64 index tensors of one epoch's batches for this rank.

    With several ranks the epoch order is padded (by repeating its start) to a multiple of world_size and
    each rank takes every world_size-th index, so all ranks see the same number of batches. `drop_last`
    drops this rank's final short batch. To resume mid-epoch, skip the batches already done
    (e.g. `itertools.islice(iterate_batches(...), done, None)`): the order is the same.
    """
    _check(n, batch_size, rank, world_size)
    order = epoch_permutation(n, shuffle, seed, epoch)
    if world_size > 1 and n:
        total = _samples_per_rank(n, world_size) * world_size
        if total > n:
            order = order.repeat(math.ceil(total / n))[:total]
        order = order[rank::world_size]
    stop = (len(order) // batch_size) * batch_size if drop_last else len(order)
    for start in range(0, stop, batch_size):
        yield order[start:start + batch_size]


def num_batches(n: int, batch_size: int, world_size: int = 1, drop_last: bool = False) -> int:
    """How many batches iterate_batches yields per rank for the same arguments."""
    _check(n, batch_size, 0, world_size)
    per_rank = _samples_per_rank(n, world_size) if world_size > 1 else n
    return per_rank // batch_size if drop_last else math.ceil(per_rank / batch_size)
