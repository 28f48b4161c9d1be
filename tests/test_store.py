"""The on-disk image store: exact round trips, staleness, interrupted builds, bad stores, read-only and full disks."""
from __future__ import annotations

import errno
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import headstart as hs
from headstart.data import image_folder, store as st
from headstart.data.images import MappedImages
from headstart.errors import DataError

SIZE = 20


def make_folder(root: Path, per_class: int = 12, classes=("cat", "dog", "owl"), gray: bool = False,
                seed: int = 0) -> Path:
    """A class-per-folder tree of small JPEGs and PNGs whose class shows in their colour."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            write_image(root / name / f"{i:03d}.{'png' if i % 3 == 0 else 'jpg'}", c, rng, gray)
    return root


def write_image(path: Path, c: int, rng, gray: bool = False, shape=(24, 30)) -> None:
    base = np.array([[220, 30, 30], [30, 220, 30], [30, 30, 220]])[c % 3]
    pixels = np.clip(base + rng.normal(0, 20, size=(*shape, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(pixels)
    img.convert("L").save(path) if gray else img.save(path)


def load(root, tmp_path, store="disk", **kw):
    return image_folder(root, stored_size=SIZE, store=store, store_dir=tmp_path / "stores", seed=1, **kw)


def all_rows(part) -> torch.Tensor:
    return part.images[torch.arange(len(part))]


def assert_same(disk, memory) -> None:
    for name in ("train", "val", "test"):
        a, b = getattr(disk, name), getattr(memory, name)
        if b is None:
            assert a is None
            continue
        assert isinstance(a.images, MappedImages)
        assert tuple(a.images.shape) == tuple(b.images.shape)
        assert torch.equal(all_rows(a), b.images)
        assert torch.equal(a.targets, b.targets) and a.paths == b.paths and a.classes == b.classes
        assert a.fingerprint() == b.fingerprint()


@pytest.mark.parametrize("gray", [False, True])
def test_store_round_trips_pixels_labels_and_fingerprints_exactly(tmp_path, gray):
    root = make_folder(tmp_path / "pets", gray=gray)
    test_root = make_folder(tmp_path / "pets-test", per_class=4, gray=gray, seed=5)
    disk = load(root, tmp_path, test=test_root)
    memory = load(root, tmp_path, store="memory", test=test_root)
    assert disk.train.images.shape[1] == (1 if gray else 3)
    assert_same(disk, memory)
    # A subset is a view of other rows (nothing read); indexing reads just those rows, in the order asked.
    sub = disk.train.subset([5, 0, 3])
    assert isinstance(sub.images, MappedImages) and sub.images.array is disk.train.images.array
    assert torch.equal(sub.images[torch.tensor([2, 0])], memory.train.images[[3, 5]])
    # A second load decodes nothing: the store is reused.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(st, "_decode_chunk", lambda *a: pytest.fail("decoded again"))
        assert_same(load(root, tmp_path, test=test_root), memory)


def test_mapped_images_pickle_as_a_path_not_the_pixels(tmp_path):
    data = load(make_folder(tmp_path / "pets"), tmp_path)
    blob = pickle.dumps(data.train.images)
    assert len(blob) < 4096  # 33 images of 3x20x20 would be 40 KB
    again = pickle.loads(blob)
    assert torch.equal(again[torch.arange(len(again))], all_rows(data.train))


def test_auto_uses_the_disk_only_above_the_threshold(tmp_path):
    root = make_folder(tmp_path / "pets")
    assert isinstance(load(root, tmp_path, store="auto", store_threshold=1e-6).train.images, MappedImages)
    small = load(root, tmp_path / "other", store="auto", store_threshold=1.0)
    assert isinstance(small.train.images, torch.Tensor) and not (tmp_path / "other" / "stores").exists()


def count_decodes(monkeypatch) -> list[str]:
    seen: list[str] = []
    real = st._try_decode

    def counting(path, size):
        seen.append(path)
        return real(path, size)

    monkeypatch.setattr(st, "_try_decode", counting)
    return seen


def test_added_files_extend_changed_and_removed_files_rebuild(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "pets")
    load(root, tmp_path)
    seen = count_decodes(monkeypatch)
    rng = np.random.default_rng(9)
    write_image(root / "cat" / "new.jpg", 0, rng)
    data = load(root, tmp_path)
    assert seen == [str(root / "cat" / "new.jpg")]  # appended: only the new file is decoded
    assert_same(data, load(root, tmp_path, store="memory"))

    seen.clear()
    write_image(root / "dog" / "001.jpg", 2, rng)  # same name, other content (and mtime)
    os.utime(root / "dog" / "001.jpg", ns=(time.time_ns(), time.time_ns() + 10**9))
    with pytest.warns(UserWarning, match="1 changed.*rebuilding"):
        data = load(root, tmp_path)
    assert len(seen) == 37
    assert_same(data, load(root, tmp_path, store="memory"))

    (root / "owl" / "002.jpg").unlink()
    with pytest.warns(UserWarning, match="1 removed.*rebuilding"):
        data = load(root, tmp_path)
    assert str(root / "owl" / "002.jpg") not in data.train.paths + data.val.paths
    assert_same(data, load(root, tmp_path, store="memory"))


def test_chunks_that_finished_beside_a_failed_one_are_handed_over_before_its_error(monkeypatch):
    from concurrent.futures import wait

    def decode(start):
        if start == 2:
            raise RuntimeError("killed")
        return {"start": start}

    def failures_first(futures):  # as_completed may yield a failure before a chunk that finished earlier
        wait(futures)
        return sorted(futures, key=lambda f: f.exception() is None)

    monkeypatch.setattr(st, "_decode_chunk", decode)
    monkeypatch.setattr(st, "as_completed", failures_first)
    handed = []
    with pytest.raises(RuntimeError, match="killed"):
        for result in st._run_chunks([(0,), (1,), (2,)], workers=0):
            handed.append(result["start"])
    assert sorted(handed) == [0, 1]


def test_a_build_that_fails_midway_never_reads_complete_and_resumes(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "pets", per_class=10)
    monkeypatch.setattr(st, "CHUNK", 10)  # 3 chunks: decoded by threads of this process
    real = st._decode_chunk
    calls = []

    def failing(data_path, start, paths, size):
        calls.append(start)
        if len(calls) == 3:
            raise RuntimeError("killed")
        return real(data_path, start, paths, size)

    monkeypatch.setattr(st, "_decode_chunk", failing)
    with pytest.raises(RuntimeError, match="killed"):
        load(root, tmp_path)
    [path] = st.stores_of(root, tmp_path / "stores")
    info = st.describe(path)
    assert not info["complete"] and not (path / "manifest.json").exists() and "of 30 images" in info["building"]
    done = len(st._read_journal(path / "chunks.jsonl"))
    assert done >= 1
    calls.clear()
    monkeypatch.setattr(st, "_decode_chunk", lambda *a: (calls.append(a[1]), real(*a))[1])
    data = load(root, tmp_path)
    assert len(calls) == 3 - done  # only the chunks not journaled are decoded again
    assert st.describe(path)["complete"] and not (path / "build.json").exists()
    assert_same(data, load(root, tmp_path, store="memory"))


def test_a_killed_build_process_resumes(tmp_path):
    root = make_folder(tmp_path / "pets", per_class=10)
    stores = tmp_path / "stores"
    script = f"""
import time
import headstart.data.store as st
st.CHUNK = 4
real = st._decode_chunk
def slow(*a):
    time.sleep(0.5)
    return real(*a)
st._decode_chunk = slow
st.prepare({str(root)!r}, {SIZE}, {str(stores)!r}, workers=0, progress=False)
"""
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 120
    journal = None
    while time.time() < deadline:
        found = st.stores_of(root, stores)
        journal = found[0] / "chunks.jsonl" if found else None
        if journal is not None and journal.exists() and journal.read_text().count("\n") >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert journal is not None and not (journal.parent / "manifest.json").exists()
    data = load(root, tmp_path)
    assert st.describe(journal.parent)["complete"]
    assert_same(data, load(root, tmp_path, store="memory"))


def test_other_format_truncated_and_corrupt_stores_are_rebuilt_with_a_message(tmp_path):
    root = make_folder(tmp_path / "pets")
    memory = load(root, tmp_path, store="memory")
    load(root, tmp_path)
    [path] = st.stores_of(root, tmp_path / "stores")
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**manifest, "format": 99, "headstart": "9.9"}))
    with pytest.warns(UserWarning, match=r"format 99 \(written by headstart 9.9\).*reads format 1: rebuilding"):
        assert_same(load(root, tmp_path), memory)

    with open(path / "images.u8", "r+b") as fh:
        fh.truncate(1000)
    with pytest.warns(UserWarning, match="truncated: its data file has 1000 of .* bytes: rebuilding"):
        assert_same(load(root, tmp_path), memory)

    with open(path / "images.u8", "r+b") as fh:
        fh.seek(5000)
        fh.write(b"\xff" * 10)
    with pytest.warns(UserWarning, match="fail their checksum.*rebuilding"):
        st.prepare(root, SIZE, tmp_path / "stores", progress=False)  # prepare verifies every chunk
    assert_same(load(root, tmp_path), memory)


def test_unwritable_or_full_disk_falls_back_to_memory_with_a_message(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "pets")
    memory = load(root, tmp_path, store="memory")
    monkeypatch.setattr(st.shutil, "disk_usage", lambda p: type("U", (), {"free": 100})())
    with pytest.warns(UserWarning, match=r"cannot write the image store at .*needs .* GB.*into memory instead"):
        data = load(root, tmp_path)
    assert isinstance(data.train.images, torch.Tensor) and torch.equal(data.train.images, memory.train.images)
    monkeypatch.setattr(st, "available_gb", lambda: 1e-6)  # and when the data do not fit in memory either
    with pytest.raises(DataError, match="more than memory can hold.*data.store_dir"):
        load(root, tmp_path)


def test_a_complete_store_on_a_read_only_disk_is_read(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "pets")
    memory = load(root, tmp_path, store="memory")
    load(root, tmp_path)

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(Path, "mkdir", read_only)
    assert_same(load(root, tmp_path), memory)
    write_image(root / "cat" / "new.jpg", 0, np.random.default_rng(1))  # now it would need writing
    with pytest.warns(UserWarning, match="Read-only file system.*into memory instead"):
        data = load(root, tmp_path)
    assert isinstance(data.train.images, torch.Tensor)


@pytest.mark.parametrize("strategy", ["linear-probe", "full"])
def test_fit_on_the_store_equals_fit_in_memory_bit_for_bit(tmp_path, strategy):
    root = make_folder(tmp_path / "pets", per_class=16)
    results = []
    for store in ("memory", "disk"):
        data = load(root, tmp_path, store=store)
        torch.manual_seed(0)
        model = hs.create_model("toy:cnn", 3)
        run = hs.fit(model, data, strategy, epochs=2, lr=0.05, batch_size=8, precision="fp32", progress=False,
                     cache_dir=str(tmp_path / f"cache-{store}"), out=tmp_path / f"run-{strategy}-{store}")
        results.append((model.state_dict(), run.history))
    (wa, ha), (wb, hb) = results
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    strip = [{k: v for k, v in h.items() if "time" not in k and "sec" not in k} for h in ha]
    assert strip == [{k: v for k, v in h.items() if "time" not in k and "sec" not in k} for h in hb]


def test_cli_data_prepare_info_and_clean(tmp_path):
    from typer.testing import CliRunner

    from headstart.cli import app

    root = make_folder(tmp_path / "pets")
    stores = str(tmp_path / "stores")
    runner = CliRunner()
    missing = runner.invoke(app, ["data", "info", str(root), "--store-dir", stores])
    assert missing.exit_code == 2 and "headstart data prepare" in missing.output
    built = runner.invoke(app, ["data", "prepare", str(root), "--image-size", "28", "--store-dir", stores])
    assert built.exit_code == 0, built.output
    info = runner.invoke(app, ["data", "info", str(root), "--store-dir", stores])
    [entry] = json.loads(info.output)
    assert entry["complete"] and entry["count"] == 36 and entry["stored_size"] == 32
    assert entry["classes"] == {"cat": 12, "dog": 12, "owl": 12}
    removed = runner.invoke(app, ["data", "clean", str(root), "--store-dir", stores])
    assert removed.exit_code == 0 and "removed" in removed.output and not st.stores_of(root, stores)


def test_two_processes_share_one_build(tmp_path):
    """Two processes (DDP ranks) opening the same folder at once: one decodes, the other waits and reads."""
    root = make_folder(tmp_path / "pets", per_class=10)
    stores = tmp_path / "stores"
    script = f"""
import sys, numpy as np, headstart.data.store as st
from headstart.data.images import _scan_folder
from pathlib import Path
real, n = st._try_decode, [0]
def counting(p, s):
    n[0] += 1
    return real(p, s)
st._try_decode = counting
_, files, _ = _scan_folder(Path({str(root)!r}), "training", (".jpg", ".png"))
store = st.open_store({str(root)!r}, files, {SIZE}, {str(stores)!r}, workers=0, progress=False)
rank = int(sys.argv[1])
rows = np.arange(rank, len(store), 2)  # disjoint halves
print(n[0], int(store.array[rows].astype(np.int64).sum()))
"""
    procs = [subprocess.Popen([sys.executable, "-c", script, str(r)], stdout=subprocess.PIPE, text=True)
             for r in (0, 1)]
    outs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(int(o[0]) for o in outs) == [0, 30]  # one build, the other process decoded nothing


DDP_SCRIPT = """
import json, os, sys, torch
sys.path.insert(0, {tests!r})
import headstart as hs
from headstart.data import image_folder, store as st
from headstart.data.images import MappedImages
decoded, rows = [], {{}}
real_decode, real_get = st._try_decode, MappedImages.__getitem__
def counting(path, size):
    decoded.append(path)
    return real_decode(path, size)
def recording(self, idx):
    if isinstance(idx, torch.Tensor) and len(idx) == 3:  # training batches, not 1- or 2-row probes or hashing
        rows.setdefault(len(self), set()).update(self._select(idx).tolist())
    return real_get(self, idx)
st._try_decode, MappedImages.__getitem__ = counting, recording
data = image_folder({out!r} + "/pets", stored_size=20, store="disk", store_dir={out!r} + "/stores", seed=1)
torch.manual_seed(0)
model = hs.create_model("toy:cnn", 3)
hs.fit(model, data, "full", epochs=1, lr=0.01, batch_size=6, progress=False, precision="fp32", out={out!r} + "/run")
with open({out!r} + "/rank" + os.environ["RANK"] + ".json", "w") as fh:
    json.dump({{"decoded": len(decoded), "train": sorted(rows[len(data.train)]), "n": len(data.train)}}, fh)
"""


def test_ddp_ranks_share_the_store_and_read_disjoint_rows(tmp_path):
    from conftest import run_two_processes

    make_folder(tmp_path / "pets", per_class=16)
    run_two_processes(DDP_SCRIPT, tmp_path)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert sorted(r["decoded"] for r in ranks) == [0, 48]  # one rank built the store, the other only read it
    a, b = (set(r["train"]) for r in ranks)
    # Each rank reads its own half of each global batch of 6 (42 images: 7 batches of 3 per rank): disjoint.
    assert not a & b and len(a | b) == ranks[0]["n"] and len(a) == len(b)


def test_a_folder_changing_during_the_build_is_brought_up_to_date(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "pets")
    real = st._decode_chunk

    edited = []

    def editing(*a):
        out = real(*a)
        if not edited:  # a file rewritten after it was decoded, while the build runs
            write_image(root / "owl" / "002.jpg", 0, np.random.default_rng(3))
            os.utime(root / "owl" / "002.jpg", ns=(time.time_ns(), time.time_ns() + 10**9))
            edited.append(1)
        return out

    monkeypatch.setattr(st, "_decode_chunk", editing)
    with pytest.warns(UserWarning) as caught:
        store = st.prepare(root, SIZE, tmp_path / "stores", progress=False)
    messages = " | ".join(str(w.message) for w in caught)
    assert "changed while its image store was built: updating it" in messages
    assert "1 changed file(s) since it was built (e.g. owl/002.jpg): rebuilding it" in messages
    assert len(store) == 36 and st.describe(store.path)["complete"]
    assert_same(load(root, tmp_path), load(root, tmp_path, store="memory"))


def test_torch_ops_on_stored_images_read_them(tmp_path):
    data = load(make_folder(tmp_path / "pets"), tmp_path)
    both = torch.cat([data.train.images, data.val.images])  # as multi-task data combines parts
    n = len(data.train)
    assert both.shape == (36, 3, SIZE, SIZE) and torch.equal(both[:n], all_rows(data.train))
    assert torch.equal(both[n:], all_rows(data.val))


def test_a_process_pool_build_equals_the_memory_path(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "pets")
    monkeypatch.setattr(st, "CHUNK", 8)  # 5 chunks over 2 processes
    store = st.prepare(root, SIZE, tmp_path / "stores", workers=2, progress=False)
    assert [c[:2] for c in store.manifest["chunks"]] == [[0, 8], [8, 8], [16, 8], [24, 8], [32, 4]]
    assert_same(load(root, tmp_path), load(root, tmp_path, store="memory"))
