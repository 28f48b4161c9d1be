"""Shared pieces of the benchmarks: data, models, timing and the result files."""
from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(), "nproc": os.cpu_count(),
            "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""), "date": time.strftime("%Y-%m-%d %H:%M")}


def run_worker(script: str, args: list[str], timeout: int = 3600) -> dict:
    """Run one contender in a fresh process (own allocator state, own peak RSS); it prints one JSON line."""
    cmd = [sys.executable, script, "--worker", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def save(name: str, record: dict, table: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(record, indent=2))
    (RESULTS / f"{name}.md").write_text(table)
    print(table)


def fmnist_tensors(per_class: int, test_per_class: int, size: int, spec, seed: int = 0):
    """Fashion-MNIST subset as ready float tensors (eval transform) for loops that take tensors."""
    import headstart as hs
    from headstart.data import BatchTransform

    data = hs.datasets.load("fashion-mnist", subset=per_class, test_subset=test_per_class, seed=seed)
    tf = BatchTransform(spec.preprocessing.with_size(size), train=False)
    as_float = lambda part: torch.cat([tf(part.images[i:i + 256]) for i in range(0, len(part), 256)])  # noqa: E731
    return data, as_float(data.train), data.train.targets, as_float(data.test), data.test.targets
