"""Distributed training: 1 against 2 processes on this machine, and a model of scaling to 8 and 64 GPUs.

    python bench/distributed.py           # about 3 min on 2 idle cores
    python bench/distributed.py --quick   # smoke test

Measured: `headstart fit` of EfficientNet-Lite0 (ImageNet weights, 64 px) fine-tuned whole on 3,000
Fashion-MNIST images (2,700 train), global batch 32, 2 epochs, once on one process (2 threads) and once with `--nproc 2`
(DDP on gloo, one thread each), side by side in one run. Throughput is the second epoch's (the first pays
start-up costs); also reported: the processes' wall time.

Modelled (no GPU here): data-parallel step time on 8 GPUs (one node, NVLink) and 64 GPUs (8 nodes, InfiniBand)
for ResNet-50 and MiniLM-L6 fine-tuning, from compute per step against ring all-reduce bytes per step. The
assumptions are printed with the table.
Results: bench/results/distributed.json and distributed.md.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, save  # noqa: E402

# name: (parameters, training FLOPs per sample (forward + backward = 3x forward), per-GPU batch, sustained FLOP/s
# of one A100 on it). ResNet-50: 31 TFLOP/s is about 2,500 images/s, NVIDIA's published mixed-precision training
# figure; MiniLM-L6 (hidden size 384: small matmuls): 25% of the 312 TFLOP/s bf16 peak.
MODELS = {"ResNet-50 (224 px)": (25.6e6, 3 * 4.1e9, 256, 31e12),
          "MiniLM-L6 (128 tokens)": (22.7e6, 3 * 2 * 10.6e6 * 128, 32, 78e12)}
# Ring all-reduce moves 2 (N-1)/N of the gradient bytes through each GPU's slowest link ("bus bandwidth").
LINKS = {8: ("one node, NVLink/NVSwitch", 200e9), 64: ("8 nodes, 200 Gb/s InfiniBand per GPU", 20e9)}
GRAD_BYTES = 4  # DDP reduces gradients in the parameters' dtype: fp32


def scaling_table() -> tuple[str, list[dict]]:
    rows, lines = [], ["| model | GPUs | compute / step | all-reduce / step | bytes / step | efficiency, overlapped "
                       "| efficiency, not overlapped |", "|---|---|---|---|---|---|---|"]
    for name, (params, flops, batch, speed) in MODELS.items():
        compute = flops * batch / speed
        for n, (where, bandwidth) in LINKS.items():
            volume = 2 * (n - 1) / n * params * GRAD_BYTES
            comm = volume / bandwidth
            overlapped = compute / max(compute, comm)
            serial = compute / (compute + comm)
            rows.append({"model": name, "gpus": n, "link": where, "compute_s": compute, "allreduce_s": comm,
                         "bytes": volume, "efficiency_overlapped": overlapped, "efficiency_serial": serial})
            lines.append(f"| {name}, batch {batch}/GPU | {n} ({where}) | {compute * 1e3:.1f} ms | {comm * 1e3:.1f} ms "
                         f"| {volume / 1e6:.0f} MB | {overlapped:.0%} | {serial:.0%} |")
    return "\n".join(lines), rows


def measure(nproc: int, quick: bool, out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(2 // nproc)}
    cmd = [sys.executable, "-m", "headstart", "fit", "--nproc", str(nproc), "--data", "fashion-mnist",
           "--backbone", "timm:tf_efficientnet_lite0", "--weights", "package:efficientnet-lite0",
           "--strategy", "full", "--epochs", "2", "--out", str(out),
           "--set", f"data.subset={10 if quick else 300}", "--set", "data.test_subset=10",
           "--set", "model.image_size=64", "--set", "train.batch_size=32", "--set", "train.progress=false",
           "--set", "train.lr=0.001"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    n = 10 * (10 if quick else 300)
    n_train = round(n * 0.9)  # val_fraction 0.1
    return {"processes": nproc, "wall_s": wall, "epoch_train_s": rows[-1]["train_seconds"],
            "images_per_s": n_train / rows[-1]["train_seconds"], "val_accuracy": rows[-1]["val/accuracy"],
            "train_loss": rows[-1]["train/loss"]}


def allreduce_worker() -> None:
    """Under torchrun: mean time of one gloo all-reduce of Lite0's gradients (fp32), as DDP does each step."""
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    grads = torch.randn(3_388_942)  # Lite0 with a 10-class head
    for _ in range(3):
        dist.all_reduce(grads)
    start = time.perf_counter()
    for _ in range(20):
        dist.all_reduce(grads)
    if dist.get_rank() == 0:
        print(json.dumps({"allreduce_ms": (time.perf_counter() - start) / 20 * 1e3, "bytes": grads.numel() * 4}))
    dist.destroy_process_group()


def measure_allreduce() -> dict:
    torchrun = Path(sys.executable).with_name("torchrun")
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", __file__, "--allreduce-worker"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--allreduce-worker", action="store_true")
    args = parser.parse_args()
    if args.allreduce_worker:
        allreduce_worker()
        return
    with tempfile.TemporaryDirectory() as tmp:
        runs = [measure(n, args.quick, Path(tmp) / f"p{n}") for n in (1, 2)]
    reduce = measure_allreduce()
    table, model_rows = scaling_table()
    one, two = runs
    lines = ["## Distributed: 1 against 2 processes on this machine (2 cores)", "",
             "| processes | threads each | images/s (epoch 2) | epoch 2 train s | wall s | val accuracy |",
             "|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['processes']} | {2 // r['processes']} | {r['images_per_s']:.1f} | {r['epoch_train_s']:.1f} "
                     f"| {r['wall_s']:.0f} | {r['val_accuracy']:.4f} |")
    steps = math.ceil(round(10 * (10 if args.quick else 300) * 0.9) / 32)
    lines += ["", f"2 processes / 1 process: {two['images_per_s'] / one['images_per_s']:.2f}x the throughput. One gloo "
              f"all-reduce of Lite0's {reduce['bytes'] / 1e6:.1f} MB of gradients takes {reduce['allreduce_ms']:.1f} ms "
              f"here, {steps} of them per epoch: {steps * reduce['allreduce_ms'] / 1e3:.2f} s of the 2-process "
              "epoch, on the same two cores that compute.", "",
              "## Modelled data-parallel scaling (assumptions below)", "", table, "",
              "Assumptions: A100-class GPUs sustaining 31 TFLOP/s on ResNet-50 (about 2,500 images/s) and 78 TFLOP/s "
              "(25% of the bf16 peak) on MiniLM-L6; training FLOPs = 3x forward (ResNet-50 4.1 GFLOP/image at 224 "
              "px; MiniLM-L6 2 x 10.6 M non-embedding parameters per token, 128 tokens); ring all-reduce of fp32 gradients, 2(N-1)/N x parameter bytes per "
              "GPU, at 200 GB/s bus bandwidth inside a node and 20 GB/s across nodes; 'overlapped' assumes DDP's "
              "bucketed all-reduce hides fully behind backward (step = max), 'not overlapped' that it adds on."]
    save("distributed_quick" if args.quick else "distributed",
         {"machine": machine(), "quick": args.quick, "runs": runs, "allreduce": reduce, "model": model_rows},
         "\n".join(lines))


if __name__ == "__main__":
    main()
