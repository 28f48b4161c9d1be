"""strategy: auto — the decision rules, determinism, the run-folder record and bad input."""
from __future__ import annotations

import json

import pytest

import headstart as hs
from headstart.errors import ConfigError
from headstart.plan.auto import (Signals, choose, decide, estimates, learning_rates, parse_budget, race, refit_epochs,
                                 run_steps)


def signals(**kw) -> Signals:
    # Seconds per sample of the order measured for EfficientNet-Lite0 at 224 px on 2 cores.
    base = dict(n_train=5000, n_val=500, num_classes=10, per_class=500, params_m=3.4, modality="image",
                probe_accuracy=0.85, n_test=500, extract_s=0.005, eval_s=0.006,
                step_s={"full": 0.06, "partial": 0.03})
    return Signals(**{**base, **kw})


def test_parse_budget():
    assert parse_budget("90s") == 90 and parse_budget("10m") == 600 and parse_budget("1.5h") == 5400
    assert parse_budget(None) is None and parse_budget(12) == 12
    with pytest.raises(ConfigError, match="10m"):
        parse_budget("ten minutes")


@pytest.mark.parametrize("kw, expected", [
    (dict(per_class=5), "partial"),                                       # few-shot: the last groups only
    (dict(probe_accuracy=0.99), "full"),                                  # separable features: the budget decides
    (dict(per_class=50, n_train=500), "partial"),                         # images at 10-120 per class
    (dict(per_class=50, n_train=500, modality="text", params_m=22.6), "full"),  # ... text: the BERT recipe
    (dict(), "full"),                                                     # plenty of data
    (dict(probe_accuracy=0.4, per_class=1000), "full"),                   # large shift, plenty of data
    (dict(modality="text", params_m=22.6, per_class=50), "full"),         # BERT-family encoders: the BERT recipe
    (dict(modality="text", params_m=22.6, per_class=5), "full"),          # ... already at 5 per class
    (dict(modality="text", params_m=22.6, per_class=2), "partial"),       # below that, the few-shot rule
    (dict(modality="text", params_m=110), "lora"),                        # big encoder
])
def test_rules_without_a_budget(kw, expected):
    assert decide(signals(**kw), None).strategy == expected


def test_image_partial_trains_two_groups_and_few_shot_one():
    assert decide(signals(per_class=50, n_train=500), None).options == {"trainable": "last:2"}
    assert decide(signals(per_class=5, n_train=50), None).options == {"trainable": "last:1"}
    assert decide(signals(per_class=2, modality="text", params_m=22.6), None).options == {"trainable": "last:1"}


def test_a_cached_partial_pays_one_pass_through_the_frozen_layers_then_cheap_epochs():
    plain, cached = signals(per_class=50, n_train=500), signals(per_class=50, n_train=500, cached_steps=("partial",))
    # the same timed step: cached, the epochs skip validation through the whole model, and one prefix pass is paid
    one, five = estimates(cached, 1)["partial"], estimates(cached, 5)["partial"]
    per_epoch = 500 * 0.03 + 500 * 0.03 / 3
    assert five - one == pytest.approx(4 * per_epoch)
    assert estimates(plain, 5)["partial"] - estimates(plain, 1)["partial"] == pytest.approx(4 * (500 * 0.03 + 500 * 0.006))
    assert estimates(cached, 1)["full"] == estimates(plain, 1)["full"]  # only the kinds timed on cached inputs


def test_budget_moves_the_choice_down_and_too_small_is_an_error():
    s = signals()
    est = estimates(s, 5)
    assert est["linear-probe"] < est["partial"] < est["full"]
    assert decide(s, est["full"] * 1.01).strategy == "full"
    assert decide(s, est["partial"] * 1.01).strategy == "partial"
    tight = decide(s, est["linear-probe"] * 1.05)
    assert tight.strategy == "linear-probe" and any("budget" in r for r in tight.reasons)
    with pytest.raises(ConfigError, match="too little to train anything"):
        decide(s, est["linear-probe"] * 0.5)


def test_text_fine_tunes_whole_for_the_steps_that_fit_from_one_and_a_half_epochs_and_the_last_group_below():
    s = signals(modality="text", params_m=22.6, per_class=50, n_train=500)  # 16 steps an epoch (batch 32)
    budget = estimates(s, 2)["full"] * 1.01
    two = decide(s, budget)
    steps = run_steps(500, None, two.train["epochs"], two.train.get("max_steps"))
    assert two.strategy == "full" and 32 <= steps < 36
    # the most steps that fit: one more would not
    assert estimates(s, steps / 16)["full"] <= budget < estimates(s, (steps + 1) / 16)["full"]
    # a short run: the head at the probe's rate (at the recipe's 1e-3 a 16-step run predicted one class)
    assert two.train["lr"] == 5e-5 and two.train["head_lr"] == 1e-2
    part = decide(s, estimates(s, 1.5)["full"] * 1.001)  # the last epoch ends after half of its steps
    assert part.strategy == "full" and part.train["epochs"] == 2 and part.train["max_steps"] == 24
    assert any("24 steps (1.5 epochs)" in r for r in part.reasons)
    one = decide(s, estimates(s, 1.4)["full"])  # less than 1.5 epochs of everything: several of the last group
    assert one.strategy == "partial" and one.train["epochs"] >= 2 and "max_steps" not in one.train
    long = signals(modality="text", params_m=22.6, per_class=500, n_train=5000)
    both = decide(long, estimates(long, 2)["full"] * 1.01)
    assert both.strategy == "full" and both.train["epochs"] == 3 and both.train["head_lr"] == 1e-3  # 314+ steps
    assert decide(long, None).train["head_lr"] == 1e-3  # unplanned epochs: the recipe's ~200 steps
    assert "max_steps" not in decide(long, None).train


def test_a_run_planned_in_steps_is_shortened_in_steps_after_the_race_and_images_in_whole_epochs():
    text = signals(modality="text", params_m=22.6, per_class=50, n_train=500)
    d = decide(text, estimates(text, 3)["full"] * 1.01)
    assert d.train["epochs"] == 3
    refit_epochs(d, estimates(text, 2.5)["full"] * 1.001)
    assert d.train["epochs"] == 3 and d.train["max_steps"] == 40  # 2.5 epochs of 16 steps
    image = signals()
    d = decide(image, estimates(image, 5)["full"] * 1.01)
    refit_epochs(d, estimates(image, 3.5)["full"] * 1.001)
    assert d.strategy == "full" and d.train["epochs"] == 3 and "max_steps" not in d.train


def test_an_image_head_keeps_the_strategys_rate_in_a_short_run_and_a_probe_runs_faster():
    few = signals(per_class=20, n_train=200)  # 7 steps an epoch: a short run, which speeds a text head up
    d = decide(few, estimates(few, 5)["partial"] * 1.01)
    assert d.strategy == "partial" and d.train["epochs"] == 5
    assert d.train["lr"] == d.train["head_lr"] == 1e-3  # the grid's partial, 2.2 points above a head at 1e-2
    assert learning_rates("linear-probe", "image") == {"lr": 1e-2, "head_lr": 1e-2}


def test_plenty_of_data_trains_everything_for_the_epochs_the_budget_allows():
    s = signals()
    d = decide(s, estimates(s, 4)["full"] * 1.01, epochs=5)
    assert d.strategy == "full" and d.train["epochs"] == 4
    assert decide(s, estimates(s, 2)["full"] * 1.01, epochs=5).strategy != "full"  # 2 epochs are too few


def test_estimates_credit_the_features_the_shift_measurement_cached():
    measured, unmeasured = estimates(signals(), 5), estimates(signals(probe_accuracy=None), 5)
    for name in ("full", "lora", "partial"):  # they train on raw inputs either way
        assert measured[name] == unmeasured[name]
    for name in ("linear-probe", "lp-ft"):  # the measurement already extracted (and cached) the training features
        assert unmeasured[name] - measured[name] == pytest.approx(5000 * 0.005)


def test_estimates_follow_the_measured_speed_and_need_one():
    s = signals()
    slow = signals(step_s={"full": 0.12, "partial": 0.06})
    assert estimates(slow, 5)["full"] > 1.8 * estimates(s, 5)["full"]
    assert estimates(signals(extract_s=None, eval_s=None, step_s=None), 5) == {}
    with pytest.raises(ValueError, match="measured throughput"):
        decide(signals(extract_s=None, eval_s=None, step_s=None), 100.0)


def test_few_shot_falls_back_to_a_probe_when_partial_does_not_fit():
    s = signals(per_class=5, n_train=50)
    assert decide(s, estimates(s, 5)["linear-probe"] * 1.05).strategy == "linear-probe"


def test_images_between_few_shot_and_plenty_race_partial_against_lora():
    from headstart.plan.auto import RUNNER_UP

    d = decide(signals(per_class=40, n_train=400), None)
    assert d.strategy == "partial" and d.options == {"trainable": "last:2"}
    assert RUNNER_UP["image", "partial"] == "lora"


def test_choose_is_deterministic_and_recorded(tiny_data, tmp_path):
    import torch

    # The same (random-init) toy model both times: its frozen layers decide what partial can reach.
    a = choose(torch.manual_seed(0) and hs.create_model("toy:cnn", 3), tiny_data, "5m", seed=0, fit=hs.fit)
    b = choose(torch.manual_seed(0) and hs.create_model("toy:cnn", 3), tiny_data, "5m", seed=0, fit=hs.fit)
    # Timings vary between runs; under a budget that does not bind, nothing else may.
    timeless = lambda d: {**{k: d[k] for k in ("strategy", "options", "train", "reasons")},  # noqa: E731
                          "race": [{k: v for k, v in r.items() if k != "seconds"} for r in d["race"] or []],
                          "signals": {k: v for k, v in d["signals"].items() if not k.endswith("_s")}}
    assert timeless(a.to_dict()) == timeless(b.to_dict())
    assert a.signals["step_s"]["full"] > 0 and a.estimates_s["full"] > 0
    assert a.signals["probe_accuracy"] is None  # under a budget no extraction pass is spent on the signal
    assert choose(hs.create_model("toy:cnn", 3), tiny_data, None, seed=0).signals["probe_accuracy"] is not None


def test_fit_with_auto_writes_its_decision_and_resumes_it(tiny_data, tmp_path):
    run = hs.fit(hs.create_model("toy:cnn", 3), tiny_data, "auto", budget="10m", epochs=2, batch_size=8,
                 progress=False, out=tmp_path / "r")
    saved = json.loads((tmp_path / "r" / "auto.json").read_text())
    assert saved["strategy"] in hs.strategies.STRATEGIES and saved["reasons"]
    cfg = hs.config.load_config(tmp_path / "r" / "config.yaml")
    assert cfg.strategy.name == saved["strategy"]  # the resolved choice, so a CLI resume needs no decision
    assert run.best_epoch >= 1
    again = hs.fit(hs.create_model("toy:cnn", 3), tiny_data, "auto", budget="10m", epochs=2, batch_size=8,
                   progress=False, out=tmp_path / "r", resume=True)
    assert [h["val/accuracy"] for h in again.history] == [h["val/accuracy"] for h in run.history]


def test_auto_rejects_other_strategy_options(tiny_data, tmp_path):
    with pytest.raises(ConfigError, match="chooses its own options"):
        hs.fit(hs.create_model("toy:cnn", 3), tiny_data, "auto", lp_epochs=2, out=tmp_path / "r")
    with pytest.raises(ConfigError, match="strategy.budget is for strategy 'auto'"):
        hs.fit(hs.create_model("toy:cnn", 3), tiny_data, "full", budget="5m", out=tmp_path / "s")


def test_race_runs_when_the_budget_allows_and_its_winner_is_chosen(tiny_data):
    from conftest import separable_images

    from headstart.data import from_arrays

    x, y = separable_images(48)  # a third still holds 12 per class: the same regime as the whole
    data = from_arrays(x, y, classes=["a", "b", "c"], val_fraction=0.25, seed=0, name="race")
    d = choose(hs.create_model("toy:cnn", 3), data, "1h", epochs=2, seed=0, fit=hs.fit)
    assert d.race is not None and len(d.race) == 2
    mine, other = d.race
    # The runner-up wins only by more than the validation accuracy's standard error.
    p = min(max((mine["val_score"] + other["val_score"]) / 2, 0.05), 0.95)
    margin = (p * (1 - p) / len(data.val)) ** 0.5
    assert (d.strategy == other["strategy"]) == (other["val_score"] > mine["val_score"] + margin)
    assert any("race" in r for r in d.reasons)
    assert choose(hs.create_model("toy:cnn", 3), tiny_data, None, epochs=2).race is None


def test_no_race_on_a_handful_of_samples_and_an_empty_training_split_is_an_error(tiny_data, tmp_path):
    from headstart.data import DataSplits, subsample_per_class
    from headstart.errors import DataError

    few = DataSplits(subsample_per_class(tiny_data.train, 1, None, 0), tiny_data.val, None, tiny_data.classes, "few")
    d = choose(hs.create_model("toy:cnn", 3), few, "1h", epochs=2, seed=0, fit=hs.fit)
    assert d.race is None and any(r.startswith("no race") for r in d.reasons)
    empty = DataSplits(tiny_data.train.subset([]), tiny_data.val, None, tiny_data.classes, "empty")
    with pytest.raises(DataError, match="training split is empty"):
        hs.fit(hs.create_model("toy:cnn", 3), empty, "linear-probe", out=tmp_path / "r", progress=False)


def test_no_race_when_a_third_of_the_data_falls_under_another_rule(tiny_data):
    # 130 per class: full fine-tuning; a third of that (43 per class) is LP-FT territory, so a race there
    # would judge another regime (on digits it picked LP-FT, 3 points worse on the whole data).
    d = decide(signals(per_class=130, n_train=1300), None)
    assert d.strategy == "full"
    race(hs.create_model("toy:cnn", 3), tiny_data, d, budget_s=1e9, epochs=5, fit=hs.fit)
    assert d.race is None and d.strategy == "full" and any("different regime" in r for r in d.reasons)


def test_no_race_where_a_third_of_the_data_would_train_fewer_groups(tiny_data):
    # 20 per class: partial of the last two groups; a third (7 per class) is few-shot, where partial trains one.
    d = decide(signals(per_class=20, n_train=200), None)
    assert (d.strategy, d.options) == ("partial", {"trainable": "last:2"})
    race(hs.create_model("toy:cnn", 3), tiny_data, d, budget_s=1e9, epochs=5, fit=hs.fit)
    assert d.race is None and any("different regime" in r and "last:1" in r for r in d.reasons)


def test_the_race_is_judged_by_the_runs_own_metric(tmp_path):
    from conftest import separable_images

    from headstart.data import from_arrays
    from headstart.run import RunResult

    x, y = separable_images(48)
    data = from_arrays(x, y, classes=["a", "b", "c"], val_fraction=0.25, seed=0, name="race")
    seen, raced = [], []

    def fake_fit(model, data, strategy, *, out, **kwargs):
        seen.append(kwargs.get("metric"))
        raced.append(strategy)
        score = 0.4 if strategy == raced[0] else 0.9  # the runner-up leads; accuracy would say otherwise
        return RunResult(out, [], 1, {"val/balanced_accuracy": score, "val/accuracy": 1 - score})

    d = choose(hs.create_model("toy:cnn", 3), data, "1h", epochs=2, seed=0, fit=fake_fit,
               judge={"metric": "balanced_accuracy", "positive_class": None})
    assert seen and set(seen) == {"balanced_accuracy"}  # the contenders pick their epochs by it too
    assert all(r["metric"] == "val/balanced_accuracy" for r in d.race)
    best = max(d.race, key=lambda r: r["val_score"])
    assert best["val_score"] - min(r["val_score"] for r in d.race) >= 0.4  # far beyond the standard error
    assert d.strategy == best["strategy"]


def test_settings_left_unset_do_not_erase_autos_choice(tiny_data, tmp_path):
    # A CLI run's config passes every unset train key as None: auto's epochs and rates must survive that.
    hs.fit(hs.create_model("toy:cnn", 3), tiny_data, "auto", budget="10m", epochs=None, lr=None, head_lr=None,
           batch_size=8, progress=False, out=tmp_path / "r")
    saved = json.loads((tmp_path / "r" / "auto.json").read_text())
    cfg = hs.config.load_config(tmp_path / "r" / "config.yaml")
    assert cfg.train.lr == saved["train"]["lr"] and cfg.train.head_lr == saved["train"]["head_lr"]
    assert cfg.train.epochs == saved["train"]["epochs"]


def test_images_train_without_flips_and_crops():
    assert decide(signals(task="regression"), None).augment is False
    assert any("change the target" in r for r in decide(signals(task="regression"), None).reasons)
    assert decide(signals(), None).augment is False  # classification too: short runs do better without them
    assert any("no flips or crops" in r for r in decide(signals(), None).reasons)
    assert decide(signals(modality="text", params_m=22.6), None).augment is None  # text: as the run was asked
    assert decide(signals(task="regression", modality="text", params_m=22.6), None).augment is None


def test_an_explicit_data_augment_wins_over_autos_plain_pictures(tiny_data, tmp_path):
    asked = decide(signals(), None, augment=True)
    assert asked.augment is True and any("data.augment is true" in r for r in asked.reasons)
    assert not any("cost more than they add" in r for r in asked.reasons)
    hs.fit(hs.create_model("toy:cnn", 3), tiny_data, "auto", budget="10m", batch_size=8, progress=False,
           augment=True, out=tmp_path / "on")
    saved = json.loads((tmp_path / "on" / "auto.json").read_text())
    # timed as it trains: with flips and crops nothing is cached, so partial's step is not a cached one
    assert saved["augment"] is True and saved["signals"]["cached_steps"] == []
    assert hs.config.load_config(tmp_path / "on" / "config.yaml").data.augment is True
    hs.fit(hs.create_model("toy:cnn", 3), tiny_data, "auto", budget="10m", batch_size=8, progress=False,
           out=tmp_path / "unset")  # unset: auto's choice, recorded as the run used it
    assert hs.config.load_config(tmp_path / "unset" / "config.yaml").data.augment is False


def test_the_race_trains_as_the_run_will(tiny_data, monkeypatch):
    seen = []

    def fit(*args, augment=True, **kwargs):
        seen.append(augment)
        return hs.fit(*args, augment=augment, **kwargs)

    decision = decide(signals(n_train=54, n_val=18, num_classes=3, per_class=18, n_test=0), None)
    assert decision.strategy == "partial" and decision.augment is False
    race(hs.create_model("toy:cnn", 3), tiny_data, decision, 1e6, 1, fit=fit)
    assert seen and not any(seen)
