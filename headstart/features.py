"""Frozen-backbone features: extracted once, batched, in the fastest safe precision, cached on disk.

The cache key is the content of everything that decides the features: the backbone's weights (hashed
tensors, so a fine-tuned or edited backbone never reuses stale features), its preprocessing, the data's
fingerprint, the view (plain or an augmentation seed) and the precision. A file whose key, shape or bytes
do not check out is rebuilt, never used.
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
from .run.loop import to_device
from .run.precision import autocast

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


@torch.no_grad()
def extract_features(backbone: nn.Module, batcher, *, batch_size: int = 128, bf16: bool = False,
                     channels_last: bool = False, device: torch.device | None = None,
                     generator: torch.Generator | None = None, progress=None) -> torch.Tensor:
    """`forward_features` over a whole split in eval mode, in data order: (N, F) float32."""
    device = device or torch.device("cpu")
    was_training = backbone.training
    backbone.eval()
    outs, order = [], []
    batches = batcher.order(batch_size, shuffle=False, seed=0, epoch=0)
    try:
        for idx in progress(batches) if progress else batches:
            x = to_device(batcher.inputs(idx, generator), device, channels_last)
            with autocast(device, bf16):
                outs.append(backbone.forward_features(x).float().cpu())
            order.append(idx)
    finally:
        backbone.train(was_training)
    out = torch.cat(outs)
    return out[torch.argsort(torch.cat(order))]


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
    if path.exists():
        feats = _load_checked(path, key, len(batcher.data))
        if feats is not None:
            return feats, True
    feats = extract_features(backbone, batcher, bf16=bf16, generator=generator, **extract_kwargs)
    from safetensors.torch import save_file

    meta = {"key": key, "sha256": hashlib.sha256(feats.numpy().tobytes()).hexdigest(), "source": spec.source,
            "rows": str(feats.shape[0]), "view": view}
    atomic_write(path, lambda tmp: save_file({"features": feats.contiguous()}, tmp, metadata=meta))
    return feats, False

