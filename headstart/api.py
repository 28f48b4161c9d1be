"""The public surface: `hs.fit` with keyword settings (and `strategy="auto"`), `fit_from_config` for a run config,
and `hs.rank` with its proxy runs.

This layer turns keyword arguments and configs into validated plain objects (a `Strategy`, an `Objective`,
`TrainSettings`), lets the planner choose when asked for `auto`, and hands everything to `run.fit`.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from .config import RunConfig, loss_settings, strategy_config, train_settings, validate_config
from .data import DataSplits
from .data.datasets import DATASETS
from .data.sources import resolve_source, source_modality
from .model import TransferModel, create_model
from .objectives import task_objective
from .plan.auto import DECISION_FILE, choose
from .plan.rank import rank as _rank
from .run import RunFolder, RunResult, prepare_head
from .run import fit as run_fit
from .strategies import get_strategy


def fit(model: TransferModel, data: DataSplits, strategy: str = "full", *, out: str | Path = "runs/run",
        resume: bool = False, bn: str = "auto", augment: bool = True, record: RunConfig | None = None,
        **train: Any) -> RunResult:
    """Train `model` on `data` and write a run folder; returns the history and best/test metrics.

    Args:
        strategy: a registered strategy name (``headstart list strategies``): ``linear-probe``, ``full``,
            ``partial``, ``gradual``, ``lp-ft``, ``layer-decay``, ``lora``, ``l2-sp``, ... or ``auto``.
        out: the run folder (config.yaml, metrics.jsonl, checkpoints/, best/ bundle, test_metrics.json).
        resume: continue from the run folder's last checkpoint; without it an existing run is never overwritten.
        bn: BatchNorm policy, ``auto`` (the strategy's default), ``frozen`` or ``train``.
        record: the run config to write as config.yaml (the CLI's); default: what this call amounts to.
        **train: any ``train.*`` config key (epochs, lr, batch_size, precision, early_stopping={...}, ...)
            and any ``strategy.*`` option (trainable, unfreeze_every, lp_epochs, layer_decay, lora_r, budget...).

    Example:
        run = hs.fit(model, hs.datasets.load("fashion-mnist", subset=100), "linear-probe", epochs=3)
        run = hs.fit(model, data, "lp-ft", lp_epochs=2, ft_lr_scale=0.1, epochs=5, out="runs/lpft")
    """
    options = {k: train.pop(k) for k in list(train) if k in strategy_config().model_fields and k != "name"}
    chosen = validate_config({"strategy": {"name": strategy, "bn": bn, **options}}).strategy
    decision = None
    if chosen.name == "auto":  # the planner chooses a strategy and settings; the user's explicit ones win
        prepare_head(model, data, train.get("seed", 0))
        decision = choose(model, data, chosen.budget, train.get("epochs"), seed=train.get("seed", 0),
                          cache_dir=train.get("cache_dir"), run_dir=out if resume else None, fit=fit,
                          judge={k: train.get(k) for k in ("metric", "positive_class")})
        chosen = validate_config({"strategy": {"name": decision.strategy, "bn": bn, **decision.options}}).strategy
        train = {**decision.train, **train}
        if train.get("progress", True):
            print(decision.explain())
    train_cfg = validate_config({"train": train}).train
    settings = train_settings(train_cfg)
    plan = get_strategy(chosen.name, bn=bn, **chosen.options())
    plan.check_schedule(settings.epochs)
    prepare_head(model, data, settings.seed)
    objective = task_objective(model, data.train.targets, loss_settings(train_cfg))
    record = resolved_record(record, model, data, chosen, augment, train_cfg, out)
    folder = RunFolder.open(out, record.model_dump(mode="json"), resume,
                            normalise=lambda saved: validate_config(saved).model_dump(mode="json"))
    try:
        if decision is not None and folder.writes:
            folder.write_text(DECISION_FILE, json.dumps(decision.to_dict(), indent=2))
    except BaseException:
        folder.close()
        raise
    return run_fit(model, data, plan, objective, settings, folder, augment=augment)


def resolved_record(record: RunConfig | None, model: TransferModel, data: DataSplits, strategy, augment: bool,
                    train, out: str | Path) -> RunConfig:
    """The resolved config written to the run folder: what the CLI gave, or what this call amounts to."""
    if record is not None:
        return record.model_copy(update={"train": train, "out": str(out)})
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
    """The config's data source (a built-in data set, a text file or an image folder) as splits."""
    d = cfg.data.require_source()
    return resolve_source(d.dataset if d.dataset is not None else d.path, model.spec, builtin_name=d.dataset is not None,
                          val=d.val_path, test=d.test_path, val_fraction=d.val_fraction, test_fraction=d.test_fraction,
                          subset=d.subset, test_subset=d.test_subset, seed=cfg.train.seed, text_column=d.text_column,
                          label_column=d.label_column, text_pair=d.text_pair, multi_label=d.multi_label,
                          label_delimiter=d.label_delimiter, max_bad_fraction=d.max_bad_fraction)


def fit_from_config(cfg: RunConfig, resume: bool = False, *, model: TransferModel | None = None,
                    data: DataSplits | None = None) -> RunResult:
    """Build the model and data a run config names, and fit: what the CLI and `headstart demo` call.

    `model` and `data`, when given, are what `model_from_config` and `data_from_config` would build (the
    demo keeps the data to write samples).
    """
    model = model if model is not None else model_from_config(cfg)
    data = data if data is not None else data_from_config(cfg, model)
    cfg = resolved_model_config(cfg, model)
    return fit(model, data, cfg.strategy.name, out=cfg.out, resume=resume, bn=cfg.strategy.bn,
               augment=cfg.data.augment, record=cfg, **cfg.strategy.options(), **cfg.train.model_dump())


@functools.wraps(_rank)
def rank(*args: Any, **kwargs: Any):
    kwargs.setdefault("fit", fit)  # the proxy fine-tunes of `confirm` train through hs.fit
    return _rank(*args, **kwargs)
