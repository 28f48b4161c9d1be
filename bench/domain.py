"""Domain adaptation benchmark: source-only training against every adaptation term, on digit domain pairs.

    python bench/domain.py                       # every pair, 3 seeds (about 25 min on 2 idle cores)
    python bench/domain.py --pairs digits-opencv # one pair
    python bench/domain.py --quick               # smoke test

Pairs: scikit-learn digits (8x8, scanned in 1998) -> OpenCV's digits (20x20, MNIST-style), the reverse, and
clean -> corrupted Fashion-MNIST (`fashion-mnist-corrupted`: blur, half contrast, noise; seeded and fixed).
EfficientNet-Lite0 (ImageNet weights, 32 px) fine-tuned whole for 6 epochs on 100 labelled source images per
class, with 100 unlabeled target images per class beside them; the target labels are used only to report
accuracy. Each epoch logs the source val accuracy, the label-free validators on the target data (information
maximization `target/im`, mean entropy) and the target accuracy, so one run gives the target accuracy of the
checkpoint each rule would choose: the run's own (source val accuracy), the label-free one (highest
target/im) and the oracle (highest target accuracy, which needs target labels). Each run in a fresh process.
Results: bench/results/domain.json and domain.md (quick mode: domain_quick.*).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, run_worker, save  # noqa: E402

PAIRS = {"digits-opencv": ("digits", "opencv-digits"), "opencv-digits": ("opencv-digits", "digits"),
         "fmnist-corrupted": ("fashion-mnist", "fashion-mnist-corrupted")}
METHODS = ["source-only", "coral", "mmd", "dann", "cdan", "mcc"]
SEEDS = [0, 1, 2]


def worker(pair: str, method: str, seed: int, quick: bool) -> dict:
    import torch

    import headstart as hs

    source_name, target_name = PAIRS[pair]
    per_class = 10 if quick else 100
    source = hs.datasets.load(source_name, subset=per_class, test_subset=10, seed=0)
    target = hs.datasets.load(target_name, subset=per_class, test_subset=10, seed=0)
    data = hs.data.with_target(source, target)
    torch.manual_seed(seed)
    model = hs.create_model("timm:tf_efficientnet_lite0", weights="package:efficientnet-lite0", image_size=32)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run = hs.fit(model, data, "full", out=Path(tmp) / "run", epochs=2 if quick else 6, lr=1e-3, batch_size=32,
                     warmup_epochs=0.3, seed=seed, progress=False,
                     domain=None if method == "source-only" else method)
        seconds = time.perf_counter() - start
    return {"pair": pair, "method": method, "seed": seed, "seconds": seconds, "best_epoch": run.best_epoch,
            "history": [{k: v for k, v in r.items() if k.startswith(("val/", "target/", "train/", "epoch"))}
                        for r in run.history]}


def choices(result: dict) -> dict[str, float]:
    """Target accuracy of the checkpoint each rule picks."""
    rows = result["history"]
    by_epoch = {r["epoch"]: r for r in rows}
    label_free = max(rows, key=lambda r: r["target/im"])
    return {"source_val": by_epoch[result["best_epoch"]]["target/accuracy"],
            "label_free": label_free["target/accuracy"],
            "oracle": max(r["target/accuracy"] for r in rows)}


def fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def summarise(results: list[dict]) -> tuple[str, dict]:
    lines = ["## Domain adaptation: target accuracy, mean ± sd over seeds", "",
             "| pair | method | by source val | by label-free IM | oracle | label-free - oracle | s/run |",
             "|---|---|---|---|---|---|---|"]
    summary = {}
    for pair in PAIRS:
        for method in METHODS:
            runs = [r for r in results if r["pair"] == pair and r["method"] == method]
            if not runs:
                continue
            picks = [choices(r) for r in runs]
            cols = {k: [p[k] for p in picks] for k in ("source_val", "label_free", "oracle")}
            gap = [p["label_free"] - p["oracle"] for p in picks]
            summary[f"{pair}/{method}"] = {**cols, "gap": gap, "seconds": [r["seconds"] for r in runs]}
            lines.append(f"| {pair} | {method} | {fmt(cols['source_val'])} | {fmt(cols['label_free'])} | "
                         f"{fmt(cols['oracle'])} | {statistics.mean(gap):+.3f} | "
                         f"{statistics.mean(r['seconds'] for r in runs):.0f} |")
    return "\n".join(lines), summary


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--pair", default="digits-opencv")
    parser.add_argument("--pairs", nargs="*", default=list(PAIRS))
    parser.add_argument("--method", default="source-only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.pair, args.method, args.seed, args.quick)))
        return
    seeds = [0] if args.quick else SEEDS
    name = "domain_quick" if args.quick else "domain"
    previous = RESULTS / f"{name}.json"  # a partial run (--pairs) keeps the other pairs' runs
    results = [r for r in json.loads(previous.read_text())["runs"] if r["pair"] not in args.pairs] \
        if previous.is_file() else []
    for pair in args.pairs:
        for seed in seeds:
            for method in METHODS:
                r = run_worker(__file__, ["--pair", pair, "--method", method, "--seed", str(seed)]
                               + (["--quick"] if args.quick else []))
                print(f"{pair} seed {seed} {method}: {choices(r)} ({r['seconds']:.0f} s)", flush=True)
                results.append(r)
            table, summary = summarise(results)
            save(name, {"machine": machine(), "quick": args.quick, "runs": results, "summary": summary}, table)


if __name__ == "__main__":
    main()
