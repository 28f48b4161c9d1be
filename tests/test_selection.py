"""Keeping the best epoch: strict for most metrics, one standard error of slack for accuracy on a val split."""
from __future__ import annotations

import math

from headstart.run.selection import BestEpoch


def _offer_all(rule: BestEpoch, rows: list[tuple[float, float]]) -> list[bool]:
    return [rule.offer(value, loss, epoch) for epoch, (value, loss) in enumerate(rows, start=1)]


def test_other_metrics_keep_the_strict_rule_and_ties_go_to_the_lower_loss():
    rule = BestEpoch("val/macro_f1", "max", val_size=120)
    assert _offer_all(rule, [(0.80, 0.5), (0.79, 0.1), (0.80, 0.4), (0.81, 0.9), (0.81, 0.95)]) == \
        [True, False, True, True, False]
    assert rule.epoch == 4 and rule.band() == 0.0


def test_min_mode_keeps_the_lowest_value():
    rule = BestEpoch("val/loss", "min", val_size=120)
    assert _offer_all(rule, [(0.5, 0.5), (0.6, 0.6), (0.4, 0.4)]) == [True, False, True]
    assert rule.epoch == 3 and rule.value == 0.4


def test_one_sample_ahead_on_a_small_val_split_loses_to_a_lower_val_loss():
    # The speed benchmark's probe: 120 val images, epoch 5 one image ahead of epoch 9, whose val loss is lower.
    rule = BestEpoch("val/accuracy", "max", val_size=120)
    _offer_all(rule, [(0.742, 0.93), (0.817, 0.70), (0.825, 0.62), (0.817, 0.59), (0.842, 0.55), (0.817, 0.54),
                      (0.825, 0.53), (0.825, 0.533), (0.833, 0.509), (0.817, 0.515)])
    assert math.isclose(rule.band(), math.sqrt(0.842 * 0.158 / 120))
    assert rule.epoch == 9


def test_a_clearly_better_epoch_wins_at_any_loss_and_a_clearly_worse_one_never():
    rule = BestEpoch("val/accuracy", "max", val_size=1000)  # one standard error at 0.9: about 0.0095
    assert _offer_all(rule, [(0.80, 0.3), (0.90, 0.8), (0.85, 0.1), (0.895, 0.7)]) == [True, True, False, True]
    assert rule.epoch == 4


def test_slack_is_measured_from_the_best_seen_so_accuracy_cannot_drift_down():
    rule = BestEpoch("val/accuracy", "max", val_size=400)  # one standard error at 0.9: 0.015
    rows = [(0.90, 0.50), (0.89, 0.45), (0.886, 0.40), (0.87, 0.35), (0.86, 0.30)]
    assert _offer_all(rule, rows) == [True, True, True, False, False]  # 0.87 is 0.03 below the best seen
    assert rule.value == 0.886


def test_resuming_from_the_state_decides_as_an_uninterrupted_run():
    rows = [(0.70, 0.9), (0.84, 0.6), (0.80, 0.5), (0.86, 0.7), (0.85, 0.45), (0.80, 0.3)]
    whole = BestEpoch("val/accuracy", "max", val_size=100)
    expected = _offer_all(whole, rows)
    first = BestEpoch("val/accuracy", "max", val_size=100)
    _offer_all(first, rows[:4])
    resumed = BestEpoch("val/accuracy", "max", val_size=100)
    resumed.load_state_dict(first.state_dict())
    assert [resumed.offer(v, loss, e) for e, (v, loss) in enumerate(rows[4:], start=5)] == expected[4:]
    assert resumed.state_dict() == whole.state_dict()


def test_checkpoints_from_before_best_top_still_load():
    rule = BestEpoch("val/accuracy", "max", val_size=100)
    rule.load_state_dict({"best": 0.8, "best_loss": 0.4, "best_epoch": 3})
    assert rule.top == 0.8 and rule.epoch == 3
    assert rule.offer(0.79, 0.3, 4)  # within one standard error (0.04) of 0.8, lower loss
