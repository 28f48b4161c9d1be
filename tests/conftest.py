"""Shared fixtures: tiny models and synthetic, separable image data."""
from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
import torch

from headstart.data import from_arrays

# The start of every two-process script: imports, the tiny separable data set and a seeded toy model.
DDP_PREAMBLE = """
import os, sys, torch
sys.path.insert(0, {tests!r})
import headstart as hs
from conftest import separable_images
from headstart.data import from_arrays
x, y = separable_images()
data = from_arrays(x, y, classes=["a", "b", "c"], val_fraction=0.25, seed=0, name="tiny")
torch.manual_seed(0)
model = hs.create_model("toy:cnn", 3)
"""


def run_two_processes(script_template: str, tmp_path) -> None:
    """Run a script (formatted with `tests` and `out`) under `torchrun` with two CPU processes (gloo)."""
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "ddp.py"
    script.write_text(script_template.format(tests=str(Path(__file__).parent), out=str(tmp_path)))
    torchrun = Path(sys.executable).with_name("torchrun")
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", str(script)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]


# Tests never write to the user's feature cache.
os.environ["HEADSTART_CACHE"] = tempfile.mkdtemp(prefix="headstart-test-cache-")


def killed_and_resumed(run, kill_epoch: int):
    """`run(resume)` killed in epoch `kill_epoch` (0-based: a KeyboardInterrupt raised there, as a kill ends
    it), then run again with resume=True; returns what the resumed run returns."""
    import headstart.run.trainer as trainer

    real = trainer.train_epoch

    def killed(*args, **kwargs):
        if kwargs["epoch"] == kill_epoch:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    trainer.train_epoch = killed
    try:
        with pytest.raises(KeyboardInterrupt):
            run(False)
    finally:
        trainer.train_epoch = real
    return run(True)


def differing_weights(a: dict, b: dict) -> list[str]:
    """Names of the weights that differ between two state dicts, BatchNorm statistics left out (under DDP each
    rank keeps its own)."""
    return [k for k in a if not torch.equal(a[k], b[k]) and "running" not in k and "num_batches" not in k]


def without_timings(rows: list[dict]) -> list[dict]:
    """Metrics rows without their wall-clock columns (the only ones a resumed run may change)."""
    return [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in rows]


def separable_images(n_per_class: int = 24, classes: int = 3, size: int = 16, seed: int = 0) -> tuple:
    """Images whose class is written in their mean colour: any backbone can separate them."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    palette = rng.integers(0, 256, size=(classes, 3))
    for c in range(classes):
        noise = rng.normal(0, 12, size=(n_per_class, size, size, 3))
        xs.append(np.clip(palette[c] + noise, 0, 255).astype(np.uint8))
        ys += [c] * n_per_class
    return np.concatenate(xs), np.array(ys)


@pytest.fixture
def tiny_data():
    x, y = separable_images()
    xt, yt = separable_images(8, seed=1)
    return from_arrays(x, y, classes=["a", "b", "c"], val_fraction=0.25, seed=0, x_test=xt, y_test=yt, name="tiny")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _no_report(monkeypatch):
    """hs.fit ends by drawing a report (about 0.2-0.5 s of matplotlib on a tiny run): the suite's hundreds of
    fits skip it. tests/test_report.py overrides this fixture to write them."""
    monkeypatch.setattr("headstart.api.report_after_fit", lambda *args, **kwargs: None)


if "RANK" in os.environ:  # a torchrun script of a test imports this module: its fits skip the report too
    import headstart.api

    headstart.api.report_after_fit = lambda *args, **kwargs: None
