"""An image folder decoded once into an on-disk, memory-mapped store, and read from there by every process.

One store per (folder, stored size), in a folder of its own under `default_store_dir()` (or `store_dir=`):

    images.u8      decoded uint8 images, fixed-size records of 3 x S x S bytes (gray images in 3 equal channels)
    manifest.json  format version, headstart version, the files (relative path, size, mtime), classes,
                   labels, which records are gray or unreadable, a sha256 per chunk of records;
                   written last and atomically: a store without it is not complete
    build.json     while building: the files being added; chunks.jsonl: the chunks already written

Why a raw NumPy memmap and not Arrow or safetensors: the records are fixed-size, so record i is one
`pread` (or a page-cache hit) at offset i * record_bytes; a batch of any rows is one fancy index with no
decoding, parsing or copying beyond its own bytes, and `torch.from_numpy` makes it a tensor. Safetensors
holds one tensor per file and is written whole, so it can be neither appended to nor resumed chunk by
chunk; Arrow adds a columnar layer (and pyarrow) to what is one fixed-shape array.

A build decodes chunks of files in a process pool (PIL's JPEG draft mode, through images._decode_file),
writes each chunk at its records' offset and journals it, so a killed build continues where it stopped.
Files added to the folder are appended; a file changed or removed makes the store rebuild. An exclusive lock
(flock) on the store makes concurrent processes (DDP ranks, a second run) wait for one build and then read
it: nothing is decoded twice.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import time
import warnings
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from ..atomic import atomic_write_text
from ..errors import DataError
from .images import (FOLDER_STORES, IMAGE_EXTENSIONS, ImageData, MappedImages, _scan_folder, _try_decode,
                     check_unreadable)

FORMAT = 1
DEFAULT_STORED_SIZE = 256  # image folders read without a model: the usual 224 px eval transform's resize
CHUNK = 256  # images per chunk: the unit of work of a decoding process and of resuming
MAX_AUTO_GB = 8.0  # `auto` goes to disk above this decoded size whatever the free memory
# The in-memory path peaks near 3x the decoded size (issue 21: 3.26 GB RSS for a 1.06 GB tensor: the decoded
# arrays, the tensor and the train/val copies), so a quarter of the free memory leaves room for the rest.
AUTO_MEMORY_FRACTION = 0.25
FALLBACK_MEMORY_FRACTION = 0.5  # a store that cannot be written falls back to memory below this share
_MANIFEST, _DATA, _PLAN, _JOURNAL, _LOCK = "manifest.json", "images.u8", "build.json", "chunks.jsonl", ".lock"
_DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


class StoreUnavailable(DataError):
    """The store cannot be written here (read-only or full disk); the message says where and why."""


def default_store_dir() -> Path:
    """$HEADSTART_STORE_DIR, else `stores` under $HEADSTART_CACHE (default ~/.cache/headstart)."""
    if os.environ.get("HEADSTART_STORE_DIR"):
        return Path(os.environ["HEADSTART_STORE_DIR"])
    return Path(os.environ.get("HEADSTART_CACHE", Path.home() / ".cache" / "headstart")) / "stores"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("headstart")
    except PackageNotFoundError:
        return "unknown"


def _root_id(root: str | os.PathLike) -> str:
    return hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:12]


def store_path(root: str | os.PathLike, stored_size: int, store_dir: str | os.PathLike | None = None) -> Path:
    """The folder of the store of image folder `root` at `stored_size` pixels."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(root).resolve().name) or "root"
    return Path(store_dir or default_store_dir()).expanduser() / f"{name}-{_root_id(root)}-{int(stored_size)}px"


def decoded_gb(n: int, stored_size: int) -> float:
    """Size of `n` decoded RGB images of `stored_size` pixels, in GB."""
    return n * 3 * stored_size * stored_size / 1e9


def available_gb() -> float:
    """Memory available to a new allocation without swapping (MemAvailable), in GB."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 1e9


def auto_threshold_gb(threshold_gb: float | None = None) -> float:
    """Decoded size above which `store: auto` uses the disk store."""
    if threshold_gb is not None:
        return float(threshold_gb)
    return min(AUTO_MEMORY_FRACTION * available_gb(), MAX_AUTO_GB)


# ----------------------------------------------------------------------------------------------------------
# Building


def _entries(root: Path, files: Sequence[str]) -> list[list]:
    """[relative path, size, mtime_ns] of each file: what identifies its content cheaply."""
    out = []
    for f in files:
        try:
            st = os.stat(f)
            out.append([os.path.relpath(f, root), st.st_size, st.st_mtime_ns])
        except FileNotFoundError:  # removed since the folder was scanned: decodes as unreadable
            out.append([os.path.relpath(f, root), -1, -1])
    return out


def _decode_chunk(data_path: str, start: int, paths: list[str], stored_size: int) -> dict:
    """Decode `paths` into records start.. of the data file; runs in a worker process or thread."""
    buf = np.zeros((len(paths), 3, stored_size, stored_size), np.uint8)
    gray, bad = [], {}
    for j, p in enumerate(paths):
        r = _try_decode(p, stored_size)
        if isinstance(r, str):
            bad[str(j)] = r
            gray.append("0")
            continue
        a, g = r
        buf[j] = a[None] if g else a.transpose(2, 0, 1)
        gray.append("1" if g else "0")
    view = memoryview(buf).cast("B")
    fd = os.open(data_path, os.O_WRONLY)
    try:  # pwrite, not a writable memmap: a full disk is an OSError here, not a SIGBUS
        offset, done = start * buf[0].nbytes, 0
        while done < len(view):
            done += os.pwrite(fd, view[done:], offset + done)
    finally:
        os.close(fd)
    return {"start": start, "count": len(paths), "sha256": hashlib.sha256(view).hexdigest(),
            "gray": "".join(gray), "bad": bad}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _read_journal(path: Path) -> dict[int, dict]:
    """Chunks already written, by first record; a line cut short by a kill is ignored."""
    done = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return done
    for line in lines:
        try:
            rec = json.loads(line)
            done[int(rec["start"])] = rec
        except (ValueError, KeyError, TypeError):
            continue
    return done


def _reserve(data: Path, nbytes: int) -> None:
    """Make the data file `nbytes` long with its blocks allocated: a full disk fails here, before decoding."""
    have = data.stat().st_size if data.exists() else 0
    if have >= nbytes:
        return
    free = shutil.disk_usage(data.parent).free
    if free < nbytes - have:
        raise OSError(errno.ENOSPC, f"needs {(nbytes - have) / 1e9:.2f} GB, {free / 1e9:.2f} GB free")
    fd = os.open(data, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            os.posix_fallocate(fd, have, nbytes - have)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
            os.ftruncate(fd, nbytes)  # a file system without fallocate
    finally:
        os.close(fd)


def _run_chunks(jobs: list[tuple], workers: int | None) -> Iterator[dict]:
    """Results of `_decode_chunk(*job)` as they finish, from processes (or threads with workers=0)."""
    if not jobs:
        return
    cpus = os.cpu_count() or 1
    if workers is None:  # processes pay off from a few chunks on; below that, threads start at once
        workers = min(cpus, len(jobs)) if len(jobs) >= 4 and cpus > 1 else 0
    if workers == 0:
        pool = ThreadPoolExecutor(max_workers=2)  # PIL releases the GIL while decoding
    else:
        import multiprocessing

        # fork, as torch's DataLoader workers on Linux: the children only run PIL and numpy, and a spawned
        # child would first import torch (seconds each, more on a busy machine)
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method))
    with pool:
        futures: list[Future] = [pool.submit(_decode_chunk, *job) for job in jobs]
        handed: set[Future] = set()
        try:
            for f in as_completed(futures):
                if f.exception() is not None:
                    # Chunks that finished beside the failed one are handed over first, so the journal keeps
                    # them: as_completed may yield the failure before a chunk that finished earlier.
                    for other in futures:
                        if other not in handed and other.done() and not other.cancelled() and other.exception() is None:
                            handed.add(other)
                            yield other.result()
                    f.result()  # raises the chunk's error
                handed.add(f)
                yield f.result()
        finally:
            for f in futures:
                f.cancel()


def _classes_labels(entries: list[list]) -> tuple[list[str], list[int]]:
    tops = [Path(rel).parts[0] for rel, _, _ in entries]
    classes = sorted(set(tops))
    index = {c: i for i, c in enumerate(classes)}
    return classes, [index[t] for t in tops]


def _build(path: Path, root: Path, new: list[list], previous: dict | None, stored_size: int,
           workers: int | None, progress: bool | None) -> None:
    """Decode the `new` entries into records after `previous`'s (a fresh store without it); resumable."""
    from tqdm.auto import tqdm

    base = previous["count"] if previous else 0
    plan = {"format": FORMAT, "stored_size": stored_size, "base": base, "files": new}
    data, journal, plan_path = path / _DATA, path / _JOURNAL, path / _PLAN
    record = 3 * stored_size * stored_size
    total = (base + len(new)) * record
    old = _read_json(plan_path)
    chunk = old.get("chunk", CHUNK) if isinstance(old, dict) else CHUNK  # a resumed build keeps its chunks
    same = isinstance(old, dict) and {k: v for k, v in old.items() if k != "chunk"} == plan
    done = _read_journal(journal) if same and data.exists() and data.stat().st_size >= total else {}
    if not done:
        chunk = CHUNK
        atomic_write_text(plan_path, json.dumps({**plan, "chunk": chunk}))
        journal.write_bytes(b"")
    _reserve(data, total)
    paths = [str(root / rel) for rel, _, _ in new]
    jobs = [(str(data), s, paths[s - base:s - base + chunk], stored_size)
            for s in range(base, base + len(new), chunk) if s not in done]
    bar = tqdm(total=len(new), initial=len(new) - sum(len(j[2]) for j in jobs), unit="img", dynamic_ncols=True,
               desc=f"decoding {root.name} into its store", disable=None if progress is None else not progress)
    with bar, open(journal, "a", encoding="utf-8") as jf:
        for rec in _run_chunks(jobs, workers):
            jf.write(json.dumps(rec) + "\n")
            jf.flush()
            os.fsync(jf.fileno())
            done[rec["start"]] = rec
            bar.update(rec["count"])
    fd = os.open(data, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    chunks = list(previous["chunks"]) if previous else []
    gray, bad = (previous["gray"], dict(previous["bad"])) if previous else ("", {})
    for s in sorted(done):
        rec = done[s]
        chunks.append([s, rec["count"], rec["sha256"]])
        gray += rec["gray"]
        bad.update({str(s + int(j)): why for j, why in rec["bad"].items()})
    entries = (previous["files"] if previous else []) + new
    classes, labels = _classes_labels(entries)
    manifest = {"format": FORMAT, "headstart": _version(), "root": str(root.resolve()), "stored_size": stored_size,
                "record_bytes": record, "count": len(entries), "fingerprint": files_fingerprint(entries),
                "classes": classes, "labels": labels, "files": entries, "gray": gray, "bad": bad, "chunks": chunks,
                "written": time.strftime("%Y-%m-%dT%H:%M:%S")}
    atomic_write_text(path / _MANIFEST, json.dumps(manifest))  # from here on the store reads as complete
    plan_path.unlink(missing_ok=True)
    journal.unlink(missing_ok=True)


def files_fingerprint(entries: list[list]) -> str:
    """sha256 of the files' relative paths, sizes and modification times."""
    return hashlib.sha256(json.dumps(sorted(entries)).encode()).hexdigest()


def _remove_contents(path: Path) -> None:
    """Delete a store's files, the manifest first so that it never reads as complete half-deleted. Readers
    that have the data file mapped keep their (unlinked) copy."""
    for name in (_MANIFEST, _PLAN, _JOURNAL, _DATA):
        (path / name).unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------------------
# Reading


class ImageStore:
    """A complete store: its manifest and its records as a read-only (R, 3, S, S) uint8 memory map."""

    def __init__(self, path: Path, manifest: dict):
        self.path, self.manifest = Path(path), manifest
        s = manifest["stored_size"]
        shape = (manifest["count"], 3, s, s)
        self.array = np.memmap(self.path / _DATA, dtype=np.uint8, mode="r", shape=shape) if shape[0] else \
            np.zeros(shape, np.uint8)
        self.index = {rel: i for i, (rel, _, _) in enumerate(manifest["files"])}

    def __len__(self) -> int:
        return self.manifest["count"]

    def view(self, rels: Sequence[str]) -> tuple[MappedImages, list[int], list[tuple[int, str]]]:
        """Images of the files `rels` (relative paths) in that order: (images, positions kept, (position,
        reason) of the unreadable ones)."""
        bad_records = self.manifest["bad"]
        rows, kept, bad = [], [], []
        for i, rel in enumerate(rels):
            r = self.index[rel]
            if str(r) in bad_records:
                bad.append((i, bad_records[str(r)]))
            else:
                rows.append(r)
                kept.append(i)
        gray = self.manifest["gray"]
        channels = 1 if rows and all(gray[r] == "1" for r in rows) else 3
        return MappedImages(self.array, np.asarray(rows, np.int64), channels), kept, bad

    def verify(self) -> None:
        """Raise DataError unless every chunk's bytes match their checksum (reads the whole store)."""
        rb = self.manifest["record_bytes"]
        with open(self.path / _DATA, "rb") as fh:
            for start, count, sha in self.manifest["chunks"]:
                fh.seek(start * rb)
                if hashlib.sha256(fh.read(count * rb)).hexdigest() != sha:
                    raise DataError(f"store {self.path}: records {start}..{start + count - 1} fail their checksum "
                                    f"(the data file was modified or damaged)")


def _check_manifest(path: Path, verify: bool) -> tuple[ImageStore | None, str | None]:
    """(the store, None) when `path` holds a complete, intact store; (None, what is wrong) otherwise."""
    if not (path / _MANIFEST).exists():
        return None, None
    m = _read_json(path / _MANIFEST)
    if not isinstance(m, dict) or "format" not in m:
        return None, f"store {path} has an unreadable manifest"
    if m["format"] != FORMAT:
        return None, (f"store {path} has format {m['format']} (written by headstart {m.get('headstart', '?')}); "
                      f"this headstart ({_version()}) reads format {FORMAT}")
    want = m["count"] * m["record_bytes"]
    have = (path / _DATA).stat().st_size if (path / _DATA).exists() else 0
    if have < want:
        return None, f"store {path} is truncated: its data file has {have} of {want} bytes"
    store = ImageStore(path, m)
    if verify:
        try:
            store.verify()
        except DataError as e:
            return None, str(e)
    return store, None


def lock_store(path: Path, what: str):
    """The store folder `path`'s lock file, held exclusively until it is closed; while another process (a DDP
    rank, a second run) builds the store, waits with a warning, then returns. OSError when the folder cannot
    be written. Image and token stores (data/token_store.py) both lock this way."""
    path.mkdir(parents=True, exist_ok=True)
    lock = open(path / _LOCK, "a+")
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            warnings.warn(f"waiting for another process to finish the {what} at {path}", stacklevel=3)
            fcntl.flock(lock, fcntl.LOCK_EX)
    except BaseException:
        lock.close()
        raise
    return lock


def open_store(root: str | os.PathLike, files: Sequence[str], stored_size: int,
               store_dir: str | os.PathLike | None = None, workers: int | None = None,
               progress: bool | None = None, verify: bool = False) -> ImageStore:
    """The store of `files` (under `root`) at `stored_size`: reused, extended with added files, or (re)built.

    A damaged store, one of another format, or one whose files changed or were removed is rebuilt with a
    warning. Raises StoreUnavailable when it has to be written and cannot be (read-only or full disk).
    `verify` checks every chunk's checksum (a whole read) before trusting an existing store.
    """
    root = Path(root)
    path = store_path(root, stored_size, store_dir)
    try:
        lock = lock_store(path, "image store")
    except OSError as e:
        store, _ = _check_manifest(path, verify)  # a read-only store that is complete and current is fine
        if store is not None and _changes(store.manifest, _entries(root, files)) == ([], [], []):
            return store
        raise StoreUnavailable(f"cannot write the image store at {path} ({e.strerror or e}).") from None
    with lock:
        try:
            return _open_locked(path, root, files, stored_size, workers, progress, verify)
        except OSError as e:
            if e.errno in _DISK_ERRORS:
                raise StoreUnavailable(f"cannot write the image store at {path} ({e.strerror or e}).") from None
            raise


def _changes(manifest: dict, entries: list[list]) -> tuple[list[str], list[str], list[list]]:
    """(changed, removed, added) files between a manifest and the folder now."""
    now = {rel: (size, mtime) for rel, size, mtime in entries}
    changed, removed = [], []
    for rel, size, mtime in manifest["files"]:
        if rel not in now:
            removed.append(rel)
        elif now[rel] != (size, mtime):
            changed.append(rel)
    stored = {rel for rel, _, _ in manifest["files"]}
    return changed, removed, [e for e in entries if e[0] not in stored]


def _open_locked(path: Path, root: Path, files: Sequence[str], stored_size: int, workers: int | None,
                 progress: bool | None, verify: bool) -> ImageStore:
    for _ in range(3):
        entries = _entries(root, files)
        store, problem = _check_manifest(path, verify)
        if problem:
            warnings.warn(f"{problem}: rebuilding it", stacklevel=4)
            _remove_contents(path)
        previous = store.manifest if store is not None else None
        if previous is not None:
            changed, removed, added = _changes(previous, entries)
            if changed or removed:
                what = ", ".join(f"{len(v)} {k}" for k, v in (("changed", changed), ("removed", removed)) if v)
                warnings.warn(f"image store {path}: {what} file(s) since it was built (e.g. "
                              f"{(changed + removed)[0]}): rebuilding it", stacklevel=4)
                _remove_contents(path)
                previous, added = None, entries
        else:
            added = entries
        if added:
            _build(path, root, added, previous, stored_size, workers, progress)
            store, problem = _check_manifest(path, False)
            if problem:
                raise DataError(f"{problem} right after it was built; check the disk ({path})")
        if _entries(root, files) == entries:
            return store
        warnings.warn(f"files in {root} changed while its image store was built: updating it", stacklevel=4)
    raise DataError(f"files in {root} kept changing while its image store was built (3 tries). Wait until the "
                    f"folder is complete (copies finished), then run again.")


def read_folder(root: Path, files: list[str], labels: list[int], classes: list[str], stored_size: int,
                max_bad_fraction: float, mode: str = "auto", store_dir: str | os.PathLike | None = None,
                threshold_gb: float | None = None, workers: int | None = None,
                progress: bool | None = None) -> ImageData | None:
    """An image folder's ImageData read from its store; None when it should be decoded into memory instead
    (`auto` below the threshold, or a store that cannot be written for data that fit in memory)."""
    need = decoded_gb(len(files), stored_size)
    if mode == "auto" and need <= auto_threshold_gb(threshold_gb):
        return None
    try:
        store = open_store(root, files, stored_size, store_dir, workers, progress)
    except StoreUnavailable as e:
        avail = available_gb()
        if need <= FALLBACK_MEMORY_FRACTION * avail:
            warnings.warn(f"{e} Decoding {root} into memory instead ({need:.2f} GB); set data.store_dir (or "
                          f"$HEADSTART_STORE_DIR) to a writable folder with space to keep it on disk.", stacklevel=3)
            return None
        raise DataError(f"{e} Its {len(files)} images need {need:.1f} GB decoded, more than memory can hold "
                        f"({avail:.1f} GB available). Set data.store_dir (or $HEADSTART_STORE_DIR) to a writable "
                        f"folder with {need:.1f} GB free.") from None
    images, kept, bad = store.view([os.path.relpath(f, root) for f in files])
    check_unreadable([(files[i], why) for i, why in bad], len(files), max_bad_fraction)
    targets = torch.tensor([labels[i] for i in kept], dtype=torch.long)
    return ImageData(images, targets, list(classes), [files[i] for i in kept])


FOLDER_STORES.register("disk", help="decoded once into a memory-mapped store on disk")(read_folder)


# ----------------------------------------------------------------------------------------------------------
# Ahead of time, inspection, removal


def prepare(root: str | os.PathLike, stored_size: int, store_dir: str | os.PathLike | None = None,
            extensions: tuple[str, ...] = IMAGE_EXTENSIONS, workers: int | None = None,
            progress: bool | None = True, verify: bool = True) -> ImageStore:
    """Build (or bring up to date) the store of image folder `root` at `stored_size` pixels."""
    _, files, _ = _scan_folder(Path(root), "image", tuple(extensions))
    return open_store(root, files, stored_size, store_dir, workers, progress, verify)


def stores_of(root: str | os.PathLike, store_dir: str | os.PathLike | None = None) -> list[Path]:
    """The store folders of image folder `root`, one per stored size."""
    base = Path(store_dir or default_store_dir()).expanduser()
    return sorted(base.glob(f"*-{_root_id(root)}-*px")) if base.is_dir() else []


def describe(path: Path) -> dict:
    """What a store folder holds: complete or not, counts, classes, size on disk, fingerprint."""
    m = _read_json(path / _MANIFEST)
    plan = _read_json(path / _PLAN)
    disk = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    out: dict[str, Any] = {"path": str(path), "complete": isinstance(m, dict) and plan is None,
                           "size_on_disk_gb": round(disk / 1e9, 4)}
    if isinstance(m, dict):
        counts = np.bincount(np.asarray(m["labels"], np.int64), minlength=len(m["classes"])).tolist()
        out.update(root=m["root"], format=m["format"], headstart=m.get("headstart"),
                   stored_size=m["stored_size"], count=m["count"], unreadable=len(m["bad"]),
                   classes=dict(zip(m["classes"], counts)), fingerprint=m["fingerprint"], written=m.get("written"))
    if isinstance(plan, dict):
        done = sum(r["count"] for r in _read_journal(path / _JOURNAL).values())
        out["building"] = f"{done} of {len(plan['files'])} images decoded (interrupted or in progress)"
    return out


def remove_stores(root: str | os.PathLike | None = None, store_dir: str | os.PathLike | None = None) -> list[Path]:
    """Delete the stores of image folder `root`, or every store under the store folder with root=None."""
    base = Path(store_dir or default_store_dir()).expanduser()
    paths = stores_of(root, store_dir) if root is not None else \
        (sorted(p for p in base.iterdir() if p.is_dir() and re.search(r"-[0-9a-f]{12}-\d+px$", p.name))
         if base.is_dir() else [])
    for p in paths:
        shutil.rmtree(p)
    return paths


def size_for(image_size: int | None) -> int:
    """The stored size `resolve_source` decodes a folder to for a model input of `image_size` pixels."""
    return math.ceil(image_size / 0.875) if image_size else DEFAULT_STORED_SIZE
