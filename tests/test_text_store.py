"""The on-disk token store of text files: exact round trips, reuse without tokenising, staleness, settings,
bit-identical fits, damaged stores, the CLI. Everything runs on the tiny offline BERT of test_text.py."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import headstart as hs
from headstart.backbones import create_backbone
from headstart.cli import app
from headstart.data import make_batcher, text_file
from headstart.data import token_store as ts
from headstart.data.text import TextBatcher
from headstart.errors import DataError
from test_text import FAST, VOCAB, _one_thread, sentiment_rows, write_csv, write_tiny_bert  # noqa: F401 (an autouse fixture)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return write_tiny_bert(tmp_path_factory.mktemp("tiny") / "bert")


@pytest.fixture(scope="module")
def spec(tiny_bert):
    return create_backbone(f"hf:{tiny_bert}", pooling="mean")[1]


def write_pairs(path: Path, n: int = 40) -> Path:
    rows = sentiment_rows(n)
    return write_csv(path, [{"a": r["body"], "b": " ".join(reversed(r["body"].split())), "topic": r["topic"]}
                            for r in rows])


def load(path, tmp_path, store="disk", **kw):
    kw = {"text_column": "body", "label_column": "topic", **kw}
    return text_file(path, store=store, store_dir=tmp_path / "stores", seed=1, **kw)


def assert_same(disk, memory, spec) -> None:
    """Same texts, targets and fingerprints, and the batchers give the same padded token tensors."""
    for name in ("train", "val", "test"):
        a, b = getattr(disk, name), getattr(memory, name)
        if b is None:
            assert a is None
            continue
        assert a.tokens is not None and b.tokens is None
        assert a.texts == b.texts and torch.equal(a.targets, b.targets) and a.fingerprint() == b.fingerprint()
        ba, bb = make_batcher(a, spec, train=False), make_batcher(b, spec, train=False)
        assert ba.input_ids.dtype == torch.int32  # read from the store's memory map, not tokenised
        assert torch.equal(ba.lengths, bb.lengths)
        idx = torch.randperm(len(a), generator=torch.Generator().manual_seed(0))
        xa, xb = ba.inputs(idx), bb.inputs(idx)
        assert xa.keys() == xb.keys()
        assert all(torch.equal(xa[k], xb[k]) and xa[k].dtype == xb[k].dtype for k in xb)


@pytest.fixture
def csv_file(tmp_path):
    return write_csv(tmp_path / "reviews.csv", sentiment_rows(80))


@pytest.mark.parametrize("pair", [False, True])
def test_store_round_trips_token_ids_and_labels_exactly(tmp_path, spec, csv_file, pair):
    kw = {"text_column": ["a", "b"], "text_pair": True} if pair else {}
    path = write_pairs(tmp_path / "pairs.csv") if pair else csv_file
    test = write_pairs(tmp_path / "pairs-test.csv", 12) if pair else \
        write_csv(tmp_path / "t.csv", sentiment_rows(12, 1))
    disk, memory = load(path, tmp_path, test=test, **kw), load(path, tmp_path, "memory", test=test, **kw)
    assert_same(disk, memory, spec)
    if pair:  # the pair's second text is told apart by its token types, stored beside the ids
        assert "token_type_ids" in make_batcher(disk.train, spec, train=False).inputs(torch.arange(3))
    # One store per file (the train and val splits share theirs), labels kept beside the ids.
    [store_path] = ts.token_stores_of(path, tmp_path / "stores")
    assert len(ts.token_stores_of(test, tmp_path / "stores")) == 1
    whole = load(path, tmp_path, "memory", val_fraction=0.0, **kw).train
    stored = np.load(store_path / "targets.npy")
    assert np.array_equal(stored, whole.targets.numpy())
    info = ts.describe_tokens(store_path)
    assert info["complete"] and info["count"] == len(whole) and info["max_length"] == spec.preprocessing.max_length
    assert sum(info["classes"].values()) == len(whole)


def test_a_second_load_tokenises_nothing(tmp_path, spec, csv_file, monkeypatch):
    memory = load(csv_file, tmp_path, "memory")
    expected = [make_batcher(part, spec, train=False).inputs(torch.arange(len(part)))
                for part in (memory.train, memory.val)]
    make_batcher(load(csv_file, tmp_path).train, spec, train=True)

    def no(*a, **k):
        raise AssertionError("tokenised again")

    monkeypatch.setattr(ts, "encode_texts", no)
    monkeypatch.setattr(TextBatcher, "_tokenise", no)
    again = load(csv_file, tmp_path)
    for part, want in zip((again.train, again.val), expected):  # train and val both read the store built once
        got = make_batcher(part, spec, train=False).inputs(torch.arange(len(part)))
        assert all(torch.equal(got[k], want[k]) for k in want)


def test_another_process_reads_the_store_without_tokenising(tmp_path, tiny_bert, spec, csv_file):
    built = make_batcher(load(csv_file, tmp_path, val_fraction=0.0).train, spec, train=False)
    script = f"""
import torch
import headstart.data.token_store as ts
from headstart.backbones import create_backbone
from headstart.data import make_batcher, text_file
from headstart.data.text import TextBatcher
from headstart.errors import DataError

def no(*a, **k):
    raise AssertionError("tokenised again")

ts.encode_texts = TextBatcher._tokenise = no
data = text_file({str(csv_file)!r}, "body", "topic", store="disk", store_dir={str(tmp_path / "stores")!r},
                 val_fraction=0.0)
batcher = make_batcher(data.train, create_backbone({f"hf:{tiny_bert}"!r}, pooling="mean")[1], train=False)
torch.save(batcher.inputs(torch.arange(len(data.train))), {str(tmp_path / "x.pt")!r})
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    theirs, ours = torch.load(tmp_path / "x.pt"), built.inputs(torch.arange(len(built.data)))
    assert all(torch.equal(theirs[k], ours[k]) for k in ours)


def test_auto_picks_the_store_above_the_threshold(tmp_path, spec, csv_file):
    assert load(csv_file, tmp_path, "auto", store_threshold=1e-9).train.tokens is not None
    small = load(csv_file, tmp_path / "other", "auto", store_threshold=1.0)
    make_batcher(small.train, spec, train=False)
    assert small.train.tokens is None and not (tmp_path / "other" / "stores").exists()
    with pytest.raises(DataError, match="store must be one of"):
        load(csv_file, tmp_path, "disc")


def test_a_changed_file_rebuilds_its_store(tmp_path, spec, csv_file):
    make_batcher(load(csv_file, tmp_path).train, spec, train=False)
    rows = sentiment_rows(80)
    rows[3]["body"] = "good good film"
    write_csv(csv_file, rows)
    st = os.stat(csv_file)
    os.utime(csv_file, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))  # a new mtime even on coarse clocks
    disk = load(csv_file, tmp_path)
    with pytest.warns(UserWarning, match="changed since its token store was built.*rebuilding"):
        make_batcher(disk.train, spec, train=False)
    assert_same(load(csv_file, tmp_path), load(csv_file, tmp_path, "memory"), spec)
    assert len(ts.token_stores_of(csv_file, tmp_path / "stores")) == 1  # rebuilt in place, nothing stale kept


def test_another_max_length_or_tokenizer_gets_its_own_store(tmp_path, tiny_bert, spec, csv_file):
    short = create_backbone(f"hf:{tiny_bert}", pooling="mean", max_length=6)[1]
    other = create_backbone(f"hf:{write_tiny_bert(tmp_path / 'other', VOCAB + ['extra'])}", pooling="mean")[1]
    for s in (spec, short, other):
        assert_same(load(csv_file, tmp_path, val_fraction=0.0), load(csv_file, tmp_path, "memory", val_fraction=0.0),
                     s)
    stores = ts.token_stores_of(csv_file, tmp_path / "stores")
    assert len(stores) == 3
    assert sorted(ts.describe_tokens(p)["max_length"] for p in stores) == sorted(
        [6, spec.preprocessing.max_length, other.preprocessing.max_length])
    assert int(make_batcher(load(csv_file, tmp_path).train, short, train=False).lengths.max()) <= 6


@pytest.mark.parametrize("strategy", ["linear-probe", "full"])
def test_fit_on_the_store_equals_fit_in_memory_bit_for_bit(tmp_path, tiny_bert, csv_file, strategy):
    results = []
    for store in ("memory", "disk"):
        data = load(csv_file, tmp_path, store)
        assert (data.train.tokens is None) == (store == "memory")
        torch.manual_seed(0)
        model = hs.create_model(f"hf:{tiny_bert}", pooling="mean")
        run = hs.fit(model, data, strategy, epochs=2, lr=1e-2, cache_dir=str(tmp_path / f"cache-{store}"),
                     out=tmp_path / f"run-{strategy}-{store}", **FAST)
        results.append((model.state_dict(), run.history))
    (wa, ha), (wb, hb) = results
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    strip = [[{k: v for k, v in h.items() if "time" not in k and "sec" not in k} for h in hist] for hist in (ha, hb)]
    assert strip[0] == strip[1]


def test_a_truncated_store_says_so_and_is_rebuilt(tmp_path, spec, csv_file):
    make_batcher(load(csv_file, tmp_path).train, spec, train=False)
    [path] = ts.token_stores_of(csv_file, tmp_path / "stores")
    ids = path / "ids.i32"
    os.truncate(ids, ids.stat().st_size // 2)
    with pytest.warns(UserWarning, match=r"is truncated: ids.i32 has \d+ of \d+ bytes.*rebuilding"):
        make_batcher(load(csv_file, tmp_path).train, spec, train=False)
    assert_same(load(csv_file, tmp_path), load(csv_file, tmp_path, "memory"), spec)


def test_a_damaged_or_foreign_store_is_rebuilt(tmp_path, spec, csv_file):
    make_batcher(load(csv_file, tmp_path).train, spec, train=False)
    [path] = ts.token_stores_of(csv_file, tmp_path / "stores")
    entry = ts.file_entry(csv_file)
    part = load(csv_file, tmp_path, "memory", val_fraction=0.0).train
    from headstart.backbones.hf_source import load_tokenizer

    tok = load_tokenizer(spec.preprocessing.tokenizer)
    args = (entry, dict(part.columns), part.texts, part.targets, part.classes, tok, spec.preprocessing.max_length,
            tmp_path / "stores")
    with open(path / "ids.i32", "r+b") as fh:  # same length, other bytes: only the checksum sees it
        fh.write(b"\x01\x02\x03\x04")
    with pytest.warns(UserWarning, match="ids.i32 fails its checksum.*rebuilding"):
        ts.open_token_store(*args, verify=True)
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**manifest, "format": 99, "headstart": "9.9"}))
    with pytest.warns(UserWarning, match=r"has format 99 \(written by headstart 9.9\).*rebuilding"):
        store = ts.open_token_store(*args)
    assert store.manifest["format"] == ts.FORMAT and store.verify() is None


def test_an_unwritable_store_falls_back_to_tokenising_in_memory(tmp_path, spec, csv_file, monkeypatch):
    memory = make_batcher(load(csv_file, tmp_path, "memory").train, spec, train=False)

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.warns(UserWarning, match="Read-only file system.*in memory instead"):
        batcher = make_batcher(load(csv_file, tmp_path).train, spec, train=False)
    assert batcher.input_ids.dtype == torch.int64 and torch.equal(batcher.lengths, memory.lengths)


def test_cli_data_prepare_info_and_clean_for_a_text_file(tmp_path, tiny_bert):
    path = write_csv(tmp_path / "reviews.csv", sentiment_rows(30))
    stores = str(tmp_path / "stores")
    runner = CliRunner()
    no_backbone = runner.invoke(app, ["data", "prepare", str(path), "--text-column", "body", "--store-dir", stores])
    assert no_backbone.exit_code == 2 and "--backbone hf:" in no_backbone.output
    missing = runner.invoke(app, ["data", "info", str(path), "--store-dir", stores])
    assert missing.exit_code == 2 and "no token store" in missing.output
    built = runner.invoke(app, ["data", "prepare", str(path), "--backbone", f"hf:{tiny_bert}", "--text-column",
                                "body", "--label-column", "topic", "--store-dir", stores])
    assert built.exit_code == 0, built.output
    info = runner.invoke(app, ["data", "info", str(path), "--store-dir", stores])
    assert info.exit_code == 0, info.output
    [described] = json.loads(info.output)
    assert described["complete"] and described["count"] == 30 and described["classes"] == {"neg": 15, "pos": 15}
    cleaned = runner.invoke(app, ["data", "clean", str(path), "--store-dir", stores])
    assert cleaned.exit_code == 0 and "removed" in cleaned.output
    assert ts.token_stores_of(path, stores) == []
