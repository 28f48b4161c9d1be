"""Build a model and data from a RunConfig and fit: what the CLI and `headstart demo` call."""
from __future__ import annotations

import math

from ..config import RunConfig
from ..data import DataSplits, image_folder, is_text_file, subsample_per_class, text_file
from ..data import datasets as builtin
from ..errors import ConfigError
from ..model import TransferModel, create_model
from .trainer import RunResult, fit


def model_from_config(cfg: RunConfig) -> TransferModel:
    m = cfg.model
    return create_model(m.backbone, weights=m.weights, head=m.head, hidden=m.head_hidden, dropout=m.dropout,
                        image_size=m.image_size, max_length=m.max_length, pooling=m.pooling, normalize=m.normalize,
                        task="multilabel" if cfg.data.is_multi_label else "classification")


def data_from_config(cfg: RunConfig, model: TransferModel) -> DataSplits:
    """A built-in data set by name, a text file (CSV, TSV, JSONL, JSON, Parquet), or an image folder decoded
    once at the size the model needs."""
    d = cfg.data.require_source()
    if d.dataset is not None:
        extra = {"test_fraction": d.test_fraction} if d.test_fraction else {}
        return builtin.load(d.dataset, subset=d.subset, test_subset=d.test_subset, val_fraction=d.val_fraction,
                            seed=cfg.train.seed, **extra)
    if is_text_file(d.path):
        splits = text_file(d.path, d.text_column, d.label_column, text_pair=d.text_pair, multi_label=d.multi_label,
                           label_delimiter=d.label_delimiter, val=d.val_path, test=d.test_path,
                           val_fraction=d.val_fraction, test_fraction=d.test_fraction, seed=cfg.train.seed)
    else:
        if model.spec.modality != "image":
            raise ConfigError(f"data.path {d.path!r} is not a text file (.csv, .tsv, .jsonl, .json, .parquet), but "
                              f"the backbone {model.spec.source} takes {model.spec.modality}. Give a text file.")
        if d.test_fraction:
            raise ConfigError("data.test_fraction is for text files; for an image folder give data.test_path "
                              "(a folder of class sub-folders).")
        splits = _image_splits(cfg, model)
    if d.subset is not None:
        splits.train = subsample_per_class(splits.train, d.subset, None, cfg.train.seed)
    if d.test_subset is not None and splits.test is not None:
        splits.test = subsample_per_class(splits.test, d.test_subset, None, cfg.train.seed)
    return splits


def _image_splits(cfg: RunConfig, model: TransferModel) -> DataSplits:
    d = cfg.data
    pre = model.spec.preprocessing
    # Store images just large enough for the eval resize (size / crop_pct) and the train random crop.
    stored = math.ceil(max(pre.image_size) / pre.crop_pct)
    return image_folder(d.path, val=d.val_path, test=d.test_path, val_fraction=d.val_fraction,
                        seed=cfg.train.seed, stored_size=stored)


def fit_from_config(cfg: RunConfig, resume: bool = False) -> RunResult:
    model = model_from_config(cfg)
    data = data_from_config(cfg, model)
    return fit(model, data, cfg.strategy.name, out=cfg.out, resume=resume, bn=cfg.strategy.bn,
               augment=cfg.data.augment, record=cfg, **cfg.strategy.options(), **cfg.train.model_dump())
