"""The run folder: config.yaml, metrics.jsonl, checkpoints/last.pt, best/ and test_metrics.json.

Nothing is written in place (atomic writes), a folder that holds results is never overwritten without
`resume`, and a resumed folder drops the metric rows of an epoch whose checkpoint was never written.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import yaml

from ..atomic import atomic_write_text
from ..errors import ConfigError
from .checkpoint import load_checkpoint, save_checkpoint

METRICS_FILE, CONFIG_FILE, TEST_FILE = "metrics.jsonl", "config.yaml", "test_metrics.json"


class RunFolder:
    """An opened run folder and the checkpoint state it resumes from (None for a new run)."""

    def __init__(self, path: Path, state: dict[str, Any] | None):
        self.path, self.state = path, state

    @classmethod
    def open(cls, path: str | Path, record: dict[str, Any], resume: bool = False,
             normalise: Callable[[dict], dict] = lambda saved: saved) -> "RunFolder":
        """Create the folder and write `record` (the resolved config) as config.yaml, or on resume check that
        the saved config's ``train`` and ``strategy`` sections equal `record`'s and load the last checkpoint.

        `normalise` turns a saved config into the form of `record` (the config layer fills defaults there).
        """
        path = Path(path)
        config_path = path / CONFIG_FILE
        if not resume:
            if (path / METRICS_FILE).exists() or (path / "checkpoints").exists():
                raise ConfigError(f"run folder {str(path)!r} already holds a run; resume it with resume=True "
                                  "(CLI: --resume) or choose another out folder. Nothing was changed.")
            atomic_write_text(config_path, to_yaml(record))
            return cls(path, None)
        if config_path.exists():
            saved = normalise(yaml.safe_load(config_path.read_text()) or {})
            if saved.get("train") != record["train"] or saved.get("strategy") != record["strategy"]:
                a, b = saved.get("train", {}), record["train"]
                diff = {k: (a.get(k), b[k]) for k in b if a.get(k) != b[k]}
                raise ConfigError(f"cannot resume {str(path)!r} with different settings "
                                  f"{diff or record['strategy']} (saved, now); resume with the saved config.yaml "
                                  "or start a new run folder.")
        else:
            atomic_write_text(config_path, to_yaml(record))
        state = load_checkpoint(path)
        keep = state["epoch"] if state else 0
        # Drop metric rows of an epoch whose checkpoint was never written (the run died in between).
        rows = [r for r in read_metrics(path) if r["epoch"] <= keep]
        atomic_write_text(path / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in rows))
        return cls(path, state)

    @property
    def best(self) -> Path:
        """The best model's bundle folder."""
        return self.path / "best"

    def append_metrics(self, row: dict[str, Any]) -> None:
        with open(self.path / METRICS_FILE, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")

    def metrics(self) -> list[dict[str, Any]]:
        return read_metrics(self.path)

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        save_checkpoint(self.path, state)

    def write_text(self, name: str, text: str) -> None:
        atomic_write_text(self.path / name, text)


def to_yaml(record: dict[str, Any]) -> str:
    """A config record as YAML, in its key order."""
    return yaml.safe_dump(record, sort_keys=False, default_flow_style=False)


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of a run folder's metrics.jsonl (one per finished epoch)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
