"""The linear probe's head fitted (strategy.solver fit, the default) against trained by epochs (solver sgd).

On the auto suite's ten tasks (bench/auto_suite.py builds the same data from the same seeds), each run a
user's `headstart fit --strategy linear-probe` at its defaults (the regression task through the API, as the
suite runs it), timed around the process, one run at a time. Writes bench/results/linear_probe_fit.{json,md}.

    .venv/bin/python bench/linear_probe_fit.py                 # ten tasks, seed 0, about 8 min on 2 idle cores
    .venv/bin/python bench/linear_probe_fit.py --seeds 0,1,2
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import auto_suite as suite  # noqa: E402
from common import machine, save  # noqa: E402

SOLVERS = ("fit", "sgd")


def run_probe(s: dict, paths: dict, solver: str, work: Path, seed: int) -> dict:
    """One linear probe in a fresh process with a cold feature cache; its wall time, epochs and test metrics."""
    run, cache = work / f"run-{solver}", work / f"cache-{solver}"
    if s["kind"] == "regression":
        cmd = [sys.executable, suite.__file__, "--worker", "--npz", paths["npz"], "--strategy", "linear-probe",
               "--out", str(run), "--cache-dir", str(cache), "--image-size", str(s["image_size"]),
               "--budget", str(s["budget"]), "--seed", str(seed), "--solver", solver]
    else:
        cmd = [suite.HEADSTART, "fit", "--data", paths["train"], "--set", f"data.val_path={paths['val']}",
               "--set", f"data.test_path={paths['test']}", "--strategy", "linear-probe", "--out", str(run),
               "--set", f"strategy.solver={solver}", "--set", f"train.cache_dir={cache}",
               "--set", f"train.seed={seed}",
               "--set", (f"model.image_size={s['image_size']}" if s["kind"] == "image"
                         else f"model.max_length={s['max_length']}"),
               "--metric", s["metric"]] + (["--positive-class", s["positive"]] if "positive" in s else [])
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        return {"solver": solver, "error": (proc.stdout + proc.stderr)[-2000:]}
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {"solver": solver, "wall_s": round(wall, 1), "epochs": len(rows),
            "train_s": round(sum(r.get("train_seconds", 0.0) for r in rows), 3),
            "head_l2": rows[-1].get("head_l2"),
            "test": json.loads((run / "test_metrics.json").read_text())}


def table(rows: list[dict]) -> str:
    lines = ["| task | metric | seeds | fitted | by epochs (5, defaults) | fitted - epochs | wall: fitted / epochs |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for task in dict.fromkeys(r["task"] for r in rows):
        mine = [r for r in rows if r["task"] == task]
        fit = [r["fit"]["metric"] for r in mine]
        sgd = [r["sgd"]["metric"] for r in mine]
        diff = [a - b for a, b in zip(fit, sgd)]
        se = float(np.std(diff, ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else None
        wall = (f"{np.mean([r['fit']['wall_s'] for r in mine]):.1f} s / "
                f"{np.mean([r['sgd']['wall_s'] for r in mine]):.1f} s")
        lines.append(f"| {task} | {mine[0]['metric']} | {len(mine)} | {np.mean(fit):.3f} | {np.mean(sgd):.3f} | "
                     f"{100 * np.mean(diff):+.1f}" + (f" ± {100 * se:.1f}" if se is not None else "") +
                     f" | {wall} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default=",".join(suite.TASKS))
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--quick", action="store_true", help="toy sizes: checks the script")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="lp-fit-") as tmp:
        for seed in (int(v) for v in args.seeds.split(",")):
            for task in args.tasks.split(","):
                s = {**suite.settings(task, args.quick), "quick": args.quick}
                work = Path(tmp) / f"{task}-{seed}"
                work.mkdir(parents=True)
                parts = suite.build_parts(task, s, seed)
                paths = suite.write_parts(parts, s["kind"], work)
                row = {"task": task, "seed": seed, "metric": s["metric"], "train_items": len(parts["train"][1])}
                for solver in SOLVERS:
                    rec = run_probe(s, paths, solver, work, seed)
                    if "error" in rec:
                        raise SystemExit(f"{task} seed {seed} solver {solver} failed:\n{rec['error']}")
                    rec.update(suite.score(rec.pop("test"), s, parts["test"][1]))
                    row[solver] = rec
                print(json.dumps(row), flush=True)
                rows.append(row)
    name = "linear_probe_fit" + ("_quick" if args.quick else "")
    save(name, {"machine": machine(), "rows": rows},
         "# The linear probe's head: fitted against trained by epochs\n\n"
         f"Written by `bench/linear_probe_fit.py` on {time.strftime('%Y-%m-%d %H:%M')}; each run alone.\n\n"
         + table(rows) + "\n")


if __name__ == "__main__":
    main()
