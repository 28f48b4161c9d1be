"""Reliability: SIGKILL a training run at seeded points and resume it; fuzz the config and the CLI.

    python bench/reliability.py                # every kill point and 2,000 fuzz cases per target
    python bench/reliability.py --quick        # a few of each

Kill points: a run is started in a child process that kills itself (SIGKILL, no clean-up) at the n-th time
it reaches a point: before an optimizer step, half-way through writing a checkpoint, the best bundle or a
feature-cache file, between the two renames that swap a new best bundle in, during feature extraction, when
the trainable set changes (gradual unfreezing), before a metrics row is appended, before an evaluation. It
is then resumed without a kill. The resumed run must end equal to an uninterrupted one (final weights,
every metrics row, the test metrics) and leave no temporary file behind.

Fuzzing (hypothesis): random config mappings and `--set` overrides must give a valid config or a
ConfigError, and random `headstart fit` command lines a one-line error and no traceback.

Results: bench/results/reliability.md and .json.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SCENARIOS = {  # hs.fit options of the run that is killed; both resume from epoch checkpoints
    "gradual-cached": dict(strategy="gradual", epochs=4, cache="on", unfreeze_every=1),
    "full-dropout": dict(strategy="full", epochs=3, dropout=0.3),
}
# point -> the occurrences (1-based) to kill at. Every scenario reaches these ...
KILL_POINTS = {"step": (1, 7, 12), "checkpoint": (1, 2), "bundle": (1, 2), "swap": (1,), "metrics": (1, 3),
               "eval": (2, 4)}
# ... and the cached, gradually unfrozen one these too.
CACHED_POINTS = {"cache": (1,), "extract": (1, 2), "unfreeze": (1, 2)}
QUICK_POINTS = {"step": (7,), "checkpoint": (2,), "swap": (1,), "unfreeze": (1,)}


# ------------------------------------------------------------------------------------------------ the child


def install_kill(point: str, nth: int) -> None:
    """Make this process SIGKILL itself the `nth` time it reaches `point` (monkeypatches, nothing else)."""
    import safetensors.torch
    import torch

    import headstart.features
    import headstart.run.folder
    import headstart.run.trainer

    seen = {"n": 0}

    def reached() -> bool:
        seen["n"] += 1
        return seen["n"] == nth

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def half_written(real, is_target):  # writes half the bytes of the file, then dies
        def write(obj, path, *args, **kwargs):
            if is_target(str(path)) and reached():
                real(obj, path, *args, **kwargs)
                data = Path(path).read_bytes()
                Path(path).write_bytes(data[: len(data) // 2])
                die()
            return real(obj, path, *args, **kwargs)
        return write

    def before(real, when=lambda *a, **k: True):
        def call(*args, **kwargs):
            if when(*args, **kwargs) and reached():
                die()
            return real(*args, **kwargs)
        return call

    if point == "step":
        for cls in (torch.optim.AdamW, torch.optim.SGD):
            cls.step = before(cls.step)
    elif point == "checkpoint":
        torch.save = half_written(torch.save, lambda path: "checkpoints" in path)
    elif point == "bundle":
        safetensors.torch.save_file = half_written(safetensors.torch.save_file, lambda path: "best" in path)
    elif point == "cache":
        safetensors.torch.save_file = half_written(safetensors.torch.save_file, lambda path: "best" not in path)
    elif point == "swap":  # between `best` -> `best.old` and `best.new` -> `best`
        os.replace = before(os.replace, lambda src, dst: str(src).endswith("best.new"))
    elif point == "extract":
        headstart.features.run_over_split = before(headstart.features.run_over_split)
    elif point == "unfreeze":  # the trainable set has changed; the optimizer groups are being rebuilt
        headstart.run.trainer.regroup = before(headstart.run.trainer.regroup)
    elif point == "metrics":
        folder = headstart.run.folder.RunFolder
        folder.append_metrics = before(folder.append_metrics)
    elif point == "eval":
        headstart.run.trainer.evaluate_split = before(headstart.run.trainer.evaluate_split)
    elif point != "none":
        raise SystemExit(f"unknown kill point {point!r}; choose one of {', '.join(KILL_POINTS)}")


def child(scenario: str, out: str, cache_dir: str, kill: str, resume: bool) -> None:
    """One run of a scenario (killed at `kill` = POINT:N, or 'none:0'); prints its outcome as JSON."""
    import torch

    sys.path.insert(0, str(HERE.parent / "tests"))
    from conftest import separable_images

    import headstart as hs
    from headstart.data import from_arrays

    torch.set_num_threads(1)
    point, nth = kill.split(":")
    install_kill(point, int(nth))
    x, y = separable_images(12)
    xt, yt = separable_images(4, seed=1)
    data = from_arrays(x, y, classes=["a", "b", "c"], val_fraction=0.25, seed=0, x_test=xt, y_test=yt, name="kill")
    options = dict(SCENARIOS[scenario])
    strategy, dropout = options.pop("strategy"), options.pop("dropout", 0.0)
    torch.manual_seed(0)  # the toy backbone's random weights; the head comes from fit's seed
    model = hs.create_model("toy:cnn", dropout=dropout)
    run = hs.fit(model, data, strategy, out=out, resume=resume, lr=0.01, warmup_epochs=0.5, batch_size=8,
                 eval_batch_size=16, precision="fp32", progress=False, cache_dir=cache_dir, seed=3, **options)
    state = model.state_dict()
    digest = hashlib.sha256(b"".join(state[k].detach().float().contiguous().numpy().tobytes() for k in sorted(state)))
    print(json.dumps({"weights": digest.hexdigest()[:16], "test": run.test_metrics,
                      "rows": [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in run.history]}))


# ------------------------------------------------------------------------------------------------ the parent


def run_child(scenario: str, out: Path, cache_dir: Path, kill: str = "none:0", resume: bool = False):
    cmd = [sys.executable, __file__, "child", scenario, str(out), str(cache_dir), kill] + (["--resume"] if resume else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    outcome = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else None
    return proc.returncode, outcome, proc.stderr[-2000:]


def leftovers(out: Path) -> list[str]:
    """Temporary files and half-swapped bundles a killed run might leave."""
    found = [str(p.relative_to(out)) for p in out.glob("**/.*.tmp")]
    return found + [name for name in ("best.new", "best.old") if (out / name).exists()]


def kill_and_resume(scenario: str, point: str, nth: int, reference: dict, root: Path) -> dict:
    """Kill a run at (point, nth), resume it, and compare with the uninterrupted reference."""
    out, cache = root / f"{scenario}-{point}-{nth}", root / f"cache-{scenario}-{point}-{nth}"
    code, _, err = run_child(scenario, out, cache, f"{point}:{nth}")
    killed = code == -signal.SIGKILL
    code2, resumed, err2 = run_child(scenario, out, cache, resume=True)
    row = {"scenario": scenario, "point": point, "nth": nth, "killed": killed, "resumed_ok": code2 == 0,
           "equal": resumed == reference, "leftovers": leftovers(out)}
    if code2 != 0:
        row["error"] = err2.strip().splitlines()[-1] if err2.strip() else f"exit {code2}"
    elif resumed != reference:
        row["error"] = "resumed run differs: " + ", ".join(k for k in reference if reference[k] != resumed.get(k))
    if not killed and code != 0:
        row["error"] = "the killed run failed on its own: " + err.strip().splitlines()[-1]
    return row


def kill_matrix(points: dict[str, tuple[int, ...]], root: Path) -> list[dict]:
    rows = []
    for scenario in SCENARIOS:
        code, reference, err = run_child(scenario, root / f"{scenario}-reference", root / f"cache-{scenario}-ref")
        assert code == 0, err
        cached = SCENARIOS[scenario].get("cache") == "on"
        for point, occurrences in points.items():
            if point in CACHED_POINTS and not cached:
                continue
            for nth in occurrences:
                rows.append(kill_and_resume(scenario, point, nth, reference, root))
                print(json.dumps(rows[-1]), flush=True)
    return rows


# ------------------------------------------------------------------------------------------------ fuzzing


def fuzz(examples: int) -> dict:
    """Run the properties of tests/test_fuzz.py with `examples` cases each; count cases and tracebacks."""
    sys.path.insert(0, str(HERE.parent / "tests"))
    from hypothesis import given, settings

    import test_fuzz

    def counting(check, seen):
        def counted(value):
            seen["cases"] += 1
            check(value)
        return counted

    counts = {}
    for name, (inputs, check) in test_fuzz.PROPERTIES.items():
        seen = {"cases": 0, "tracebacks": 0}
        try:
            settings(max_examples=examples, deadline=None, database=None)(given(inputs)(counting(check, seen)))()
        except Exception as e:  # hypothesis re-raises the smallest failing case: a traceback a user would see
            seen["tracebacks"] += 1
            seen["failure"] = f"{type(e).__name__}: {str(e)[:300]}"
        counts[name] = seen
    return counts


# ------------------------------------------------------------------------------------------------ report


def report(rows: list[dict], fuzzed: dict, seconds: float, quick: bool) -> None:
    RESULTS.mkdir(exist_ok=True)
    name = "reliability_quick" if quick else "reliability"
    (RESULTS / f"{name}.json").write_text(json.dumps({"kills": rows, "fuzz": fuzzed, "seconds": seconds}, indent=1))
    survived = sum(r["killed"] and r["resumed_ok"] and r["equal"] and not r["leftovers"] for r in rows)
    lines = [f"# Reliability ({time.strftime('%Y-%m-%d')}, {seconds / 60:.1f} min{', quick' if quick else ''})", "",
             "Produced by `python bench/reliability.py`. A training run (a toy CNN on separable images) is killed "
             "with SIGKILL at a seeded point, then resumed; the resumed run must equal an uninterrupted one "
             "(final weights, every metrics row, test metrics) and leave no temporary files.", "",
             f"**Kill points survived: {survived} of {len(rows)}.** Results lost: "
             f"{sum(not (r['resumed_ok'] and r['equal']) for r in rows)}. Orphan files: "
             f"{sum(bool(r['leftovers']) for r in rows)}.", "",
             "| scenario | kill point | occurrence | killed | resumed | equal to uninterrupted | leftovers |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['scenario']} | {r['point']} | {r['nth']} | {r['killed']} | {r['resumed_ok']} | {r['equal']} | "
              f"{', '.join(r['leftovers']) or '-'} |" for r in rows]
    lines += ["", "## Fuzzing (hypothesis)", "", "| property | cases | tracebacks |", "|---|---|---|"]
    lines += [f"| {k} | {v['cases']} | {v['tracebacks']} |" for k, v in fuzzed.items()]
    failures = [f"- {k}: {v['failure']}" for k, v in fuzzed.items() if "failure" in v]
    lines += ["", *failures] if failures else []
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS / (name + '.md')}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        scenario, out, cache_dir, kill = sys.argv[2:6]
        child(scenario, out, cache_dir, kill, "--resume" in sys.argv)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few kill points and 50 fuzz cases per property")
    args = parser.parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        rows = kill_matrix(QUICK_POINTS if args.quick else {**KILL_POINTS, **CACHED_POINTS}, Path(tmp))
    fuzzed = fuzz(50 if args.quick else 2000)
    report(rows, fuzzed, time.perf_counter() - start, args.quick)


if __name__ == "__main__":
    main()
