"""A run killed with SIGKILL (mid-step, mid-checkpoint write, between the best bundle's renames, while the
trainable set changes) and resumed ends exactly as an uninterrupted run, with no temporary file left.

The full matrix (every kill point, two scenarios) is bench/reliability.py; this is its CI subset.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import reliability  # noqa: E402


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    code, outcome, err = reliability.run_child("gradual-cached", root / "reference", root / "cache-ref")
    assert code == 0, err
    assert [r["inputs"] for r in outcome["rows"]][0] == "cached features"  # the scenario covers the cache
    return outcome, root


@pytest.mark.parametrize("point,nth", [("step", 7), ("checkpoint", 2), ("swap", 1), ("unfreeze", 1)])
def test_killed_and_resumed_equals_uninterrupted(reference, point, nth):
    outcome, root = reference
    row = reliability.kill_and_resume("gradual-cached", point, nth, outcome, root)
    assert row["killed"], f"the run never reached {point} #{nth}"
    assert row["resumed_ok"] and row["equal"], row.get("error")
    assert not row["leftovers"], row["leftovers"]
