"""Several processes (DDP on gloo, two CPU ranks): the same run as one process, resume, failures, launching."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import headstart as hs
from conftest import separable_images
from headstart.data import from_arrays
from headstart.errors import ConfigError
from headstart.run.checkpoint import load_checkpoint
from headstart.run.distributed import check_processes, rank_batch_size, without_flag

# Settings under which two ranks compute exactly what one process does: BatchNorm frozen (each rank would
# otherwise normalise by its own half-batch), no augmentation (each rank draws its own), fp32.
SAME = dict(epochs=3, lr=0.01, batch_size=8, progress=False, precision="fp32", augment=False, bn="frozen")
STRATEGIES = {"full": {}, "partial": {"trainable": "last:1"}, "lp-ft": {"lp_epochs": 1},
              "lora": {"lora_r": 2, "cache": "off"},
              "linear-probe": {"solver": "sgd"}}  # on cached features, by epochs (a fitted head is single-process)

PREAMBLE = """
import json, os, sys, torch
sys.path.insert(0, {tests!r})
import headstart as hs
from test_distributed import STRATEGIES, SAME, tiny, make
data = tiny()
rank = os.environ["RANK"]
"""

SAME_SCRIPT = PREAMBLE + """
for name, options in STRATEGIES.items():
    model = make()
    hs.fit(model, data, name, out={out!r} + "/" + name, **options, **SAME)
    torch.save(model.state_dict(), {out!r} + "/" + name + "-rank" + rank + ".pt")
"""


def tiny():
    x, y = separable_images()
    return from_arrays(x, y, classes=["a", "b", "c"], val_fraction=0.25, seed=0, name="tiny")  # 54 training images


def make():
    torch.manual_seed(0)
    return hs.create_model("toy:cnn", 3)


def run_ranks(script: str, tmp_path: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    path = tmp_path / "ddp.py"
    path.write_text(script.format(tests=str(Path(__file__).parent), out=str(tmp_path)))
    torchrun = Path(sys.executable).with_name("torchrun")
    return subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", str(path)], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_two_processes_train_what_one_process_trains_for_every_strategy(tmp_path):
    proc = run_ranks(SAME_SCRIPT, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name, options in STRATEGIES.items():
        ranks = [torch.load(tmp_path / f"{name}-rank{r}.pt") for r in (0, 1)]
        single = make()
        start = {k: v.clone() for k, v in single.state_dict().items()}
        hs.fit(single, tiny(), name, out=tmp_path / f"single-{name}", **options, **SAME)
        trained = [k for k, v in single.state_dict().items() if k not in start or not torch.equal(v, start[k])]
        assert any(k.startswith("head.") for k in trained), name
        assert any(not k.startswith("head.") for k in trained) == (name != "linear-probe"), name
        for key, value in single.state_dict().items():
            assert torch.equal(ranks[0][key], ranks[1][key]), (name, key)  # the ranks agree exactly
            torch.testing.assert_close(ranks[0][key], value, rtol=1e-4, atol=1e-5, msg=f"{name} {key}")
        rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in rows] == [1, 2, 3]  # one copy of every row: only rank 0 writes
        single_rows = hs.run.read_metrics(tmp_path / f"single-{name}")
        for a, b in zip(rows, single_rows):
            assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-4), name  # over both ranks' samples
            assert a["val/accuracy"] == b["val/accuracy"], name
        assert sorted(p.name for p in (tmp_path / name).iterdir()) == sorted(
            p.name for p in (tmp_path / f"single-{name}").iterdir())


RESUME_SCRIPT = PREAMBLE + """
from conftest import killed_and_resumed
args = dict(SAME, epochs=3)
hs.fit(make(), data, "lp-ft", lp_epochs=1, out={out!r} + "/whole", **args)

def run(resume):
    if resume:  # a real kill ends every process; here rank 0 must finish its checkpoint first
        torch.distributed.barrier()
    return hs.fit(make(), data, "lp-ft", lp_epochs=1, out={out!r} + "/part", resume=resume, **args)

killed_and_resumed(run, kill_epoch=2)
"""


def test_resume_under_ddp_continues_as_the_uninterrupted_run(tmp_path):
    proc = run_ranks(RESUME_SCRIPT, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    strip = lambda rows: [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in rows]  # noqa: E731
    assert strip(hs.run.read_metrics(tmp_path / "part")) == strip(hs.run.read_metrics(tmp_path / "whole"))
    a, b = load_checkpoint(tmp_path / "whole"), load_checkpoint(tmp_path / "part")
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


FAIL_SCRIPT = PREAMBLE + """
from headstart.run import loop
import headstart.run.trainer as trainer
real = loop.train_epoch
def broken(*a, **kw):
    if kw["epoch"] == 1 and rank == "1":
        raise ValueError("rank 1 found a corrupt batch")
    return real(*a, **kw)
trainer.train_epoch = broken
hs.fit(make(), data, "full", out={out!r} + "/run", **dict(SAME, epochs=5))
"""


def test_a_rank_that_raises_ends_the_run_promptly_with_its_error_and_the_last_checkpoint(tmp_path):
    start = time.perf_counter()
    proc = run_ranks(FAIL_SCRIPT, tmp_path, timeout=120)
    assert proc.returncode != 0 and time.perf_counter() - start < 100
    assert "rank 1 found a corrupt batch" in proc.stderr
    state = load_checkpoint(tmp_path / "run")
    assert state["epoch"] == 1  # the epoch before the failure, whole
    assert len(hs.run.read_metrics(tmp_path / "run")) == 1


def test_global_batch_and_process_checks():
    assert rank_batch_size(32, 4) == 8 and rank_batch_size(8, 1) == 8
    with pytest.raises(ConfigError, match="does not split evenly over 3 processes; use a multiple of 3"):
        rank_batch_size(32, 3)
    check_processes(54, 4, 2)
    with pytest.raises(ConfigError, match="only 2 batches of 4"):
        check_processes(6, 4, 4)
    assert without_flag(["fit", "--nproc", "2", "--epochs", "1"], "--nproc") == ["fit", "--epochs", "1"]
    assert without_flag(["fit", "--nproc=2"], "--nproc") == ["fit"]


LAUNCHERS = {
    "nproc": lambda: [sys.executable, "-m", "headstart", "fit", "--nproc", "2"],
    "torchrun": lambda: [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", "2",
                         "-m", "headstart", "fit"],
    # --multi_gpu is what starts N processes on a CPU machine: `--cpu --num_processes 2` starts one, silently.
    "accelerate": lambda: [str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu",
                           "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                           "--dynamo_backend", "no", "-m", "headstart", "fit"],
}


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_every_launcher_starts_two_ranks_that_write_one_run(tmp_path, launcher):
    from PIL import Image

    x, y = separable_images(12)
    for i, (img, label) in enumerate(zip(x, y)):
        folder = tmp_path / "imgs" / "abc"[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i}.png")
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"} if launcher != "nproc" else dict(os.environ)
    proc = subprocess.run(LAUNCHERS[launcher]() + ["--data", str(tmp_path / "imgs"), "--backbone", "toy:cnn",
                                                   "--weights", "random", "--epochs", "2", "--out", str(out),
                                                   "--set", "train.batch_size=8"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 processes x 4 per step (global batch 8)" in proc.stdout
    assert proc.stdout.count("run folder:") == 2  # both ranks finished; rank 0 alone wrote the folder
    assert [r["epoch"] for r in hs.run.read_metrics(out)] == [1, 2]
    assert (out / "best" / "model.safetensors").is_file()
    assert np.isfinite(json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["val/accuracy"])


FSDP_SCRIPT = PREAMBLE + """
from headstart.run.sharding import is_sharded
for name, options in (("full", {{}}), ("partial", {{"trainable": "last:1"}})):
    model = make()
    hs.fit(model, data, name, out={out!r} + "/" + name, fsdp=True, **options, **SAME)
    assert is_sharded(model)
from conftest import killed_and_resumed

def run(resume):
    if resume:
        torch.distributed.barrier()
    return hs.fit(make(), data, "full", out={out!r} + "/part", resume=resume, fsdp=True, **SAME)

killed_and_resumed(run, kill_epoch=2)
"""


def test_fsdp_shards_and_trains_what_one_process_trains_and_resumes(tmp_path):
    proc = run_ranks(FSDP_SCRIPT, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name, options in (("full", {}), ("partial", {"trainable": "last:1"})):
        single = make()
        hs.fit(single, tiny(), name, out=tmp_path / f"single-{name}", **options, **SAME)
        # The checkpoint and the bundle hold the full weights: they load unsharded, anywhere.
        state = load_checkpoint(tmp_path / name)["model"]
        for key, value in single.state_dict().items():
            torch.testing.assert_close(state[key], value, rtol=1e-4, atol=1e-5, msg=f"{name} {key}")
        assert hs.load(tmp_path / name).model is not None
        a, b = hs.run.read_metrics(tmp_path / name), hs.run.read_metrics(tmp_path / f"single-{name}")
        assert [r["val/accuracy"] for r in a] == [r["val/accuracy"] for r in b]
    strip = lambda rows: [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in rows]  # noqa: E731
    assert strip(hs.run.read_metrics(tmp_path / "part")) == strip(hs.run.read_metrics(tmp_path / "full"))
    for key, value in load_checkpoint(tmp_path / "full")["model"].items():
        assert torch.equal(value, load_checkpoint(tmp_path / "part")["model"][key]), key


def test_fsdp_refuses_what_it_cannot_run(tmp_path):
    with pytest.raises(ConfigError, match="shards across processes, and this run has one"):
        hs.fit(make(), tiny(), "full", out=tmp_path / "a", fsdp=True, **SAME)
    with pytest.raises(ConfigError, match="changes what trains during the run"):
        hs.fit(make(), tiny(), "lp-ft", lp_epochs=1, out=tmp_path / "b", fsdp=True, **SAME)


MISMATCH_SCRIPT = """
import os, torch, torch.distributed as dist
from headstart.errors import ConfigError
from headstart.run.distributed import check_same_start
dist.init_process_group("gloo")
check_same_start(3, "cpu")  # the same epoch everywhere: fine
try:
    check_same_start(int(os.environ["RANK"]) + 1, "cpu")  # rank 0 read epoch 1, rank 1 epoch 2
except ConfigError as e:
    open({out!r} + "/message" + os.environ["RANK"], "w").write(str(e))
dist.destroy_process_group()
"""


def test_ranks_that_read_different_checkpoints_stop_with_a_message_not_a_hang(tmp_path):
    proc = run_ranks(MISMATCH_SCRIPT, tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for r in (0, 1):
        assert "read different checkpoints of the run (epochs [1, 2] by rank)" in (tmp_path / f"message{r}").read_text()
