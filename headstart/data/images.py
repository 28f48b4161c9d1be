"""Image data in memory: uint8 tensors plus targets, splits, and loaders from folders and arrays."""
from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import torch

from ..errors import DataError
from ..registry import Registry
from .splits import DataSplits, Labelled

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp",
                                     ".ppm", ".pgm", ".pbm")
# PIL modes whose pixels carry one intensity value; everything else is decoded as RGB.
_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_INT32_MAX = 2**31 - 1  # PIL mode "I" is signed 32-bit
_DECODE_THREADS = 2  # PIL releases the GIL while decoding, so two threads use both cores
_WARN_LIMIT = 10  # bad files warned about one by one; the rest are summed up in one warning


@dataclass
class ImageData(Labelled):
    """Images stored as uint8 (N, C, H, W) with C in {1, 3}, their targets and class names."""

    modality: ClassVar[str] = "image"
    columns: ClassVar[None] = None  # images come from files, not table columns (see TextData.columns)
    images: torch.Tensor  # or MappedImages: rows of an on-disk store (data/store.py), read when indexed
    targets: torch.Tensor  # (N,) int64 class indices, or float32 for regression
    classes: list[str]  # empty for regression
    paths: list[str] | None = None

    def __post_init__(self) -> None:
        _check_image_data(self.images, self.targets, self.classes, self.paths)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, indices: torch.Tensor | Sequence[int] | np.ndarray) -> ImageData:
        """A new ImageData holding the given rows (int indices or a boolean mask), in that order."""
        idx = row_indices(indices, len(self))
        idx_dev = idx.to(self.images.device)
        paths = [self.paths[i] for i in idx.tolist()] if self.paths is not None else None
        # A stored split stays on disk: its subset is a view of other rows, no pixels are read.
        images = self.images.take(idx) if isinstance(self.images, MappedImages) else self.images[idx_dev]
        return ImageData(images, self.targets[idx.to(self.targets.device)], list(self.classes), paths)

    def fingerprint(self) -> str:
        """sha256 hex digest of the images, targets and class names (identifies the data's content)."""
        h = hashlib.sha256()
        h.update(json.dumps([list(self.images.shape), str(self.targets.dtype), list(self.classes)]).encode())
        # Hashing the raw buffers in one call each keeps this at memory speed (60k 28x28 images: ~0.1 s).
        hash_tensor(h, self.images)
        hash_tensor(h, self.targets)
        return h.hexdigest()


class MappedImages:
    """ImageData.images kept on disk: chosen rows of a uint8 (R, 3, S, S) memory map, read only when indexed.

    Indexing returns a uint8 tensor of just those rows, so a batch reads a batch. `take` makes a view of other
    rows without reading pixels. Gray data is stored in 3 equal channels and shown as channel 0.
    """

    dtype = torch.uint8
    device = torch.device("cpu")
    ndim = 4
    _HASH_ROWS = 256  # rows read per step when hashing: bounded memory whatever the size

    def __init__(self, array: np.ndarray, rows: np.ndarray, channels: int):
        self.array, self.rows, self.channels = array, np.asarray(rows, dtype=np.int64), int(channels)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.rows), self.channels, *self.array.shape[2:]))

    def __len__(self) -> int:
        return len(self.rows)

    def numel(self) -> int:
        return int(np.prod(self.shape))

    def _select(self, idx: Any) -> np.ndarray:
        if isinstance(idx, torch.Tensor):
            idx = idx.cpu().numpy()
        return self.rows[idx]

    def __getitem__(self, idx: Any) -> torch.Tensor:
        sel = self._select(idx)
        if sel.ndim == 0:
            return torch.from_numpy(np.array(self.array[int(sel), :self.channels]))  # a copy: the map is read-only
        if sel.size == 0:
            return torch.empty((0, *self.shape[1:]), dtype=torch.uint8)
        # Reading rows in file order keeps the disk access sequential; the batch keeps its own order.
        order = np.argsort(sel, kind="stable")
        out = np.empty((len(sel), *self.shape[1:]), dtype=np.uint8)
        out[order] = self.array[sel[order], :self.channels]
        return torch.from_numpy(out)

    def take(self, idx: Any) -> "MappedImages":
        return MappedImages(self.array, self._select(idx), self.channels)

    def numpy(self) -> np.ndarray:
        return self[slice(None)].numpy()

    def hash_into(self, h) -> None:
        """Feed the rows' bytes to a hashlib object, in order: the same digest as the tensor in memory."""
        for start in range(0, len(self.rows), self._HASH_ROWS):
            h.update(memoryview(self[slice(start, start + self._HASH_ROWS)].numpy()).cast("B"))

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        # Any torch op other than indexing (torch.cat of parts, .float() ...) sees the rows read into memory.
        def load(a):
            if isinstance(a, MappedImages):
                return a[slice(None)]
            if isinstance(a, (list, tuple)):
                return type(a)(load(x) for x in a)
            return a
        return func(*load(args), **{k: load(v) for k, v in (kwargs or {}).items()})

    def element_size(self) -> int:
        return 1

    def dim(self) -> int:
        return 4

    def to(self, *args, **kwargs) -> torch.Tensor:
        """All rows read into memory, as a tensor (a whole read: index rows instead where you can)."""
        return self[slice(None)].to(*args, **kwargs)

    def __reduce__(self):
        # A memory map is pickled as a path and reopened, never copied (e.g. to another process).
        return (_reopen_mapped, (str(self.array.filename), self.array.shape, self.rows, self.channels))


def _reopen_mapped(filename: str, shape: tuple, rows: np.ndarray, channels: int) -> MappedImages:
    return MappedImages(np.memmap(filename, dtype=np.uint8, mode="r", shape=tuple(shape)), rows, channels)


def _check_image_data(images: Any, targets: Any, classes: Any, paths: Any) -> None:
    """Raise DataError unless the fields of an ImageData are consistent."""
    if isinstance(images, MappedImages):
        pass  # checked when the store was opened
    elif not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4 \
            or images.shape[1] not in (1, 3):
        got = f"{type(images).__name__}" + (f" {images.dtype} of shape {tuple(images.shape)}"
                                            if isinstance(images, torch.Tensor) else "")
        raise DataError(f"ImageData.images must be a uint8 torch.Tensor of shape (N, C, H, W) with C in "
                        f"{{1, 3}}, got {got}. Use from_arrays() to convert other layouts and dtypes.")
    if not isinstance(targets, torch.Tensor) or targets.ndim != 1 \
            or targets.dtype not in (torch.int64, torch.float32):
        got = f"{type(targets).__name__}" + (f" {targets.dtype} of shape {tuple(targets.shape)}"
                                             if isinstance(targets, torch.Tensor) else "")
        raise DataError(f"ImageData.targets must be a 1-D torch.Tensor of int64 class indices (or float32 for "
                        f"regression), got {got}.")
    if targets.shape[0] != images.shape[0]:
        raise DataError(f"ImageData has {images.shape[0]} images but {targets.shape[0]} targets; they must "
                        f"match one to one.")
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise DataError(f"ImageData.classes must be a list of str, got {type(classes).__name__}.")
    if targets.dtype == torch.int64:
        if not classes:
            raise DataError("ImageData has integer class targets but an empty class list; give the class names, "
                            "or use float32 targets for regression.")
        if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= len(classes)):
            raise DataError(f"ImageData targets must be class indices in [0, {len(classes)}), got values from "
                            f"{int(targets.min())} to {int(targets.max())}.")
    if paths is not None and len(paths) != images.shape[0]:
        raise DataError(f"ImageData has {images.shape[0]} images but {len(paths)} paths; give one path per "
                        f"image or paths=None.")


def _class_groups(targets: torch.Tensor) -> list[torch.Tensor]:
    """Indices of each class in ascending class order; float (regression) targets form one group."""
    targets = targets.detach().cpu()
    if targets.is_floating_point():
        return [torch.arange(targets.shape[0])]
    _, inverse, counts = torch.unique(targets, sorted=True, return_inverse=True, return_counts=True)
    order = torch.argsort(inverse, stable=True)
    return list(torch.split(order, counts.tolist()))


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def hash_tensor(h, t: torch.Tensor) -> None:
    """Feed a tensor's bytes to a hashlib object in one call (an empty tensor adds nothing)."""
    if isinstance(t, MappedImages):
        t.hash_into(h)
        return
    if t.numel():
        h.update(memoryview(t.detach().cpu().contiguous().numpy()).cast("B"))


def row_indices(indices: torch.Tensor | Sequence[int] | np.ndarray, n: int) -> torch.Tensor:
    """Int64 row indices in [0, n) from int indices or a boolean mask of length n; clear errors otherwise."""
    idx = torch.as_tensor(indices)
    if idx.dtype == torch.bool:
        if idx.shape != (n,):
            raise DataError(f"a boolean mask for subset() must have shape ({n},), got {tuple(idx.shape)}.")
        idx = idx.nonzero().flatten()
    idx = idx.to(torch.long).flatten()
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
        raise DataError(f"subset() indices must lie in [0, {n}), got values from {int(idx.min())} "
                        f"to {int(idx.max())}.")
    return idx


# How a gap in a label column reads once written as text (pandas' astype(str) gives "nan"). Not "Nan", a name.
_NAN_TEXTS = frozenset({"", "nan", "NaN", "NAN"})


def is_missing_label(value: Any) -> bool:
    """True for None, a float NaN, an empty string or the text "nan" / "NaN" / "NAN"."""
    if value is None:
        return True
    if isinstance(value, (float, np.floating)):
        return bool(np.isnan(value))
    if isinstance(value, str):
        return value.strip() in _NAN_TEXTS
    return False


def _positions(indices: Sequence[int], shown: int = 5) -> str:
    more = f" and {len(indices) - shown} more" if len(indices) > shown else ""
    return ", ".join(str(i) for i in indices[:shown]) + more


def require_two_classes(data: Labelled, source: str, fix: str) -> None:
    """Raise DataError unless classification training data has at least two classes to tell apart.

    With a single class every prediction is right: the loss falls to 0 and val accuracy is 1.0, a run that
    looks perfect and has learnt nothing. Regression targets are exempt. Multi-label data needs rows whose
    label sets differ (one tag present in some rows and absent in others is a real binary problem).
    """
    if data.is_regression or len(data) == 0:
        return
    if data.multi_label:
        rows = torch.unique(data.targets, dim=0)
        if rows.shape[0] < 2:
            labels = [c for c, on in zip(data.classes, rows[0].tolist()) if on]
            raise DataError(f"{source}: every training row has the same labels {labels}, so there is nothing to "
                            f"learn (the model would predict them for everything and score perfectly). {fix}")
        return
    present = torch.unique(data.targets).tolist()
    if len(present) < 2:
        names = ", ".join(repr(data.classes[i]) for i in present)
        listed = f" out of the {len(data.classes)} in the class list" if len(data.classes) > len(present) else ""
        raise DataError(f"{source}: found {len(present)} class ({names}){listed} in the training data; a "
                        f"classifier needs at least two (with one, every prediction is right: loss 0 and accuracy "
                        f"1.0 while learning nothing). {fix}")


def stratified_split(targets: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices into (keep, held_out): per class round(fraction * n) held out, seeded and deterministic.

    A class with at least two samples gives at least one to held_out and keeps at least one; a class with a
    single sample keeps it. Float (regression) targets are split as one group. Both index tensors are sorted.
    """
    if not isinstance(fraction, (int, float)) or not 0.0 <= float(fraction) < 1.0:
        raise DataError(f"the held-out fraction must be in [0, 1), got {fraction!r}. Use e.g. 0.1 to hold out "
                        f"10% of each class.")
    generator = torch.Generator().manual_seed(int(seed))
    keep, held = [], []
    for idx in _class_groups(targets):
        n = idx.numel()
        k = 0
        if n >= 2 and fraction > 0:
            k = min(max(_round_half_up(fraction * n), 1), n - 1)
        perm = idx[torch.randperm(n, generator=generator)]
        held.append(perm[:k])
        keep.append(perm[k:])
    empty = torch.empty(0, dtype=torch.long)
    keep_idx = torch.sort(torch.cat(keep)).values if keep else empty
    held_idx = torch.sort(torch.cat(held)).values if held else empty
    return keep_idx, held_idx


def subsample_per_class(data: ImageData, per_class: int | None = None, fraction: float | None = None,
                        seed: int = 0) -> ImageData:
    """Keep at most `per_class` samples of each class, or `fraction` of each class (at least one), seeded.

    Regression data counts as a single class. With neither argument the data is returned unchanged.
    """
    if per_class is not None and fraction is not None:
        raise DataError(f"give either per_class or fraction to subsample_per_class, not both (got "
                        f"per_class={per_class!r}, fraction={fraction!r}).")
    if per_class is None and fraction is None:
        return data
    if per_class is not None and (isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1):
        raise DataError(f"per_class must be a positive int, got {per_class!r}.")
    if fraction is not None and (not isinstance(fraction, (int, float)) or not 0.0 < float(fraction) <= 1.0):
        raise DataError(f"fraction must be in (0, 1], got {fraction!r}.")
    generator = torch.Generator().manual_seed(int(seed))
    chosen = []
    for idx in _class_groups(data.targets):
        n = idx.numel()
        k = min(per_class, n) if per_class is not None else min(n, max(1, _round_half_up(fraction * n)))
        chosen.append(idx[torch.randperm(n, generator=generator)[:k]])
    if not chosen:
        return data
    return data.subset(torch.sort(torch.cat(chosen)).values)


# ----------------------------------------------------------------------------------------------------------
# Decoding image files


def _integer_to_8_bit(img):
    """A 16- or 32-bit integer image ("I;16*", "I") as 8-bit "L", scaled by its bit depth.

    PIL's convert("L") clips these at 255, which turns a 16-bit image almost entirely white.
    """
    from PIL import Image

    arr = np.asarray(img)
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0:
        raise ValueError(f"{img.mode} image has negative pixel values (min {lo}); only unsigned pixels can be "
                         f"read. Re-export it as an 8- or 16-bit image.")
    # 16-bit PNGs and TIFFs often open as mode "I", so values that fit in 16 bits are read as 16-bit data
    # (65535 / 257 = 255: level k * 257 becomes k); larger ones use the full 31-bit positive range.
    scale = 257.0 if hi <= 65535 else _INT32_MAX / 255.0
    return Image.fromarray(np.rint(arr / scale).astype(np.uint8))


def to_8_bit(img):
    """(a PIL image as 8-bit "L" or "RGB", whether it is gray): 16- and 32-bit integer images are scaled by
    their bit depth, not clipped."""
    if img.mode.startswith("I"):
        img = _integer_to_8_bit(img)
    gray = img.mode in _GRAY_MODES
    return img.convert("L" if gray else "RGB"), gray


def _decode_file(path: str, stored_size: int | None) -> tuple[np.ndarray, bool]:
    """Decode one file into an (H, W) gray or (H, W, 3) RGB uint8 array, resized and centre-cropped."""
    from PIL import Image, ImageOps

    with Image.open(path) as img:
        if stored_size:
            # JPEG can decode straight at 1/2, 1/4 or 1/8 scale (never below the requested size): much faster
            # for photos far larger than stored_size.
            img.draft(None, (stored_size, stored_size))
        img = ImageOps.exif_transpose(img)  # phone photos store their rotation in EXIF
        img, gray = to_8_bit(img)
    if stored_size:
        w, h = img.size
        scale = stored_size / min(w, h)
        new_w, new_h = max(stored_size, round(w * scale)), max(stored_size, round(h * scale))
        if (new_w, new_h) != (w, h):
            img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
        left, top = (new_w - stored_size) // 2, (new_h - stored_size) // 2
        img = img.crop((left, top, left + stored_size, top + stored_size))
    return np.asarray(img, dtype=np.uint8), gray


def _try_decode(path: str, stored_size: int | None) -> tuple[np.ndarray, bool] | str:
    try:
        return _decode_file(path, stored_size)
    except Exception as exc:  # any failure means "unreadable"; the caller decides whether that is fatal
        return f"{type(exc).__name__}: {exc}"


def load_image_files(paths: list[str], stored_size: int | None,
                     max_bad_fraction: float = 0.1) -> tuple[torch.Tensor, list[int]]:
    """Decode image files into one uint8 (N, C, S, S) tensor; returns it and the indices of the files kept.

    Each file is decoded once, its shorter side resized to `stored_size` and centre-cropped to a square (with
    `stored_size=None` all images must already share one size). Images stay 1-channel only if all are gray.
    Unreadable files are skipped with a warning; more than `max_bad_fraction` of them raises DataError.
    """
    paths = [str(p) for p in paths]
    if not paths:
        raise DataError("load_image_files() got an empty list of paths; give at least one image file.")
    if stored_size is not None and (isinstance(stored_size, bool) or not isinstance(stored_size, int)
                                    or stored_size < 1):
        raise DataError(f"stored_size must be a positive int (pixels) or None, got {stored_size!r}.")
    with ThreadPoolExecutor(max_workers=min(_DECODE_THREADS, len(paths))) as pool:
        results = list(pool.map(_try_decode, paths, [stored_size] * len(paths)))

    bad = [(p, r) for p, r in zip(paths, results) if isinstance(r, str)]
    check_unreadable(bad, len(paths), max_bad_fraction)
    kept = [i for i, r in enumerate(results) if not isinstance(r, str)]
    arrays: list[Any] = [results[i] for i in kept]
    del results  # from here on `arrays` holds the only reference, so each can be freed once copied
    return _stack_decoded(paths, arrays, kept)


def check_unreadable(bad: list[tuple[str, str]], total: int, max_bad_fraction: float) -> None:
    """Warn about unreadable files (path, reason); DataError when more than `max_bad_fraction` of `total`."""
    if bad and len(bad) > max_bad_fraction * total:
        shown = "; ".join(f"{p} ({reason})" for p, reason in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise DataError(f"{len(bad)} of {total} image files could not be read (more than the allowed "
                        f"{max_bad_fraction:.0%}): {shown}{more}. Remove or re-export the broken files, or allow more "
                        f"(max_bad_fraction=; config data.max_bad_fraction; CLI --max-bad-fraction for predict "
                        f"and evaluate).")
    for p, reason in bad[:_WARN_LIMIT]:
        warnings.warn(f"skipping unreadable image file {p}: {reason}", stacklevel=3)
    if len(bad) > _WARN_LIMIT:
        warnings.warn(f"skipped {len(bad) - _WARN_LIMIT} more unreadable image files (first: "
                      f"{bad[_WARN_LIMIT][0]})", stacklevel=3)


def _stack_decoded(paths: list[str], arrays: list, kept: list[int]) -> tuple[torch.Tensor, list[int]]:
    first = arrays[0][0].shape[:2]
    odd = next((j for j, (a, _) in enumerate(arrays) if a.shape[:2] != first), None)
    if odd is not None:
        other = arrays[odd][0].shape[:2]
        raise DataError(f"images have different sizes ({paths[kept[0]]} is {first[1]}x{first[0]}, "
                        f"{paths[kept[odd]]} is {other[1]}x{other[0]}) and stored_size=None; pass a stored_size "
                        f"so they are all resized to one square size.")
    h, w = first
    channels = 1 if all(gray for _, gray in arrays) else 3
    out = np.empty((len(arrays), channels, h, w), dtype=np.uint8)
    for j in range(len(arrays)):
        a, gray = arrays[j]
        # A gray array broadcasts over the 3 channels; an RGB one is transposed to channels-first.
        out[j] = a[None] if gray else a.transpose(2, 0, 1)
        arrays[j] = None
    return torch.from_numpy(out), kept


# ----------------------------------------------------------------------------------------------------------
# Folders


def _class_dirs(root: Path, what: str) -> list[Path]:
    """The class subfolders of `root` in sorted order, with DataError if there are none."""
    if not root.exists():
        raise DataError(f"{what} folder {str(root)!r} does not exist. Give the path of a folder with one "
                        f"subfolder per class (e.g. {root}/cat/*.jpg, {root}/dog/*.jpg).")
    if not root.is_dir():
        raise DataError(f"{what} path {str(root)!r} is not a folder. Give a folder with one subfolder per "
                        f"class.")
    dirs = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)
    if not dirs:
        n_files = sum(1 for p in root.iterdir() if p.is_file())
        raise DataError(f"{what} folder {str(root)!r} has no class subfolders (it holds {n_files} files "
                        f"directly). Put each class's images in its own subfolder: {root}/<class name>/<image>.")
    return dirs


def _image_files(class_dir: Path, extensions: tuple[str, ...]) -> list[str]:
    """Image files under one class folder (recursively), sorted, skipping hidden files and folders."""
    exts = {e.lower() if e.startswith(".") else "." + e.lower() for e in extensions}
    found = []
    for dirpath, dirnames, filenames in os.walk(class_dir):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [os.path.join(dirpath, f) for f in filenames
                  if not f.startswith(".") and os.path.splitext(f)[1].lower() in exts]
    return sorted(found)


def _scan_folder(root: Path, what: str, extensions: tuple[str, ...]) -> tuple[list[str], list[str], list[int]]:
    """(class names, file paths, class index of each file) of a class-per-subfolder tree."""
    classes, files, labels = [], [], []
    for label, d in enumerate(_class_dirs(root, what)):
        found = _image_files(d, extensions)
        if not found:
            others = sorted({os.path.splitext(f)[1].lower() or "(none)"
                             for _, _, fs in os.walk(d) for f in fs if not f.startswith(".")})
            seen = f" (it has files ending in {', '.join(others[:8])})" if others else " (it is empty)"
            raise DataError(f"class folder {str(d)!r} has no image files{seen}. Allowed extensions: "
                            f"{', '.join(extensions)}. Add images to it, pass extensions=..., or remove the "
                            f"folder.")
        classes.append(d.name)
        files += found
        labels += [label] * len(found)
    return classes, files, labels


# Readers of image folders through an on-disk store, by name: data/store.py registers "disk" (it imports this
# module, so this module cannot import it).
FOLDER_STORES: Registry = Registry("image store")
STORE_MODES = ("auto", "memory", "disk")


def _load_folder_part(root: Path, what: str, classes: list[str] | None, stored_size: int,
                      extensions: tuple[str, ...], max_bad_fraction: float = 0.1, store: str = "memory",
                      store_dir: str | os.PathLike | None = None,
                      store_threshold: float | None = None) -> ImageData:
    """Load one class-per-subfolder tree; its classes must equal `classes` when given."""
    found_classes, files, labels = _scan_folder(root, what, extensions)
    if classes is not None and found_classes != classes:
        missing = sorted(set(classes) - set(found_classes))
        extra = sorted(set(found_classes) - set(classes))
        raise DataError(f"{what} folder {str(root)!r} has different classes from the training folder: missing "
                        f"{missing or 'none'}, not in training {extra or 'none'}. Give it exactly the same class "
                        f"subfolders as the training folder.")
    if store not in STORE_MODES:
        raise DataError(f"store must be one of {', '.join(STORE_MODES)}, got {store!r}.")
    if store != "memory":  # the store decides: "auto" keeps data that fit comfortably in memory
        stored = FOLDER_STORES.get("disk")(root, files, labels, list(found_classes), stored_size, max_bad_fraction,
                                           mode=store, store_dir=store_dir, threshold_gb=store_threshold)
        if stored is not None:
            return stored
    images, kept = load_image_files(files, stored_size, max_bad_fraction)
    targets = torch.tensor([labels[i] for i in kept], dtype=torch.long)
    return ImageData(images, targets, list(found_classes), [files[i] for i in kept])


def image_folder(root: str | os.PathLike, val: str | os.PathLike | None = None,
                 test: str | os.PathLike | None = None, val_fraction: float = 0.1, seed: int = 0,
                 stored_size: int = 256, extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
                 max_bad_fraction: float = 0.1, store: str = "auto", store_dir: str | os.PathLike | None = None,
                 store_threshold: float | None = None) -> DataSplits:
    """Load images from `root/<class>/...` (classes sorted by name); optional val and test folders alike.

    Without `val`, a seeded stratified `val_fraction` of each training class becomes the val part.
    Images are stored as uint8 squares of `stored_size` pixels (shorter side resized, centre-cropped).
    Unreadable files are skipped with a warning up to `max_bad_fraction` of a folder.
    `store`: "memory" decodes into RAM; "disk" decodes once into a memory-mapped store under `store_dir`
    (docs/data_store.md) and reads it from there; "auto" picks disk when the decoded images would exceed
    `store_threshold` GB (default: a quarter of the available memory, at most 8 GB).
    """
    root_path = Path(root)
    part = functools.partial(_load_folder_part, stored_size=stored_size, extensions=tuple(extensions),
                             max_bad_fraction=max_bad_fraction, store=store, store_dir=store_dir,
                             store_threshold=store_threshold)
    train = part(root_path, "training", None)
    require_two_classes(train, f"training folder {str(root_path)!r}",
                        f"Add a second class folder next to it ({root_path}/<other class>/<images>).")
    classes = list(train.classes)
    if val is not None:
        val_data: ImageData | None = part(Path(val), "val", classes)
    elif val_fraction != 0:  # stratified_split rejects values outside [0, 1)
        keep, held = stratified_split(train.targets, val_fraction, seed)
        train, val_data = train.subset(keep), train.subset(held)
    else:
        val_data = None
    test_data = part(Path(test), "test", classes) if test is not None else None
    return DataSplits(train, val_data, test_data, classes, name=root_path.resolve().name)


# ----------------------------------------------------------------------------------------------------------
# Arrays


def _to_numpy(a: Any, what: str) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    if isinstance(a, np.ndarray):
        return a
    try:
        return np.asarray(a)
    except Exception as exc:
        raise DataError(f"{what} must be a numpy array or torch tensor, got {type(a).__name__} ({exc}).") from None


def images_to_uint8(x: Any, what: str) -> torch.Tensor:
    """Convert (N,H,W), (N,H,W,C) or (N,C,H,W) arrays (uint8, ints, or floats in [0,1] / [0,255]) to uint8 NCHW."""
    arr = _to_numpy(x, what)
    if arr.ndim == 3:
        arr = arr[:, None]
    elif arr.ndim == 4:
        if arr.shape[1] in (1, 3):
            pass  # channels first; also chosen when both dims could be channels (images 1 or 3 pixels tall)
        elif arr.shape[3] in (1, 3):
            arr = arr.transpose(0, 3, 1, 2)
        else:
            raise DataError(f"{what} has shape {arr.shape}; with 4 dims one of dim 1 or dim 3 must be the channel "
                            f"count 1 or 3 (N, C, H, W) or (N, H, W, C).")
    else:
        raise DataError(f"{what} has shape {arr.shape}; allowed are (N, H, W), (N, H, W, C) or (N, C, H, W) with "
                        f"C in {{1, 3}}. Reshape flat images to (N, H, W) first.")
    if arr.shape[0] == 0 or arr.shape[2] == 0 or arr.shape[3] == 0:
        raise DataError(f"{what} has shape {arr.shape}; it needs at least one image of at least 1x1 pixels.")
    if arr.dtype == np.uint8:
        out = arr
    elif arr.dtype.kind in "iu":
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise DataError(f"{what} has integer pixel values from {lo} to {hi}; allowed are 0..255. Rescale "
                            f"them to 0..255 (e.g. 16-bit images: x // 257).")
        out = arr.astype(np.uint8)
    elif arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise DataError(f"{what} contains NaN or infinite pixel values; allowed are finite floats in [0, 1] "
                            f"or [0, 255].")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0 or hi > 255:
            raise DataError(f"{what} has float pixel values from {lo:g} to {hi:g}; allowed are [0, 1] or "
                            f"[0, 255]. Pass raw pixels, not normalised ones (normalisation happens later).")
        # Values all <= 1 are read as [0, 1]; a [0, 255] image that dark is too rare to guess otherwise.
        scaled = arr * 255.0 if hi <= 1.0 else arr
        out = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    else:
        raise DataError(f"{what} has dtype {arr.dtype}; allowed are uint8, other integer types (0..255) or "
                        f"floats in [0, 1] / [0, 255].")
    return torch.from_numpy(np.ascontiguousarray(out))


def _targets(y: Any, what: str, n: int, classes: list[str] | None) -> tuple[torch.Tensor, list[str]]:
    """Turn labels into int64 indices (or float32 regression targets); returns them and the class list."""
    arr = _to_numpy(y, what)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise DataError(f"{what} must be 1-D (one label per image), got shape {arr.shape}.")
    if arr.shape[0] != n:
        raise DataError(f"{what} has {arr.shape[0]} labels but there are {n} images; give exactly one label per "
                        f"image.")
    if arr.dtype.kind in "USO":
        values = arr.tolist()
        missing = [i for i, v in enumerate(values) if is_missing_label(v)]
        if missing:
            raise DataError(f"{what} has missing labels (None, NaN, 'nan' or empty) at positions "
                            f"{_positions(missing)} (counting from 0); every image needs a label. Fill in those "
                            f"labels or drop those images.")
        labels = [str(v) for v in values]
        if classes is None:
            classes = sorted(set(labels))
        index = {c: i for i, c in enumerate(classes)}
        unknown = sorted(set(labels) - set(index))
        if unknown:
            raise DataError(f"{what} has labels {unknown[:10]} that are not in classes {classes[:20]}; add them to "
                            f"classes or fix the labels.")
        return torch.tensor([index[v] for v in labels], dtype=torch.long), list(classes)
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        bad = np.flatnonzero(~np.isfinite(arr)).tolist()
        kind = "regression targets" if classes is None else "labels"
        raise DataError(f"{what} has NaN or infinite {kind} at positions {_positions(bad)} (counting from 0); "
                        f"they would make every loss NaN. Fill in those values or drop those images.")
    if arr.dtype.kind == "f" and classes is None:
        return torch.from_numpy(arr.astype(np.float32)), []  # float labels without classes: regression
    if arr.dtype.kind == "f":
        if not np.all(arr == np.round(arr)):
            raise DataError(f"{what} has non-integer float labels but classes were given; class labels must be "
                            f"whole numbers (or pass classes=None for regression targets).")
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iub":
        raise DataError(f"{what} has dtype {arr.dtype}; allowed are integer class indices, strings, or floats "
                        f"(regression).")
    arr = arr.astype(np.int64)
    lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, -1)
    if lo < 0:
        raise DataError(f"{what} has negative class index {lo}; class indices must be 0..num_classes-1.")
    if classes is None:
        classes = [str(i) for i in range(hi + 1)]
    elif hi >= len(classes):
        raise DataError(f"{what} has class index {hi}, but only {len(classes)} classes were given "
                        f"({classes[:20]}); indices must be 0..{len(classes) - 1}.")
    return torch.from_numpy(arr), list(classes)


def _array_part(x: Any, y: Any, what: str, classes: list[str] | None) -> ImageData:
    if (x is None) != (y is None):
        raise DataError(f"give both x_{what} and y_{what}, or neither (got only "
                        f"{'x' if y is None else 'y'}_{what}).")
    images = images_to_uint8(x, f"x_{what}" if what != "train" else "x")
    targets, classes = _targets(y, f"y_{what}" if what != "train" else "y", images.shape[0], classes)
    return ImageData(images, targets, classes)


def from_arrays(x: Any, y: Any, classes: list[str] | None = None, val_fraction: float = 0.1, seed: int = 0,
                x_val: Any = None, y_val: Any = None, x_test: Any = None, y_test: Any = None,
                name: str = "arrays") -> DataSplits:
    """Build DataSplits from in-memory images (numpy or torch) and labels.

    Images: (N,H,W), (N,H,W,C) or (N,C,H,W), C in {1,3}; uint8, or floats in [0,1] (if max <= 1) or [0,255].
    Labels: int indices, strings (mapped to sorted names unless `classes` is given) or floats (regression).
    Without x_val/y_val a seeded stratified `val_fraction` of the training data becomes the val part.
    """
    if classes is not None:
        classes = [str(c) for c in classes]
        if len(set(classes)) != len(classes):
            raise DataError(f"classes must be unique, got duplicates in {classes[:20]}.")
    train = _array_part(x, y, "train", classes)
    require_two_classes(train, "y", "Add images of a second class, or pass float targets without classes to "
                                    "train a regression model.")
    classes = list(train.classes)
    if x_val is not None or y_val is not None:
        val: ImageData | None = _array_part(x_val, y_val, "val", classes or None)
    elif val_fraction != 0:  # stratified_split rejects values outside [0, 1)
        keep, held = stratified_split(train.targets, val_fraction, seed)
        train, val = train.subset(keep), train.subset(held)
    else:
        val = None
    test = _array_part(x_test, y_test, "test", classes or None) \
        if x_test is not None or y_test is not None else None
    for part_name, part in (("val", val), ("test", test)):
        if part is None:
            continue
        if part.images.shape[1:] != train.images.shape[1:]:
            raise DataError(f"x_{part_name} images have shape {tuple(part.images.shape[1:])} (C, H, W) but the "
                            f"training images have {tuple(train.images.shape[1:])}; all parts must share one "
                            f"image size and channel count.")
        if part.is_regression != train.is_regression:
            raise DataError(f"y_{part_name} and y must both be class labels or both be float regression targets.")
    return DataSplits(train, val, test, classes, name=name)
