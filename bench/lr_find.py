"""`--lr auto` against a 5-point learning-rate grid: Fashion-MNIST, EfficientNet-Lite0, the default strategy.

    python bench/lr_find.py            # the comparison (about 8-10 min on 2 idle cores)
    python bench/lr_find.py --quick    # the same cells at toy sizes: a smoke test of the script

Data: Fashion-MNIST, 100 training images per class (1,000; seed 0), val 10% of them, test 100 per class
(1,000) from the official test set. Model: EfficientNet-Lite0 with its ImageNet weights
(package:efficientnet-lite0) at 128 px. Every cell: `headstart fit`'s default strategy (full fine-tuning)
and its defaults otherwise (AdamW, the head at the backbone's rate, cosine schedule), 3 epochs, batch 32,
seeds 0, 1, 2. The grid: lr 1e-4, 3e-4, 1e-3 (headstart's default), 3e-3, 1e-2. Auto: `lr="auto"`, the finder's
default 3 sweeps of 80 steps from 1e-6 to 10 on the training split, then the same fit at the rate it found.

Each cell runs in a fresh process and records test accuracy, best val accuracy and the wall time of the whole
`fit` (for auto: the finder included, and the finder's own seconds). Results: bench/results/lr_find.json and
lr_find.md (``_quick`` suffix in quick mode).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, peak_rss_mb, run_worker, save  # noqa: E402

GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
SIZES = {"full": dict(per_class=100, test_per_class=100, image_size=128, epochs=3, batch_size=32),
         "quick": dict(per_class=6, test_per_class=5, image_size=32, epochs=1, batch_size=8)}


def run_cell(lr: str, quick: bool, seed: int = 0) -> dict:
    """One fit (lr a number or "auto") in this process; `seed` seeds the run (head, batch order, the finder's
    sweeps); the data draw stays seed 0 so every cell sees the same images."""
    import torch

    import headstart as hs

    s = SIZES["quick" if quick else "full"]
    torch.manual_seed(seed)
    data = hs.datasets.load("fashion-mnist", subset=s["per_class"], test_subset=s["test_per_class"], seed=0)
    model = hs.create_model("timm:tf_efficientnet_lite0", weights="package:efficientnet-lite0",
                            image_size=s["image_size"])
    rate = lr if lr == "auto" else float(lr)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run = hs.fit(model, data, "full", out=f"{tmp}/run", lr=rate, epochs=s["epochs"], batch_size=s["batch_size"],
                     seed=seed, progress=False, report=False, cache_dir=f"{tmp}/cache")
        wall = time.perf_counter() - start
        found = json.loads(Path(f"{tmp}/run/lr_find.json").read_text()) if lr == "auto" else None
    test = run.test_metrics or {}
    row = {"lr": rate, "seed": seed, "train_items": len(data.train), "test_items": len(data.test),
           "accuracy": test.get("test/accuracy"), "macro_f1": test.get("test/macro_f1"),
           "best_val_accuracy": run.best_metrics.get("val/accuracy"), "best_epoch": run.best_epoch,
           "wall_s": round(wall, 2), "peak_rss_mb": round(peak_rss_mb(), 1)}
    if found:
        row.update(found_lr=found["lr"], band=found["band"], unstable=found["unstable"],
                   finder_s=round(sum(t["seconds"] for t in found["sweeps"]), 2),
                   sweep_steps=[len(t["lrs"]) for t in found["sweeps"]],
                   suggestions=[t["suggestion"] for t in found["sweeps"]])
    return row


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _sd(xs: list[float]) -> float:
    m = _mean(xs)
    return (sum((x - m) ** 2 for x in xs) / max(len(xs) - 1, 1)) ** 0.5


def table(rows: list[dict], quick: bool, seeds: list[int]) -> str:
    s = SIZES["quick" if quick else "full"]
    ok = [r for r in rows if "error" not in r]
    failed = [r for r in rows if "error" in r]
    quick_note = " (quick mode: toy sizes, not results)" if quick else ""
    lines = [f"# LR finder: `--lr auto` against a learning-rate grid{quick_note}",
             "", f"Fashion-MNIST ({s['per_class']} training images per class, {s['test_per_class']} test per class), "
             f"EfficientNet-Lite0 (ImageNet weights) at {s['image_size']} px, full fine-tuning (the default "
             f"strategy), AdamW, {s['epochs']} epochs, batch {s['batch_size']}, seeds {', '.join(map(str, seeds))} "
             "(the run's seed: head, batch order and the finder's sweeps; the same images in every cell). "
             "See bench/lr_find.py.", "",
             "| lr | test accuracy, mean ± sd | per seed | fit wall time (s, mean) |", "|---|---|---|---|"]
    means = {}
    for lr in [*GRID, "auto"]:
        cell = [r for r in ok if r["lr"] == lr]
        if not cell:
            continue
        acc = [r["accuracy"] for r in cell]
        means[lr] = _mean(acc)
        label = f"{lr:g}" if lr != "auto" else "auto: " + ", ".join(f"{r['found_lr']:.2g}" for r in cell)
        wall = f"{_mean([r['wall_s'] for r in cell]):.0f}"
        if lr == "auto":
            wall += f" (finder {_mean([r['finder_s'] for r in cell]):.0f})"
        lines.append(f"| {label} | {means[lr]:.3f} ± {_sd(acc):.3f} | {' '.join(f'{a:.3f}' for a in acc)} | {wall} |")
    grid = {k: v for k, v in means.items() if k != "auto"}
    if grid and "auto" in means:
        best = max(grid, key=grid.get)
        gap = 100 * (grid[best] - means["auto"])
        where = f"{abs(gap):.1f} points {'below' if gap > 0 else 'above'} it"
        lines += ["", f"Best grid point by mean: lr {best:g}, test accuracy {grid[best]:.3f}; auto's mean is {where} "
                      f"({'within 1 point or better' if gap <= 1.0 else 'NOT within 1 point'})."]
        for r in (r for r in ok if r["lr"] == "auto"):
            lo, mid, hi = r["band"]
            lines.append(f"- seed {r['seed']}: band {lo:.3g} .. {hi:.3g} over {len(r['suggestions'])} sweeps "
                         f"({'UNSTABLE' if r['unstable'] else 'stable'}), steps per sweep {r['sweep_steps']}")
    lines += [f"- failed: lr {r['lr']} seed {r.get('seed')}: {r['error'][-300:]}" for r in failed]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--previous", type=Path, help="an earlier results JSON (same sizes) whose rows for other "
                        "seeds join this run's table")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--lr", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_cell(args.lr, args.quick, args.seed)))
        return
    rows, seeds = [], list(args.seeds)
    if args.previous:
        earlier = json.loads(args.previous.read_text())
        if earlier["sizes"] != SIZES["quick" if args.quick else "full"]:
            raise SystemExit(f"{args.previous} was run at other sizes")
        rows = [{"seed": 0, **r} for r in earlier["rows"] if r.get("seed", 0) not in args.seeds]
        seeds = sorted({r["seed"] for r in rows} | set(seeds))
    for seed in args.seeds:
        for lr in [*(f"{x:g}" for x in GRID), "auto"]:
            try:
                rows.append(run_worker(__file__, ["--lr", lr, "--seed", str(seed)] + (["--quick"] if args.quick else [])))
            except Exception as e:
                rows.append({"lr": lr if lr == "auto" else float(lr), "seed": seed, "error": str(e)})
            print(json.dumps(rows[-1]), flush=True)
    name = "lr_find" + ("_quick" if args.quick else "")
    save(name, {"machine": machine(), "sizes": SIZES["quick" if args.quick else "full"], "seeds": seeds,
                "rows": rows}, table(rows, args.quick, seeds))

if __name__ == "__main__":
    main()
