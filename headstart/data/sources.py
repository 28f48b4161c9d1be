"""One way from a data source string to splits: a built-in data set, a text file or an image folder.

The CLI (`fit`, `evaluate`, `rank`), run configs and `hs.rank` all call `resolve_source`, so the same string
means the same data everywhere: a local path that exists wins over a built-in data set of the same name, and
an image folder is decoded once at the size the model's eval transform needs.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from ..errors import ConfigError, DataError
from . import datasets as builtin
from .images import image_folder, subsample_per_class
from .splits import DataSplits
from .store import DEFAULT_STORED_SIZE
from .text import is_text_file, text_file


def stored_size(preprocessing) -> int:
    """The side images are decoded to: just large enough for the eval resize (size / crop_pct) and the
    training random crop."""
    return math.ceil(max(preprocessing.image_size) / preprocessing.crop_pct)


def is_builtin(source: str) -> bool:
    """True when `source` names a built-in data set and no local file or folder of that name exists."""
    return source in builtin.list_datasets() and not Path(source).exists()


def source_modality(source: str) -> str:
    """"text" or "image": what a data source holds, known without reading it."""
    if is_builtin(source):  # a registered loader says `loader.modality = "text"`; image otherwise
        return getattr(builtin.DATASETS.get(source), "modality", "image")
    return "text" if is_text_file(source) else "image"


def resolve_source(source: str, spec=None, *, builtin_name: bool | None = None, val: str | None = None, test: str | None = None,
                   val_fraction: float = 0.1, test_fraction: float = 0.0, subset: int | None = None,
                   test_subset: int | None = None, seed: int = 0, text_column: str | Sequence[str] = "text",
                   label_column: str = "label", text_pair: bool = False, multi_label: bool = False,
                   label_delimiter: str | None = None, image_size: int | None = None,
                   max_bad_fraction: float = 0.1, store: str = "auto", store_dir: str | None = None,
                   store_threshold: float | None = None) -> DataSplits:
    """Splits of a data source.

    Args:
        source: a built-in data set name (``headstart list datasets``), a text file (.csv, .tsv, .jsonl,
            .json, .parquet) or an image folder with one sub-folder per class.
        builtin_name: True when `source` is known to name a built-in data set (a config's data.dataset);
            None decides by `is_builtin`.
        spec: the model's BackboneSpec: an image folder is decoded at the size its preprocessing needs, and a
            text model refuses an image folder. Without it, images are stored at `image_size` / 0.875 (or 256).
        subset, test_subset: at most this many training / test examples per class (seeded).
        val_fraction, test_fraction: held-out fractions where the source has no val / test part of its own
            (0 keeps everything in the training split, for evaluating a whole folder or file).
        max_bad_fraction: an image folder's unreadable files are skipped, up to this fraction.
        store, store_dir, store_threshold: where an image folder's decoded images, or a text file's token ids,
            live: "memory", "disk" (a memory-mapped store under `store_dir`) or "auto" (disk above
            `store_threshold` GB); see `image_folder`, `text_file` and docs/data_store.md.
    """
    if builtin_name if builtin_name is not None else is_builtin(source):
        extra = {"test_fraction": test_fraction} if test_fraction else {}
        return builtin.load(source, subset=subset, test_subset=test_subset, val_fraction=val_fraction, seed=seed,
                            **extra)
    if is_text_file(source):
        splits = text_file(source, text_column, label_column, text_pair=text_pair, multi_label=multi_label,
                           label_delimiter=label_delimiter, val=val, test=test, val_fraction=val_fraction,
                           test_fraction=test_fraction, seed=seed, store=store, store_dir=store_dir,
                           store_threshold=store_threshold)
    elif Path(source).is_dir():
        if spec is not None and spec.modality != "image":
            raise ConfigError(f"data {source!r} is an image folder, but the backbone {spec.source} takes "
                            f"{spec.modality}. Give a text file (.csv, .tsv, .jsonl, .json, .parquet).")
        if test_fraction:
            raise ConfigError("test_fraction is for text files; for an image folder give a test folder (of class "
                            "sub-folders).")
        size = stored_size(spec.preprocessing) if spec is not None else \
            math.ceil(image_size / 0.875) if image_size else DEFAULT_STORED_SIZE
        splits = image_folder(source, val=val, test=test, val_fraction=val_fraction, seed=seed, stored_size=size,
                              max_bad_fraction=max_bad_fraction, store=store, store_dir=store_dir,
                              store_threshold=store_threshold)
    else:
        raise DataError(f"data {source!r} is neither a built-in data set ({', '.join(builtin.list_datasets())}), a "
                        "text file (.csv, .tsv, .jsonl, .json, .parquet) nor an image folder. Check the path.")
    if subset is not None:
        splits.train = subsample_per_class(splits.train, subset, None, seed)
    if test_subset is not None and splits.test is not None:
        splits.test = subsample_per_class(splits.test, test_subset, None, seed)
    return splits
