"""fit(): drive the training loop over plain settings, top to bottom.

`fit` is given everything it needs: the model, the data, a strategy object, an objective and the settings. It
knows nothing of configs or of `auto` (the public `hs.fit` in `api.py` resolves those and calls this).
"""
from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..bundle import WEIGHTS, bundle_writer, load_model, read_meta, update_meta
from ..data import DataSplits, make_batcher, num_batches
from ..data.tasks import tasks_of
from ..errors import ConfigError, DataError
from ..metrics import best_threshold, default_metrics
from ..model import TransferModel
from ..objectives import Objective
from ..runtime import (activation_bytes, available_bytes, depthwise_in_fp32, pin_depthwise, predict_outputs,
                       resolve_channels_last, resolve_precision)
from ..strategies import Strategy, trainable_summary
from .checkpoint import BackgroundWriter, nbytes, snapshot
from .deadline import Deadline, finish_seconds
from .distributed import check_processes, check_same_start, rank_batch_size
from .sharding import check_fsdp, full_optimizer_state, full_state, load_full_state, shard
from .dropout import install as install_fast_dropout
from .folder import TEST_FILE, RunFolder, read_metrics
from .head_fit import fit_head, head_solver, initial_head, why_not_fitted
from .inputs import EpochInputs
from .loop import BadSteps, evaluate_split, evaluate_target, score_outputs, train_epoch
from .optim import build_optimizer, build_scheduler, regroup
from .selection import BestEpoch, metric_setup, monitored_metric
from .settings import TrainSettings, with_rates, with_schedule


@dataclass
class RunResult:
    """What a finished run produced; everything here but `test_outputs` is also in the run folder."""

    run_dir: Path
    history: list[dict[str, Any]]
    best_epoch: int
    best_metrics: dict[str, float]
    test_metrics: dict[str, float] | None = None
    stopped_early: bool = False
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    # The best model's outputs on the test split, in data order (single-task runs): the report reuses them
    # instead of a second pass over the test split.
    test_outputs: torch.Tensor | None = None


def fit(model: TransferModel, data: DataSplits, strategy: Strategy, objective: Objective,
        settings: TrainSettings = TrainSettings(), out: str | Path | RunFolder = "runs/run", *,
        augment: bool = True, started: float | None = None, until: float | None = None,
        eval_s: float | None = None) -> RunResult:
    """Train `model` on `data` with `strategy` and `objective`; write the run folder `out`.

    `out` is an opened `RunFolder` (new, or resumed from its last checkpoint) or a path for a new run. The
    public `hs.fit` (api.py) builds every argument from keyword settings and the run config.
    `settings.time_limit` counts from `started` (time.time(); default: now); `until` is another deadline
    (`strategy: auto`'s budget). Whichever comes first ends training early enough to finish by then
    (`deadline.py`); `eval_s`, an evaluation pass's measured seconds per sample, sharpens its first guesses.
    """
    start_time = time.perf_counter()
    s, rates = with_rates(settings, strategy.default_rates(model.spec.modality))
    s, schedule = with_schedule(s, model.spec.modality, len(data.train), strategy.name)
    rates = f"{rates}\n{schedule}"
    prepare_head(model, data, s.seed)
    strategy.check_schedule(s.epochs)
    limits = [t for t in (until, (started or time.time()) + s.time_limit if s.time_limit else None) if t]
    deadline = Deadline.until(min(limits) if limits else None, len(data.val),
                              len(data.test) if data.test is not None else 0, s.batch_size,
                              finish_seconds(sum(p.numel() for p in model.parameters()) / 1e6), eval_s)
    folder = out if isinstance(out, RunFolder) else RunFolder.open(out, default_record(strategy, s))
    try:
        return _fit(model, data, strategy, objective, s, folder, augment, start_time, rates, deadline)
    finally:
        folder.close()


def _fit(model: TransferModel, data: DataSplits, strategy: Strategy, objective: Objective, s: TrainSettings,
         folder: RunFolder, augment: bool, start_time: float, rates: str, deadline: Deadline | None) -> RunResult:
    folder.record_run(fingerprints(data), environment(s.seed))
    state = folder.state
    torch.manual_seed(s.seed)
    start_epoch = state["epoch"] if state else 0
    # A checkpoint's optimizer state has the groups of its last finished epoch: rebuild those, load it, and
    # let the loop apply any change at start_epoch exactly as an uninterrupted run does.
    strategy.apply(model, epoch=max(start_epoch - 1, 0))

    from accelerate import Accelerator  # device placement, DDP and backward; the loop stays ours

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    device = accelerator.device
    # FSDP shards only contiguous parameters: channels_last weights are not (measured gain here: small).
    compute = Compute.prepare(replace(s, channels_last="off") if s.fsdp else s, model, device)
    check_memory(model, data, s, device)
    objective.to(device)  # a weighting's or a discriminator's own parameters live where the model does
    world = accelerator.num_processes
    if world > 1:
        check_same_start(start_epoch, device)
    solver = head_solver(strategy, model, data, objective, s, world)
    if solver.fits:  # one fit is the whole run
        s = replace(s, epochs=1, max_steps=None)
    # A fitted head has no learning rates or schedule to report: its line replaces them.
    rates = solver.why if solver.fits else f"{rates}\n{solver.why}" if solver.why else rates
    if s.fsdp:  # shard before the optimizer is built: fully_shard replaces the parameters
        check_fsdp(strategy, model, s, world, objective)
        shard(model.to(device))
    optimizer = build_optimizer(param_groups(strategy, model, max(start_epoch - 1, 0), s, objective), s.optimizer,
                                s.lr, s.momentum)
    rank_batch = rank_batch_size(s.batch_size, world)  # train.batch_size is the global batch
    check_processes(len(data.train), rank_batch, world)
    if data.unlabeled is not None and len(data.unlabeled) < rank_batch:
        raise DataError(f"the unlabeled target data has {len(data.unlabeled)} samples, fewer than one batch "
                        f"({rank_batch}): every batch would repeat them. Give more target data or a smaller "
                        "train.batch_size.")
    steps = math.ceil(num_batches(len(data.train), rank_batch, world) / s.grad_accum)
    total_steps = min(steps * s.epochs, s.max_steps or steps * s.epochs)
    s = replace(s, epochs=math.ceil(total_steps / steps))  # train.max_steps may end the run epochs early
    scheduler = build_scheduler(optimizer, total_steps, round(s.warmup_epochs * steps), s.scheduler)
    objective = objective.with_terms(strategy.regularizers(model))  # before any resume: L2-SP's w0 is pretrained
    tasks = tasks_of(data)
    multitask = tasks is not None
    selection = monitored_metric(model.task, s.early_stopping, s.metric, tuple(t.kind for t in tasks or ()))
    kept = BestEpoch(*selection, len(data.val))
    bad_epochs, stopped, bad_steps = 0, False, BadSteps(s.max_bad_steps)
    if state:
        bad_epochs, stopped = restore(state, model, optimizer, scheduler, kept, objective, s.fsdp)
    wrapped = model if s.fsdp else accelerator.prepare(model)  # DDP, unless the model is sharded already
    core = accelerator.unwrap_model(wrapped)
    # torch.compile (opt-in): measured 0 to -14% for CPU training steps here (ASSETS.md), +7-9% for inference.
    compiled = torch.compile(wrapped) if s.compile else wrapped
    # A fitted head reads the plain view only: augmented views would be extracted for nothing.
    inputs = EpochInputs(core, data, cache="off" if s.fsdp else s.cache, augment=augment,
                         views=1 if solver.fits else s.cache_views, seed=s.seed,
                         cache_dir=s.cache_dir, bf16=compute.bf16_eval, channels_last=compute.channels_last,
                         batch_size=s.eval_batch_size, device=device, processes=accelerator.num_processes,
                         wrap=accelerator.prepare_model)
    evaluate = dict(batch_size=s.eval_batch_size, channels_last=compute.channels_last, device=device)
    if multitask:  # each task scored on its own labelled samples (loop.evaluate_tasks)
        metric_names, evaluate["tasks"], evaluate["references"] = [], core.head_tasks(), s.task_references
        missing = sorted(set(evaluate["tasks"]) - set(s.task_references or evaluate["tasks"]))
        if missing:
            raise ConfigError(f"train.task_references needs every task's single-task value; missing {missing}")
    elif s.task_references:
        raise ConfigError("train.task_references compare a multi-task run's tasks with single-task models; this "
                          "run has one task")
    else:
        metric_names = default_metrics(core.task, core.num_outputs)
        metric_names += [s.metric] if s.metric not in metric_names and core.task == "classification" else []
        evaluate.update(metric_setup(core.task, list(data.classes), data.train.targets, s.metric, s.positive_class))
    if s.head_init == "fit" and not solver.fits and not state:  # a resumed run has its trained head already
        why_not = why_not_fitted(None, core, data, objective, s, world)
        if why_not is not None:
            raise ConfigError(f"train.head_init fit needs a head that a convex fit can start, and here {why_not}. "
                              "Use train.head_init random.")
        rates += "\n" + initial_head(core, data, objective, BestEpoch(*selection, len(data.val)), metric_names,
                                     evaluate.get("positive"), batch_size=s.eval_batch_size,
                                     bf16=compute.bf16_eval, channels_last=compute.channels_last, device=device)
    target = make_batcher(data.unlabeled, core.spec, train=False) if data.unlabeled is not None else None
    show = s.progress and accelerator.is_main_process
    if show:
        processes = f", {world} processes x {rank_batch} per step (global batch {s.batch_size})" if world > 1 else ""
        print(f"{weights_line(core.spec)}\nstrategy {strategy.name} (bn={strategy.bn}), {compute}{processes}\n{rates}\n"
              f"objective: {objective}; best epoch by {kept.monitor}\n" + trainable_summary(core, optimizer))
    if folder.writes:
        record_trainable(folder, None if start_epoch else 0, f"strategy {strategy.name} (bn={strategy.bn})\n{rates}\n"
                         + trainable_summary(core, optimizer))

    # Checkpoints and the best bundle are written from snapshots on a background thread: training goes on
    # while they reach the disk, and every write is atomic, so a run killed mid-write resumes from the last one.
    writer = BackgroundWriter()
    board = metric_board(folder, s.log, accelerator.is_main_process)
    try:
        for epoch in range(start_epoch, s.epochs):
            if stopped:
                break
            if strategy.changes_at(epoch):  # gradual unfreezing, LP-FT: a new trainable set and optimizer groups
                strategy.apply(core, epoch=epoch)
                regroup(optimizer, scheduler, param_groups(strategy, core, epoch, s, objective))
                compute.retrain(s, core, device)
                if accelerator.num_processes > 1:  # DDP registers the parameters that need gradients when it wraps
                    wrapped = accelerator.prepare_model(core)
                    compiled = torch.compile(wrapped) if s.compile else wrapped
                if show:
                    print(f"epoch {epoch + 1}: trainable set changed\n" + trainable_summary(core, optimizer))
                if folder.writes:
                    record_trainable(folder, epoch, trainable_summary(core, optimizer))
            t0 = time.perf_counter()
            objective.begin_epoch(epoch, s.epochs)
            # Frozen parts compute the same thing every epoch: train on their cached outputs where exact.
            plan = inputs.for_epoch(core, compiled, epoch)
            row: dict[str, Any] = {"epoch": epoch + 1}
            if solver.fits:  # the head's L2 chosen on val by the rule that picks epochs
                row.update(fit_head(core, plan.train.data, plan.val.data, objective,
                                    BestEpoch(*selection, len(data.val)), metric_names, evaluate.get("positive")))
            else:
                with depthwise_in_fp32(core, enabled=compute.pinned):
                    row.update(train_epoch(plan.step_model, core, objective, optimizer, scheduler, plan.train,
                                           epoch=epoch, batch_size=rank_batch, grad_accum=s.grad_accum,
                                           clip_grad_norm=s.clip_grad_norm,
                                           bf16=compute.bf16_train and not plan.head_only,
                                           channels_last=compute.channels_last, seed=s.seed, accelerator=accelerator,
                                           progress=progress_bar(show, f"epoch {epoch + 1}/{s.epochs}"),
                                           bad_steps=bad_steps, deadline=deadline,
                                           max_batches=(total_steps - epoch * steps) * s.grad_accum))
            row["train_seconds"] = round(time.perf_counter() - t0, 3)
            t_val = time.perf_counter()
            row.update(evaluate_split(plan.eval_model, plan.val, metric_names, "val", objective,
                                      bf16=compute.bf16_eval and not plan.head_only, **evaluate))
            if deadline is not None:
                deadline.val_s = time.perf_counter() - t_val
                # Decided here, not at the next epoch's start, so this epoch's row says the run stopped.
                if not deadline.reason and epoch + 1 < s.epochs and not worth_another_epoch(deadline, row):
                    deadline.stop(f"stopped after epoch {epoch + 1} of {s.epochs} to keep the time limit")
                if deadline.reason:
                    row["stopped"] = "time limit"
            if target is not None:  # domain adaptation: label-free validators (and the oracle, when labelled)
                row.update(evaluate_target(plan.eval_model, target, list(data.classes), bf16=compute.bf16_eval,
                                           **placement_of(evaluate)))
            row.update(objective.task_weights())  # the weights this epoch trained with
            objective.end_epoch(row)
            if not solver.fits:  # a fitted head had no learning rate
                row["lr"] = optimizer.param_groups[-1]["lr"]
            row.update(seconds=round(time.perf_counter() - t0, 3), inputs=plan.source)
            writer.check()  # a write of the last epoch that failed (a full disk) stops the run now
            # A sharded model's full weights and optimizer state are gathered on every rank (a collective).
            full = (full_state(core), full_optimizer_state(core, optimizer)) if s.fsdp else None
            if kept.offer_row(row, epoch + 1):  # see selection.py for the rule
                bad_epochs = 0
                if accelerator.is_main_process:
                    write = bundle_writer(core, folder.staged_best, {"epoch": epoch + 1, "metrics": row,
                                                                     **bundle_meta(data)}, full and full[0])
                    writer.submit(lambda write=write: folder.write_best(write), f"the best bundle {folder.best}")
            else:
                bad_epochs += 1
            stopped = s.early_stopping.patience is not None and bad_epochs >= s.early_stopping.patience
            if accelerator.is_main_process:
                folder.append_metrics(row)
                if board is not None:
                    log_scalars(board, row)
                checkpoint = snapshot({"epoch": epoch + 1, "model": full[0] if full else core.state_dict(),
                                       "optimizer": full[1] if full else optimizer.state_dict(),
                                       "scheduler": scheduler.state_dict(),
                                       "rng": torch.get_rng_state(), **kept.state_dict(),
                                       "objective": objective.state_dict(),
                                       "bad_epochs": bad_epochs, "stopped": stopped})
                writer.submit(lambda checkpoint=checkpoint: folder.save_checkpoint(checkpoint),
                              f"the checkpoint in {folder.path / 'checkpoints'}", nbytes(checkpoint))
            if show:
                print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
            accelerator.wait_for_everyone()
            if deadline is not None and deadline.reason:
                break
    finally:
        writer.close()
        if board is not None:
            board.close()
    accelerator.wait_for_everyone()  # every rank reads the best bundle rank 0 has just finished writing

    history = folder.metrics()
    if deadline is not None and deadline.reason and show:
        print(f"time limit: {deadline.reason} ({deadline.left():.0f}s left for the test pass and the report)")
    warning = stalled(history, s)
    if warning and accelerator.is_main_process:
        warnings.warn(warning, stacklevel=2)
    test_metrics, test_outputs = (test_best(core, data, s, folder, inputs, metric_names, compute, evaluate)
                                  if kept.epoch else (None, None))
    extra = bundle_report(folder.best)
    if show and extra:
        print(extra["bundle"])
    best_row = next((r for r in history if r["epoch"] == kept.epoch), {})
    if deadline is not None and deadline.reason:
        extra["time_limit"] = deadline.reason
    return RunResult(folder.path, history, kept.epoch, {k: v for k, v in best_row.items() if "/" in k},
                     test_metrics, stopped, time.perf_counter() - start_time, extra, test_outputs)


@dataclass
class Compute:
    """How a run computes: bf16 autocast for training steps and for evaluation, depthwise convolutions pinned
    to fp32 inside a bf16 training step (their bf16 backward is slow on CPUs), and channels_last."""

    bf16_train: bool
    pinned: bool
    bf16_eval: bool
    channels_last: bool

    @classmethod
    def prepare(cls, settings: TrainSettings, model: TransferModel, device: torch.device) -> "Compute":
        """Resolve the settings for this model and device, and put the model in its memory format and fast
        dropout."""
        compute = cls(False, False, resolve_precision(settings.precision, model, device, training=False),
                      resolve_channels_last(settings.channels_last, model))
        compute.retrain(settings, model, device)
        if compute.channels_last:
            model.to(memory_format=torch.channels_last)
        if settings.fast_dropout:
            install_fast_dropout(model)
        return compute

    def retrain(self, settings: TrainSettings, model: TransferModel, device: torch.device) -> None:
        """Re-resolve the training precision after the trainable set changed (a frozen backbone trains in
        bf16 where a trainable depthwise one does not)."""
        self.bf16_train = resolve_precision(settings.precision, model, device, training=model.backbone_trainable())
        self.pinned = pin_depthwise(self.bf16_train, model, device)

    def __str__(self) -> str:
        return (f"precision train={'bf16' if self.bf16_train else 'fp32'} eval={'bf16' if self.bf16_eval else 'fp32'}"
                f"{' (depthwise convolutions in fp32)' if self.pinned else ''}, channels_last={self.channels_last}")


def check_memory(model: TransferModel, data: DataSplits, settings: TrainSettings, device: torch.device) -> None:
    """Refuse a run whose training step cannot fit in memory, before it starts, with what to change.

    Needed: the activations a trainable backbone keeps for backward (measured on one sample with fake tensors,
    times the batch) plus weights, gradients and AdamW's two moments. A frozen backbone is left out: it keeps
    no graph, and its features are usually cached.
    """
    free = available_bytes(device)
    if free is None or not model.backbone_trainable():  # unknown, or no graph to keep
        return
    n = min(2, len(data.train))  # two samples: BatchNorm in train mode refuses one value per channel
    measured = activation_bytes(model, make_batcher(data.train, model.spec, train=False).inputs(torch.arange(n)))
    if measured is None:
        return
    per_sample = measured / n
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    needed = per_sample * settings.batch_size + 4 * params
    if needed > 0.9 * free:
        fits = max(1, int((0.9 * free - 4 * params) // max(per_sample, 1)))
        raise ConfigError(f"a training step needs about {needed / 1e9:.1f} GB ({per_sample / 1e6:.0f} MB of "
                          f"activations per sample, batch_size {settings.batch_size}, plus weights, gradients and "
                          f"optimizer state) but {free / 1e9:.1f} GB are free on {device}. Lower train.batch_size "
                          f"(at most about {fits}; train.grad_accum keeps the effective batch), lower "
                          "model.image_size or max_length, or freeze more of the backbone.")


def param_groups(strategy: Strategy, model: TransferModel, epoch: int, s: TrainSettings,
                 objective: Objective) -> list[dict]:
    """The strategy's optimizer groups, plus the objective's own parameters (a weighting's) at the head's rate."""
    groups = strategy.param_groups(model, epoch, s.lr, s.weight_decay, s.head_lr)
    if s.head_lrs:
        groups = split_head_groups(groups, model, s.head_lrs)
    own = objective.parameters()
    return groups + ([{"params": own, "lr": s.head_lr or s.lr, "weight_decay": 0.0}] if own else [])


def split_head_groups(groups: list[dict], model: TransferModel, head_lrs: dict[str, float]) -> list[dict]:
    """The strategy's groups with the parameters of each head named in `head_lrs` moved into groups of their
    own (``head:<task>``, with and without weight decay) at that head's rate."""
    unknown = sorted(set(head_lrs) - set(model.heads))
    if unknown:
        raise ConfigError(f"train.head_lrs names {unknown}, which are not heads of the model (its tasks: "
                          f"{list(model.heads)})")
    owner = {id(p): name for name, head in model.heads.items() if name in head_lrs for p in head.parameters()}
    out, moved = [], {}
    for g in groups:
        stay = [p for p in g["params"] if id(p) not in owner]
        for p in g["params"]:
            if id(p) in owner:
                key = (owner[id(p)], g["name"].endswith("/no_decay"))
                moved.setdefault(key, {**g, "params": [], "lr": head_lrs[key[0]],
                                       "name": f"head:{key[0]}" + ("/no_decay" if key[1] else "")})["params"].append(p)
        if stay:
            out.append({**g, "params": stay})
    return out + list(moved.values())


def restore(state: dict[str, Any], model, optimizer, scheduler, kept: BestEpoch, objective: Objective,
            sharded: bool = False) -> tuple[int, bool]:
    """Load a checkpoint's model, optimizer, schedule, RNG, objective and best-epoch state; returns
    (bad epochs, stopped)."""
    try:
        if sharded:  # the checkpoint holds full weights: each rank keeps its shard of them
            load_full_state(model, optimizer, state["model"], state["optimizer"])
        else:
            model.load_state_dict(state["model"])
    except RuntimeError as e:  # another backbone, head size or strategy than the checkpoint's
        raise ConfigError(f"the run's checkpoint does not fit this model ({str(e).splitlines()[0]} ...); resume "
                          "with the backbone, classes and strategy the run started with, or start a new run "
                          "folder.") from None
    if not sharded:
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    objective.load_state_dict(state.get("objective", {}))
    kept.load_state_dict(state)
    return state["bad_epochs"], state["stopped"]


def test_best(core: TransferModel, data: DataSplits, s: TrainSettings, folder: RunFolder, inputs: EpochInputs,
              metric_names: list[str], compute: Compute, evaluate: dict
              ) -> tuple[dict[str, float] | None, torch.Tensor | None]:
    """The best epoch's bundle, reloaded: its decision threshold (train.metric f1, binary) chosen on val, then
    its metrics on the test split, written to test_metrics.json, and (single-task runs) its outputs there;
    (None, None) without a test split."""
    best = load_model(folder.best, module=core.backbone.net if core.spec.is_custom else None)
    if s.metric == "f1" and best.num_outputs == 2 and "tasks" not in evaluate:
        evaluate = {**evaluate, "threshold": choose_threshold(best, data.val, folder, evaluate)}
    if data.test is None:
        return None, None
    test_model, test_batches, head_only = inputs.test_inputs(best, data.test)
    bf16 = compute.bf16_eval and not head_only
    outputs = None
    if "tasks" in evaluate:
        metrics = evaluate_split(test_model, test_batches, metric_names, "test", bf16=bf16, **evaluate)
    else:
        outputs = predict_outputs(test_model, test_batches, bf16=bf16,
                                  **placement_of(evaluate))
        metrics = score_outputs(outputs, data.test.targets, metric_names, "test", positive=evaluate.get("positive"),
                                threshold=evaluate.get("threshold"))
    if folder.writes:
        folder.write_text(TEST_FILE, json.dumps(metrics, indent=2))
    return metrics, outputs


def placement_of(evaluate: dict) -> dict:
    """The keyword arguments of `predict_outputs` among a run's evaluation settings."""
    return {k: evaluate[k] for k in ("batch_size", "channels_last", "device")}


def choose_threshold(best: TransferModel, val, folder: RunFolder, evaluate: dict) -> float:
    """The positive class's probability threshold that maximises its F1 on the val split (argmax, 0.5, is
    rarely best on imbalanced data), set on the best model and saved in its bundle."""
    placement = placement_of(evaluate)
    outputs = predict_outputs(best, make_batcher(val, best.spec, train=False), **placement)
    threshold = best_threshold(outputs, val.targets, evaluate["positive"])
    best.set_decision(evaluate["positive"], threshold)
    if folder.writes:
        update_meta(folder.best, decision=best.decision)
    return threshold


def stalled(history: list[dict[str, Any]], settings: TrainSettings) -> str | None:
    """A warning when the training loss ended within 5% of where it started: nothing was learned, usually
    from a learning rate far too high (every sample predicted as one class) or far too low."""
    losses = [r["train/loss"] for r in history if math.isfinite(r.get("train/loss", math.nan))]
    if len(losses) < 2 or losses[-1] < 0.95 * losses[0]:
        return None
    return (f"the training loss barely moved in {len(losses)} epochs ({losses[0]:.4f} -> {losses[-1]:.4f}): the "
            f"model learned little. The learning rate (lr {settings.lr:g}, head {settings.head_lr or settings.lr:g}) "
            "is likely far too high (predictions collapse to one class) or too low; try train.lr 10x lower and "
            "10x higher, or leave it unset for the defaults.")


def worth_another_epoch(deadline: Deadline, last: dict[str, Any]) -> bool:
    """Whether the time left holds a useful part of another epoch (a quarter of the last one's training)
    besides what must follow it; otherwise its validation pass would cost more than its steps bring."""
    return deadline.left() >= 0.25 * last.get("train_seconds", 0.0) + deadline.reserve()


def weights_line(spec) -> str:
    """The run header's statement of what the backbone starts from."""
    if spec.weights is None:
        return f"backbone {spec.source}, weights: RANDOM (trained from scratch; weights='auto' loads pretrained ones)"
    return f"backbone {spec.source}, weights: {spec.weights}" + (f" ({spec.weights_id})" if spec.weights_id else "")


def bundle_meta(data: DataSplits) -> dict[str, Any]:
    """What the best bundle records of the data: which columns texts came from, so `headstart predict`
    reads the same ones from a new file."""
    return {"data": data.train.columns} if data.train.columns else {}


def bundle_report(folder: Path) -> dict[str, Any]:
    """Size of the best-model bundle, and what it holds (PEFT bundles hold adapters and head only)."""
    if not (folder / WEIGHTS).is_file():
        return {}
    size = (folder / WEIGHTS).stat().st_size
    adapters = read_meta(folder).get("adapters")
    what = (f"{adapters['method']} adapters and head only, on base weights {adapters['base_weights']}"
            if adapters else "full weights")
    return {"bundle_bytes": size, "bundle": f"best model bundle: {size / 1e6:.3f} MB ({what}) in {folder}"}


TRAINABLE_FILE, BOARD_DIR = "trainable.txt", "tb"


def record_trainable(folder: RunFolder, epoch: int | None, summary: str) -> None:
    """Keep what trains (the header's table at epoch 0, each change of the trainable set after) in
    trainable.txt, for the run's report; a resumed run (epoch None) adds only what is not recorded yet."""
    path = folder.path / TRAINABLE_FILE
    if epoch == 0 or not path.is_file():
        folder.write_text(TRAINABLE_FILE, summary + "\n")
        return
    if epoch is None:
        return
    heading = f"from epoch {epoch + 1}:"
    text = path.read_text()
    if heading not in text.splitlines():
        folder.write_text(TRAINABLE_FILE, f"{text}\n{heading}\n{summary}\n")


def metric_board(folder: RunFolder, log: str, main: bool):
    """A TensorBoard writer into <run>/tb when train.log is tensorboard (None otherwise, and off rank 0)."""
    if log != "tensorboard":
        return None
    try:
        import tensorboard  # noqa: F401  torch.utils.tensorboard needs it
    except ImportError:
        raise ConfigError("train.log is 'tensorboard' but the tensorboard package is not installed: pip install "
                          "tensorboard, or set train.log: jsonl (metrics.jsonl is always written)") from None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(folder.path / BOARD_DIR)) if main else None


def log_scalars(board, row: dict[str, Any]) -> None:
    """Every number of a metrics row as a scalar at its epoch (the same tags as metrics.jsonl's keys)."""
    for key, value in row.items():
        if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
            board.add_scalar(key, value, row["epoch"])
    board.flush()


def fingerprints(data: DataSplits) -> dict[str, str]:
    """Content fingerprints of the data's splits (run.json): a resumed run must train on the same data."""
    parts = {"train": data.train, "val": data.val, "test": data.test, "unlabeled": data.unlabeled}
    return {name: part.fingerprint() for name, part in parts.items() if part is not None}


def environment(seed: int) -> dict[str, Any]:
    """What a run's numbers depend on beyond its config: the seed and the library versions."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in ("headstart", "torch", "timm", "transformers", "peft", "accelerate", "numpy"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            pass
    return {"seed": seed, "python": platform.python_version(), "versions": versions,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def prepare_head(model: TransferModel, data: DataSplits, seed: int = 0) -> None:
    """Give a head-less model a head sized from the data, initialised from `seed` (so a seed fixes the whole
    run); refuse a head that does not fit the data."""
    if data.val is None:
        raise DataError("training needs a validation split for model selection; load the data with "
                        "val_fraction > 0 or a separate val folder")
    if len(data.train) == 0:
        raise DataError("the training split is empty; check the data path, subset and val/test fractions")
    tasks = tasks_of(data)
    if tasks is not None:
        prepare_task_heads(model, tasks, seed)
        return
    if model.task == "regression":
        outputs = 1 if data.train.targets.ndim == 1 else data.train.targets.shape[1]
        if model.head is None:
            torch.manual_seed(seed)
            model.reset_head(outputs)
        return
    multi = data.train.targets.ndim == 2  # (N, K) multi-hot targets
    if multi != (model.task == "multilabel"):
        raise DataError(f"the data is {'multi-label' if multi else 'single-label'} but the model's task is "
                        f"{model.task!r}; create the model with task="
                        f"{'multilabel' if multi else 'classification'!r} (CLI: data.multi_label decides).")
    if model.head is None:
        torch.manual_seed(seed)
        model.reset_head(len(data.classes), data.classes)
    elif model.num_outputs != len(data.classes):
        raise DataError(f"the model's head has {model.num_outputs} outputs but the data has "
                        f"{len(data.classes)} classes; create the model with num_classes={len(data.classes)} "
                        "or call model.reset_head(len(data.classes), data.classes)")
    elif model.labels != list(data.classes):
        model.labels = list(data.classes)


def prepare_task_heads(model: TransferModel, tasks, seed: int, kinds: dict[str, str] | None = None) -> None:
    """A head per task of multi-task data: the main head serves the first task, each further task gets a head
    named after it, of the kind `kinds` gives it (default: the main head's); heads a model already has must
    fit their tasks. Heads are initialised in task order from `seed`."""
    main = tasks[0]
    if model.head is None:
        model.task = main.kind
        torch.manual_seed(seed)
        model.reset_head(main.outputs, list(main.classes) or None)
    model.main_task = main.name
    args = model.head_args
    for t in tasks[1:]:
        if t.name not in model.extra_heads:
            model.add_head(t.name, t.outputs, task=t.kind, kind=(kinds or {}).get(t.name, args["kind"]),
                           labels=list(t.classes) or None, dropout=args["dropout"], hidden=args["hidden"])
    have = {name: (h["task"], h["num_outputs"]) for name, h in model.head_tasks().items()}
    want = {t.name: (t.kind, t.outputs) for t in tasks}
    if have != want:
        raise DataError(f"the model's heads {have} do not fit the data's tasks {want} (name: (type, outputs)); "
                        "create the model without a head (num_classes=None) and fit puts one on per task")
    for t in tasks:  # class names follow the data
        if t.name == main.name:
            model.labels = list(t.classes)
        else:
            model.extra_heads[t.name]["labels"] = list(t.classes)


def default_record(strategy: Strategy, settings: TrainSettings) -> dict[str, Any]:
    """The config.yaml of a run started from plain objects (hs.fit writes the full resolved config)."""
    return {"strategy": {**strategy.describe(), **asdict(strategy.options)}, "train": asdict(settings)}


def progress_bar(show: bool, desc: str):
    if not show:
        return None
    from tqdm.auto import tqdm

    return lambda it: tqdm(it, desc=desc, leave=False, dynamic_ncols=True)


__all__ = ["RunResult", "fit", "prepare_head", "prepare_task_heads", "read_metrics"]
