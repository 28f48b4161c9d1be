"""A text file tokenised once into an on-disk, memory-mapped store, and read from there by every process.

One store per (text file, its text and label columns, tokenizer, max_length), in a folder of its own under
`default_store_dir()` (or `store_dir=`), beside the image stores:

    ids.i32        every row's token ids end to end, as int32; no padding is stored
    types.u8       token type ids in the same layout, for tokenizers whose model takes them (text pairs)
    offsets.i64    N + 1 offsets: row i's tokens are ids[offsets[i]:offsets[i + 1]]
    targets.npy    the rows' targets as the loader parsed them
    manifest.json  format and headstart version, the file (path, size, mtime), the settings, the tokenizer's
                   identity, counts, the largest token id, a sha256 per data file; written last and atomically:
                   a store without it is not complete

Why a flat int32 memmap with offsets and not Arrow (through `datasets`): token ids are ragged, and a batch needs
each of its rows' slices of ids, which two offsets locate. A flat array plus offsets is exactly that ragged
column with nothing around it: NumPy reads it, a batch reads only its rows' bytes (from the page cache once
warm), and nothing is parsed. Arrow's list<int32> column holds the same two buffers inside a format that needs
pyarrow (optional here) and, to map and cache it, `datasets` (not a dependency). Padding is added per batch,
as in memory.

The texts themselves stay in memory: they are the data's fingerprint (what the feature cache and run.json key
on). What the store saves is tokenising every text again in each run and process, and the Python lists of
ids tokenising builds. A build tokenises in chunks of rows, so its memory is bounded; it is not resumable: a
killed build has no manifest and starts again. Locking, locations and the format check are the image store's
(data/store.py).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..atomic import atomic_write_text
from ..errors import DataError
from .images import STORE_MODES
from .store import (_DISK_ERRORS, StoreUnavailable, _read_json, _root_id, _version, auto_threshold_gb,
                    default_store_dir, lock_store)

FORMAT = 1
CHUNK = 4096  # rows tokenised per call: bounds the Python lists a build holds at once
# `auto` compares the in-memory path's tokenising peak with the threshold. Measured: tokenising bbc-news as a
# 4.1 MB CSV with MiniLM's tokenizer added 41 (128 tokens) and 45 (256 tokens) bytes of peak RSS per byte of
# file: the fast tokenizer encodes whole texts before it truncates them.
MEMORY_PER_FILE_BYTE = 45
_MANIFEST, _IDS, _TYPES, _OFFSETS, _TARGETS = "manifest.json", "ids.i32", "types.u8", "offsets.i64", "targets.npy"
_SUFFIX = "tok"


def file_entry(path: str | os.PathLike) -> list:
    """[absolute path, size, mtime_ns]: what identifies a text file's content cheaply."""
    st = os.stat(path)
    return [str(Path(path).resolve()), st.st_size, st.st_mtime_ns]


def tokenizer_identity(tokenizer) -> dict:
    """Its name and a sha256 of what decides its ids: the fast tokenizer's whole pipeline (vocabulary,
    normaliser, pre-tokeniser, post-processor), or else the vocabulary and special tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        body = json.loads(backend.to_str())
        # transformers leaves the last call's truncation and padding set on the backend: not part of identity
        body.pop("truncation", None)
        body.pop("padding", None)
    else:
        body = {"vocab": sorted(tokenizer.get_vocab().items()), "special": tokenizer.special_tokens_map}
    body["_"] = [type(tokenizer).__name__, tokenizer.truncation_side, list(tokenizer.model_input_names)]
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()
    return {"name_or_path": str(getattr(tokenizer, "name_or_path", "")), "sha256": digest}


def store_path(file: str | os.PathLike, key: dict, store_dir: str | os.PathLike | None = None) -> Path:
    """The folder of text file `file`'s token store for the settings `key`."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(file).resolve().name) or "file"
    settings = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]
    return Path(store_dir or default_store_dir()).expanduser() / f"{name}-{_root_id(file)}-{settings}-{_SUFFIX}"


@dataclass
class TokenRows:
    """Chosen rows of a token store, as the text batcher holds them: lengths and start offsets per row, and
    the whole flat ids (and token types) as tensors over the memory map, read only where sliced."""

    lengths: torch.Tensor
    starts: torch.Tensor
    input_ids: torch.Tensor
    token_type_ids: torch.Tensor | None
    max_id: int


class TokenStore:
    """A complete token store: its manifest, offsets, and its ids (and types) as memory maps."""

    def __init__(self, path: Path, manifest: dict):
        self.path, self.manifest = Path(path), manifest
        self.offsets = np.fromfile(self.path / _OFFSETS, dtype=np.int64, count=manifest["count"] + 1)
        self.ids = self._map(_IDS, np.int32)
        self.types = self._map(_TYPES, np.uint8) if manifest["types"] else None

    def _map(self, name: str, dtype) -> np.ndarray:
        n = self.manifest["tokens"]
        # copy-on-write: torch wants a writable array; nothing is ever written, so nothing is copied
        return np.memmap(self.path / name, dtype=dtype, mode="c", shape=(n,)) if n else np.zeros(0, dtype)

    def __len__(self) -> int:
        return self.manifest["count"]

    def rows(self, rows: np.ndarray) -> TokenRows:
        rows = np.asarray(rows, dtype=np.int64)
        starts = self.offsets[rows]
        types = torch.from_numpy(self.types) if self.types is not None else None
        return TokenRows(torch.from_numpy(self.offsets[rows + 1] - starts), torch.from_numpy(starts),
                         torch.from_numpy(self.ids), types, int(self.manifest["max_id"]))

    def verify(self) -> str | None:
        """What is wrong with the data files' bytes (their sha256 against the manifest's), or None."""
        for name, sha in self.manifest["sha256"].items():
            h = hashlib.sha256()
            with open(self.path / name, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 24), b""):
                    h.update(block)
            if h.hexdigest() != sha:
                return f"token store {self.path}: {name} fails its checksum (the file was modified or damaged)"
        return None


def _expected_bytes(m: dict) -> dict[str, int]:
    sizes = {_IDS: 4 * m["tokens"], _OFFSETS: 8 * (m["count"] + 1)}
    if m["types"]:
        sizes[_TYPES] = m["tokens"]
    return sizes


def _check(path: Path, key: dict, entry: list, count: int, verify: bool) -> tuple[TokenStore | None, str | None]:
    """(the store, None) when `path` holds a complete store of this file as it is now; (None, why not)."""
    if not (path / _MANIFEST).exists():
        return None, None
    m = _read_json(path / _MANIFEST)
    if not isinstance(m, dict) or "format" not in m:
        return None, f"token store {path} has an unreadable manifest"
    if m["format"] != FORMAT:
        return None, (f"token store {path} has format {m['format']} (written by headstart {m.get('headstart', '?')}); "
                      f"this headstart ({_version()}) reads format {FORMAT}")
    if m.get("key") != key:
        return None, f"token store {path} was built with other settings"
    if m.get("file") != entry or m["count"] != count:
        return None, (f"{entry[0]} changed since its token store was built (size, modification time or rows: "
                      f"{m.get('file', ['?', '?', '?'])[1:]} then, {entry[1:]} now)")
    for name, want in _expected_bytes(m).items():
        have = (path / name).stat().st_size if (path / name).exists() else 0
        if have < want:
            return None, f"token store {path} is truncated: {name} has {have} of {want} bytes"
    store = TokenStore(path, m)
    if verify:
        problem = store.verify()
        if problem:
            return None, problem
    return store, None


def _remove_contents(path: Path) -> None:
    """Delete a store's files, the manifest first so that it never reads as complete half-deleted."""
    for name in (_MANIFEST, _IDS, _TYPES, _OFFSETS, _TARGETS):
        (path / name).unlink(missing_ok=True)


def encode_texts(tokenizer, texts: Sequence, max_length: int, pair: bool):
    """The tokenizer's encoding of texts (or text pairs), truncated to `max_length`: the one call that makes
    token ids, in memory (data/text.py's batcher) and for the store alike."""
    if pair:
        return tokenizer([a for a, _ in texts], [b for _, b in texts], truncation=True, max_length=max_length)
    return tokenizer(list(texts), truncation=True, max_length=max_length)


def _write(fh, array: np.ndarray, h) -> None:
    data = memoryview(np.ascontiguousarray(array)).cast("B")
    fh.write(data)
    h.update(data)


def _build(path: Path, key: dict, entry: list, texts: Sequence, targets: torch.Tensor, classes: list[str],
           tokenizer, max_length: int, pair: bool, progress: bool | None) -> None:
    from tqdm.auto import tqdm

    _remove_contents(path)
    n = len(texts)
    offsets = np.zeros(n + 1, np.int64)
    sha = {_IDS: hashlib.sha256(), _TYPES: hashlib.sha256(), _OFFSETS: hashlib.sha256()}
    use_types, max_id = None, -1
    bar = tqdm(total=n, unit="text", dynamic_ncols=True, desc=f"tokenising {Path(entry[0]).name} into its store",
               disable=None if progress is None else not progress)
    with bar, open(path / _IDS, "wb") as fi, open(path / _TYPES, "wb") as ft:
        for start in range(0, n, CHUNK):
            enc = encode_texts(tokenizer, texts[start:start + CHUNK], max_length, pair)
            ids = enc["input_ids"]
            if use_types is None:  # as the in-memory batcher decides
                use_types = "token_type_ids" in enc and "token_type_ids" in tokenizer.model_input_names
            lengths = np.fromiter((len(x) for x in ids), np.int64, len(ids))
            offsets[start + 1:start + 1 + len(ids)] = offsets[start] + np.cumsum(lengths)
            flat = np.fromiter(itertools.chain.from_iterable(ids), np.int64, int(lengths.sum()))
            if flat.size:
                max_id = max(max_id, int(flat.max()))
            _write(fi, flat.astype(np.int32), sha[_IDS])
            if use_types:
                _write(ft, np.fromiter(itertools.chain.from_iterable(enc["token_type_ids"]), np.uint8, flat.size),
                       sha[_TYPES])
            bar.update(len(ids))
        for fh in (fi, ft):
            fh.flush()
            os.fsync(fh.fileno())
    if not use_types:
        (path / _TYPES).unlink()
        del sha[_TYPES]
    with open(path / _OFFSETS, "wb") as fo:
        _write(fo, offsets, sha[_OFFSETS])
        fo.flush()
        os.fsync(fo.fileno())
    with open(path / _TARGETS, "wb") as fh:
        np.save(fh, targets.numpy())
        fh.flush()
        os.fsync(fh.fileno())
    manifest = {"format": FORMAT, "headstart": _version(), "file": entry, "key": key, "count": n,
                "tokens": int(offsets[-1]), "types": bool(use_types), "max_id": max_id, "classes": list(classes),
                "sha256": {k: h.hexdigest() for k, h in sha.items()}, "written": time.strftime("%Y-%m-%dT%H:%M:%S")}
    atomic_write_text(path / _MANIFEST, json.dumps(manifest))  # from here on the store reads as complete


def open_token_store(entry: list, columns: dict, texts: Sequence, targets: torch.Tensor, classes: list[str],
                     tokenizer, max_length: int, store_dir: str | os.PathLike | None = None,
                     progress: bool | None = None, verify: bool = False) -> TokenStore:
    """The token store of the rows `texts` read from the file `entry` names: reused, or (re)built from `texts`.

    A damaged store, one of another format, or one of a file that changed since is rebuilt with a warning.
    Raises StoreUnavailable when it has to be written and cannot be (read-only or full disk).
    """
    pair = bool(texts) and isinstance(texts[0], tuple)
    key = {"columns": columns, "tokenizer": tokenizer_identity(tokenizer), "max_length": int(max_length),
           "pair": pair}
    path = store_path(entry[0], key, store_dir)
    try:
        lock = lock_store(path, "token store")
    except OSError as e:
        store, _ = _check(path, key, entry, len(texts), verify)  # a complete, current read-only store is fine
        if store is not None:
            return store
        raise StoreUnavailable(f"cannot write the token store at {path} ({e.strerror or e}).") from None
    with lock:
        try:
            store, problem = _check(path, key, entry, len(texts), verify)
            if problem:
                warnings.warn(f"{problem}: rebuilding it", stacklevel=3)
            if store is None:
                _build(path, key, entry, texts, targets, classes, tokenizer, max_length, pair, progress)
                store, problem = _check(path, key, entry, len(texts), False)
                if problem or store is None:
                    raise DataError(f"{problem} right after it was built; check the disk ({path})")
            return store
        except OSError as e:
            if e.errno in _DISK_ERRORS:
                raise StoreUnavailable(f"cannot write the token store at {path} ({e.strerror or e}).") from None
            raise


class TextTokens:
    """Where the rows of a TextData read from a text file take their token ids from: that file's token store.

    The splits of one file share it (`take` keeps the file's row numbers); `open` with the batcher's tokenizer
    reuses or builds the store, or returns None (with a warning) when it cannot be written: the batcher then
    tokenises in memory.
    """

    def __init__(self, entry: list, columns: dict, texts: list, targets: torch.Tensor, classes: list[str],
                 rows: np.ndarray, store_dir: str | os.PathLike | None = None):
        self.entry, self.columns, self.texts, self.targets, self.classes = entry, columns, texts, targets, classes
        self.rows, self.store_dir = np.asarray(rows, dtype=np.int64), store_dir

    def take(self, idx: torch.Tensor) -> "TextTokens":
        return TextTokens(self.entry, self.columns, self.texts, self.targets, self.classes,
                          self.rows[idx.cpu().numpy()], self.store_dir)

    def open(self, tokenizer, max_length: int, progress: bool | None = None) -> TokenRows | None:
        try:
            store = open_token_store(self.entry, self.columns, self.texts, self.targets, self.classes, tokenizer,
                                     max_length, self.store_dir, progress)
        except StoreUnavailable as e:
            warnings.warn(f"{e} Tokenising {self.entry[0]} in memory instead; set data.store_dir (or "
                          f"$HEADSTART_STORE_DIR) to a writable folder with space to keep it on disk.", stacklevel=3)
            return None
        return store.rows(self.rows)


def token_source(path: str | os.PathLike, entry: list, part, mode: str = "auto",
                 store_dir: str | os.PathLike | None = None, threshold_gb: float | None = None) -> TextTokens | None:
    """The token store source of a TextData `part` holding all rows of text file `path`, or None to tokenise it
    in memory: `memory`, `auto` when tokenising the file in memory stays under the threshold, or a file that
    changed while it was read (`entry` is its state before)."""
    if mode not in STORE_MODES:
        raise DataError(f"store must be one of {', '.join(STORE_MODES)}, got {mode!r}.")
    if mode == "memory":
        return None
    if mode == "auto" and entry[1] * MEMORY_PER_FILE_BYTE / 1e9 <= auto_threshold_gb(threshold_gb):
        return None
    if file_entry(path) != entry:
        warnings.warn(f"{path} changed while it was read: tokenising it in memory this time", stacklevel=3)
        return None
    return TextTokens(entry, dict(part.columns or {}), part.texts, part.targets, list(part.classes),
                      np.arange(len(part)), store_dir)


# ----------------------------------------------------------------------------------------------------------
# Inspection, removal


def token_stores_of(file: str | os.PathLike, store_dir: str | os.PathLike | None = None) -> list[Path]:
    """The token store folders of text file `file`, one per tokenizer and settings."""
    base = Path(store_dir or default_store_dir()).expanduser()
    return sorted(base.glob(f"*-{_root_id(file)}-*-{_SUFFIX}")) if base.is_dir() else []


def describe_tokens(path: Path) -> dict:
    """What a token store folder holds: complete or not, rows, tokens, tokenizer, size on disk, where."""
    m = _read_json(path / _MANIFEST)
    disk = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    out: dict[str, Any] = {"path": str(path), "complete": isinstance(m, dict), "size_on_disk_gb": round(disk / 1e9, 4)}
    if isinstance(m, dict):
        key = m.get("key", {})
        out.update(file=m["file"][0], format=m["format"], headstart=m.get("headstart"), count=m["count"],
                   tokens=m["tokens"], mean_tokens=round(m["tokens"] / max(m["count"], 1), 1),
                   max_length=key.get("max_length"), tokenizer=key.get("tokenizer", {}).get("name_or_path"),
                   text_columns=key.get("columns", {}).get("text_columns"), written=m.get("written"))
        try:
            targets = np.load(path / _TARGETS)
            if targets.ndim == 1 and targets.dtype == np.int64:
                counts = np.bincount(targets, minlength=len(m["classes"])).tolist()
                out["classes"] = dict(zip(m["classes"], counts))
            elif targets.ndim == 2:
                out["classes"] = dict(zip(m["classes"], targets.sum(0).astype(int).tolist()))
        except (OSError, ValueError):
            pass
    else:
        out["building"] = "no manifest: being built, or interrupted (rebuilt on next use)"
    return out


def remove_token_stores(file: str | os.PathLike | None = None,
                        store_dir: str | os.PathLike | None = None) -> list[Path]:
    """Delete the token stores of text file `file`, or every token store under the store folder with None."""
    base = Path(store_dir or default_store_dir()).expanduser()
    paths = token_stores_of(file, store_dir) if file is not None else \
        (sorted(p for p in base.iterdir() if p.is_dir() and re.search(rf"-[0-9a-f]{{12}}-[0-9a-f]{{8}}-{_SUFFIX}$",
                                                                      p.name)) if base.is_dir() else [])
    for p in paths:
        shutil.rmtree(p)
    return paths
