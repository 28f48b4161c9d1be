"""Damaged files give one clear message; `headstart predict` never overwrites its inputs, skips a few
unreadable images, and writes CSV that round-trips (issue 19)."""
from __future__ import annotations

import csv
import io
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import headstart as hs
from headstart.bundle import read_meta
from headstart.cli import app
from headstart.errors import BundleError, DataError, HeadstartError

from conftest import separable_images


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder of toy:cnn trained for one epoch; tests that damage it work on a copy."""
    from headstart.data import from_arrays

    x, y = separable_images()
    data = from_arrays(x, y, classes=["a", "b", "c"], val_fraction=0.25, seed=0, name="tiny")
    out = tmp_path_factory.mktemp("reliability") / "run"
    torch.manual_seed(0)
    hs.fit(hs.create_model("toy:cnn", 3), data, "full", epochs=1, out=out, progress=False, batch_size=16)
    return out


def write_images(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / name, format="PNG")
    return folder


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_one_clear_line(res, *fragments):
    assert res.exit_code == 2, res.output  # an uncaught exception would exit with 1
    assert "Traceback" not in res.output
    for fragment in fragments:
        assert fragment in res.output, res.output


# ----------------------------------------------------------------------------------------------------------
# 1. damaged weights and bundle metadata


def good_safetensors_bytes(tmp_path) -> bytes:
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(64)}, str(tmp_path / "good.safetensors"))
    return (tmp_path / "good.safetensors").read_bytes()


@pytest.mark.parametrize("damage", ["empty", "garbage", "truncated"])
def test_damaged_safetensors_weights_raise_a_headstart_error_naming_the_file(tmp_path, damage):
    good = good_safetensors_bytes(tmp_path)
    content = {"empty": b"", "garbage": b"this is not a tensor file", "truncated": good[: len(good) // 2]}[damage]
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(content)
    with pytest.raises(HeadstartError) as info:
        hs.create_model("toy:cnn", 3, weights=str(bad))
    message = str(info.value)
    assert "bad.safetensors" in message and "damaged" in message and "re-download" in message.lower()


def test_cli_damaged_weights_is_one_clear_line(tmp_path):
    for cls in ("x", "y"):
        write_images(tmp_path / "imgs" / cls, [f"{i}.png" for i in range(6)])
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 5)
    res = invoke("fit", "--backbone", "toy:cnn", "--weights", tmp_path / "bad.safetensors",
                 "--data", tmp_path / "imgs", "--epochs", "1", "--out", tmp_path / "run",
                 "--set", "train.progress=false", "--set", "data.val_fraction=0.34")
    assert_one_clear_line(res, "bad.safetensors", "damaged")


def test_empty_or_truncated_pth_is_reported_as_damaged_not_as_unsafe(tmp_path):
    torch.save({"w": torch.zeros(64)}, tmp_path / "good.pth")
    good = (tmp_path / "good.pth").read_bytes()
    for name, content in (("empty.pth", b""), ("truncated.pth", good[: len(good) // 2])):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(HeadstartError) as info:
            hs.create_model("toy:cnn", 3, weights=str(tmp_path / name))
        message = str(info.value)
        assert name in message and "damaged" in message, message
        assert "arbitrary objects" not in message  # it is broken, not dangerous


def test_damaged_preprocessing_file_beside_the_weights_names_it(tmp_path):
    from safetensors.torch import save_file

    from headstart.backbones.toy import toy_cnn

    save_file(toy_cnn().state_dict(), str(tmp_path / "w.safetensors"))
    assert hs.create_model("toy:cnn", 3, weights=str(tmp_path / "w.safetensors")).spec.weights_id
    (tmp_path / "w.json").write_text('{"mean": [0.5, ')
    with pytest.raises(BundleError, match=r"w\.json.*damaged"):
        hs.create_model("toy:cnn", 3, weights=str(tmp_path / "w.safetensors"))


class _RunsCode:  # a harmless stand-in for code that unpickling would run
    def __reduce__(self):
        return (os.getcwd, ())


def test_pickled_code_is_still_refused_as_unsafe(tmp_path):
    torch.save({"w": _RunsCode()}, tmp_path / "code.pth")
    with pytest.raises(BundleError, match="arbitrary objects"):
        hs.create_model("toy:cnn", 3, weights=str(tmp_path / "code.pth"))


@pytest.mark.parametrize("content", ["", '{"format": "headstart-bun', "[1, 2]", "\udcff"])
def test_damaged_bundle_metadata_is_a_bundle_error_naming_the_file(run_dir, tmp_path, content):
    run = shutil.copytree(run_dir, tmp_path / "run")
    meta = run / "best" / "headstart.json"
    meta.write_bytes(content.encode("utf-8", "surrogateescape"))
    for load in (read_meta, hs.load):
        with pytest.raises(BundleError) as info:
            load(run)
        assert "headstart.json" in str(info.value) and "damaged" in str(info.value)
        assert "re-export" in str(info.value).lower()
    res = invoke("predict", run, write_images(tmp_path / "imgs", ["0.png"]))
    assert_one_clear_line(res, "headstart.json", "damaged")


# ----------------------------------------------------------------------------------------------------------
# 2. predict --out never destroys data


def test_predict_refuses_to_overwrite_an_input_image(run_dir, tmp_path):
    folder = write_images(tmp_path / "dir", ["0.png", "1.png"])
    before = (folder / "0.png").read_bytes()
    res = invoke("predict", run_dir, folder, "--out", folder / "0.png")
    assert_one_clear_line(res, "0.png", "one of the input files")
    assert (folder / "0.png").read_bytes() == before
    assert sorted(p.name for p in folder.iterdir()) == ["0.png", "1.png"]  # no temp file left either


def test_predict_refuses_an_out_that_is_an_input_whatever_its_extension(run_dir, tmp_path):
    write_images(tmp_path, ["photo.png"])
    os.rename(tmp_path / "photo.png", tmp_path / "photo.dat")  # decodable image under an unusual name
    before = (tmp_path / "photo.dat").read_bytes()
    res = invoke("predict", run_dir, tmp_path / "photo.dat", "--out", tmp_path / "photo.dat")
    assert_one_clear_line(res, "photo.dat", "input")
    assert (tmp_path / "photo.dat").read_bytes() == before


@pytest.mark.parametrize("name", ["new.png", "preds.JPG", "preds.parquet", "preds.jsonl"])
def test_predict_refuses_an_out_with_an_image_or_data_extension(run_dir, tmp_path, name):
    folder = write_images(tmp_path / "dir", ["0.png"])
    res = invoke("predict", run_dir, folder, "--out", tmp_path / name)
    assert_one_clear_line(res, name, ".csv")
    assert not (tmp_path / name).exists()


def test_predict_out_creates_a_missing_folder(run_dir, tmp_path):
    folder = write_images(tmp_path / "dir", ["0.png", "1.png"])
    out = tmp_path / "new" / "deeper" / "preds.csv"
    res = invoke("predict", run_dir, folder, "--out", out)
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(open(out, newline="", encoding="utf-8")))
    assert [r["path"] for r in rows] == [str(folder / "0.png"), str(folder / "1.png")]
    help_text = " ".join(invoke("predict", "--help").output.replace("│", " ").split())
    assert "folder is created" in help_text


def test_predict_out_that_is_a_folder_is_a_clear_error(run_dir, tmp_path):
    folder = write_images(tmp_path / "dir", ["0.png"])
    (tmp_path / "results").mkdir()
    res = invoke("predict", run_dir, folder, "--out", tmp_path / "results")
    assert_one_clear_line(res, "results", "folder")
    assert list((tmp_path / "results").iterdir()) == []


def test_predict_out_below_a_file_is_a_clear_error(run_dir, tmp_path):
    folder = write_images(tmp_path / "dir", ["0.png"])
    (tmp_path / "notes.txt").write_text("keep me")
    res = invoke("predict", run_dir, folder, "--out", tmp_path / "notes.txt" / "preds.csv")
    assert_one_clear_line(res, "notes.txt", "is a file")
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_predict_out_is_written_atomically(run_dir, tmp_path, monkeypatch):
    folder = write_images(tmp_path / "dir", ["0.png", "1.png"])
    out = tmp_path / "preds.csv"
    out.write_text("previous predictions\n")
    real_writer = csv.writer

    class DiskFullHalfway:  # writes the header, then fails as a full disk would
        def __init__(self, fh, *args, **kwargs):
            self.inner = real_writer(fh, *args, **kwargs)

        def writerow(self, row):
            self.inner.writerow(row)
            raise OSError(28, "No space left on device")

        def writerows(self, rows):
            for row in rows:
                self.writerow(row)

    with monkeypatch.context() as patch:
        patch.setattr(csv, "writer", DiskFullHalfway)
        res = invoke("predict", run_dir, folder, "--out", out)
    assert res.exit_code != 0
    assert out.read_text() == "previous predictions\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "preds.csv"]
    # A successful write replaces the file (a new inode) instead of rewriting it where a reader may have it open.
    inode = out.stat().st_ino
    assert invoke("predict", run_dir, folder, "--out", out).exit_code == 0
    assert out.stat().st_ino != inode and out.read_text().startswith("path,label,probability")


# ----------------------------------------------------------------------------------------------------------
# 3. unreadable files and CSV quoting


def folder_with_one_broken_image(tmp_path, n_good=11):
    folder = write_images(tmp_path / "imgs", [f"{i:02d}.png" for i in range(n_good)])
    (folder / "broken.png").write_bytes(b"not a png")
    return folder


def test_predict_skips_a_few_unreadable_files_with_a_warning(run_dir, tmp_path):
    folder = folder_with_one_broken_image(tmp_path)  # 1 of 12: within the default 10%
    res = invoke("predict", run_dir, folder, "--out", tmp_path / "p.csv")
    assert res.exit_code == 0, res.output
    assert "broken.png" in res.stderr and "skip" in res.stderr
    rows = list(csv.DictReader(open(tmp_path / "p.csv", newline="", encoding="utf-8")))
    assert [r["path"] for r in rows] == [str(folder / f"{i:02d}.png") for i in range(11)]


def test_predict_files_skips_unreadable_files_and_returns_the_paths_it_read(run_dir, tmp_path):
    folder = folder_with_one_broken_image(tmp_path)
    predictor = hs.load(run_dir)
    with pytest.warns(UserWarning, match="broken.png"):
        paths, preds = predictor.predict_files(folder)
    assert paths == [str(folder / f"{i:02d}.png") for i in range(11)]
    assert preds == predictor.predict(paths)  # each prediction belongs to the path beside it
    with pytest.raises(DataError, match="predict_files"):  # predict() lines results up with inputs: all or none
        predictor.predict(folder)
    with pytest.raises(DataError, match="max_bad_fraction"):
        predictor.predict_files(folder, max_bad_fraction=0.0)
    with pytest.raises(DataError, match="max_bad_fraction must be"):
        predictor.predict_files(folder, max_bad_fraction=1.0)


def test_predict_too_many_unreadable_files_names_the_cli_option(run_dir, tmp_path):
    folder = folder_with_one_broken_image(tmp_path)
    res = invoke("predict", run_dir, folder, "--max-bad-fraction", "0", "--out", tmp_path / "p.csv")
    assert_one_clear_line(res, "broken.png", "--max-bad-fraction")
    assert not (tmp_path / "p.csv").exists()
    res = invoke("predict", run_dir, folder, "--max-bad-fraction", "0.2")
    assert res.exit_code == 0, res.output
    assert len(list(csv.reader(io.StringIO(res.stdout)))) == 11
    for bad in ("-0.1", "1", "1.5"):
        assert_one_clear_line(invoke("predict", run_dir, folder, "--max-bad-fraction", bad), "--max-bad-fraction")


def test_prediction_rows_round_trip_through_csv_reader(run_dir, tmp_path):
    names = ["new\nline.png", "carriage\rreturn.png", "tab\there.png", 'comma, "quote".png', "plain.png"]
    folder = write_images(tmp_path / "odd", names)
    expected = sorted(str(folder / n) for n in names)
    res = invoke("predict", run_dir, folder)
    assert res.exit_code == 0, res.output
    rows = list(csv.reader(io.StringIO(res.stdout)))
    assert [r[0] for r in rows] == expected
    assert all(len(r) == 3 and r[1] in ("a", "b", "c") and 0 < float(r[2]) <= 1 for r in rows)
    res = invoke("predict", run_dir, folder, "--out", tmp_path / "p.csv")
    assert res.exit_code == 0, res.output
    rows = list(csv.reader(open(tmp_path / "p.csv", newline="", encoding="utf-8")))
    assert rows[0] == ["path", "label", "probability"] and [r[0] for r in rows[1:]] == expected
