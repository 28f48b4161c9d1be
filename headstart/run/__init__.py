"""Running training: fit() over plain settings and its pieces (loop, inputs, optimizer, checkpoints, folder)."""
from .folder import RunFolder, read_metrics
from .settings import EarlyStopping, TrainSettings
from .trainer import RunResult, fit, prepare_head, prepare_task_heads

__all__ = ["EarlyStopping", "RunFolder", "RunResult", "TrainSettings", "fit", "prepare_head", "prepare_task_heads", "read_metrics"]
