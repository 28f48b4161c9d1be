"""A part of an epoch of full fine-tuning against several epochs of partial: the evidence for auto's text rule.

    python bench/text_fraction.py               # the auto suite's four text tasks, 4 runs each (about 10 min)
    python bench/text_fraction.py --quick       # toy sizes: a smoke test of the script

Under a tight budget `auto` must choose, for a text encoder, between fine-tuning everything for fewer steps and
training the last group for more epochs. This runs both on the auto suite's text tasks (bbc, tweets,
tweets-positive, bbc-longtail; the same data, seed and metric as bench/auto_suite.py), each a `headstart fit`
command in a fresh process, at the rates auto gives a run of under 100 steps (body 5e-5, head 1e-2):
  partial-5   strategy partial, the last group trainable, 5 epochs (what auto trained when full did not fit)
  full-1      full fine-tuning, 1 epoch
  full-1.5    full fine-tuning, 2 epochs capped at 1.5 epochs' steps (train.max_steps), the schedule over them
  full-2      full fine-tuning, 2 epochs
No time limit: each runs its whole schedule. Wall time is around the process (loading and the test pass
included). Results: bench/results/text_fraction.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import auto_suite  # noqa: E402
from common import machine, save  # noqa: E402

TEXT_TASKS = ("bbc", "tweets", "tweets-positive", "bbc-longtail")
RATES = ["--set", "train.lr=5e-5", "--set", "train.head_lr=0.01"]


def configs(n_train: int) -> dict[str, list[str]]:
    per_epoch = math.ceil(n_train / 16)  # the text batch
    return {"partial-5": ["--strategy", "partial", "--set", "strategy.trainable=last:1", "--set", "train.epochs=5"],
            "full-1": ["--strategy", "full", "--set", "train.epochs=1"],
            "full-1.5": ["--strategy", "full", "--set", "train.epochs=2",
                         "--set", f"train.max_steps={math.ceil(1.5 * per_epoch)}"],
            "full-2": ["--strategy", "full", "--set", "train.epochs=2"]}


def run_task(task: str, quick: bool, root: Path) -> dict:
    s = auto_suite.settings(task, quick)
    work = root / task
    work.mkdir(parents=True)
    parts = auto_suite.build_parts(task, s, 0)
    paths = auto_suite.write_parts(parts, "text", work)
    row = {"task": task, "metric": s["metric"], "train_items": len(parts["train"][1]), "runs": {}}
    for name, args in configs(len(parts["train"][1])).items():
        out = work / f"run-{name}"
        cmd = [auto_suite.HEADSTART, "fit", "--data", paths["train"], "--set", f"data.val_path={paths['val']}",
               "--set", f"data.test_path={paths['test']}", "--out", str(out), "--set", f"train.cache_dir={work}/cache",
               "--set", "train.seed=0", "--set", f"model.max_length={s['max_length']}", "--set", "train.progress=false",
               "--metric", s["metric"], *(["--positive-class", s["positive"]] if "positive" in s else []),
               *args, *RATES]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"{task} {name} failed:\n{proc.stderr[-3000:]}")
        test = json.loads((out / "test_metrics.json").read_text())
        row["runs"][name] = {"metric": test[f"test/{s['metric']}"], "wall_s": round(wall, 1),
                             "epochs_run": len((out / "metrics.jsonl").read_text().splitlines())}
        print(json.dumps({"task": task, "run": name, **row["runs"][name]}), flush=True)
    return row


def table(rows: list[dict], quick: bool) -> str:
    names = list(configs(1))
    lines = ["# A part of an epoch of full fine-tuning against 5 epochs of partial (text)", "",
             "Produced by `bench/text_fraction.py`" + (" --quick (toy sizes: not a result)" if quick else "") + ".",
             "Test metric (wall seconds, process start to exit).", "",
             "| task | metric | " + " | ".join(names) + " |", "|---|---|" + "---:|" * len(names)]
    for r in rows:
        lines.append(f"| {r['task']} | {r['metric']} | " + " | ".join(
            f"{r['runs'][n]['metric']:.3f} ({r['runs'][n]['wall_s']:.0f} s)" for n in names) + " |")
    wins = sum(r["runs"]["full-1.5"]["metric"] > r["runs"]["partial-5"]["metric"] for r in rows)
    ones = sum(r["runs"]["full-1"]["metric"] > r["runs"]["partial-5"]["metric"] for r in rows)
    lines += ["", f"full-1.5 above partial-5 on {wins} of {len(rows)} tasks; full-1 above it on {ones}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="toy sizes, the same code: checks the script")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="text_fraction_") as tmp:
        rows = [run_task(task, args.quick, Path(tmp)) for task in TEXT_TASKS]
    name = "text_fraction_quick" if args.quick else "text_fraction"
    save(name, {"machine": machine(), "quick": args.quick, "rows": rows}, table(rows, args.quick))


if __name__ == "__main__":
    main()
