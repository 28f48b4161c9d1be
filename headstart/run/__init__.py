"""Running training: fit() and its pieces (loop, optimizer, checkpoints, precision)."""
from .trainer import RunResult, fit, read_metrics

__all__ = ["RunResult", "fit", "read_metrics"]
