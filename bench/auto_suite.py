"""The public auto suite (issue 15): `headstart fit --strategy auto --budget B` on ten small tasks built from the
offline assets, against the best strategy-grid cell that fits the same budget and a classical scikit-learn
baseline.

    python bench/auto_suite.py                         # all ten tasks (about 35-45 min on 2 idle cores)
    python bench/auto_suite.py --tasks bbc,tweets      # some tasks; their rows replace those in the results file
    python bench/auto_suite.py --seeds 1,2             # more seeds: rows kept per (task, seed), tables show means
    python bench/auto_suite.py --auto-only --tasks fmnist --seeds 0,1,2   # auto again; grid cells kept
    python bench/auto_suite.py --only linear-probe --seeds 0,1,2          # one grid cell again; the rest kept
    python bench/auto_suite.py --quick --tasks digits  # toy sizes, the same code: a smoke test, not a result

Run it on an idle machine, with the allocator setting from the Makefile (GLIBC_TUNABLES). Results:
bench/results/auto_suite.json (every contender's record, auto's reasons, the machine) and auto_suite.md (the
table and the must-show checks), `_quick` suffix in quick mode.

How a task runs. Its data are written once to a temporary folder: images as PNG folders (one sub-folder per
class) for train, val and test; texts as CSV files (columns text, label). Every contender is a user's command,
`headstart fit --data TRAIN --set data.val_path=VAL --set data.test_path=TEST ...`, in a fresh process, with the
default backbone and weights (no --backbone/--weights: pretrained EfficientNet-Lite0 for images, MiniLM for text,
so the suite also checks that the default is pretrained), the task's image size (model.image_size) or 128 tokens
(model.max_length), its own feature cache folder (every contender starts cold, as a user's first command does),
and the same val split. Wall time is measured around the subprocess: from process start to exit, test pass and
report included.
  (a) auto:  --strategy auto --budget B (+ the task's --metric / --positive-class). Recorded: auto.json (strategy,
             options, train settings, reasons), test_metrics.json, wall s and wall / budget.
  (b) grid:  linear-probe, partial, lp-ft, full, lora at their default settings, same metric, with
             --set train.time_limit=B. A cell counts as "cut short" when metrics.jsonl holds fewer epochs than
             config.yaml's train.epochs. The best in-budget cell is the best cell whose wall time is within the
             limit auto is held to (1.15 x B, or B + 10 s for budgets under a minute).
  (c) baseline, in this process on the same train/val/test arrays: text, TF-IDF (word 1-2 grams, sublinear tf)
             + LinearSVC, class_weight="balanced" on the imbalanced tasks, C tuned on val (and, for binary F1,
             the decision threshold tuned on val as headstart does); images, LogisticRegression on raw pixels
             scaled to [0, 1], C tuned on val (scikit-image, for HOG, is not installed); regression, Ridge on raw
             pixels, alpha tuned on val.
The regression task cannot be given to the CLI (a single-task regression model needs the Python API): its
contenders run `hs.fit(model, data, strategy, ...)` in a worker process of this script, timed the same way
(around the process, imports included).

The tasks (seed 0 unless --seeds; each seed draws its own sample and seeds every run; the "test" sets come
from each data set's own test split):
  fmnist            Fashion-MNIST, 100 train / 12 val / 100 test per class, 96 px, accuracy, budget 60 s
  fmnist-fewshot    Fashion-MNIST, 20 train / 5 val / 100 test per class, 96 px, accuracy, 30 s
  digits            scikit-learn digits (8x8), its 80/20 split with 10% val (~130 train per class), 64 px,
                    accuracy, 40 s
  opencv-digits     OpenCV digits (20x20), 50 train / 10 val / 100 test per class, 64 px, accuracy, 30 s
  fmnist-shifted    fashion-mnist-corrupted (blur, half contrast, noise), 50 / 8 / 100 per class, 96 px,
                    accuracy, 40 s
  bbc               BBC News, 50 train / 8 val per class, the whole test split (444), 128 tokens, accuracy, 45 s
  tweets            tweet sentiment (negative, neutral, positive), 100 / 20 / 200 per class, accuracy, 40 s
  tweets-positive   imbalanced binary text derived from tweets-sentiment: class "positive" = tweets labelled
                    positive, class "other" = tweets labelled negative or neutral; from each of the data set's
                    train / val / test splits a seeded sample of 600 / 300 / 1000 tweets of which exactly 8% are
                    positive (48 / 24 / 80). Positive sentiment against the rest is not keyword-separable (neutral
                    tweets share the vocabulary), so a pretrained encoder has room over TF-IDF. Metric: F1 of
                    "positive" (--metric f1 --positive-class positive), 45 s
  bbc-longtail      BBC News with class counts falling geometrically in sorted class order: business 120,
                    entertainment 60, politics 30, sport 15, tech 8 (val: a tenth of each, at least 2); the whole
                    balanced test split (444); macro-F1, 45 s
  digits-rotation   regression: scikit-learn digits upscaled to 22x22 on a 32x32 black canvas (see rotated())
                    and rotated by a seeded uniform angle in [-60, 60] degrees; target = angle / 60 in [-1, 1].
                    Train/val/test = the digits split (one rotation per image); 64 px. Reported: R^2 = 1 - test
                    MSE / variance of the test targets, and MSE; 40 s
--quick: 4 train / 2 val / 5 test per class (long tail 8, 4, 2, 2, 2; imbalanced 50 / 25 / 50 tweets with >= 2
positives each; rotation 60 / 20 / 40 images), 32 px, 32 tokens, 40 s budgets (less leaves auto too little after
loading the model). About 2.5 min per task on 2 busy cores, so smoke-test a few tasks at a time with --tasks.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, save  # noqa: E402

HEADSTART = str(Path(sys.executable).with_name("headstart"))
GRID = ("linear-probe", "partial", "lp-ft", "full", "lora")  # the strategies auto chooses among

# name: kind, source data set, per-class sizes (train, val, test; None = the whole split), budget (s), metric
TASKS = {
    "fmnist": dict(kind="image", dataset="fashion-mnist", sizes=(100, 12, 100), image_size=96, budget=60,
                   metric="accuracy"),
    "fmnist-fewshot": dict(kind="image", dataset="fashion-mnist", sizes=(20, 5, 100), image_size=96, budget=30,
                           metric="accuracy"),
    "digits": dict(kind="image", dataset="digits", sizes=(None, None, None), image_size=64, budget=40,
                   metric="accuracy"),
    "opencv-digits": dict(kind="image", dataset="opencv-digits", sizes=(50, 10, 100), image_size=64, budget=30,
                          metric="accuracy"),
    "fmnist-shifted": dict(kind="image", dataset="fashion-mnist-corrupted", sizes=(50, 8, 100), image_size=96,
                           budget=40, metric="accuracy"),
    "bbc": dict(kind="text", dataset="bbc-news", sizes=(50, 8, None), budget=45, metric="accuracy"),
    "tweets": dict(kind="text", dataset="tweets-sentiment", sizes=(100, 20, 200), budget=40, metric="accuracy"),
    "tweets-positive": dict(kind="text", dataset="tweets-sentiment", budget=45, metric="f1", positive="positive",
                            imbalanced=True, binary_sizes=(600, 300, 1000), positive_share=0.08),
    "bbc-longtail": dict(kind="text", dataset="bbc-news", budget=45, metric="macro_f1", imbalanced=True,
                         tail=(120, 60, 30, 15, 8)),
    "digits-rotation": dict(kind="regression", dataset="digits", image_size=64, budget=40, metric="r2",
                            max_angle=60.0),
}
QUICK = dict(sizes=(4, 2, 5), image_size=32, max_length=32, budget=40, binary_sizes=(50, 25, 50),
             tail=(8, 4, 2, 2, 2))
MAX_LENGTH = 128


def settings(task: str, quick: bool) -> dict:
    """The task's settings; --quick shrinks sizes, resolution, tokens and budgets, and keeps everything else."""
    s = {"max_length": MAX_LENGTH, **TASKS[task]}
    if quick:
        s.update({k: v for k, v in QUICK.items() if k in s or k in ("budget", "max_length")})
        if s["kind"] != "text":
            s["image_size"] = QUICK["image_size"]
    return s


def allowed_wall(budget: float) -> float:
    """The wall time a budget promises (issue 15): 1.15 x budget, or budget + 10 s for budgets under a minute."""
    return budget + 10.0 if budget < 60 else 1.15 * budget


# --------------------------------------------------------------------------------------------- the data

def take(targets: np.ndarray, counts: list[int | None], rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of a seeded sample with counts[c] items of class c (None: all of them)."""
    picked = []
    for c, n in enumerate(counts):
        idx = np.flatnonzero(targets == c)
        picked.append(idx if n is None or n >= len(idx) else rng.choice(idx, n, replace=False))
    return np.sort(np.concatenate(picked))


def rotated(digit: np.ndarray, angle: float):
    """An 8x8 digit upscaled to 22x22, centred on a black 32x32 canvas, then rotated by `angle` degrees. The
    margin holds the whole digit at any angle (22 * sqrt 2 < 32): without it rotation clips the corners of
    digits that fill their frame, and the size of the black corners alone gives the angle away to a linear
    model on pixels."""
    from PIL import Image

    canvas = Image.new("L", (32, 32))
    canvas.paste(Image.fromarray(digit).resize((22, 22), Image.BILINEAR), (5, 5))
    return canvas.rotate(angle, resample=Image.BILINEAR)


def build_parts(task: str, s: dict, seed: int) -> dict:
    """{"train"|"val"|"test": (x, y)} as numpy arrays plus "classes": images (N, C, H, W) uint8 or lists of
    texts, int labels (float targets for regression)."""
    import headstart as hs

    rng = np.random.default_rng(seed)
    if s["kind"] == "regression":  # rotated digits: every image of the data set's split, rotated once
        data = hs.datasets.load(s["dataset"], seed=seed)
        parts = {}
        for name in ("train", "val", "test"):
            split = getattr(data, name)
            n = len(split) if not s.get("quick") else min(len(split), {"train": 60, "val": 20, "test": 40}[name])
            angles = rng.uniform(-s["max_angle"], s["max_angle"], n)
            x = np.stack([np.asarray(rotated(img[0], a)) for img, a in zip(split.images[:n].numpy(), angles)])
            parts[name] = (x[:, None], (angles / s["max_angle"]).astype(np.float32))
        return {**parts, "classes": None}
    full = hs.datasets.load(s["dataset"], seed=seed)
    classes = list(full.classes)
    splits = {n: getattr(full, n) for n in ("train", "val", "test")}
    as_x = (lambda p, i: p.images[i].numpy()) if s["kind"] == "image" else (lambda p, i: [p.texts[j] for j in i])
    parts = {}
    if "binary_sizes" in s:  # one class against the rest, the positives subsampled to a fixed share
        pos = classes.index(s["positive"])
        for name, total in zip(("train", "val", "test"), s["binary_sizes"]):
            y = splits[name].targets.numpy()
            n_pos = max(2, round(s["positive_share"] * total))
            idx = np.sort(np.concatenate([rng.choice(np.flatnonzero(y == pos), n_pos, replace=False),
                                          rng.choice(np.flatnonzero(y != pos), total - n_pos, replace=False)]))
            parts[name] = (as_x(splits[name], idx), (y[idx] == pos).astype(np.int64))
        return {**parts, "classes": ["other", s["positive"]]}
    if "tail" in s:  # geometric long tail in train and val, balanced test
        counts = {"train": list(s["tail"]), "val": [max(2, math.ceil(n / 10)) for n in s["tail"]],
                  "test": [None] * len(classes) if not s.get("quick") else [5] * len(classes)}
    else:
        counts = {n: [k] * len(classes) for n, k in zip(("train", "val", "test"), s["sizes"])}
    for name in ("train", "val", "test"):
        y = splits[name].targets.numpy()
        idx = take(y, counts[name], rng)
        parts[name] = (as_x(splits[name], idx), y[idx])
    return {**parts, "classes": classes}


def safe(name: str) -> str:
    """A class name usable as a folder name (Fashion-MNIST has "T-shirt/top")."""
    return name.replace("/", "-")


def write_parts(parts: dict, kind: str, folder: Path) -> dict:
    """Write the parts where the CLI (or the regression worker) reads them; returns {part: path}."""
    from PIL import Image

    paths = {}
    if kind == "regression":
        np.savez(folder / "data.npz", **{f"{k}_{p}": v for p in ("train", "val", "test")
                                         for k, v in zip(("x", "y"), parts[p])})
        return {"npz": str(folder / "data.npz")}
    for p in ("train", "val", "test"):
        x, y = parts[p]
        if kind == "image":
            root = folder / p
            for c in parts["classes"]:
                (root / safe(c)).mkdir(parents=True, exist_ok=True)
            for i, (img, label) in enumerate(zip(x, y)):
                Image.fromarray(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)).save(
                    root / safe(parts["classes"][label]) / f"{i:05d}.png")
            paths[p] = str(root)
        else:
            path = folder / f"{p}.csv"
            with open(path, "w", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                w.writerow(["text", "label"])
                w.writerows((t, parts["classes"][label]) for t, label in zip(x, y))
            paths[p] = str(path)
    return paths


# --------------------------------------------------------------------------------------------- contenders

def time_limit_supported() -> bool:
    """Whether this headstart knows train.time_limit (the lead adds it in parallel); without it the grid cells
    run unbounded and the results say so."""
    from headstart.config.engine import validate_config

    try:
        validate_config({"train": {"time_limit": 10}})
        return True
    except Exception:
        return False


def read_run(run: Path) -> dict:
    """What a finished run folder says: test metrics, auto's decision, epochs planned and logged."""
    import yaml

    out = {"test": json.loads((run / "test_metrics.json").read_text()) if (run / "test_metrics.json").exists()
           else {}}
    if (run / "auto.json").exists():
        d = json.loads((run / "auto.json").read_text())
        out["auto"] = {k: d.get(k) for k in ("strategy", "options", "train", "reasons", "contender", "race",
                                             "estimates_s")}
        # The measured speeds the estimates came from (seconds per sample), to tell a slow minute from a bad rule.
        out["auto"]["speed"] = {k: (d.get("signals") or {}).get(k) for k in ("extract_s", "eval_s", "step_s")}
    cfg = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").exists() else {}
    planned = (cfg.get("train") or {}).get("epochs")
    logged, fitted = set(), False
    if (run / "metrics.jsonl").exists():
        for line in (run / "metrics.jsonl").read_text().splitlines():
            row = json.loads(line) if line.strip() else {}
            if "epoch" in row:
                logged.add(row["epoch"])
            fitted = fitted or "head_l2" in row  # a linear probe's fitted head: one epoch is the whole run
    out.update(epochs_planned=planned, epochs_logged=len(logged),
               cut_short=planned is not None and len(logged) < planned and not fitted)
    return out


def score(test: dict, s: dict, y_test: np.ndarray | None) -> dict:
    """The task's metric from a run's test metrics (R^2 and MSE for regression)."""
    if s["kind"] == "regression":
        mse = test.get("test/mse")
        var = float(np.var(y_test))
        return {"metric": None if mse is None else 1.0 - mse / var, "mse": mse}
    return {"metric": test.get(f"test/{s['metric']}")}


def run_contender(task: str, s: dict, strategy: str, paths: dict, work: Path, limit_ok: bool,
                  seed: int) -> dict:
    """One contender in a fresh process, timed around it; the record of what it did."""
    run, cache = work / f"run-{strategy}", work / f"cache-{strategy}"
    budget = s["budget"]
    if s["kind"] == "regression":  # the CLI cannot build a single-task regression model: the API, in a worker
        cmd = [sys.executable, __file__, "--worker", "--npz", paths["npz"], "--strategy", strategy, "--out", str(run),
               "--cache-dir", str(cache), "--image-size", str(s["image_size"]), "--budget", str(budget),
               "--seed", str(seed)] + (["--time-limit"] if strategy != "auto" and limit_ok else [])
    else:
        cmd = [HEADSTART, "fit", "--data", paths["train"], "--set", f"data.val_path={paths['val']}",
               "--set", f"data.test_path={paths['test']}", "--strategy", strategy, "--out", str(run),
               "--set", f"train.cache_dir={cache}", "--set", f"train.seed={seed}",
               "--set", (f"model.image_size={s['image_size']}" if s["kind"] == "image"
                         else f"model.max_length={s['max_length']}")]
        cmd += ["--metric", s["metric"]] + (["--positive-class", s["positive"]] if "positive" in s else [])
        if strategy == "auto":
            cmd += ["--budget", f"{budget}s"]
        elif limit_ok:
            cmd += ["--set", f"train.time_limit={budget}"]
    log = work / f"{strategy}.log"
    start = time.perf_counter()
    try:
        with open(log, "w") as f:
            proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=max(600, 10 * budget))
        returncode = proc.returncode
    except subprocess.TimeoutExpired:  # a hung contender must not lose the rest of the suite
        returncode = "timeout"
    wall = time.perf_counter() - start
    rec = {"strategy": strategy, "wall_s": round(wall, 1), "wall_over_budget": round(wall / budget, 3),
           "returncode": returncode, "command": " ".join(cmd[1:] if cmd[0] == sys.executable else cmd)}
    if returncode != 0:
        return {**rec, "error": log.read_text()[-2000:]}
    return {**rec, **read_run(run)}


def worker(args) -> None:
    """The regression task's contender through the Python API (the CLI has no single-task regression)."""
    import headstart as hs
    from headstart.data import from_arrays

    d = np.load(args.npz)
    data = from_arrays(d["x_train"], d["y_train"], None, x_val=d["x_val"], y_val=d["y_val"],
                               x_test=d["x_test"], y_test=d["y_test"], name="digits-rotation")
    # the CLI's defaults: the default image backbone with its pretrained weights
    model = hs.create_model("timm:tf_efficientnet_lite0", 1, weights="package:efficientnet-lite0",
                            task="regression", image_size=args.image_size)
    extra = ({"budget": f"{args.budget}s"} if args.strategy == "auto" else
             {"time_limit": args.budget} if args.time_limit else {})
    extra.update({"solver": args.solver} if args.solver else {})  # bench/linear_probe_fit.py
    hs.fit(model, data, args.strategy, out=args.out, cache_dir=args.cache_dir, seed=args.seed, **extra)
    print(json.dumps({"ok": True}))


# --------------------------------------------------------------------------------------------- baselines

def baseline(s: dict, parts: dict) -> dict:
    """The classical baseline, hyper-parameter tuned on the val split, scored on test with the task's metric."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.svm import LinearSVC

    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = parts["train"], parts["val"], parts["test"]
    start = time.perf_counter()
    if s["kind"] == "text":
        vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
        f_tr, f_va, f_te = vec.fit_transform(x_tr), vec.transform(x_va), vec.transform(x_te)
        make, grid, name = (lambda c: LinearSVC(C=c, class_weight="balanced" if s.get("imbalanced") else None)), \
            (0.01, 0.1, 1.0, 10.0), "TF-IDF 1-2 grams + LinearSVC" + (" (balanced)" if s.get("imbalanced") else "")
    else:
        flat = lambda x: x.reshape(len(x), -1).astype(np.float32) / 255.0  # noqa: E731
        f_tr, f_va, f_te = flat(x_tr), flat(x_va), flat(x_te)
        if s["kind"] == "regression":
            make, grid, name = (lambda a: Ridge(alpha=a)), (0.1, 1.0, 10.0, 100.0, 1000.0), "Ridge on raw pixels"
        else:
            make, grid, name = (lambda c: LogisticRegression(C=c, max_iter=3000)), (0.01, 0.1, 1.0, 10.0), \
                "LogisticRegression on raw pixels"

    def metric(y, pred) -> float:
        if s["kind"] == "regression":
            return -float(np.mean((pred - y) ** 2))  # higher is better while tuning
        if s["metric"] == "f1":
            return float(f1_score(y, pred, pos_label=1, zero_division=0))
        return float(f1_score(y, pred, average="macro") if s["metric"] == "macro_f1" else accuracy_score(y, pred))

    tuned = []
    for h in grid:
        m = make(h).fit(f_tr, y_tr)
        threshold = 0.0
        if s["metric"] == "f1":  # as headstart does for binary F1: the decision threshold that is best on val
            scores = m.decision_function(f_va)
            threshold = max(np.unique(scores), key=lambda t: (metric(y_va, (scores >= t).astype(int)), -abs(t)))
            val = metric(y_va, (scores >= threshold).astype(int))
        else:
            val = metric(y_va, m.predict(f_va))
        tuned.append((val, h, threshold, m))
    val, h, threshold, m = max(tuned, key=lambda t: t[0])
    pred = ((m.decision_function(f_te) >= threshold).astype(int) if s["metric"] == "f1" else m.predict(f_te))
    # val_score: the tuning score on val (the task's metric; -MSE for regression)
    rec = {"name": name, "hyper": h, "val_score": val, "threshold": float(threshold),
           "seconds": round(time.perf_counter() - start, 2)}
    if s["kind"] == "regression":
        mse = float(np.mean((pred - y_te) ** 2))
        return {**rec, "metric": 1.0 - mse / float(np.var(y_te)), "mse": mse}
    return {**rec, "metric": metric(y_te, pred)}


# --------------------------------------------------------------------------------------------- one task

def run_task(task: str, quick: bool, seed: int, limit_ok: bool, root: Path, kept: dict | None = None,
             only: tuple[str, ...] = ("auto",)) -> dict:
    """Build the task's data, run auto, the grid and the baseline; returns the task's row. With `kept` (an
    earlier row of the same task and seed), only the contenders in `only` run, and the rest of the row (the
    other contenders and the baseline) is kept from it; the row's `rerun` lists what ran later than the rest."""
    s = {**settings(task, quick), "quick": quick}
    work = root / task
    work.mkdir(parents=True)
    parts = build_parts(task, s, seed)
    paths = write_parts(parts, s["kind"], work)
    y_test = parts["test"][1]
    row = {"task": task, "seed": seed, "kind": s["kind"], "metric": s["metric"], "budget_s": s["budget"],
           "allowed_wall_s": allowed_wall(s["budget"]), "train_items": len(parts["train"][1]),
           "val_items": len(parts["val"][1]), "test_items": len(y_test),
           "settings": {k: v for k, v in s.items() if k != "quick"}, "time_limit_applied": limit_ok}
    if parts["classes"] is not None:
        row["class_counts"] = {c: int((parts["train"][1] == i).sum()) for i, c in enumerate(parts["classes"])}
    contenders = []
    for strategy in ("auto",) + GRID if kept is None else [n for n in ("auto",) + GRID if n in only]:
        rec = run_contender(task, s, strategy, paths, work, limit_ok, seed)
        if "error" not in rec:
            rec.update(score(rec.pop("test"), s, y_test))
        contenders.append(rec)
        print(json.dumps({"task": task, **{k: v for k, v in rec.items() if k != "command"}})[:600], flush=True)
    if kept is not None:
        new = {c["strategy"]: c for c in contenders}
        earlier = kept.get("rerun", ["auto"] if kept.get("grid_kept") else [])  # grid_kept: an older --auto-only
        row.update(auto=new.get("auto", kept["auto"]), grid=[new.get(c["strategy"], c) for c in kept["grid"]],
                   baseline=kept["baseline"], rerun=sorted(set(earlier) | set(new)))
        return row
    row["auto"], row["grid"] = contenders[0], contenders[1:]
    row["baseline"] = baseline(s, parts)
    print(json.dumps({"task": task, "baseline": row["baseline"]}), flush=True)
    return row


# --------------------------------------------------------------------------------------------- the table

def in_budget(cell: dict, row: dict) -> bool:
    return "error" not in cell and cell.get("metric") is not None and cell["wall_s"] <= row["allowed_wall_s"]


def mean_sd(values: list) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None where a value is missing; sd None for one value)."""
    if not values or any(v is None for v in values):
        return None, None
    v = np.asarray(values, dtype=float)
    return float(v.mean()), (float(v.std(ddof=1)) if len(v) > 1 else None)


def paired_se(a: list, b: list) -> float | None:
    """Standard error, in points, of the mean of the per-seed differences a - b (None for fewer than two seeds):
    the seeds pair the two contenders on the same data sample."""
    if len(a) < 2 or len(a) != len(b) or any(v is None for v in a + b):
        return None
    return 100 * float(np.std(np.subtract(a, b), ddof=1)) / math.sqrt(len(a))


def over_seeds(runs: list[dict]) -> dict:
    """One task over its seeds: auto's mean, the grid cell with the best mean among the cells within the wall
    limit on every seed, the baseline's mean, and the gaps in points. With one seed these are that seed's
    figures. The best cell is picked on the same test figures it is compared on, so with one seed it is the
    maximum of five noisy scores; the mean over seeds is the fairer comparison."""
    autos, bases = [r["auto"].get("metric") for r in runs], [r["baseline"]["metric"] for r in runs]
    (auto, auto_sd), (base, base_sd) = mean_sd(autos), mean_sd(bases)
    cells = {}
    for g in GRID:
        per_seed = [next(c for c in r["grid"] if c["strategy"] == g) for r in runs]
        metrics = [c.get("metric") if "error" not in c else None for c in per_seed]
        cells[g] = {"strategy": g, "per_seed": metrics, **dict(zip(("metric", "sd"), mean_sd(metrics))),
                    "wall_s": max(c["wall_s"] for c in per_seed),
                    "cut_short": any(c.get("cut_short") for c in per_seed),
                    "fits": all(in_budget(c, r) for c, r in zip(per_seed, runs))}
    fitting = [c for c in cells.values() if c["fits"] and c["metric"] is not None]
    best = max(fitting, key=lambda c: c["metric"]) if fitting else None
    regression = runs[0]["kind"] == "regression"
    mse = mean_sd([r["auto"].get("mse") for r in runs])[0] if regression else None
    base_mse = mean_sd([r["baseline"].get("mse") for r in runs])[0] if regression else None
    return {"seeds": [r.get("seed", 0) for r in runs], "auto": auto, "auto_sd": auto_sd, "mse": mse,
            "cells": cells, "best": best, "baseline": base, "baseline_sd": base_sd, "baseline_mse": base_mse,
            "gap": None if auto is None or best is None else 100 * (auto - best["metric"]),
            "gap_se": None if best is None else paired_se(autos, best["per_seed"]),
            "vs_baseline": None if auto is None else 100 * (auto - base),
            "vs_baseline_se": paired_se(autos, bases),
            "wall_s": max(r["auto"].get("wall_s", math.inf) for r in runs),
            "wall_over_budget": max(r["auto"].get("wall_over_budget", math.inf) for r in runs)}


def pick(auto: dict) -> str:
    """What auto trained and shipped, in a few words."""
    if "error" in auto:
        return "failed"
    shipped = (auto["auto"].get("contender") or {}).get("shipped")
    return f"{auto['auto']['strategy']}" + (f" {auto['auto']['options']}" if auto["auto"].get("options") else "") + \
        (" -> pixels (transfer did not help)" if shipped else "")


def fmt(v, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def with_sd(m, sd) -> str:
    return fmt(m) + (f" ± {sd:.3f}" if sd is not None else "")


def gap(points, se) -> str:
    return fmt(points, "+.1f") + (f" ± {se:.1f}" if se is not None else "")


def by_task(rows: list[dict]) -> list[list[dict]]:
    """Rows grouped by task in suite order, each group in seed order."""
    groups: dict[str, list[dict]] = {}
    for r in sorted(rows, key=lambda r: (list(TASKS).index(r["task"]), r.get("seed", 0))):
        groups.setdefault(r["task"], []).append(r)
    return list(groups.values())


def table(rows: list[dict], quick: bool) -> str:
    """The markdown tables and, below them, the must-show checks of issue 15 computed from the rows. Where a
    task ran with several seeds (data sampling and training seed), its figures are means (± sample sd)."""
    groups = by_task(rows)
    tasks = [(g, over_seeds(g)) for g in groups]
    several = any(len(g) > 1 for g in groups)
    lines = [f"# Auto suite{' (quick mode: toy sizes, not results)' if quick else ''}", "",
             "`headstart fit --strategy auto --budget B` against the best strategy-grid cell (linear-probe, "
             "partial, lp-ft, full, lora at default settings, `train.time_limit=B`) whose wall time is within "
             "the budget's limit (1.15 x B, or B + 10 s under a minute), and a classical scikit-learn baseline. "
             "Wall times are whole commands (process start to exit). Gaps are in points (100 x metric), auto minus "
             "the other; regression reports R^2 (test MSE in parentheses). See bench/auto_suite.py for the data."
             + (" A task run with several seeds (each seed draws its own data sample and seeds every run) shows "
                "means ± sample standard deviations, and its gaps the mean of the per-seed differences ± their "
                "standard error (the seeds pair the contenders on one data sample); its best cell is the cell "
                "with the best mean among those within the wall limit on every seed, and its wall time is the "
                "worst seed's." if several else "")
             + (" Rows marked * ran some contenders again later (--auto-only, --only), keeping the rest of the "
                "row from the earlier run; the results file lists them under rerun."
                if any(r.get("rerun") or r.get("grid_kept") for r in rows) else ""), "",
             "| task | train | metric | budget | seeds | auto pick | auto | auto wall (x budget) | best in-budget cell "
             "(metric, wall) | auto - best | baseline | auto - baseline |",
             "|---|---:|---|---:|---:|---|---:|---:|---|---:|---:|---:|"]
    for g, t in tasks:
        r = g[0]
        picks = [pick(x["auto"]) for x in g]
        picks_s = "; ".join(p + (f" (x{picks.count(p)})" if len(g) > 1 else "") for p in dict.fromkeys(picks))
        metric = "R^2" if r["kind"] == "regression" else r["metric"] + \
            (f" ({r['settings']['positive']})" if r["metric"] == "f1" else "")
        a = with_sd(t["auto"], t["auto_sd"]) + (f" ({t['mse']:.3f})" if t["mse"] is not None else "")
        best = t["best"]
        best_s = "-" if best is None else (f"{best['strategy']}{' (cut)' if best['cut_short'] else ''} "
                                           f"{best['metric']:.3f}, {best['wall_s']:.0f}s")
        base_s = with_sd(t["baseline"], t["baseline_sd"]) + \
            (f" ({t['baseline_mse']:.3f})" if t["baseline_mse"] is not None else "")
        kept = "*" if any(x.get("rerun") or x.get("grid_kept") for x in g) else ""
        lines.append(f"| {r['task']}{kept} | {r['train_items']} | {metric} | {r['budget_s']:.0f}s | "
                     f"{','.join(map(str, t['seeds']))} | {picks_s} | {a} | {t['wall_s']:.0f}s "
                     f"({t['wall_over_budget']:.2f}x) | {best_s} | {gap(t['gap'], t['gap_se'])} | {base_s} | "
                     f"{gap(t['vs_baseline'], t['vs_baseline_se'])} |")
    n = len(tasks)
    within = sum(1 for _, t in tasks if t["gap"] is not None and t["gap"] >= -1.0)
    above = sum(1 for _, t in tasks if t["vs_baseline"] is not None and t["vs_baseline"] >= 0)
    over = [g[0]["task"] for g, t in tasks if t["wall_s"] > g[0]["allowed_wall_s"]]
    lines += ["", "Must-show checks (issue 15), from the rows above" + (" (means over seeds)" if several else "")
              + ":", "",
              f"- auto within 1 point of the best in-budget grid cell: {within}/{n} tasks (bar: 9 of 10)",
              f"- auto at or above the classical baseline: {above}/{n} tasks (bar: every task)"]
    for g, t in tasks:
        if g[0]["metric"] == "f1":
            lines.append(f"- imbalanced task {g[0]['task']}: positive-class F1 auto {fmt(t['auto'])} vs "
                         f"baseline {fmt(t['baseline'])}, margin {fmt(t['vs_baseline'], '+.1f')} points (bar: +3)")
    lines.append(f"- max auto wall / budget: {max(t['wall_over_budget'] for _, t in tasks):.2f}x; over the limit "
                 f"(1.15x, or budget + 10 s under a minute): {', '.join(over) if over else 'none'}")
    if not all(r.get("time_limit_applied", True) for r in rows):
        lines.append("- train.time_limit was not available in this headstart: grid cells ran without it "
                     f"({', '.join(sorted({r['task'] for r in rows if not r.get('time_limit_applied', True)}))})")
    if several:
        seeds = sorted({r.get("seed", 0) for r in rows})
        lines += ["", "Each seed on its own (the checks above, counted per seed over the tasks that ran it):", ""]
        for s in seeds:
            runs = [r for r in rows if r.get("seed", 0) == s]
            d = [over_seeds([r]) for r in runs]
            lines.append(f"- seed {s}: within 1 point {sum(1 for x in d if x['gap'] is not None and x['gap'] >= -1)}"
                         f"/{len(runs)}, at or above the baseline "
                         f"{sum(1 for x in d if x['vs_baseline'] is not None and x['vs_baseline'] >= 0)}/{len(runs)}")
        lines += ["", "| task | seed | auto pick | auto | wall (x budget) | best in-budget cell | auto - best | "
                  "baseline | auto - baseline |", "|---|---:|---|---:|---:|---|---:|---:|---:|"]
        for g, _ in tasks:
            for r in g:
                d = over_seeds([r])
                b = d["best"]
                best_s = "-" if b is None else \
                    f"{b['strategy']}{' (cut)' if b['cut_short'] else ''} {b['metric']:.3f}"
                lines.append(f"| {r['task']} | {r.get('seed', 0)} | {pick(r['auto'])} | {fmt(d['auto'])} | "
                             f"{d['wall_s']:.0f}s ({d['wall_over_budget']:.2f}x) | {best_s} | {fmt(d['gap'], '+.1f')} | "
                             f"{d['baseline']:.3f} | {fmt(d['vs_baseline'], '+.1f')} |")
    lines += ["", "Every grid cell (metric" + (" mean ± sd" if several else "") + ", wall s" +
              (" of the worst seed" if several else "") + "; \"cut\" = stopped by time_limit before its planned "
              "epochs" + (" on some seed" if several else "") + "):", "",
              "| task | " + " | ".join(GRID) + " |", "|---|" + "---:|" * len(GRID)]
    for g, t in tasks:
        lines.append(f"| {g[0]['task']} | " + " | ".join(
            "failed" if t["cells"][c]["metric"] is None else
            f"{with_sd(t['cells'][c]['metric'], t['cells'][c]['sd'])} ({t['cells'][c]['wall_s']:.0f}s"
            f"{', cut' if t['cells'][c]['cut_short'] else ''})" for c in GRID) + " |")
    lines += ["", "Auto's reasons:", ""]
    lines += [f"- {r['task']}" + (f" (seed {r.get('seed', 0)})" if several else "") + ": " +
              ("; ".join(r["auto"]["auto"].get("reasons") or []) if "auto" in r["auto"]
               else "failed: " + r["auto"].get("error", "")[-300:].replace("\n", " "))
              for g, _ in tasks for r in g]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="toy sizes, the same code: checks the script")
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, from {', '.join(TASKS)}")
    parser.add_argument("--seeds", default="0",
                        help="comma-separated; each seed draws the data sample (and rotations) and seeds every run")
    parser.add_argument("--auto-only", action="store_true",
                        help="run auto alone; each (task, seed) keeps the grid cells and baseline of its row in the "
                             "results file (they do not depend on auto's code); the same as --only auto")
    parser.add_argument("--only", default=None,
                        help=f"comma-separated contenders to run again (from auto, {', '.join(GRID)}); each (task, "
                             "seed) keeps the rest of its row from the results file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for hidden in ("--npz", "--strategy", "--out", "--cache-dir", "--solver"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)  # the worker's run
    parser.add_argument("--image-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--time-limit", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    tasks = args.tasks.split(",")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        parser.error(f"unknown task(s) {unknown}; choose from {', '.join(TASKS)}")
    limit_ok = time_limit_supported()
    if not limit_ok:
        print("note: this headstart has no train.time_limit; grid cells run without it", flush=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    name = "auto_suite" + ("_quick" if args.quick else "")
    previous = RESULTS / f"{name}.json"
    earlier = {(r["task"], r.get("seed", 0)): r for r in json.loads(previous.read_text())["rows"]} \
        if previous.exists() else {}
    only = ("auto",) if args.auto_only else tuple(args.only.split(",")) if args.only else None
    if only is not None and set(only) - {"auto", *GRID}:
        parser.error(f"--only takes auto and {', '.join(GRID)}; got {sorted(set(only) - {'auto', *GRID})}")
    missing = [(t, s) for s in seeds for t in tasks if (t, s) not in earlier]
    if only is not None and missing:
        parser.error(f"--auto-only and --only keep the rest of earlier rows, and {name}.json has none for {missing}")
    start, rows = time.perf_counter(), []
    with tempfile.TemporaryDirectory(prefix="auto_suite_") as tmp:
        for seed in seeds:
            for task in tasks:
                rows.append(run_task(task, args.quick, seed, limit_ok, Path(tmp) / f"seed{seed}",
                                     kept=earlier[(task, seed)] if only is not None else None, only=only or ()))
    done = {(r["task"], r["seed"]) for r in rows}  # a partial run replaces its own (task, seed) rows
    rows = [r for key, r in earlier.items() if key not in done] + rows
    rows.sort(key=lambda r: (list(TASKS).index(r["task"]), r.get("seed", 0)))
    record = {"machine": machine(), "quick": args.quick, "seeds": sorted({r.get("seed", 0) for r in rows}),
              "seconds_this_run": round(time.perf_counter() - start, 1), "grid": GRID, "rows": rows}
    save(name, record, table(rows, args.quick))


if __name__ == "__main__":
    main()
