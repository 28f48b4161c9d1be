"""`--lr auto` against a 5-point learning-rate grid: Fashion-MNIST, EfficientNet-Lite0, the default strategy.

    python bench/lr_find.py            # the comparison (about 8-10 min on 2 idle cores)
    python bench/lr_find.py --quick    # the same cells at toy sizes: a smoke test of the script

Data: Fashion-MNIST, 100 training images per class (1,000; seed 0), val 10% of them, test 100 per class
(1,000) from the official test set. Model: EfficientNet-Lite0 with its ImageNet weights
(package:efficientnet-lite0) at 128 px. Every cell: `headstart fit`'s default strategy (full fine-tuning)
and its defaults otherwise (AdamW, the head at the backbone's rate, cosine schedule), 3 epochs, batch 32,
seed 0. The grid: lr 1e-4, 3e-4, 1e-3 (headstart's default), 3e-3, 1e-2. Auto: `lr="auto"`, the finder's
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


def run_cell(lr: str, quick: bool) -> dict:
    """One fit (lr a number or "auto") in this process."""
    import torch

    import headstart as hs

    s = SIZES["quick" if quick else "full"]
    torch.manual_seed(0)
    data = hs.datasets.load("fashion-mnist", subset=s["per_class"], test_subset=s["test_per_class"], seed=0)
    model = hs.create_model("timm:tf_efficientnet_lite0", weights="package:efficientnet-lite0",
                            image_size=s["image_size"])
    rate = lr if lr == "auto" else float(lr)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run = hs.fit(model, data, "full", out=f"{tmp}/run", lr=rate, epochs=s["epochs"], batch_size=s["batch_size"],
                     seed=0, progress=False, report=False, cache_dir=f"{tmp}/cache")
        wall = time.perf_counter() - start
        found = json.loads(Path(f"{tmp}/run/lr_find.json").read_text()) if lr == "auto" else None
    test = run.test_metrics or {}
    row = {"lr": rate, "train_items": len(data.train), "test_items": len(data.test),
           "accuracy": test.get("test/accuracy"), "macro_f1": test.get("test/macro_f1"),
           "best_val_accuracy": run.best_metrics.get("val/accuracy"), "best_epoch": run.best_epoch,
           "wall_s": round(wall, 2), "peak_rss_mb": round(peak_rss_mb(), 1)}
    if found:
        row.update(found_lr=found["lr"], band=found["band"], unstable=found["unstable"],
                   finder_s=round(sum(t["seconds"] for t in found["sweeps"]), 2),
                   sweep_steps=[len(t["lrs"]) for t in found["sweeps"]],
                   suggestions=[t["suggestion"] for t in found["sweeps"]])
    return row


def table(rows: list[dict], quick: bool) -> str:
    s = SIZES["quick" if quick else "full"]
    grid = [r for r in rows if r["lr"] != "auto" and "error" not in r]
    auto = next((r for r in rows if r["lr"] == "auto"), {})
    quick_note = " (quick mode: toy sizes, not results)" if quick else ""
    lines = [f"# LR finder: `--lr auto` against a learning-rate grid{quick_note}",
             "", f"Fashion-MNIST ({s['per_class']} training images per class, {s['test_per_class']} test per class), "
             f"EfficientNet-Lite0 (ImageNet weights) at {s['image_size']} px, full fine-tuning (the default "
             f"strategy), AdamW, {s['epochs']} epochs, batch {s['batch_size']}, seed 0. See bench/lr_find.py.", "",
             "| lr | test accuracy | best val accuracy | fit wall time (s) |", "|---|---|---|---|"]
    lines += [f"| {r['lr']:g} | {r['accuracy']:.3f} | {r['best_val_accuracy']:.3f} | {r['wall_s']:.0f} |" for r in grid]
    if "error" in auto or not auto:
        lines += ["", f"auto failed: {auto.get('error', 'not run')[-500:]}"]
        return "\n".join(lines) + "\n"
    lo, mid, hi = auto["band"]
    lines.append(f"| auto: {auto['found_lr']:.3g} | {auto['accuracy']:.3f} | {auto['best_val_accuracy']:.3f} | "
                 f"{auto['wall_s']:.0f} (finder {auto['finder_s']:.0f}) |")
    if grid:
        best = max(grid, key=lambda r: r["accuracy"])
        gap = 100 * (best["accuracy"] - auto["accuracy"])
        lines += ["", f"Best grid point: lr {best['lr']:g}, test accuracy {best['accuracy']:.3f}; auto is "
                      f"{gap:+.1f} points below it ({'within' if gap <= 1.0 else 'NOT within'} 1 point)."]
    lines += [f"Finder band over {len(auto['suggestions'])} sweeps: {lo:.3g} .. {hi:.3g} (median {mid:.3g}, "
              f"{'UNSTABLE' if auto['unstable'] else 'stable'}); per-sweep suggestions "
              + ", ".join(f"{x:.3g}" for x in auto["suggestions"]) + f"; steps per sweep {auto['sweep_steps']}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--lr", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_cell(args.lr, args.quick)))
        return
    rows = []
    for lr in [*(f"{x:g}" for x in GRID), "auto"]:
        try:
            rows.append(run_worker(__file__, ["--lr", lr] + (["--quick"] if args.quick else [])))
        except Exception as e:
            rows.append({"lr": lr if lr == "auto" else float(lr), "error": str(e)})
        print(json.dumps(rows[-1]), flush=True)
    name = "lr_find" + ("_quick" if args.quick else "")
    save(name, {"machine": machine(), "sizes": SIZES["quick" if args.quick else "full"], "rows": rows},
         table(rows, args.quick))


if __name__ == "__main__":
    main()
