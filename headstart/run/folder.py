"""The run folder: config.yaml, run.json, metrics.jsonl, checkpoints/last.pt, best/ and test_metrics.json.

Nothing is written in place (atomic writes; the best bundle is written whole beside `best/` and swapped in),
a folder that holds results is never overwritten without `resume`, one process at a time holds a folder (a
lock the kernel drops when its holder dies), and a resumed folder drops the metric rows of an epoch whose
checkpoint was never written and the temporary files a killed write left behind.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import yaml

from ..atomic import atomic_write_text
from ..errors import ConfigError
from .checkpoint import load_checkpoint, save_checkpoint

METRICS_FILE, CONFIG_FILE, TEST_FILE, RUN_FILE = "metrics.jsonl", "config.yaml", "test_metrics.json", "run.json"
LOCK_FILE = ".lock"
RESULTS = (METRICS_FILE, "checkpoints", "best", TEST_FILE)  # a folder holding any of these holds a run


class RunFolder:
    """An opened run folder and the checkpoint state it resumes from (None for a new run)."""

    def __init__(self, path: Path, state: dict[str, Any] | None, lock=None):
        self.path, self.state, self._lock = path, state, lock

    @classmethod
    def open(cls, path: str | Path, record: dict[str, Any], resume: bool = False,
             normalise: Callable[[dict], dict] = lambda saved: saved) -> "RunFolder":
        """Create the folder and write `record` (the resolved config) as config.yaml, or on resume check that
        the saved config's ``train`` and ``strategy`` sections equal `record`'s and load the last checkpoint.

        `normalise` turns a saved config into the form of `record` (the config layer fills defaults there).
        """
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise ConfigError(f"out {str(path)!r} is a file, not a folder; choose a folder for the run. "
                              "Nothing was changed.")
        config_path = path / CONFIG_FILE
        held = [name for name in RESULTS if (path / name).exists()]
        if not resume and held:
            raise ConfigError(f"run folder {str(path)!r} already holds a run ({', '.join(held)}); resume it with "
                              "resume=True (CLI: --resume) or choose another out folder. Nothing was changed.")
        lock = acquire_lock(path)
        writes = lock is not None  # only the holder (rank 0 under torchrun) writes: ranks share the folder
        try:
            if writes:
                remove_leftovers(path)
            if not resume:
                if writes:
                    atomic_write_text(config_path, to_yaml(record))
                return cls(path, None, lock)
            return cls(path, resume_state(path, record, normalise, writes), lock)
        except BaseException:
            if lock is not None:
                lock.close()
            raise

    @property
    def writes(self) -> bool:
        """True in the process that holds the folder (rank 0 under torchrun): only it writes there."""
        return self._lock is not None

    @property
    def best(self) -> Path:
        """The best model's bundle folder."""
        return self.path / "best"

    def close(self) -> None:
        """Release the folder for other processes."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def append_metrics(self, row: dict[str, Any]) -> None:
        with open(self.path / METRICS_FILE, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")

    def metrics(self) -> list[dict[str, Any]]:
        return read_metrics(self.path)

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        save_checkpoint(self.path, state)

    @property
    def staged_best(self) -> Path:
        """Where the next best bundle is written whole before `write_best` swaps it in."""
        return self.path / "best.new"

    def write_best(self, write_bundle: Callable[[], Any]) -> None:
        """Write the best bundle whole into `staged_best`, then swap it in: `best/` always holds one epoch's
        weights with that epoch's metadata (a kill in between leaves the previous one, see `remove_leftovers`)."""
        fresh, old = self.staged_best, self.path / "best.old"
        shutil.rmtree(fresh, ignore_errors=True)
        write_bundle()
        if self.best.exists():
            os.replace(self.best, old)
        os.replace(fresh, self.best)
        shutil.rmtree(old, ignore_errors=True)

    def write_text(self, name: str, text: str) -> None:
        atomic_write_text(self.path / name, text)

    def record_run(self, data: dict[str, str], environment: dict[str, Any]) -> None:
        """Write run.json (the data's fingerprints, the library versions) for a new run; on resume, refuse
        other data than the run started with, and add this session's versions. Every rank checks; the
        folder's holder writes."""
        path = self.path / RUN_FILE
        saved = json.loads(path.read_text()) if path.exists() and self.state is not None else None
        if saved is not None and saved.get("data") != data:
            changed = sorted(k for k in set(data) | set(saved["data"]) if data.get(k) != saved["data"].get(k))
            raise ConfigError(f"cannot resume {str(self.path)!r} on other data: the {', '.join(changed)} split(s) "
                              "differ from the ones the run started with (run.json). Resume with the same data, "
                              "or start a new run folder.")
        if self.writes:
            sessions = (saved or {}).get("sessions", []) + [environment]
            self.write_text(RUN_FILE, json.dumps({"data": data, "sessions": sessions}, indent=2))


def acquire_lock(path: Path):
    """Hold the run folder's lock (an flock on `.lock`, released by the kernel if the holder dies); a folder
    another live process holds is refused with its PID. Under torchrun only rank 0 locks (the ranks share it)."""
    import fcntl

    if int(os.environ.get("RANK", "0")) != 0:
        return None
    path.mkdir(parents=True, exist_ok=True)
    handle = open(path / LOCK_FILE, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise ConfigError(f"run folder {str(path)!r} is in use by another process (PID {holder}); wait for it "
                          "to finish, or choose another out folder.") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


# Settings that change what a run shows, where its data is held or how long it may take, never what one step
# trains: a resume may change them.
CHANGEABLE_ON_RESUME = frozenset({"train.progress", "train.report", "train.log", "train.time_limit", "data.store",
                                  "data.store_dir", "data.store_threshold"})


def resume_state(path: Path, record: dict[str, Any], normalise: Callable[[dict], dict],
                 writes: bool = True) -> dict[str, Any] | None:
    """Check a resumed folder's saved config against `record` and return its last checkpoint (None if it has
    none); the writing process also drops metric rows past that checkpoint."""
    config_path = path / CONFIG_FILE
    if config_path.exists():
        saved = normalise(yaml.safe_load(config_path.read_text()) or {})
        diff = {f"{section}.{k}": (saved.get(section, {}).get(k), v)
                for section in ("model", "data", "strategy", "train") if section in record
                for k, v in record[section].items() if saved.get(section, {}).get(k) != v}
        diff = {k: v for k, v in diff.items() if k not in CHANGEABLE_ON_RESUME}
        if diff:
            raise ConfigError(f"cannot resume {str(path)!r} with different settings {diff} (saved, now); resume "
                              "with the saved config.yaml or start a new run folder.")
    elif writes:
        atomic_write_text(config_path, to_yaml(record))
    state = load_checkpoint(path)
    if writes:  # drop metric rows of an epoch whose checkpoint was never written (the run died in between)
        keep = state["epoch"] if state else 0
        rows = [r for r in read_metrics(path) if r["epoch"] <= keep]
        atomic_write_text(path / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in rows))
    return state


def remove_leftovers(path: Path) -> None:
    """What a killed run leaves: temporary files of atomic writes, and a half-swapped best bundle."""
    for tmp in [*path.glob(".*.tmp"), *path.glob("*/.*.tmp")]:
        tmp.unlink(missing_ok=True)
    best, old = path / "best", path / "best.old"
    if old.exists() and not best.exists():  # killed between the two renames: the previous best is complete
        os.replace(old, best)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(path / "best.new", ignore_errors=True)


def to_yaml(record: dict[str, Any]) -> str:
    """A config record as YAML, in its key order."""
    return yaml.safe_dump(record, sort_keys=False, default_flow_style=False)


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of a run folder's metrics.jsonl (one per finished epoch)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
