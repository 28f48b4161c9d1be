"""Probe: full fine-tuning of the auto suite's text tasks from a fitted head (bench/results/text_fitted_head_probe.md).

Per (task, seed) of bench/auto_suite.py, in one process through the API: the linear probe (its head fitted),
then `full` from that head for 85% of the steps auto planned for that seed (read from the suite's results),
body at auto's rate, head at HEAD_LR (argv[1]). Prints one JSON line per (task, seed).

    .venv/bin/python bench/text_fitted_head_probe.py 1e-3 bbc,bbc-longtail,tweets,tweets-positive 0,1,2
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import auto_suite as suite  # noqa: E402
from common import RESULTS  # noqa: E402

import headstart as hs  # noqa: E402


def main() -> None:
    head_lr = float(sys.argv[1]) if len(sys.argv) > 1 else 1e-3
    tasks = sys.argv[2].split(",") if len(sys.argv) > 2 else ["bbc", "bbc-longtail", "tweets", "tweets-positive"]
    seeds = [int(x) for x in sys.argv[3].split(",")] if len(sys.argv) > 3 else [0, 1, 2]
    rows = {(r["task"], r["seed"]): r for r in json.loads((RESULTS / "auto_suite.json").read_text())["rows"]}
    tmp = tempfile.mkdtemp(prefix="fitted-head-")
    for seed in seeds:
        for task in tasks:
            s = suite.settings(task, False)
            parts = suite.build_parts(task, s, seed)
            classes = parts["classes"]

            def names(ys):
                return [classes[i] for i in ys]

            data = hs.data.from_texts(list(parts["train"][0]), names(parts["train"][1]), classes, val_fraction=0.0,
                                      texts_val=list(parts["val"][0]), labels_val=names(parts["val"][1]),
                                      texts_test=list(parts["test"][0]), labels_test=names(parts["test"][1]))
            metric = {"metric": s["metric"], **({"positive_class": s["positive"]} if "positive" in s else {})}
            auto = rows[(task, seed)]["auto"]
            planned = auto["auto"]["train"]
            model = hs.create_model("hf:sentence-transformers/all-MiniLM-L6-v2", weights="package:all-minilm-l6-v2",
                                    max_length=s["max_length"])
            start = time.perf_counter()
            probe = hs.fit(model, data, "linear-probe", out=f"{tmp}/{task}-{seed}-lp", seed=seed, progress=False,
                           **metric)
            probe_s = time.perf_counter() - start
            steps = max(1, round(0.85 * planned["max_steps"]))
            start = time.perf_counter()
            tuned = hs.fit(model, data, "full", out=f"{tmp}/{task}-{seed}-ft", seed=seed, progress=False,
                           max_steps=steps, epochs=planned["epochs"], lr=planned["lr"], head_lr=head_lr, **metric)
            key = f"test/{s['metric']}"
            print(json.dumps({"task": task, "seed": seed, "head_lr": head_lr, "lp": round(probe.test_metrics[key], 4),
                              "lpft": round(tuned.test_metrics[key], 4), "auto": round(auto["metric"], 4),
                              "lp_s": round(probe_s, 1), "ft_s": round(time.perf_counter() - start, 1),
                              "steps": steps, "auto_steps": planned["max_steps"]}), flush=True)


if __name__ == "__main__":
    main()
