"""The settings of one training run: plain frozen dataclasses, declared once.

`fit` reads them and nothing else. The run config's ``train`` section (`config/schema.py`) is derived from
these fields: their types, defaults and bounds (`setting(..., ge=1)`), so a key exists in one place.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal

from ..options import check_bounds, option as setting


@dataclass(frozen=True)
class EarlyStopping:
    """Stop training when a validation metric stops improving."""

    metric: str | None = None  # None = val/<train.metric> (val/mse for regression, val/mAP for multi-label)
    mode: Literal["max", "min"] = "max"
    patience: int | None = setting(None, ge=1)  # None = early stopping off

    def __post_init__(self) -> None:
        check_bounds(self)


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation, precision, evaluation and caching settings of a run."""

    epochs: int | None = setting(None, ge=1)  # None = the default for the modality and data size (schedule_defaults)
    # Optimizer steps: the run trains this many, its last epoch ending early if need be, and the schedule's
    # warm-up and decay span them. As HF Trainer's max_steps, it overrides epochs. `auto` uses it to fit a part
    # of an epoch into a budget.
    max_steps: int | None = setting(None, ge=1)
    batch_size: int | None = setting(None, ge=1)  # None = that default too: 32 for images, 16 for text
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float | None = setting(None, gt=0.0)  # None = the strategy's default for the modality (Strategy.default_lrs)
    head_lr: float | None = setting(None, gt=0.0)  # None = that default too (for an image backbone: lr)
    head_lrs: dict[str, float] | None = None  # multi-task: a rate per task's head, by task name (others: head_lr)
    # multi-task: each task's single-task reference (its accuracy, mAP or MSE): rows then log delta_m (%)
    task_references: dict[str, float] | None = None
    weight_decay: float = setting(0.01, ge=0.0)
    momentum: float = setting(0.9, ge=0.0)
    # None = the modality's default (schedule_defaults): cosine without warm-up; text fine-tuning, the BERT
    # recipe's linear decay after a 10% warm-up
    scheduler: Literal["cosine", "linear", "constant"] | None = None
    warmup_epochs: float | None = setting(None, ge=0.0)
    grad_accum: int = setting(1, ge=1)
    clip_grad_norm: float | None = setting(None, gt=0.0)
    max_bad_steps: int = setting(0, ge=0)  # steps with a non-finite loss or gradient skipped before the run stops
    # The new head's start: random (seeded), or fit: the linear probe fitted on the pretrained backbone's
    # features (run/head_fit.py), then every epoch trains as the strategy says (LP-FT with the fit as its LP).
    head_init: Literal["random", "fit"] = "random"
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    channels_last: Literal["auto", "on", "off"] = "auto"
    fast_dropout: bool = True  # CPU dropout masks drawn 4 per RNG call (run/dropout.py); false = torch's own
    compile: bool = False  # torch.compile the training step's model (first epoch pays the compilation)
    fsdp: bool = False  # several processes: shard weights, gradients and optimizer state (run/sharding.py)
    # What the user cares about: it picks the best epoch (and early stopping), beside the usual metrics.
    metric: Literal["accuracy", "balanced_accuracy", "macro_f1", "f1", "auroc"] = "accuracy"
    positive_class: str | None = None  # metric f1: the class whose F1 counts (binary default: the rarer one)
    early_stopping: EarlyStopping = setting(default_factory=EarlyStopping)
    seed: int = 0
    eval_batch_size: int = setting(128, ge=1)
    progress: bool = True
    # Frozen-backbone features computed once and reused: auto = whenever the whole backbone is frozen.
    cache: Literal["auto", "on", "off"] = "auto"
    cache_views: int = setting(1, ge=1)  # with augmentation: 1 = the plain view only; k > 1 adds k-1 augmented views
    cache_dir: str | None = None  # default ~/.cache/headstart/features (or $HEADSTART_CACHE)
    # metrics.jsonl is always written; tensorboard also writes TensorBoard event files under <run>/tb
    log: Literal["jsonl", "tensorboard"] = "jsonl"
    report: bool = True  # hs.fit ends by writing <run>/report.html (headstart/report.py)
    # Wall-clock seconds (or "90s", "10m", "1.5h" in a config) from the start of the run (the command's start,
    # from the CLI) to its written results: training stops early enough to finish the test pass in time.
    time_limit: float | None = setting(None, gt=0.0)

    def __post_init__(self) -> None:
        check_bounds(self)


def with_rates(settings: TrainSettings, defaults: tuple[float, float | None]) -> tuple[TrainSettings, str]:
    """`settings` with the learning rates it leaves at None taken from `defaults` (lr, head_lr), and a line
    saying which rates the run uses and where they came from."""
    lr = settings.lr if settings.lr is not None else defaults[0]
    head_lr = settings.head_lr if settings.head_lr is not None or settings.lr is not None else defaults[1]
    named = settings.lr is not None and (settings.head_lr is not None or defaults[1] is None)
    origin = "as set" if named else "defaults for this backbone and strategy; train.lr / train.head_lr set them"
    line = f"learning rates: {lr:g} (backbone), {head_lr or lr:g} (head) ({origin})"
    return replace(settings, lr=lr, head_lr=head_lr), line


def schedule_defaults(modality: str, n_train: int, strategy: str, batch_size: int | None = None,
                      epochs: float | None = None) -> tuple[dict[str, Any], str]:
    """Batch size, epochs and learning-rate schedule for a run that names none of them, and the reason.

    Images: batch 32, 5 epochs (the strategy grid's setting for pretrained CNNs), cosine decay. Text encoders
    trained whole or in part follow the BERT recipe (Devlin et al. 2019: batch 16 or 32, 2 to 4 epochs, linear
    decay after a 10% warm-up): batch 16, and as many epochs as reach about 200 steps, from 2 to 5, so a few
    hundred texts still get enough updates and thousands are not trained past the 2 epochs that already
    reached 0.986 on BBC News (bench/text_bbc.py); the warm-up is 10% of the run's `epochs`. A linear probe
    trains its head on cached features, where epochs are nearly free.
    """
    text = modality == "text" and strategy != "linear-probe"
    batch = batch_size or (16 if modality == "text" else 32)
    if not text:
        return {"batch_size": batch, "epochs": 5, "scheduler": "cosine", "warmup_epochs": 0.0}, "the defaults"
    steps = max(1, math.ceil(n_train / batch))
    default_epochs = min(max(math.ceil(200 / steps), 2), 5)
    return ({"batch_size": batch, "epochs": default_epochs, "scheduler": "linear",
             "warmup_epochs": 0.1 * (epochs or default_epochs)},
            f"the BERT recipe's defaults for {n_train} texts: about 200 steps, 2-5 epochs, 10% warm-up")


def with_schedule(settings: TrainSettings, modality: str, n_train: int, strategy: str) -> tuple[TrainSettings, str]:
    """`settings` with the epochs and batch size it leaves at None filled in (`schedule_defaults`), and a
    line saying which it uses and where they came from."""
    length = settings.epochs
    if settings.max_steps is not None:  # it overrides epochs: as many as hold that many steps
        batch = settings.batch_size or schedule_defaults(modality, n_train, strategy)[0]["batch_size"]
        per_epoch = math.ceil(math.ceil(n_train / batch) / settings.grad_accum)  # optimizer steps
        length = settings.max_steps / per_epoch  # in epochs, for the warm-up's 10%
        settings = replace(settings, epochs=math.ceil(length))
    defaults, why = schedule_defaults(modality, n_train, strategy, settings.batch_size, length)
    keys = ("epochs", "batch_size", "scheduler", "warmup_epochs")
    named = all(getattr(settings, k) is not None for k in keys)
    settings = replace(settings, **{k: defaults[k] if getattr(settings, k) is None else getattr(settings, k)
                                    for k in keys})
    origin = "as set" if named else f"{why}; train.{' / train.'.join(keys)} set them"
    warmup = f" after {settings.warmup_epochs:g} warm-up epochs" if settings.warmup_epochs else ""
    cap = f" ({settings.max_steps} steps: train.max_steps)" if settings.max_steps else ""
    return settings, (f"{settings.epochs} epochs{cap}, batch {settings.batch_size}, {settings.scheduler} schedule"
                      f"{warmup} ({origin})")
