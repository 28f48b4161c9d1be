"""Bundles reload and predict identically; bad bundles and bad input give clear errors; the CLI works."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import headstart as hs
from headstart.bundle import load_model, save_bundle
from headstart.cli import app
from headstart.errors import BundleError, DataError

FAST = dict(progress=False, batch_size=8, eval_batch_size=32)


@pytest.fixture
def trained_run(tiny_data, tmp_path):
    model = hs.create_model("toy:cnn", 3, dropout=0.2)
    hs.fit(model, tiny_data, "full", epochs=2, out=tmp_path / "run", lr=0.01, **FAST)
    return tmp_path / "run"


def test_bundle_reloads_and_predicts_identically(trained_run, tiny_data):
    best = load_model(trained_run)
    predictor = hs.load(trained_run)
    images = tiny_data.test.images.permute(0, 2, 3, 1).numpy()  # (N, H, W, C) as a user would pass
    probs = predictor.predict_proba(images)
    again = hs.load(trained_run / "best").predict_proba(images)
    np.testing.assert_array_equal(probs, again)
    # Same numbers as the in-memory model on the same preprocessed batch.
    x = hs.data.BatchTransform(best.spec.preprocessing, train=False)(tiny_data.test.images)
    with torch.no_grad():
        expected = best.eval()(x).softmax(1).numpy()
    np.testing.assert_allclose(probs, expected, rtol=1e-2, atol=1e-2)  # bf16 inference on CPUs that have it
    labels = predictor.predict(images)
    assert [lab for lab, _ in labels] == [predictor.labels[i] for i in probs.argmax(1)]
    assert predictor.labels == ["a", "b", "c"]


def test_bundle_save_load_exact_in_fp32(tmp_path):
    model = hs.create_model("toy:cnn", 4, labels=["w", "x", "y", "z"]).eval()
    save_bundle(model, tmp_path / "b")
    loaded = load_model(tmp_path / "b")
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert loaded.labels == ["w", "x", "y", "z"]


def test_bundle_class_count_mismatch(trained_run):
    with pytest.raises(BundleError, match="has 3 classes"):
        hs.load(trained_run, num_classes=5)
    meta_path = trained_run / "best" / "headstart.json"
    meta = json.loads(meta_path.read_text())
    meta["labels"] = meta["labels"] + ["extra"]
    meta["head"]["num_outputs"] = 4
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="do not match"):
        hs.load(trained_run)


def test_bundle_missing_or_damaged(tmp_path, trained_run):
    with pytest.raises(BundleError, match="does not exist"):
        hs.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="no model bundle"):
        hs.load(tmp_path / "empty")
    (trained_run / "best" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(BundleError, match="damaged"):
        hs.load(trained_run)


def test_evaluate_with_labels_the_model_never_saw(trained_run, tiny_data):
    from headstart.data import ImageData

    test = tiny_data.test
    other = ImageData(test.images, test.targets, ["a", "b", "zebra"])
    with pytest.raises(DataError, match="zebra"):
        hs.evaluate(trained_run, other)
    # Same classes in another order are re-indexed, not rejected.
    shuffled = ImageData(test.images, 2 - test.targets, ["c", "b", "a"])
    assert hs.evaluate(trained_run, shuffled) == hs.evaluate(trained_run, test)


def write_folder(root, n=6, size=20):
    rng = np.random.default_rng(0)
    colours = {"red": (220, 20, 20), "green": (20, 220, 20)}
    for name, colour in colours.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            img = np.clip(np.array(colour) + rng.normal(0, 10, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / name / f"{i}.png")


def test_cli_fit_predict_evaluate(tmp_path):
    write_folder(tmp_path / "imgs")
    runner = CliRunner()
    out = tmp_path / "run"
    res = runner.invoke(app, ["fit", "--backbone", "toy:cnn", "--data", str(tmp_path / "imgs"), "--strategy",
                              "full", "--epochs", "2", "--out", str(out), "--set", "train.batch_size=4",
                              "--set", "train.progress=false", "--set", "data.val_fraction=0.34"])
    assert res.exit_code == 0, res.output
    assert "run folder" in res.output and (out / "best" / "headstart.json").is_file()
    res = runner.invoke(app, ["predict", str(out), str(tmp_path / "imgs" / "red"), "--out", str(tmp_path / "p.csv")])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert len(rows) == 6 and {r["label"] for r in rows} <= {"red", "green"}
    res = runner.invoke(app, ["evaluate", str(out), "--data", str(tmp_path / "imgs")])
    assert res.exit_code == 0 and "imgs/accuracy" in res.output, res.output  # named by the data, not "train/"
    # Resume a finished run: nothing left to do, same result, no error.
    res = runner.invoke(app, ["fit", "--resume", str(out)])
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("args, message", [
    (["fit", "--set", "train.epoch=3", "--data", "digits"], "Did you mean 'train.epochs'"),
    (["fit", "--backbone", "toy:cnm", "--data", "digits"], "Did you mean 'cnn'"),
    (["fit", "--backbone", "toy:cnn", "--data", "/no/such/folder"], "/no/such/folder"),
    (["fit", "--backbone", "toy:cnn"], "no training data"),
    (["list", "stratgies"], "Did you mean 'strategies'"),
    (["predict", "/no/run", "x.png"], "does not exist"),
])
def test_cli_errors_are_one_clear_line(args, message):
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert "Traceback" not in res.output


def test_cli_list():
    res = CliRunner().invoke(app, ["list", "backbones", "toy:*"])
    assert res.exit_code == 0 and "toy:cnn" in res.output and "toy:mlp" in res.output
    res = CliRunner().invoke(app, ["list", "strategies"])
    assert "linear-probe" in res.output and "full" in res.output


def test_a_local_folder_named_like_a_builtin_data_set_means_the_folder_everywhere(tmp_path, monkeypatch):
    """`fit --data digits` and `evaluate --data digits` read the same data: the local ./digits folder."""
    monkeypatch.chdir(tmp_path)
    write_folder(tmp_path / "digits")
    runner = CliRunner()
    res = runner.invoke(app, ["fit", "--backbone", "toy:cnn", "--data", "digits", "--epochs", "1", "--out", "run",
                              "--set", "train.progress=false", "--set", "data.val_fraction=0.34"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["evaluate", "run", "--data", "digits"])
    assert res.exit_code == 0, res.output  # the built-in digits (10 classes) would be refused for 2 labels
    assert "accuracy" in res.output


def test_cli_resume_with_other_data_is_refused(tmp_path):
    write_folder(tmp_path / "imgs")
    write_folder(tmp_path / "other", size=24)
    runner = CliRunner()
    args = ["--set", "train.progress=false", "--set", "data.val_fraction=0.34"]
    res = runner.invoke(app, ["fit", "--backbone", "toy:cnn", "--data", str(tmp_path / "imgs"), "--epochs", "2",
                              "--out", str(tmp_path / "run"), *args])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["fit", "--resume", str(tmp_path / "run"), "--data", str(tmp_path / "other")])
    assert res.exit_code == 2 and "different settings" in res.output and "data.path" in res.output, res.output


def test_evaluate_and_fit_skip_a_bounded_share_of_unreadable_images(tmp_path):
    write_folder(tmp_path / "imgs")
    (tmp_path / "imgs" / "red" / "broken.png").write_bytes(b"not an image")  # 1 of 13 files
    runner = CliRunner()
    res = runner.invoke(app, ["fit", "--backbone", "toy:cnn", "--data", str(tmp_path / "imgs"), "--epochs", "1",
                              "--out", str(tmp_path / "run"), "--set", "train.progress=false",
                              "--set", "data.val_fraction=0.34", "--set", "data.max_bad_fraction=0"])
    assert res.exit_code == 2 and "max_bad_fraction" in res.output, res.output
    res = runner.invoke(app, ["fit", "--backbone", "toy:cnn", "--data", str(tmp_path / "imgs"), "--epochs", "1",
                              "--out", str(tmp_path / "run"), "--set", "train.progress=false",
                              "--set", "data.val_fraction=0.34"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["evaluate", str(tmp_path / "run"), "--data", str(tmp_path / "imgs"),
                              "--max-bad-fraction", "0"])
    assert res.exit_code == 2 and "--max-bad-fraction" in res.output, res.output
    res = runner.invoke(app, ["evaluate", str(tmp_path / "run"), "--data", str(tmp_path / "imgs")])
    assert res.exit_code == 0 and "imgs/accuracy" in res.output, res.output


def run_python(code: str):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_the_command_line_exits_with_its_code_and_output_and_waits_for_a_write_in_flight(tmp_path):
    done = run_python("from headstart.cli import leave; print('written', end=''); leave(3)")
    assert (done.returncode, done.stdout) == (3, "written")  # buffered output survives the quick exit
    said = run_python("from headstart.cli import leave; leave('error: no such run')")
    assert said.returncode == 1 and "no such run" in said.stderr
    late = tmp_path / "late.txt"
    code = ("import threading, time; from headstart.cli import leave\n"
            f"threading.Thread(target=lambda: (time.sleep(0.5), open({str(late)!r}, 'w').write('x'))).start()\n"
            "leave(0)")
    assert run_python(code).returncode == 0 and late.read_text() == "x"  # the thread finished first
    helped = run_python("import sys; sys.argv = ['headstart', '--help']; from headstart.cli import main; main()")
    assert helped.returncode == 0 and "fit" in helped.stdout
