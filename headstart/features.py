"""Frozen-backbone features: extracted once, batched, in the fastest safe precision, cached on disk.

The cache key is the content of everything that decides the features: the backbone's weights (hashed
tensors, so a fine-tuned or edited backbone never reuses stale features), its preprocessing, the data's
fingerprint, the view (plain or an augmentation seed) and the precision. A file whose key, shape or bytes
do not check out is rebuilt, never used.

Under DDP (a torch.distributed process group), extraction is sharded: each rank runs every world-th batch,
the rows are gathered on all ranks, and rank 0 writes the file. A cached file is used only when every rank
finds it valid, so the ranks always take the same path through the collective calls.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .atomic import atomic_write
from .fold import inference_module
from .runtime import run_over_split

FORMAT = "headstart-features-v1"


def default_cache_dir() -> Path:
    return Path(os.environ.get("HEADSTART_CACHE", Path.home() / ".cache" / "headstart")) / "features"


def weights_digest(module: nn.Module) -> str:
    """sha256 of every parameter and buffer (names, dtypes, shapes, bytes): the weights' content identity."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        if t.dtype == torch.bfloat16:  # numpy has no bf16: hash the raw 16-bit words
            t = t.view(torch.int16)
        h.update(memoryview(t.numpy()).cast("B") if t.numel() else b"")
    return h.hexdigest()


def cache_key(backbone: nn.Module, spec, data_fingerprint: str, view: str = "plain", bf16: bool = False) -> str:
    """Key of one feature matrix; it changes when the weights, preprocessing, data, view or precision do."""
    pre = spec.preprocessing.to_dict() if spec.preprocessing is not None else None
    record = {"format": FORMAT, "source": spec.source, "weights": weights_digest(backbone),
              "preprocessing": pre, "data": data_fingerprint, "view": view, "bf16": bf16}
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:32]


def process_group() -> tuple[int, int]:
    """(rank, world size) of the running torch.distributed group; (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_ranks(flag: bool) -> bool:
    """True when `flag` holds on every rank (a collective call under DDP)."""
    import torch.distributed as dist

    if process_group()[1] == 1:
        return flag
    t = torch.tensor([int(flag)])
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def _gather_rows(rows: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank's (rows, indices), concatenated on all ranks."""
    import torch.distributed as dist

    parts: list = [None] * process_group()[1]
    dist.all_gather_object(parts, (rows, idx))
    parts = [p for p in parts if p[1].numel()]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


@torch.no_grad()
def extract_features(backbone: nn.Module, batcher, *, batch_size: int = 128, bf16: bool = False,
                     channels_last: bool = False, device: torch.device | None = None,
                     generator: torch.Generator | None = None, progress=None) -> torch.Tensor:
    """`forward_features` over a whole split in eval mode, in data order: (N, F) float32.

    Under DDP each rank extracts every world-th batch and all ranks receive all rows. An augmented view
    (`generator`) draws its transforms in batch order, so it is extracted whole on every rank instead.
    """
    rank, world = process_group() if generator is None else (0, 1)
    frozen = None  # an inference copy of the backbone (BatchNorm and padding folded), built on the first batch

    def features(x):
        nonlocal frozen
        if frozen is None:
            sample = {k: v[:2] for k, v in x.items()} if isinstance(x, dict) else x[:2]
            frozen = inference_module(backbone, lambda m: m.forward_features(sample))
        return frozen.forward_features(x)

    was_training = backbone.training
    backbone.eval()
    try:
        out, idx = run_over_split(features, batcher, batch_size=batch_size, bf16=bf16, channels_last=channels_last,
                                  device=device, generator=generator, shard=(rank, world), progress=progress)
    finally:
        backbone.train(was_training)
    if world > 1:
        out, idx = _gather_rows(out, idx)
    return out[torch.argsort(idx)]


def _load_checked(path: Path, key: str, n: int) -> torch.Tensor | None:
    """The cached matrix if the file is intact and made for `key` with `n` rows; None otherwise."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            feats = f.get_tensor("features")
    except Exception as e:  # truncated or garbled: the header or the data do not parse
        warnings.warn(f"feature cache {path} is damaged ({type(e).__name__}); rebuilding it")
        return None
    if meta.get("key") != key or feats.ndim != 2 or feats.shape[0] != n:
        warnings.warn(f"feature cache {path} does not match this backbone/data; rebuilding it")
        return None
    if meta.get("sha256") != hashlib.sha256(feats.numpy().tobytes()).hexdigest():
        warnings.warn(f"feature cache {path} failed its checksum; rebuilding it")
        return None
    return feats


def cached_features(backbone: nn.Module, spec, batcher, data_fingerprint: str, *, cache_dir: str | Path | None = None,
                    view: str = "plain", generator: torch.Generator | None = None, bf16: bool = False,
                    **extract_kwargs: Any) -> tuple[torch.Tensor, bool]:
    """Features for a split, from the disk cache when a valid entry exists. Returns (features, was_cached).

    Args:
        view: "plain" for the eval transform, or a name for an augmented view drawn with `generator`.
    """
    key = cache_key(backbone, spec, data_fingerprint, view, bf16)
    path = Path(cache_dir or default_cache_dir()) / f"{key}.safetensors"
    feats = _load_checked(path, key, len(batcher.data)) if path.exists() else None
    if _all_ranks(feats is not None):
        return feats, True
    feats = extract_features(backbone, batcher, bf16=bf16, generator=generator, **extract_kwargs)
    rank, world = process_group()
    if rank == 0:
        from safetensors.torch import save_file

        meta = {"key": key, "sha256": hashlib.sha256(feats.numpy().tobytes()).hexdigest(), "source": spec.source,
                "rows": str(feats.shape[0]), "view": view}
        atomic_write(path, lambda tmp: save_file({"features": feats.contiguous()}, tmp, metadata=meta))
    if world > 1:
        import torch.distributed as dist

        dist.barrier()  # the file exists for every rank from here on
    return feats, False

