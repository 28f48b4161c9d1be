"""Time as a promise: train.time_limit, auto's budget from measured throughput, and their errors.

The bounds asserted here are the issue's (a run ends within its limit plus 10 s under a minute); how close
to the limit runs end on real tasks is measured in bench/auto_suite.py, not here.
"""
from __future__ import annotations

import json
import time

import pytest

import headstart as hs
from headstart.config import validate_config
from headstart.errors import ConfigError
from headstart.plan.auto import estimates, measure
from headstart.run import TrainSettings
from headstart.run.deadline import Deadline, parse_duration
from headstart.run.trainer import prepare_head


@pytest.fixture(autouse=True)
def _no_report():
    """Budgets charge the report (conftest turns it off elsewhere): these runs write theirs."""


def many_images(per_class: int = 40, size: int = 16):
    from conftest import separable_images

    from headstart.data import from_arrays

    x, y = separable_images(per_class, size=size)
    xt, yt = separable_images(max(per_class // 4, 2), size=size, seed=1)
    return from_arrays(x, y, classes=["a", "b", "c"], val_fraction=0.25, seed=0, x_test=xt, y_test=yt, name="many")


def test_durations_read_like_the_budget():
    assert parse_duration("90s") == 90 and parse_duration("2m") == 120 and parse_duration(7) == 7.0
    assert validate_config({"train": {"time_limit": "1.5h"}}).train.time_limit == 5400
    for bad in ("soon", "-5", 0):
        with pytest.raises(ConfigError, match="time_limit"):
            validate_config({"train": {"time_limit": bad}})


def test_a_time_limit_stops_training_early_and_keeps_a_tested_bundle(tmp_path):
    data = many_images()
    start = time.time()
    run = hs.fit(hs.create_model("toy:cnn", 3), data, "full", epochs=10_000, batch_size=8, progress=False,
                 out=tmp_path / "r", time_limit=3)
    elapsed = time.time() - start
    assert elapsed < 3 + 10  # the bound under a minute; typically within a few tenths of a second
    assert 1 <= len(run.history) < 10_000 and run.history[-1].get("stopped") == "time limit"
    assert "time limit" in run.extra["time_limit"]
    assert run.test_metrics is not None and (tmp_path / "r" / "best").is_dir()
    # A resume gets time again: it continues from the last checkpoint instead of stopping where it stopped.
    again = hs.fit(hs.create_model("toy:cnn", 3), data, "full", epochs=10_000, batch_size=8, progress=False,
                   out=tmp_path / "r", time_limit=2, resume=True)
    assert len(again.history) > len(run.history)
    assert again.history[:len(run.history) - 1] == run.history[:-1]


def test_the_deadline_keeps_room_for_what_follows_a_step():
    d = Deadline(time.time() + 10, n_val=100, n_test=200, batch_size=10)
    assert d.room_for_step(0.1)  # validation guessed from the step: a third of 0.1 s per 10 samples, 0.33 s
    d.val_s = 4.0  # measured: 4 s of validation, so the test pass costs 8 s
    assert not d.room_for_step(0.1)


def test_a_budget_smaller_than_one_measured_step_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="too little to train anything.*samples/s"):
        hs.fit(hs.create_model("toy:cnn", 3), many_images(), "auto", budget=0.05, progress=False,
               out=tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_auto_keeps_its_budget_and_records_the_measured_speed(tmp_path):
    data = many_images()
    start = time.time()
    hs.fit(hs.create_model("toy:cnn", 3), data, "auto", budget=8, epochs=10_000, batch_size=8, progress=False,
           out=tmp_path / "r")
    assert time.time() - start < 8 + 10
    saved = json.loads((tmp_path / "r" / "auto.json").read_text())
    assert saved["signals"]["step_s"]["full"] > 0 and saved["estimates_s"]["full"] > 0
    assert saved["train"].get("epochs", 1) < 10_000  # the epochs were fitted to the budget


@pytest.mark.parametrize("strategy, options", [("linear-probe", {}), ("partial", {"trainable": "last:2"}),
                                               ("lp-ft", {"lp_epochs": 1}), ("full", {})])
def test_each_strategys_estimate_is_within_30_percent_of_its_measured_time(strategy, options, tmp_path):
    # Big enough that computing, not sub-second fixed costs, dominates each fit (about 1-3 s each here).
    data = many_images(per_class=400, size=112)
    settings = TrainSettings(batch_size=16)
    model = hs.create_model("toy:cnn", 3)
    prepare_head(model, data)
    # Trained on plain images, as auto trains them: partial's frozen layers are then cached, as measure() times.
    hs.fit(hs.create_model("toy:cnn", 3), data, strategy, epochs=2, batch_size=16, progress=False, augment=False,
           out=tmp_path / "warm", cache_dir=str(tmp_path / "warm-cache"), **options)  # one-time costs: imports, kernels
    # Three rounds of measuring then running, each from a fresh cache (the run reuses the probe's features
    # that measure() cached, as auto's own run does); the medians are compared, so that a noisy neighbour on
    # the cores during one round moves neither side much.
    predictions, times = [], []
    for round_ in range(3):
        cache = str(tmp_path / f"cache{round_}")
        predictions.append(estimates(measure(model, data, cache_dir=cache, timing=settings), 4)[strategy])
        start = time.time()
        hs.fit(hs.create_model("toy:cnn", 3), data, strategy, epochs=4, batch_size=16, progress=False,
               augment=False, out=tmp_path / f"r{round_}", cache_dir=cache, **options)
        times.append(time.time() - start)
    predicted, measured = sorted(predictions)[1], sorted(times)[1]
    assert abs(predicted - measured) <= max(0.3 * measured, 0.25), (strategy, predicted, measured)


def test_partial_is_timed_on_cached_frozen_layers_where_the_run_caches_them():
    from headstart.plan.throughput import measure_throughput

    data, model = many_images(per_class=8), hs.create_model("toy:cnn", 3)
    prepare_head(model, data)
    kinds = {"partial": ("partial", {"trainable": "last:1"}), "full": ("full", {})}
    plain = measure_throughput(model, data.train, TrainSettings(batch_size=8), kinds, augment=False)
    assert plain.cached == ("partial",)  # full trains everything: nothing to cache
    # Augmented pictures, or the cache turned off, go through the whole model every step, as the run does.
    assert measure_throughput(model, data.train, TrainSettings(batch_size=8), kinds, augment=True).cached == ()
    off = TrainSettings(batch_size=8, cache="off")
    assert measure_throughput(model, data.train, off, kinds, augment=False).cached == ()


def test_evaluation_is_timed_apart_only_where_the_extraction_copy_folds_something(monkeypatch):
    import headstart.plan.throughput as throughput

    calls = []
    timed = throughput.time_forward
    monkeypatch.setattr(throughput, "time_forward", lambda *a, **k: calls.append(k["folded"]) or timed(*a, **k))
    data = many_images(per_class=8)
    for source, passes in (("toy:cnn", [True, False]), ("toy:mlp", [True])):  # BatchNorm to fold; none
        calls.clear()
        model = hs.create_model(source, 3)
        prepare_head(model, data)
        speed = throughput.measure_throughput(model, data.train, TrainSettings(batch_size=8), {})
        assert calls == passes and (speed.eval_s == speed.extract_s) == (len(passes) == 1)


def test_a_stop_between_epochs_is_marked_on_the_last_row(tmp_path, monkeypatch):
    import headstart.run.trainer as trainer

    # No room for another epoch after the first (as when the limit falls on an epoch's end): the row of the
    # epoch that ended says so, not a row that never comes.
    monkeypatch.setattr(trainer, "worth_another_epoch", lambda deadline, row: False)
    run = hs.fit(hs.create_model("toy:cnn", 3), many_images(), "full", epochs=3, batch_size=8, progress=False,
                 out=tmp_path / "r", time_limit=600)
    assert len(run.history) == 1 and run.history[-1]["stopped"] == "time limit"
    assert "after epoch 1 of 3" in run.extra["time_limit"]


def test_before_the_first_validation_the_deadline_uses_the_measured_evaluation_speed():
    # The numbers of a 45 s BBC run: a first step of 0.88 s for 16 texts, evaluation measured at 0.011 s a text.
    guessed = Deadline(time.time() + 30, n_val=40, n_test=444, batch_size=16, finish_s=4.0)
    measured = Deadline(time.time() + 30, n_val=40, n_test=444, batch_size=16, finish_s=4.0,
                        eval_s=0.011)
    guessed.step_s = measured.step_s = 0.88
    assert measured.reserve() == pytest.approx(0.011 * 40 + 0.011 * 444 + 4.0)  # one test pass: the report reuses it
    assert guessed.reserve() == pytest.approx(0.88 / 16 / 3 * (40 + 444) + 4.0)  # a third of a step a sample
    assert measured.room_for_step(0.88)


def test_timing_repeats_cheap_calls_only_until_their_wall_time_is_spent(monkeypatch):
    import headstart.plan.throughput as throughput

    calls = []

    def per_sample(i):  # a call of 0.1 s for a batch of 20: 0.005 s a sample
        calls.append(i)
        time.sleep(0.1)
        return 0.005

    monkeypatch.setattr(throughput, "TIMED_S", 0.25)
    assert throughput.mean_seconds(per_sample, least=1) == pytest.approx(0.005)
    assert len(calls) == 3  # 0.3 s of wall time, not 20 calls whose per-sample seconds add up to 0.1
    calls.clear()
    throughput.mean_seconds(lambda i: calls.append(i) or 1e-6, least=3)
    assert len(calls) == throughput.MOST_REPEATS  # cheap calls repeat, up to the cap
