"""fit(): build everything for a run from plain arguments and drive the training loop, top to bottom."""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write_text
from ..bundle import bundle_writer
from ..config import RunConfig, StrategyConfig, config_to_yaml, validate_config
from ..data import DataSplits, num_batches
from ..data.batcher import make_batcher
from ..errors import ConfigError, DataError
from ..metrics import default_metrics
from ..model import TransferModel
from ..objectives import OBJECTIVES, balanced_class_weights, balanced_pos_weights
from ..strategies import get_strategy, trainable_summary
from ..strategies.regularizers import with_regularizers
from .cached_inputs import EpochInputs
from .checkpoint import BackgroundWriter, load_checkpoint, save_checkpoint, snapshot
from .loop import evaluate_split, train_epoch
from .optim import build_optimizer, build_scheduler, regroup
from .dropout import install as install_fast_dropout
from ..runtime import depthwise_in_fp32, pin_depthwise, resolve_channels_last, resolve_precision
from .selection import BestEpoch

METRICS_FILE, CONFIG_FILE, TEST_FILE = "metrics.jsonl", "config.yaml", "test_metrics.json"


@dataclass
class RunResult:
    """What a finished run produced; everything here is also in the run folder."""

    run_dir: Path
    history: list[dict[str, Any]]
    best_epoch: int
    best_metrics: dict[str, float]
    test_metrics: dict[str, float] | None = None
    stopped_early: bool = False
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def fit(model: TransferModel, data: DataSplits, strategy: str = "full", *, out: str | Path = "runs/run",
        resume: bool = False, bn: str = "auto", augment: bool = True, record: RunConfig | None = None,
        **train: Any) -> RunResult:
    """Train `model` on `data` and write a run folder; returns the history and best/test metrics.

    Args:
        strategy: a registered strategy name (``headstart list strategies``): ``linear-probe``, ``full``,
            ``partial``, ``gradual``, ``lp-ft``, ``layer-decay``, ``lora``, ``l2-sp``, ...
        out: the run folder (config.yaml, metrics.jsonl, checkpoints/, best/ bundle, test_metrics.json).
        resume: continue from the run folder's last checkpoint; without it an existing run is never overwritten.
        bn: BatchNorm policy, ``auto`` (the strategy's default), ``frozen`` or ``train``.
        **train: any ``train.*`` config key (epochs, lr, batch_size, precision, early_stopping={...}, ...)
            and any ``strategy.*`` option (trainable, unfreeze_every, lp_epochs, layer_decay, lora_r, ...).

    Example:
        run = hs.fit(model, hs.datasets.load("fashion-mnist", subset=100), "linear-probe", epochs=3)
        run = hs.fit(model, data, "lp-ft", lp_epochs=2, ft_lr_scale=0.1, epochs=5, out="runs/lpft")
    """
    start_time = time.perf_counter()
    strategy_cfg = validate_config({"strategy": {"name": strategy, "bn": bn, **{
        k: train.pop(k) for k in list(train) if k in StrategyConfig.model_fields and k != "name"}}}).strategy
    decision = None
    if strategy_cfg.name == "auto":  # choose a concrete strategy and settings; the user's explicit ones win
        from ..strategies.auto import choose

        prepare_head(model, data)
        decision = choose(model, data, strategy_cfg.budget, train.get("epochs"), seed=train.get("seed", 0),
                          cache_dir=train.get("cache_dir"), run_dir=out if resume else None)
        strategy = decision.strategy
        strategy_cfg = validate_config({"strategy": {"name": strategy, "bn": bn, **decision.options}}).strategy
        train = {**decision.train, **train}
        if train.get("progress", True):
            print(decision.explain())
    cfg = validate_config({"train": train}).train
    strat = get_strategy(strategy, bn=bn, **strategy_cfg.options())
    strat.check_schedule(cfg.epochs)
    run_dir = Path(out)
    prepare_head(model, data)
    record = make_record(record, model, data, strategy_cfg, augment, cfg, run_dir)
    state = open_run_folder(run_dir, record, resume)
    if decision is not None:
        from ..strategies.auto import DECISION_FILE

        atomic_write_text(run_dir / DECISION_FILE, json.dumps(decision.to_dict(), indent=2))

    torch.manual_seed(cfg.seed)
    start_epoch = state["epoch"] if state else 0
    # A checkpoint's optimizer state has the groups of its last finished epoch: rebuild those, load it, and
    # let the loop apply any change at start_epoch exactly as an uninterrupted run does.
    strat_epoch = max(start_epoch - 1, 0)
    strat.apply(model, epoch=strat_epoch)

    from accelerate import Accelerator  # device placement, DDP and backward; the loop stays ours

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    device = accelerator.device
    bf16_train = resolve_precision(cfg.precision, model, device, training=model.backbone_trainable())
    bf16_eval = resolve_precision(cfg.precision, model, device, training=False)
    # A depthwise convolution's bf16 backward is slow on CPUs: bf16 training steps keep those layers in fp32.
    pinned = pin_depthwise(bf16_train, model, device)
    channels_last = resolve_channels_last(cfg.channels_last, model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.fast_dropout:
        install_fast_dropout(model)

    optimizer = build_optimizer(strat.param_groups(model, strat_epoch, cfg.lr, cfg.weight_decay, cfg.head_lr),
                                cfg.optimizer, cfg.lr, cfg.momentum)
    steps_per_epoch = math.ceil(num_batches(len(data.train), cfg.batch_size, accelerator.num_processes)
                                / cfg.grad_accum)
    scheduler = build_scheduler(optimizer, steps_per_epoch * cfg.epochs,
                                round(cfg.warmup_epochs * steps_per_epoch), cfg.scheduler)
    objective = with_regularizers(make_objective(model, data, cfg), strat.regularizers(model))  # before any resume
    monitor, mode = monitored_metric(model, cfg)
    kept = BestEpoch(monitor, mode, len(data.val) if data.val is not None else 0)
    bad_epochs, stopped = 0, False
    if state:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        kept.load_state_dict(state)
        bad_epochs, stopped = state["bad_epochs"], state["stopped"]
    model = accelerator.prepare(model)
    core = accelerator.unwrap_model(model)
    # torch.compile (opt-in): measured 0 to -14% for CPU training steps here (ASSETS.md), +7-9% for inference.
    compiled = torch.compile(model) if cfg.compile else model

    # Which columns text came from, so `headstart predict` reads the same ones from a new file.
    data_meta = {"data": data.train.columns} if getattr(data.train, "columns", None) else {}
    image_batches = make_batcher(data.train, core.spec, train=True, augment=augment)
    val_image_batches = make_batcher(data.val, core.spec, train=False)
    inputs = EpochInputs(core, data, image_batches, val_image_batches, cache=cfg.cache, augment=augment,
                         views=cfg.cache_views, seed=cfg.seed, cache_dir=cfg.cache_dir, bf16=bf16_eval,
                         channels_last=channels_last, batch_size=cfg.eval_batch_size, device=device,
                         processes=accelerator.num_processes, wrap=accelerator.prepare_model)
    metric_names = default_metrics(core.task, core.num_outputs)
    eval_kwargs = dict(batch_size=cfg.eval_batch_size, bf16=bf16_eval, channels_last=channels_last, device=device)
    show = cfg.progress and accelerator.is_main_process
    if show:
        print(f"strategy {strat.name} (bn={strat.bn}), precision train={'bf16' if bf16_train else 'fp32'} "
              f"eval={'bf16' if bf16_eval else 'fp32'}"
              f"{' (depthwise convolutions in fp32)' if pinned else ''}, channels_last={channels_last}\n"
              + trainable_summary(core, optimizer))

    # Checkpoints and the best bundle are written from snapshots on a background thread: training goes on
    # while they reach the disk, and every write is atomic, so a run killed mid-write resumes from the last one.
    writer = BackgroundWriter()
    try:
        for epoch in range(start_epoch, cfg.epochs):
            if stopped:
                break
            if strat.changes_at(epoch):  # gradual unfreezing, LP-FT: a new trainable set and new optimizer groups
                strat.apply(core, epoch=epoch)
                regroup(optimizer, scheduler, strat.param_groups(core, epoch, cfg.lr, cfg.weight_decay, cfg.head_lr))
                bf16_train = resolve_precision(cfg.precision, core, device, training=core.backbone_trainable())
                pinned = pin_depthwise(bf16_train, core, device)
                if accelerator.num_processes > 1:  # DDP registers the parameters that need gradients when it wraps
                    model = accelerator.prepare_model(core)
                    compiled = torch.compile(model) if cfg.compile else model
                if show:
                    print(f"epoch {epoch + 1}: trainable set changed\n" + trainable_summary(core, optimizer))
            t0 = time.perf_counter()
            # Frozen parts compute the same thing every epoch: train on their cached outputs where exact.
            step_model, eval_model, train_batches, val_batches = inputs.for_epoch(core, compiled, epoch)
            row: dict[str, Any] = {"epoch": epoch + 1}
            with depthwise_in_fp32(core, enabled=pinned):
                row.update(train_epoch(step_model, objective, optimizer, scheduler, train_batches, epoch=epoch,
                                       batch_size=cfg.batch_size, grad_accum=cfg.grad_accum,
                                       clip_grad_norm=cfg.clip_grad_norm, bf16=bf16_train and not inputs.head_only,
                                       channels_last=channels_last, seed=cfg.seed, accelerator=accelerator,
                                       progress=progress_bar(show, f"epoch {epoch + 1}/{cfg.epochs}")))
            row["train_seconds"] = round(time.perf_counter() - t0, 3)
            row.update(evaluate_split(eval_model, val_batches, metric_names, "val", objective,
                                      **{**eval_kwargs, "bf16": bf16_eval and not inputs.head_only}))
            row["lr"] = optimizer.param_groups[-1]["lr"]
            row["seconds"] = round(time.perf_counter() - t0, 3)
            row["inputs"] = inputs.used
            if monitor not in row:
                raise ConfigError(f"early_stopping.metric {monitor!r} is not logged; choose one of "
                                  f"{', '.join(k for k in row if '/' in k)}")
            if kept.offer(row[monitor], row.get("val/loss"), epoch + 1):  # see selection.py for the rule
                bad_epochs = 0
                if accelerator.is_main_process:
                    writer.submit(bundle_writer(core, run_dir / "best", {"epoch": epoch + 1, "metrics": row, **data_meta}))
            else:
                bad_epochs += 1
            stopped = cfg.early_stopping.patience is not None and bad_epochs >= cfg.early_stopping.patience
            if accelerator.is_main_process:
                append_metrics(run_dir, row)
                state = snapshot({"epoch": epoch + 1, "model": core.state_dict(), "optimizer": optimizer.state_dict(),
                                  "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state(),
                                  **kept.state_dict(), "bad_epochs": bad_epochs, "stopped": stopped})
                writer.submit(lambda state=state: save_checkpoint(run_dir, state))
            if show:
                print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
            accelerator.wait_for_everyone()

    finally:
        writer.close()

    history = read_metrics(run_dir)
    best_epoch = kept.epoch
    best_row = next((r for r in history if r["epoch"] == best_epoch), {})
    test_metrics = None
    if data.test is not None and best_epoch:
        from ..bundle import load_model

        best_model = load_model(run_dir / "best", module=core.backbone.net if core.spec.source.startswith(
            "module:") else None)
        on_features = inputs.test_inputs(best_model, data.test)
        test_model, test_batches = on_features or (best_model, make_batcher(data.test, core.spec, train=False))
        test_metrics = evaluate_split(test_model, test_batches, metric_names, "test",
                                      **{**eval_kwargs, "bf16": bf16_eval and on_features is None})
        if accelerator.is_main_process:
            atomic_write_text(run_dir / TEST_FILE, json.dumps(test_metrics, indent=2))
    extra = bundle_report(run_dir / "best")
    if show and extra:
        print(extra["bundle"])
    return RunResult(run_dir, history, best_epoch, {k: v for k, v in best_row.items() if "/" in k},
                     test_metrics, stopped, time.perf_counter() - start_time, extra)


def bundle_report(folder: Path) -> dict[str, Any]:
    """Size of the best-model bundle, and what it holds (PEFT bundles hold adapters and head only)."""
    from ..bundle import WEIGHTS, read_meta

    if not (folder / WEIGHTS).is_file():
        return {}
    size = (folder / WEIGHTS).stat().st_size
    adapters = read_meta(folder).get("adapters")
    what = (f"{adapters['method']} adapters and head only, on base weights {adapters['base_weights']}"
            if adapters else "full weights")
    return {"bundle_bytes": size, "bundle": f"best model bundle: {size / 1e6:.3f} MB ({what}) in {folder}"}


def prepare_head(model: TransferModel, data: DataSplits) -> None:
    """Give a head-less model a head sized from the data; refuse a head that does not fit the data."""
    if data.val is None:
        raise DataError("training needs a validation split for model selection; load the data with "
                        "val_fraction > 0 or a separate val folder")
    if len(data.train) == 0:
        raise DataError("the training split is empty; check the data path, subset and val/test fractions")
    if model.task == "regression":
        outputs = 1 if data.train.targets.ndim == 1 else data.train.targets.shape[1]
        if model.head is None:
            model.reset_head(outputs)
        return
    multi = data.train.targets.ndim == 2  # (N, K) multi-hot targets
    if multi != (model.task == "multilabel"):
        raise DataError(f"the data is {'multi-label' if multi else 'single-label'} but the model's task is "
                        f"{model.task!r}; create the model with task="
                        f"{'multilabel' if multi else 'classification'!r} (CLI: data.multi_label decides).")
    if model.head is None:
        model.reset_head(len(data.classes), data.classes)
    elif model.num_outputs != len(data.classes):
        raise DataError(f"the model's head has {model.num_outputs} outputs but the data has "
                        f"{len(data.classes)} classes; create the model with num_classes={len(data.classes)} "
                        "or call model.reset_head(len(data.classes), data.classes)")
    elif model.labels != list(data.classes):
        model.labels = list(data.classes)


def make_objective(model: TransferModel, data: DataSplits, cfg):
    if model.task == "regression":
        return OBJECTIVES.get("mse")()
    if model.task == "multilabel":
        if cfg.loss not in ("cross_entropy", "bce"):  # cross_entropy is the default: binary for multi-label
            raise ConfigError(f"loss {cfg.loss!r} does not fit a multi-label model; use 'bce'")
        pos = balanced_pos_weights(data.train.targets) if cfg.class_weights == "balanced" else None
        return OBJECTIVES.get("bce")(pos_weight=pos)
    if cfg.loss != "cross_entropy":
        raise ConfigError(f"loss {cfg.loss!r} is for regression; a classification model uses 'cross_entropy'")
    weights = balanced_class_weights(data.train.targets, model.num_outputs) if cfg.class_weights == "balanced" else None
    return OBJECTIVES.get("cross_entropy")(label_smoothing=cfg.label_smoothing, class_weights=weights)


def monitored_metric(model: TransferModel, cfg) -> tuple[str, str]:
    es = cfg.early_stopping
    if model.task == "regression" and es.metric == "val/accuracy":  # the default makes no sense there
        return "val/mse", "min"
    if model.task == "multilabel" and es.metric == "val/accuracy":  # threshold-free ranking quality
        return "val/mAP", "max"
    return es.metric, es.mode


def make_record(record: RunConfig | None, model: TransferModel, data: DataSplits, strategy: StrategyConfig,
                augment: bool, cfg, run_dir: Path) -> RunConfig:
    """The resolved config written to the run folder: what the CLI gave, or what this call amounts to."""
    if record is not None:
        return record.model_copy(update={"train": cfg, "out": str(run_dir)})
    from ..data.datasets import DATASETS

    return validate_config({
        "model": {"backbone": model.spec.source, "weights": model.spec.weights, "head": model.head_args["kind"],
                  "head_hidden": model.head_args["hidden"], "dropout": model.head_args["dropout"]},
        "data": {"dataset": data.name if data.name in DATASETS else None, "augment": augment},
        "strategy": strategy.model_dump(), "train": cfg.model_dump(), "out": str(run_dir)})


def open_run_folder(run_dir: Path, record: RunConfig, resume: bool) -> dict | None:
    """Create the run folder, or on resume check it matches and return its last checkpoint.

    A run folder that already holds results is never overwritten without `resume`.
    """
    config_path = run_dir / CONFIG_FILE
    if not resume:
        if (run_dir / METRICS_FILE).exists() or (run_dir / "checkpoints").exists():
            raise ConfigError(f"run folder {str(run_dir)!r} already holds a run; resume it with resume=True "
                              "(CLI: --resume) or choose another out folder. Nothing was changed.")
        atomic_write_text(config_path, config_to_yaml(record))
        return None
    if config_path.exists():
        from ..config import load_config

        saved = load_config(config_path)
        if saved.train != record.train or saved.strategy != record.strategy:
            a, b = saved.train.model_dump(), record.train.model_dump()
            diff = {k: (a[k], b[k]) for k in a if a[k] != b[k]}
            raise ConfigError(f"cannot resume {str(run_dir)!r} with different settings {diff or record.strategy}"
                              " (saved, now); resume with the saved config.yaml or start a new run folder.")
    else:
        atomic_write_text(config_path, config_to_yaml(record))
    state = load_checkpoint(run_dir)
    keep = state["epoch"] if state else 0
    # Drop metric rows of an epoch whose checkpoint was never written (the run died in between).
    rows = [r for r in read_metrics(run_dir) if r["epoch"] <= keep]
    atomic_write_text(run_dir / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in rows))
    return state


def append_metrics(run_dir: Path, row: dict[str, Any]) -> None:
    with open(run_dir / METRICS_FILE, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def progress_bar(show: bool, desc: str):
    if not show:
        return None
    from tqdm.auto import tqdm

    return lambda it: tqdm(it, desc=desc, leave=False, dynamic_ncols=True)
