"""Crash-safe save and resume of the full training state (model, optimizer, schedule, RNG, early stopping)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from ..atomic import atomic_write
from ..errors import BundleError, TrainingError

CHECKPOINT = "checkpoints/last.pt"


def save_checkpoint(run_dir: str | Path, state: dict[str, Any]) -> Path:
    """Write the state atomically: a run killed while saving keeps its previous checkpoint."""
    return atomic_write(Path(run_dir) / CHECKPOINT, lambda tmp: torch.save(state, tmp))


def nbytes(obj: Any) -> int:
    """Bytes of the tensors in a nested state: about what writing it needs on disk."""
    if isinstance(obj, torch.Tensor):
        return obj.element_size() * obj.numel()
    if isinstance(obj, dict):
        return sum(nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(nbytes(v) for v in obj)
    return 0


def snapshot(obj: Any) -> Any:
    """A copy of a nested state (dicts, lists, tensors) that later in-place updates cannot touch."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: snapshot(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(snapshot(v) for v in obj)
    return obj


class BackgroundWriter:
    """Runs file writes on one background thread so training continues while checkpoints hit the disk.

    Callers hand over snapshots, never live tensors, with a description of what is written. `check()` (at
    each epoch boundary) re-raises a failed write in the training thread as a TrainingError that names the
    file and the cause: a full disk shows within an epoch, not hours later. `close()` waits for the last one.
    """

    def __init__(self):
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="headstart-writer")
        self._pending: list = []

    def submit(self, write: Callable[[], Any], what: str = "a file", nbytes: int = 0) -> None:
        self._pending.append((self._pool.submit(write), what, nbytes))

    def check(self) -> None:
        """Raise the error of any write that has finished and failed."""
        for future, what, nbytes in [p for p in self._pending if p[0].done()]:
            self._pending.remove((future, what, nbytes))
            self._raise(future, what, nbytes)

    def wait(self) -> None:
        pending, self._pending = self._pending, []
        for future, what, nbytes in pending:
            self._raise(future, what, nbytes)

    @staticmethod
    def _raise(future, what: str, nbytes: int) -> None:
        error = future.exception()
        if error is None:
            return
        if isinstance(error, TrainingError):
            raise error
        size = f" (about {nbytes / 1e6:.1f} MB)" if nbytes else ""
        raise TrainingError(f"could not write {what}{size}: {type(error).__name__}: {error}. Is the disk full or "
                            "the folder read-only? The previous file is intact (writes are atomic): free space "
                            "and resume the run (--resume).") from error

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)


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
