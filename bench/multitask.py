"""Multi-task benchmark: one shared pretrained backbone against a model per task, for every task weighting.

    python bench/multitask.py                 # both suites, 3 seeds (about 40 min on 2 idle cores)
    python bench/multitask.py --suite image   # one suite
    python bench/multitask.py --quick         # smoke test: tiny subsets, 1 seed

Suites (each run in a fresh process; the data subset is fixed, the seed varies the training):
- image: EfficientNet-Lite0 (ImageNet weights, 64 px) fine-tuned whole on Fashion-MNIST, 300 training
  images per class, two heads: the ten items and the four kinds they group into (tops, bottoms, footwear,
  bags; `FASHION_MNIST_KINDS`). Test: 200 images per class.
- text: MiniLM (all-MiniLM-L6-v2, 64 tokens) fine-tuned whole on two data sets, one per head: BBC News topics
  (120 articles per topic) and tweet sentiment (200 tweets per class, `tweets-sentiment`).
For each task: test accuracy of the multi-task model under each weighting against the single-task model with
the same budget (same data, epochs and settings), as mean and standard deviation over the seeds; Δm (mean
relative change against the single-task models, %); and the cost of one shared model against one per task:
training time, parameters and bundle size.
Results: bench/results/multitask.json and multitask.md (quick mode: multitask_quick.*).
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
from common import machine, run_worker, save  # noqa: E402

WEIGHTINGS = ["equal", "uncertainty", "dwa", "pcgrad"]
SEEDS = [0, 1, 2]


def suite_settings(suite: str, quick: bool) -> dict:
    if suite == "image":
        return {"tasks": ["item", "kind"],
                "model": {"backbone": "timm:tf_efficientnet_lite0", "weights": "package:efficientnet-lite0",
                          "image_size": 64},
                "data": {"subset": 10 if quick else 300, "test_subset": 10 if quick else 200},
                "fit": {"strategy": "full", "epochs": 1 if quick else 3, "lr": 1e-3, "warmup_epochs": 0.3,
                        "batch_size": 32}}
    return {"tasks": ["topic", "sentiment"],
            "model": {"backbone": "hf:sentence-transformers/all-MiniLM-L6-v2", "weights": "package:all-minilm-l6-v2",
                      "max_length": 64, "pooling": "mean"},
            "data": {"topic": 6 if quick else 120, "sentiment": 10 if quick else 200,
                     "test_subset": 10 if quick else 100},
            "fit": {"strategy": "full", "epochs": 1 if quick else 2, "lr": 1e-4, "head_lr": 1e-3,
                    "warmup_epochs": 0.1, "batch_size": 16}}


def build_data(suite: str, cfg: dict):
    import headstart as hs
    from headstart.testing import FASHION_MNIST_KINDS

    if suite == "image":
        fmnist = hs.datasets.load("fashion-mnist", subset=cfg["data"]["subset"],
                                  test_subset=cfg["data"]["test_subset"], seed=0)
        return hs.data.derive_tasks(fmnist, "item", kind=FASHION_MNIST_KINDS)
    d = cfg["data"]
    bbc = hs.datasets.load("bbc-news", subset=d["topic"], test_subset=d["test_subset"], seed=0)
    tweets = hs.datasets.load("tweets-sentiment", subset=d["sentiment"], test_subset=d["test_subset"], seed=0)
    return hs.data.combine_tasks({"topic": bbc, "sentiment": tweets})


def worker(suite: str, quick: bool, seed: int, method: str) -> dict:
    """One run: `method` is a weighting (the multi-task model) or single:<task> (that task alone)."""
    import torch

    import headstart as hs

    torch.manual_seed(seed)
    cfg = suite_settings(suite, quick)
    data = build_data(suite, cfg)
    if method.startswith("single:"):
        data = hs.data.single_task(data, method.split(":", 1)[1])
    model = hs.create_model(**cfg["model"])
    fit = dict(cfg["fit"])
    strategy = fit.pop("strategy")
    extra = {} if method.startswith("single:") else {"weighting": method}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run = hs.fit(model, data, strategy, out=Path(tmp) / "run", seed=seed, progress=False, **fit, **extra)
        seconds = time.perf_counter() - start
        bundle = run.extra.get("bundle_bytes")
    train_seconds = sum(r["train_seconds"] for r in run.history)
    return {"suite": suite, "seed": seed, "method": method, "test": run.test_metrics, "seconds": seconds,
            "train_seconds": train_seconds, "params": sum(p.numel() for p in model.parameters()),
            "bundle_bytes": bundle, "best_epoch": run.best_epoch, "train_sizes": len(data.train)}


def accuracy_of(result: dict, task: str) -> float:
    test = result["test"]
    return test.get(f"test/{task}/accuracy", test.get("test/accuracy"))


def mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def summarise(suite: str, results: list[dict], cfg: dict) -> tuple[str, dict]:
    from headstart.metrics import delta_m

    tasks = cfg["tasks"]
    seeds = sorted({r["seed"] for r in results})
    by = {(r["method"], r["seed"]): r for r in results}
    single = {t: {s: accuracy_of(by[(f"single:{t}", s)], t) for s in seeds} for t in tasks}
    lines = [f"### {suite}: test accuracy, mean ± sd over seeds {seeds}", "",
             "| model | " + " | ".join(tasks) + " | Δm (%) | train s/run |", "|---" * (len(tasks) + 3) + "|"]
    lines.append("| single-task (one model per task) | " + " | ".join(mean_sd(list(single[t].values())) for t in tasks)
                 + " | 0 | " + f"{sum(statistics.mean(by[(f'single:{t}', s)]['train_seconds'] for s in seeds) for t in tasks):.0f} (sum) |")
    summary = {"single": {t: list(single[t].values()) for t in tasks}, "multi": {}}
    for method in WEIGHTINGS:
        if (method, seeds[0]) not in by:
            continue
        accs = {t: [accuracy_of(by[(method, s)], t) for s in seeds] for t in tasks}
        dms = [delta_m({t: accuracy_of(by[(method, s)], t) for t in tasks}, {t: single[t][s] for t in tasks})
               for s in seeds]
        secs = statistics.mean(by[(method, s)]["train_seconds"] for s in seeds)
        lines.append(f"| multi-task, {method} | " + " | ".join(mean_sd(accs[t]) for t in tasks)
                     + f" | {statistics.mean(dms):+.2f} ± {statistics.stdev(dms) if len(dms) > 1 else 0:.2f}"
                     + f" | {secs:.0f} |")
        summary["multi"][method] = {"accuracy": accs, "delta_m": dms, "train_seconds": secs}
    multi, singles = by[("equal", seeds[0])], [by[(f"single:{t}", seeds[0])] for t in tasks]
    lines += ["", f"Cost of one shared model against one per task: {multi['params'] / 1e6:.2f} M parameters and a "
              f"{multi['bundle_bytes'] / 1e6:.1f} MB bundle against {sum(r['params'] for r in singles) / 1e6:.2f} M "
              f"and {sum(r['bundle_bytes'] for r in singles) / 1e6:.1f} MB; inference runs the backbone once for "
              f"every task instead of once per task.", ""]
    return "\n".join(lines), summary


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--suite", choices=["image", "text", "both"], default="both")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--method", default="equal")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.suite, args.quick, args.seed, args.method)))
        return
    suites = ["image", "text"] if args.suite == "both" else [args.suite]
    seeds = [0] if args.quick else SEEDS
    record = {"machine": machine(), "quick": args.quick, "suites": {}}
    tables = ["## Multi-task: one shared backbone against a model per task", ""]
    for suite in suites:
        cfg = suite_settings(suite, args.quick)
        results = []
        for seed in seeds:
            for method in [f"single:{t}" for t in cfg["tasks"]] + WEIGHTINGS:
                result = run_worker(__file__, ["--suite", suite, "--seed", str(seed), "--method", method]
                                    + (["--quick"] if args.quick else []))
                print(f"{suite} seed {seed} {method}: {result['test']} ({result['seconds']:.0f} s)", flush=True)
                results.append(result)
        table, summary = summarise(suite, results, cfg)
        record["suites"][suite] = {"settings": cfg, "runs": results, "summary": summary}
        tables.append(table)
        name = "multitask_quick" if args.quick else "multitask"
        save(name, record, "\n".join(tables))  # after each suite: a later failure keeps what is done


if __name__ == "__main__":
    main()
