"""Crash-safe save and resume of the full training state (model, optimizer, schedule, RNG, early stopping)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write
from ..errors import BundleError

CHECKPOINT = "checkpoints/last.pt"


def save_checkpoint(run_dir: str | Path, state: dict[str, Any]) -> Path:
    """Write the state atomically: a run killed while saving keeps its previous checkpoint."""
    return atomic_write(Path(run_dir) / CHECKPOINT, lambda tmp: torch.save(state, tmp))


def load_checkpoint(run_dir: str | Path) -> dict[str, Any] | None:
    """The last checkpoint of a run folder, or None if it has none. Tensors and plain data only."""
    path = Path(run_dir) / CHECKPOINT
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise BundleError(f"cannot read checkpoint {str(path)!r} ({type(e).__name__}: {e}). It is damaged or "
                          "not a headstart checkpoint; delete it to restart the run from scratch.") from None
