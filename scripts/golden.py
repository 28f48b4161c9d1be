"""Golden outputs of short fixed-seed runs, to prove a refactoring changes no behaviour.

    python scripts/golden.py record golden.json     # before moving code
    python scripts/golden.py check golden.json      # after each step: bit-identical or a listed difference

Every registered strategy on a tiny CNN (features cached and not), a resumed run, a text run on a tiny BERT and
an `auto` decision: metrics rows (timings dropped), test metrics and a checksum of the final weights and of the
best bundle. One thread, so the float sums run in one order.
"""
from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import headstart as hs  # noqa: E402
from conftest import separable_images  # noqa: E402
from headstart.data import from_arrays  # noqa: E402

FAST = dict(progress=False, batch_size=8, eval_batch_size=32, precision="fp32", lr=0.01)
OPTIONS = {"gradual": dict(unfreeze_every=1), "lp-ft": dict(lp_epochs=1), "partial": dict(trainable="last:1"),
           "discriminative": dict(group_lrs=[1e-3, 3e-3, 5e-3, 1e-2])}


def checksum(tensors: dict) -> str:
    """Shapes and values in name order; names themselves left out, so a renamed module keeps its checksum."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(str(tuple(tensors[name].shape)).encode())
        h.update(tensors[name].detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def summary(run, model) -> dict:
    from safetensors.torch import load_file

    rows = [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in run.history]
    best = load_file(str(Path(run.run_dir) / "best" / "model.safetensors"))
    return {"rows": rows, "test": run.test_metrics, "weights": checksum(model.state_dict()),
            "best": checksum(best)}


def image_data():
    x, y = separable_images()
    xt, yt = separable_images(8, seed=1)
    return from_arrays(x, y, classes=["a", "b", "c"], val_fraction=0.25, seed=0, x_test=xt, y_test=yt, name="tiny")


def toy(dropout=0.0):
    torch.manual_seed(0)
    return hs.create_model("toy:cnn", 3, dropout=dropout)


def cases(tmp: Path):
    data = image_data()
    for name in sorted(hs.strategies.STRATEGIES.list()):
        if name == "auto":
            continue
        for cache in ("off", "on"):
            torch.manual_seed(0)
            model = toy()
            run = hs.fit(model, data, name, out=tmp / f"{name}-{cache}", epochs=3, cache=cache,
                         cache_dir=str(tmp / "cache"), **OPTIONS.get(name, {}), **FAST)
            yield f"{name}/cache={cache}", summary(run, model)

    # Resumed: three epochs killed after the first, then resumed; must equal the uninterrupted run.
    from headstart.run import loop, trainer

    real = loop.train_epoch

    def crash(*a, **kw):
        if kw["epoch"] == 1:
            raise KeyboardInterrupt
        return real(*a, **kw)

    args = dict(epochs=3, warmup_epochs=0.5, **FAST)
    trainer.train_epoch = crash
    try:
        hs.fit(toy(0.3), data, "full", out=tmp / "resumed", **args)
    except KeyboardInterrupt:
        pass
    finally:
        trainer.train_epoch = real
    model = toy(0.3)
    yield "full/resumed", summary(hs.fit(model, data, "full", out=tmp / "resumed", resume=True, **args), model)

    # Text: a tiny random BERT, fine-tuned whole and probed.
    from test_text import sentiment_rows, write_csv, write_tiny_bert

    bert = write_tiny_bert(tmp / "bert")
    text = hs.data.text_file(write_csv(tmp / "reviews.csv", sentiment_rows(80)), "body", "topic", val_fraction=0.25,
                             test_fraction=0.2)
    for name in ("full", "linear-probe", "lora"):
        torch.manual_seed(0)
        model = hs.create_model(f"hf:{bert}", max_length=16)
        run = hs.fit(model, text, name, out=tmp / f"text-{name}", epochs=2, **FAST)
        yield f"text/{name}", summary(run, model)

    # auto: its decision (no race without a budget; with one, a race on the tiny data) and the run it makes.
    from headstart.plan.auto import choose

    for budget in (None, "1h"):
        decision = choose(toy(), data, budget, 2, seed=0, fit=hs.fit).to_dict()
        yield f"auto/decision budget={budget}", strip_times(decision)
    model = toy()
    run = hs.fit(model, data, "auto", out=tmp / "auto", epochs=2, **{k: v for k, v in FAST.items() if k != "lr"})
    yield "auto/fit", summary(run, model)


def strip_times(obj):
    """Drop measured durations, which differ run to run (auto's measured speeds and estimates end in _s)."""
    if isinstance(obj, dict):
        return {k: strip_times(v) for k, v in obj.items()
                if "second" not in k and "time" not in k and not k.endswith("_s")}
    if isinstance(obj, list):
        return [strip_times(v) for v in obj]
    return obj


def main() -> None:
    mode, path = sys.argv[1], Path(sys.argv[2])
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        got = dict(cases(Path(tmp)))
    if mode == "record":
        path.write_text(json.dumps(got, indent=1, sort_keys=True))
        print(f"recorded {len(got)} cases in {path}")
        return
    want = json.loads(path.read_text())
    got = json.loads(json.dumps(got))  # the same float round trip as the recorded file
    added = set()
    for k, case in got.items():  # metric columns a change added are listed, and the rest compared
        for row, old in zip(case.get("rows", []) if isinstance(case, dict) else [], (want.get(k) or {}).get("rows", [])):
            added |= {c for c in set(row) - set(old)}
            for c in set(row) - set(old):
                del row[c]
    if added:
        print(f"new metric columns (not compared): {sorted(added)}")
    bad = [k for k in sorted(set(want) | set(got)) if want.get(k) != got.get(k)]
    for k in bad:
        print(f"DIFFERS {k}:\n  was {json.dumps(want.get(k))[:600]}\n  now {json.dumps(got.get(k))[:600]}")
    print(f"{len(want) - len(bad)} of {len(want)} cases identical")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
