"""Build a model and data from a RunConfig and fit: what the CLI and `headstart demo` call."""
from __future__ import annotations

import math

from ..config import RunConfig
from ..data import DataSplits, image_folder, subsample_per_class
from ..data import datasets as builtin
from ..model import TransferModel, create_model
from .trainer import RunResult, fit


def model_from_config(cfg: RunConfig) -> TransferModel:
    m = cfg.model
    return create_model(m.backbone, weights=m.weights, head=m.head, hidden=m.head_hidden, dropout=m.dropout,
                        image_size=m.image_size)


def data_from_config(cfg: RunConfig, model: TransferModel) -> DataSplits:
    """A built-in data set by name, or an image folder decoded once at the size the model needs."""
    d = cfg.data.require_source()
    if d.dataset is not None:
        return builtin.load(d.dataset, subset=d.subset, test_subset=d.test_subset, val_fraction=d.val_fraction,
                            seed=cfg.train.seed)
    pre = model.spec.preprocessing
    # Store images just large enough for the eval resize (size / crop_pct) and the train random crop.
    stored = math.ceil(max(pre.image_size) / pre.crop_pct)
    splits = image_folder(d.path, val=d.val_path, test=d.test_path, val_fraction=d.val_fraction,
                          seed=cfg.train.seed, stored_size=stored)
    if d.subset is not None:
        splits.train = subsample_per_class(splits.train, d.subset, None, cfg.train.seed)
    if d.test_subset is not None and splits.test is not None:
        splits.test = subsample_per_class(splits.test, d.test_subset, None, cfg.train.seed)
    return splits


def fit_from_config(cfg: RunConfig, resume: bool = False) -> RunResult:
    model = model_from_config(cfg)
    data = data_from_config(cfg, model)
    return fit(model, data, cfg.strategy.name, out=cfg.out, resume=resume, bn=cfg.strategy.bn,
               augment=cfg.data.augment, record=cfg, **cfg.train.model_dump())
