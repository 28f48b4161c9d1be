"""The public surface: `hs.fit` with keyword settings (and `strategy="auto"`), `fit_from_config` for a run config,
and `hs.rank` with its proxy runs.

This layer turns keyword arguments and configs into validated plain objects (a `Strategy`, an `Objective`,
`TrainSettings`), lets the planner choose when asked for `auto`, and hands everything to `run.fit`.
"""
from __future__ import annotations

import copy
import functools
import json
import time
from pathlib import Path
from typing import Any

from .atomic import atomic_write_text
from .bundle import load_model
from .config import RunConfig, load_config, loss_settings, strategy_config, train_settings, validate_config
from .data import DataSplits
from .data.datasets import DATASETS
from .data.sources import resolve_source, source_modality
from .data.splits import with_target
from .data.tasks import combine_tasks, derive_tasks, table_tasks, tasks_of
from .errors import ConfigError, HeadstartError
from .model import TransferModel, create_model
from .objectives import Objective, domain_term, multitask_objective, task_objective
from .plan.auto import DECISION_FILE, choose, parse_budget
from .plan.contender import applies as contender_applies
from .plan.contender import explain as explain_contender
from .plan.contender import raw_input_contender, settle, unsettle
from .plan.lr_find import SWEEP_DEFAULTS, LRFind, check_range, find_lr
from .plan.rank import rank as _rank
from .report import check_run, report_after_fit
from .report import write_report as _write_report
from .run import RunFolder, RunResult, prepare_head, prepare_task_heads
from .run import fit as run_fit
from .run.settings import with_schedule
from .strategies import get_strategy


def fit(model: TransferModel, data: DataSplits, strategy: str = "full", *, out: str | Path = "runs/run",
        resume: bool = False, bn: str = "auto", augment: bool | None = None, record: RunConfig | None = None,
        weighting: str | dict[str, Any] = "equal", task_weights: dict[str, float] | None = None,
        task_metrics: dict[str, list[str]] | None = None, domain: str | None = None, domain_weight: float = 1.0,
        started: float | None = None, **train: Any) -> RunResult:
    """Train `model` on `data` and write a run folder; returns the history and best/test metrics.

    Args:
        strategy: a registered strategy name (``headstart list strategies``): ``linear-probe``, ``full``,
            ``partial``, ``gradual``, ``lp-ft``, ``layer-decay``, ``lora``, ``l2-sp``, ... or ``auto``.
        out: the run folder (config.yaml, metrics.jsonl, checkpoints/, best/ bundle, test_metrics.json).
        resume: continue from the run folder's last checkpoint; without it an existing run is never overwritten.
        bn: BatchNorm policy, ``auto`` (the strategy's default), ``frozen`` or ``train``.
        augment: flips and crops while training; None (default): on, except where ``auto`` trains images on
            the plain pictures. True or False is kept, by ``auto`` too.
        record: the run config to write as config.yaml (the CLI's); default: what this call amounts to.
        weighting, task_weights, task_metrics: multi-task data only (``hs.data.derive_tasks``,
            ``combine_tasks``, ``table_tasks``): how task losses combine (``equal``, ``fixed``, ``uncertainty``,
            ``dwa``, ``pcgrad``, or {"name": "dwa", "temperature": 2}), a weight per task, and metrics per task.
        domain, domain_weight: unsupervised domain adaptation on data with unlabeled target inputs
            (``hs.data.with_target``): ``dann``, ``cdan``, ``mcc``, ``coral`` or ``mmd``, added to the task loss
            with this weight.
        started: when the clock of ``budget`` and ``time_limit`` started (``time.time()``); default: this
            call. The CLI passes its process's start, so a budget covers loading the data too.
        **train: any ``train.*`` config key (epochs, lr, batch_size, precision, head_init, early_stopping={...},
            ...) and any ``strategy.*`` option (solver, trainable, unfreeze_every, lp_epochs, layer_decay, lora_r,
            budget...).

    Example:
        run = hs.fit(model, hs.datasets.load("fashion-mnist", subset=100), "linear-probe")  # the head fitted
        run = hs.fit(model, data, "full", head_init="fit", epochs=2)  # fine-tuning from the fitted probe
        run = hs.fit(model, data, "lp-ft", lp_epochs=2, ft_lr_scale=0.1, epochs=5, out="runs/lpft")
    """
    options = {k: train.pop(k) for k in list(train) if k in strategy_config().model_fields and k != "name"}
    if isinstance(options.get("budget"), (int, float)) and not isinstance(options["budget"], bool):
        options["budget"] = f"{float(options['budget']):f}s"  # budget=90 from Python: seconds, as in a config "90s"
    chosen = validate_config({"strategy": {"name": strategy, "bn": bn, **options}}).strategy
    decision = None
    given_head_lr = train.get("head_lr")  # before auto adds its own: lr "auto" sets head_lr itself
    if chosen.name == "auto" and tasks_of(data) is not None:
        raise ConfigError("strategy 'auto' chooses for single-task data; name a strategy for a multi-task run "
                          "(full, partial, lora, lp-ft, ...)")
    started = started if started is not None else time.time()
    until, contender = None, None
    if chosen.name == "auto":  # the planner chooses a strategy and settings; the user's explicit ones win
        prepare_head(model, data, train.get("seed", 0))
        budget = parse_budget(chosen.budget)
        until = started + budget if budget is not None else None
        planned = validate_config({"train": {**train, "lr": None}}).train
        # Fitted and cross-validated before choosing (1-5 s), so the budget's clock has charged it when the
        # epochs are planned.
        contender = raw_input_contender(model, data, planned) if contender_applies(model, data) else None
        # Timed and planned at the schedule full fine-tuning would get (the planner fits the epochs to the budget).
        timing, _ = with_schedule(train_settings(planned), model.spec.modality, len(data.train), "full")
        decision = choose(model, data, budget, train.get("epochs") or timing.epochs, seed=train.get("seed", 0),
                          cache_dir=train.get("cache_dir"), run_dir=out if resume else None, fit=fit,
                          judge={k: train.get(k) for k in ("metric", "positive_class")}, settings=timing,
                          started=started, augment=augment)
        chosen = validate_config({"strategy": {"name": decision.strategy, "bn": bn, **decision.options}}).strategy
        # The user's settings win, but a key left unset (None, as every unset key of a CLI run's config is)
        # must not erase auto's choice.
        train = {**decision.train, **{k: v for k, v in train.items() if v is not None}}
        augment = augment if decision.augment is None else decision.augment
        if train.get("progress", True):
            print(decision.explain())
    augment = augment is not False  # unset: flips and crops on
    train_cfg = validate_config({"train": train}).train
    lr_auto = train_cfg.lr == "auto"
    if lr_auto:  # the finder scales the rates the run would otherwise use (auto's, or the strategy's defaults)
        train_cfg = lr_reference(train_cfg, decision, given_head_lr)
    settings = train_settings(train_cfg)
    plan = get_strategy(chosen.name, bn=bn, **chosen.options())
    resolved, _ = with_schedule(settings, model.spec.modality, len(data.train), chosen.name)
    plan.check_schedule(resolved.epochs)
    prepare_head(model, data, settings.seed)
    objective = run_objective(model, data, loss_settings(train_cfg), weighting, task_weights, task_metrics,
                              settings.seed)
    if domain is not None:
        objective = objective.with_terms([adaptation_term(model, data, domain, settings.seed)], [domain_weight])
    found = None
    if lr_auto:
        found = LRFind.read(out) if resume else None  # a resumed run keeps the rate it started with
        if found is None:
            found = find_lr(model, data, plan, objective, settings, augment=augment, progress=settings.progress)
        if settings.progress:
            print(found.explain())
        train_cfg = train_cfg.model_copy(update={"lr": found.lr, "head_lr": found.head_lr})
        settings = train_settings(train_cfg)
    # config.yaml states the epochs, batch size and schedule the run uses; run.fit resolves the same (and says why).
    train_cfg = train_cfg.model_copy(update={k: getattr(resolved, k) for k in ("epochs", "batch_size", "scheduler",
                                                                               "warmup_epochs")})
    record = resolved_record(record, model, data, chosen, augment, train_cfg, out)
    if resume and contender is not None:
        unsettle(out)  # a run that shipped its contender resumes from the model it trained
    folder = RunFolder.open(out, record.model_dump(mode="json"), resume,
                            normalise=lambda saved: validate_config(saved).model_dump(mode="json"))
    try:
        if decision is not None and folder.writes:
            folder.write_text(DECISION_FILE, json.dumps(decision.to_dict(), indent=2))
        if found is not None and folder.writes:
            found.write(folder.path)
    except BaseException:
        folder.close()
        raise
    writes = folder.writes  # the folder's holder (rank 0 under torchrun) writes the report
    result = run_fit(model, data, plan, objective, settings, folder, augment=augment, started=started,
                     until=None if resume else until,
                     eval_s=decision.signals.get("eval_s") if decision is not None else None)
    if contender is not None and result.best_epoch:  # auto: does the trained model beat raw pixels on val?
        decision.contender = settle(contender, result, data, writes=writes)
        decision.reasons.append(explain_contender(decision.contender, decision.strategy))
        if writes:
            atomic_write_text(Path(result.run_dir) / DECISION_FILE, json.dumps(decision.to_dict(), indent=2))
        if settings.progress:
            print(decision.reasons[-1])
    if settings.report and writes:
        result.extra["report"] = report_after_fit(result.run_dir, data,
                                                  model.backbone.net if model.spec.is_custom else None,
                                                  result.test_outputs)
    return result


def write_report(run_dir: str | Path, data: DataSplits | None = None) -> Path:
    """(Re)write a run folder's report.html; returns its path. Without `data`, the run's data is reloaded as
    its config.yaml names it (``headstart report RUN``); data that config cannot name (in-memory arrays) must
    be given for the sections that score the best model."""
    run, note = check_run(run_dir), None
    if data is None and (run / "best").is_dir():
        try:
            cfg = load_config(run / "config.yaml")
            data = data_from_config(cfg, load_model(run / "best"))
        except HeadstartError as e:
            note = (f"the run's data could not be reloaded from its config.yaml ({e}); pass it: "
                    "hs.write_report(run, data)")
    return _write_report(run, data, data_note=note)


def lr_reference(train_cfg, decision, given_head_lr: float | None):
    """The validated train section of an ``lr: auto`` run with the rates the finder scales together (their
    ratio kept): auto's choice, or None for the strategy's defaults."""
    if given_head_lr is not None:
        raise ConfigError(f"train.lr 'auto' sets train.head_lr too (keeping the strategy's head-to-backbone ratio), "
                          f"but head_lr is set to {given_head_lr:g}; leave head_lr unset, or set train.lr to a number")
    rates = {k: (decision.train.get(k) if decision is not None else None) for k in ("lr", "head_lr")}
    return train_cfg.model_copy(update=rates)


def lr_find(model: TransferModel, data: DataSplits, strategy: str = "full", *, out: str | Path | None = None,
            bn: str = "auto", augment: bool = True, sweeps: int | None = None, steps: int | None = None,
            min_lr: float | None = None, max_lr: float | None = None, **train: Any) -> LRFind:
    """Find a learning rate for training `model` on `data` with `strategy`: several short seeded range tests
    (plan/lr_find.py); returns the band of their suggestions and the suggested rates. With `out`, writes
    lr_find.json and lr_find.png there. The model is left as it was (a head-less model gets the head `fit`
    would give it on a copy).

    Args:
        strategy: a registered strategy name; its trainable set and optimizer groups are what the tests train.
        sweeps, steps, min_lr, max_lr: the tests (default: 3 sweeps of 80 steps from 1e-6 to 10).
        **train: ``train.*`` keys (batch_size, optimizer, weight_decay, seed, head_lr, ...) and ``strategy.*``
            options, as for `fit`.

    Example:
        found = lr_find(model, data, "full", batch_size=32, out="runs/lr")   # headstart.api.lr_find
        run = hs.fit(model, data, "full", lr=found.lr)
    """
    options = {k: train.pop(k) for k in list(train) if k in strategy_config().model_fields and k != "name"}
    if isinstance(options.get("budget"), (int, float)) and not isinstance(options["budget"], bool):
        options["budget"] = f"{float(options['budget']):f}s"  # budget=90 from Python: seconds, as in a config "90s"
    chosen = validate_config({"strategy": {"name": strategy, "bn": bn, **options}}).strategy
    if chosen.name == "auto":
        raise ConfigError("lr-find sweeps one named strategy; for strategy auto, train with lr 'auto' "
                          "(hs.fit(model, data, 'auto', lr='auto'); CLI: --strategy auto --lr auto): the finder "
                          "then runs on the strategy auto chooses")
    if tasks_of(data) is not None or data.unlabeled is not None:
        raise ConfigError("lr-find sweeps single-task runs; for multi-task or domain-adaptation data train with "
                          "lr 'auto' (hs.fit(..., lr='auto')), which sweeps the run's own objective")
    rates = {"lr": None if train.get("lr") == "auto" else train.get("lr")}  # a number: its head ratio is kept
    train_cfg = validate_config({"train": {**train, **rates}}).train
    settings = train_settings(train_cfg)
    plan = get_strategy(chosen.name, bn=bn, **chosen.options())
    if model.head is None:  # the head fit would give it, on a copy: the caller's model stays as it was
        model = copy.deepcopy(model)
        prepare_head(model, data, settings.seed)
    objective = task_objective(model, data.train.targets, loss_settings(train_cfg))
    given = {k: v for k, v in (("sweeps", sweeps), ("steps", steps), ("min_lr", min_lr), ("max_lr", max_lr))
             if v is not None}
    found = find_lr(model, data, plan, objective, settings, augment=augment, progress=settings.progress, **given)
    if out is not None:
        found.write(out)
    return found


def lr_find_from_config(cfg: RunConfig, out: str | Path, **sweep: Any) -> LRFind:
    """`lr_find` on the model, data, strategy and train settings a run config names (``headstart lr-find``)."""
    check_range(**{k: sweep.get(k) or v for k, v in SWEEP_DEFAULTS.items()})  # before any data is read
    if cfg.tasks or cfg.data.target is not None:
        raise ConfigError("lr-find sweeps single-task runs; for multi-task or domain-adaptation configs set "
                          "train.lr: auto, and fit sweeps the run's own objective")
    if cfg.strategy.name == "auto":
        raise ConfigError("lr-find sweeps one named strategy (--strategy full, linear-probe, ...); with strategy "
                          "auto, run headstart fit --lr auto and the finder runs on the strategy auto chooses")
    model = model_from_config(cfg)
    data = data_from_config(cfg, model)
    return lr_find(model, data, cfg.strategy.name, out=out, bn=cfg.strategy.bn,
                   augment=cfg.data.augment is not False, **sweep, **cfg.strategy.options(), **cfg.train.model_dump())


def run_objective(model: TransferModel, data: DataSplits, loss, weighting: str | dict[str, Any] = "equal",
                  task_weights: dict[str, float] | None = None, task_metrics: dict[str, list[str]] | None = None,
                  seed: int = 0) -> Objective:
    """The task loss of single-task data; for multi-task data a term per task, combined by `weighting`."""
    tasks = tasks_of(data)
    if tasks is None:
        if weighting != "equal" or task_weights or task_metrics:
            raise ConfigError("weighting, task_weights and task_metrics apply to multi-task data (tasks); this "
                              "data has one task")
        return task_objective(model, data.train.targets, loss)
    names = [t.name for t in tasks]
    for what, given in (("task_weights", task_weights), ("task_metrics", task_metrics)):
        unknown = sorted(set(given or {}) - set(names))
        if unknown:
            raise ConfigError(f"{what} names {unknown}, which are not tasks of the data; its tasks are {names}")
    options = dict(weighting) if isinstance(weighting, dict) else {"name": weighting}
    name = options.pop("name", "equal")
    if name == "pcgrad":
        options.setdefault("seed", seed)  # its random projection order follows the run's seed
    return multitask_objective(model, data.train.targets, loss, name, task_weights, task_metrics, **options)


def adaptation_term(model: TransferModel, data: DataSplits, method: str, seed: int):
    """A domain adaptation term for data with unlabeled target inputs."""
    if data.unlabeled is None:
        raise ConfigError(f"domain adaptation ({method}) trains on unlabeled target data beside the labelled "
                          "source: give it with hs.data.with_target(data, target) (CLI: --target-data)")
    return domain_term(method, model.spec.num_features, model.num_outputs, seed)


def resolved_record(record: RunConfig | None, model: TransferModel, data: DataSplits, strategy, augment: bool,
                    train, out: str | Path) -> RunConfig:
    """The resolved config written to the run folder: what the CLI gave, or what this call amounts to."""
    if record is not None:  # augment as the run uses it (auto may turn it off)
        return record.model_copy(update={"train": train, "out": str(out),
                                         "data": record.data.model_copy(update={"augment": augment})})
    return validate_config({
        "model": {"backbone": model.spec.source, "weights": model.spec.weights, "head": model.head_args["kind"],
                  "head_hidden": model.head_args["hidden"], "dropout": model.head_args["dropout"]},
        "data": {"dataset": data.name if data.name in DATASETS else None, "augment": augment},
        "strategy": strategy.model_dump(), "train": train.model_dump(), "out": str(out)})


DEFAULT_BACKBONES = {"image": "timm:tf_efficientnet_lite0", "text": "hf:sentence-transformers/all-MiniLM-L6-v2"}


def model_from_config(cfg: RunConfig) -> TransferModel:
    """The config's model; ``backbone: auto`` picks the default backbone for the data's modality and
    ``weights: auto`` its pretrained weights (an installed package, else the hub)."""
    m = cfg.model
    backbone = m.backbone
    if backbone == "auto":
        d = cfg.data.require_source()
        backbone = DEFAULT_BACKBONES[source_modality(d.dataset if d.dataset is not None else d.path)]
    return create_model(backbone, weights=m.weights, head=m.head, hidden=m.head_hidden, dropout=m.dropout,
                        image_size=m.image_size, max_length=m.max_length, pooling=m.pooling, normalize=m.normalize,
                        task="multilabel" if cfg.data.is_multi_label else "classification")


def resolved_model_config(cfg: RunConfig, model: TransferModel) -> RunConfig:
    """`cfg` with the backbone and weights the model was built with, for config.yaml (never "auto")."""
    update = {"backbone": model.spec.source, "weights": model.spec.weights or "random"}
    return cfg.model_copy(update={"model": cfg.model.model_copy(update=update)})


def data_from_config(cfg: RunConfig, model: TransferModel) -> DataSplits:
    """The config's data source (a built-in data set, a text file or an image folder) as splits; with
    `tasks`, multi-task data (see `tasks_from_config`); with `data.target`, unlabeled target-domain inputs
    beside it."""
    if cfg.data.target is not None:
        d = cfg.data
        source = data_from_config(cfg.model_copy(update={"data": d.model_copy(update={"target": None})}), model)
        target = resolve_source(d.target, model.spec, seed=cfg.train.seed, text_column=d.text_column,
                                label_column=d.label_column, max_bad_fraction=d.max_bad_fraction,
                                val_fraction=d.val_fraction)
        return with_target(source, target)
    if cfg.tasks:
        return tasks_from_config(cfg, model)
    d = cfg.data.require_source()
    return resolve_source(d.dataset if d.dataset is not None else d.path, model.spec, builtin_name=d.dataset is not None,
                          val=d.val_path, test=d.test_path, val_fraction=d.val_fraction, test_fraction=d.test_fraction,
                          subset=d.subset, test_subset=d.test_subset, seed=cfg.train.seed, text_column=d.text_column,
                          label_column=d.label_column, text_pair=d.text_pair, multi_label=d.multi_label,
                          label_delimiter=d.label_delimiter, max_bad_fraction=d.max_bad_fraction, store=d.store,
                          store_dir=d.store_dir, store_threshold=d.store_threshold)


def tasks_from_config(cfg: RunConfig, model: TransferModel) -> DataSplits:
    """Multi-task data from the config's tasks: each task's own data set (``dataset``/``path``), combined;
    groupings of the data's classes (``group``) beside its own labels (the first task); or label columns of
    the data's table."""
    tasks, d, mt = cfg.tasks, cfg.data, cfg.multitask
    own = [t for t in tasks if t.dataset is not None or t.path is not None]
    if own:
        if len(own) != len(tasks):
            raise ConfigError(f"tasks {[t.name for t in tasks if t not in own]} have no data set while others do; "
                              "with several data sets every task names its own (dataset or path)")
        parts = {t.name: resolve_source(t.dataset or t.path, model.spec, builtin_name=t.dataset is not None,
                                        val_fraction=d.val_fraction, test_fraction=d.test_fraction, subset=d.subset,
                                        test_subset=d.test_subset, seed=cfg.train.seed, text_column=d.text_column,
                                        label_column=t.label_column, max_bad_fraction=d.max_bad_fraction)
                 for t in tasks}
        return combine_tasks(parts, mt.mixing, mt.mixing_temperature)
    if mt.mixing != "proportional":
        raise ConfigError(f"multitask.mixing {mt.mixing!r} mixes several data sets; these tasks share one")
    if any(t.group is not None for t in tasks):
        main, *rest = tasks
        if main.group is not None or any(t.group is None for t in rest):
            raise ConfigError("with groupings, the first task is the data's own labels (no group) and every "
                              "further task groups its classes (group: {class: group})")
        cfg_single = cfg.model_copy(update={"tasks": []})
        return derive_tasks(data_from_config(cfg_single, model), main.name, **{t.name: t.group for t in rest})
    if d.path is None:
        raise ConfigError("tasks with label columns need a table file (data.path: a .csv/.jsonl/... with a column "
                          "per task); for a built-in data set give each task a group or its own dataset")
    return table_tasks(d.path, {t.name: {"column": t.column or t.name, "type": t.type} for t in tasks},
                       d.text_column, text_pair=d.text_pair, val=d.val_path, test=d.test_path,
                       val_fraction=d.val_fraction, test_fraction=d.test_fraction, seed=cfg.train.seed)


def add_task_heads(cfg: RunConfig, model: TransferModel, data: DataSplits) -> None:
    """The heads of multi-task data, of the kinds the config's tasks name (default: model.head)."""
    tasks = tasks_of(data)
    main = cfg.tasks[0]
    if main.head is not None and main.head != model.head_args["kind"]:
        raise ConfigError(f"the main task's head is model.head ({model.head_args['kind']}); set model.head instead "
                          f"of the first task's head")
    prepare_task_heads(model, tasks, cfg.train.seed, {t.name: t.head for t in cfg.tasks[1:] if t.head is not None})


def fit_from_config(cfg: RunConfig, resume: bool = False, *, model: TransferModel | None = None,
                    data: DataSplits | None = None, started: float | None = None) -> RunResult:
    """Build the model and data a run config names, and fit: what the CLI and `headstart demo` call.

    `model` and `data`, when given, are what `model_from_config` and `data_from_config` would build (the
    demo keeps the data to write samples). `started`: when the budget's clock started (default: now).
    """
    started = started if started is not None else time.time()
    model = model if model is not None else model_from_config(cfg)
    data = data if data is not None else data_from_config(cfg, model)
    if cfg.domain.method is not None and cfg.data.target is None:
        raise ConfigError(f"domain.method {cfg.domain.method!r} adapts to unlabeled target data: give it with "
                          "data.target (CLI: --target-data PATH or a built-in data set)")
    cfg = resolved_model_config(cfg, model)
    multi = {}
    if cfg.tasks:
        add_task_heads(cfg, model, data)
        weighting = {"name": cfg.multitask.weighting}
        weighting |= {"temperature": cfg.multitask.temperature} if cfg.multitask.weighting == "dwa" else {}
        multi = dict(weighting=weighting, task_weights={t.name: t.weight for t in cfg.tasks if t.weight != 1.0},
                     task_metrics={t.name: t.metrics for t in cfg.tasks if t.metrics})
    train = cfg.train.model_dump()
    head_lrs = {t.name: t.lr for t in cfg.tasks if t.lr is not None}
    if head_lrs:
        train["head_lrs"] = {**(train["head_lrs"] or {}), **head_lrs}
    if cfg.domain.method is not None:
        multi |= {"domain": cfg.domain.method, "domain_weight": cfg.domain.weight}
    return fit(model, data, cfg.strategy.name, out=cfg.out, resume=resume, bn=cfg.strategy.bn,
               augment=cfg.data.augment, record=cfg, started=started, **multi, **cfg.strategy.options(), **train)


@functools.wraps(_rank)
def rank(*args: Any, **kwargs: Any):
    kwargs.setdefault("fit", fit)  # the proxy fine-tunes of `confirm` train through hs.fit
    return _rank(*args, **kwargs)
