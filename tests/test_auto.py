"""strategy: auto — the decision rules, determinism, the run-folder record and bad input."""
from __future__ import annotations

import json

import pytest

import headstart as hs
from headstart.errors import ConfigError
from headstart.strategies.auto import Signals, choose, decide, estimates, parse_budget


def signals(**kw) -> Signals:
    base = dict(n_train=5000, n_val=500, num_classes=10, per_class=500, params_m=3.4, infer_gflop=0.8,
                modality="image", probe_accuracy=0.85)
    return Signals(**{**base, **kw})


def test_parse_budget():
    assert parse_budget("90s") == 90 and parse_budget("10m") == 600 and parse_budget("1.5h") == 5400
    assert parse_budget(None) is None and parse_budget(12) == 12
    with pytest.raises(ConfigError, match="10m"):
        parse_budget("ten minutes")


@pytest.mark.parametrize("kw, expected", [
    (dict(per_class=5), "partial"),                                       # few-shot: the last groups only
    (dict(probe_accuracy=0.99), "linear-probe"),                          # features already separate the task
    (dict(), "lp-ft"),                                                    # the strong default
    (dict(probe_accuracy=0.4, per_class=1000), "full"),                   # large shift, plenty of data
    (dict(modality="text", params_m=110), "lora"),                        # big encoder
])
def test_rules_without_a_budget(kw, expected):
    assert decide(signals(**kw), None).strategy == expected


def test_budget_moves_the_choice_down_and_too_small_is_an_error():
    s = signals()
    est = estimates(s, 5)
    assert est["linear-probe"] < est["partial"] < est["lp-ft"]
    assert decide(s, est["lp-ft"] * 2).strategy == "lp-ft"
    tight = decide(s, est["linear-probe"] * 1.05)
    assert tight.strategy == "linear-probe" and any("budget" in r for r in tight.reasons)
    with pytest.raises(ConfigError, match="too small to train anything"):
        decide(s, est["linear-probe"] * 0.5)


def test_few_shot_falls_back_to_a_probe_when_partial_does_not_fit():
    s = signals(per_class=5, n_train=50)
    assert decide(s, estimates(s, 5)["linear-probe"] * 1.05).strategy == "linear-probe"


def test_small_data_gets_l2sp():
    d = decide(signals(per_class=40, n_train=400), None)
    assert d.strategy == "lp-ft" and d.options.get("l2sp_alpha")


def test_choose_is_deterministic_and_recorded(tiny_data, tmp_path):
    a = choose(hs.create_model("toy:cnn", 3), tiny_data, "5m", seed=0)
    b = choose(hs.create_model("toy:cnn", 3), tiny_data, "5m", seed=0)
    timeless = lambda d: {**d, "race": [{k: v for k, v in r.items() if k != "seconds"} for r in d["race"] or []]}  # noqa: E731
    assert timeless(a.to_dict()) == timeless(b.to_dict())
    assert a.signals["probe_accuracy"] is not None


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
    d = choose(hs.create_model("toy:cnn", 3), tiny_data, "1h", epochs=2, seed=0)
    assert d.race is not None and len(d.race) == 2
    best = max(d.race, key=lambda r: r["val_accuracy"])
    assert d.strategy == best["strategy"] or best["val_accuracy"] == d.race[0]["val_accuracy"]
    assert any("race" in r for r in d.reasons)
    assert choose(hs.create_model("toy:cnn", 3), tiny_data, None, epochs=2).race is None


def test_no_race_on_a_handful_of_samples_and_an_empty_training_split_is_an_error(tiny_data, tmp_path):
    from headstart.data import DataSplits, subsample_per_class
    from headstart.errors import DataError

    few = DataSplits(subsample_per_class(tiny_data.train, 1, None, 0), tiny_data.val, None, tiny_data.classes, "few")
    d = choose(hs.create_model("toy:cnn", 3), few, "1h", epochs=2, seed=0)
    assert d.race is None and any(r.startswith("no race") for r in d.reasons)
    empty = DataSplits(tiny_data.train.subset([]), tiny_data.val, None, tiny_data.classes, "empty")
    with pytest.raises(DataError, match="training split is empty"):
        hs.fit(hs.create_model("toy:cnn", 3), empty, "linear-probe", out=tmp_path / "r", progress=False)
