"""The run report (report.html), `headstart report` / `headstart compare`, and TensorBoard logging."""
from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import headstart as hs
from headstart.cli import app
from headstart.config import validate_config
from headstart.data import from_arrays, from_texts
from headstart.errors import ConfigError, DataError
from headstart.report import EVALUATION, calibration, compare_runs, confusion, per_class, write_report
from headstart.run import read_metrics

FAST = dict(progress=False, batch_size=8, eval_batch_size=32, precision="fp32", lr=0.01)
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(autouse=True)
def _no_report():
    """Overrides conftest's fixture of this name: here hs.fit writes its report."""


@pytest.fixture(autouse=True)
def _one_thread(request):
    # Tiny models only lose from two threads on a busy 2-core machine (the real run keeps them).
    threads = torch.get_num_threads()
    torch.set_num_threads(threads if request.node.get_closest_marker("real") else 1)
    yield
    torch.set_num_threads(threads)


def fit(data, out, strategy="full", **kwargs):
    torch.manual_seed(0)
    return hs.fit(hs.create_model("toy:cnn", 3), data, strategy, out=out, **{"epochs": 2, **FAST, **kwargs})


def sections(page: str) -> list[str]:
    return re.findall(r'<section id="([^"]+)"', page)


def inlined_images(page: str) -> list[Image.Image]:
    found = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    return [Image.open(io.BytesIO(base64.b64decode(b))) for b in found]


# ----------------------------------------------------------------------------------------------- the numbers

def test_confusion_and_per_class_scores_by_hand():
    truth, preds = np.array([0, 0, 0, 1, 1, 2]), np.array([0, 0, 1, 1, 2, 2])
    cm = confusion(truth, preds, 3)
    assert cm.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    (p0, r0, f0, n0), (p1, r1, _, _), (p2, r2, _, n2) = per_class(cm)
    assert (p0, r0, n0) == (1.0, 2 / 3, 3) and f0 == pytest.approx(0.8)
    assert (p1, r1) == (0.5, 0.5) and (p2, r2, n2) == (0.5, 1.0, 1)
    assert per_class(np.zeros((2, 2), int))[0] == (0.0, 0.0, 0.0, 0)  # no samples: zeros, not NaN


def test_expected_calibration_error_by_hand():
    confidence = np.array([0.95] * 10 + [0.55] * 4)
    correct = np.array([True] * 9 + [False] + [True, True, False, False])
    ece, bins = calibration(confidence, correct)
    # bin 9: conf 0.95, acc 0.9 (10 of 14); bin 5: conf 0.55, acc 0.5 (4 of 14)
    assert ece == pytest.approx(10 / 14 * 0.05 + 4 / 14 * 0.05)
    assert bins[9][2] == 10 and bins[5][2] == 4 and bins[9][1] == pytest.approx(0.9)
    assert calibration(np.array([1.0]), np.array([True]))[0] == 0.0  # confidence 1.0 lands in the last bin


# -------------------------------------------------------------------------------------------- a run's report

def test_fit_writes_a_report_with_every_section(tmp_path, tiny_data):
    run = fit(tiny_data, tmp_path / "run")
    path = run.extra["report"]
    assert path == tmp_path / "run" / "report.html"
    page = path.read_text()
    assert sections(page) == ["overview", "curves", "lr", "strategy", *EVALUATION]
    images = inlined_images(page)
    wrong = round((1 - run.test_metrics["test/accuracy"]) * 24)
    assert wrong and len(images) == 4 + min(wrong, 12)  # curves, lr, confusion, reliability + a thumbnail a mistake
    assert all(im.width > 0 and im.height > 0 for im in images)
    saved = sorted(p.name for p in (tmp_path / "run" / "report").iterdir())
    assert {"curves.png", "lr.png", "confusion.png", "reliability.png", "mistake-01.png"} <= set(saved)
    # The per-class table and the confusion matrix count the test split (24 images); supports add up.
    supports = [int(n) for n in re.findall(r"<td>[abc]</td><td>[0-9.]+</td><td>[0-9.]+</td><td>[0-9.]+</td>"
                                           r"<td>(\d+)</td>", page)]
    assert supports == [8, 8, 8]
    assert "on the test split (24 samples)" in page
    ece = float(re.search(r"ECE, 10 bins\): <b>([0-9.]+)</b>", page).group(1))
    assert 0.0 <= ece <= 1.0
    assert "backbone.stage2" in page and "100.00% trainable" in page  # the trainable-parameter table
    assert f"{run.test_metrics['test/accuracy']:.4g}" in page


def test_the_report_scores_the_runs_own_test_pass_without_a_second_one(tmp_path, tiny_data, monkeypatch):
    import headstart.report as report

    def no_second_pass(*args, **kwargs):
        raise AssertionError("the report ran the model over the test split again")

    monkeypatch.setattr(report, "predict_outputs", no_second_pass)
    run = fit(tiny_data, tmp_path / "run")
    assert run.test_outputs is not None and run.test_outputs.shape == (24, 3)
    page = run.extra["report"].read_text()
    assert sections(page) == ["overview", "curves", "lr", "strategy", *EVALUATION]
    # Its confusion matrix is the test accuracy's: the diagonal of the per-class table counts the correct ones.
    right = (run.test_outputs.argmax(1) == tiny_data.test.targets).sum().item()
    assert right == round(run.test_metrics["test/accuracy"] * 24)
    recalls = [float(r) for r in re.findall(r"<td>[abc]</td><td>[0-9.]+</td><td>([0-9.]+)</td>", page)]
    assert round(sum(r * 8 for r in recalls)) == right
    # Rebuilt later without the run's outputs, the report scores the best model itself, to the same page.
    monkeypatch.undo()
    assert write_report(tmp_path / "run", tiny_data).read_text().count("<section") == page.count("<section")


def test_report_off_and_a_failing_report_keeps_the_run(tmp_path, tiny_data, monkeypatch):
    run = fit(tiny_data, tmp_path / "off", report=False)
    assert "report" not in run.extra and not (tmp_path / "off" / "report.html").exists()

    def broken(*args, **kwargs):
        raise RuntimeError("no fonts")

    monkeypatch.setattr("headstart.report.write_report", broken)
    with pytest.warns(UserWarning, match=r"report could not be written \(RuntimeError: no fonts\).*headstart report"):
        run = fit(tiny_data, tmp_path / "broken")
    assert run.extra["report"] is None and run.test_metrics is not None
    assert (tmp_path / "broken" / "best" / "model.safetensors").is_file()


def test_text_report_shows_snippets_of_mistakes(tmp_path):
    words = "alpha beta gamma delta".split()
    texts = [f"{words[i % 4]} {words[(i * 7) % 4]} sample number {i}" for i in range(40)]
    data = from_texts(texts, ["odd" if i % 2 else "even" for i in range(40)], val_fraction=0.25, test_fraction=0.25)
    from test_text import write_tiny_bert

    model = hs.create_model(f"hf:{write_tiny_bert(tmp_path / 'bert')}", pooling="mean")
    run = hs.fit(model, data, "linear-probe", epochs=1, out=tmp_path / "run", **FAST)
    page = run.extra["report"].read_text()
    assert sections(page)[-1] == "mistakes"
    # the probe's head was fitted: the report says so instead of an epoch count and a learning-rate curve
    assert "1 (the head was fitted in one pass)" in page and "at no learning rate" in page
    rows = re.findall(r"<tr><td>(even|odd)</td><td>(even|odd)</td><td>[0-9.]+</td><td>([^<]*)</td></tr>", page)
    assert rows and all(true != pred and "sample number" in text for true, pred, text in rows)


def test_regression_and_multitask_runs_say_why_the_classifier_sections_are_missing(tmp_path, tiny_data):
    x, y = tiny_data.train.images.permute(0, 2, 3, 1).numpy(), tiny_data.train.targets.float().numpy()
    regression = from_arrays(x, y, val_fraction=0.25, seed=0, name="reg")
    torch.manual_seed(0)
    run = hs.fit(hs.create_model("toy:cnn", task="regression"), regression, "full", out=tmp_path / "reg",
                 epochs=1, **FAST)
    page = run.extra["report"].read_text()
    assert sections(page)[-1] == "evaluation" and "not shown for regression" in page
    multi = hs.data.derive_tasks(tiny_data, "item", kind={"a": "x", "b": "x", "c": "y"})
    run = fit(multi, tmp_path / "multi", epochs=1)
    page = run.extra["report"].read_text()
    assert sections(page)[-2:] == ["tasks", "evaluation"] and "not shown for multi-task runs" in page
    assert "val/kind/accuracy" in page  # the per-task curves and metrics


def test_gradual_run_records_each_change_of_what_trains(tmp_path, tiny_data):
    fit(tiny_data, tmp_path / "run", "gradual", epochs=3, unfreeze_every=1)
    recorded = (tmp_path / "run" / "trainable.txt").read_text()
    assert recorded.startswith("strategy gradual") and "from epoch 2:" in recorded and "from epoch 3:" in recorded
    assert "from epoch 2:" in (tmp_path / "run" / "report.html").read_text()


# ------------------------------------------------------------------------------------ rebuilding, comparing

def write_image_folder(root, n=8):
    rng = np.random.default_rng(0)
    for name, colour in {"red": (220, 20, 20), "green": (20, 220, 20), "blue": (20, 20, 220)}.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            pixels = np.clip(np.array(colour) + rng.normal(0, 10, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")


def test_cli_report_rebuilds_from_the_config_data(tmp_path):
    write_image_folder(tmp_path / "imgs")
    out = tmp_path / "run"
    runner = CliRunner()
    res = runner.invoke(app, ["fit", "--backbone", "toy:cnn", "--weights", "random", "--data", str(tmp_path / "imgs"),
                              "--epochs", "1", "--out", str(out), "--set", "train.batch_size=4", "--set",
                              "train.progress=false", "--set", "train.report=false", "--set", "data.val_fraction=0.25"])
    assert res.exit_code == 0, res.output
    assert not (out / "report.html").exists()
    res = runner.invoke(app, ["report", str(out)])
    assert res.exit_code == 0, res.output
    page = (out / "report.html").read_text()
    assert res.output.strip() == f"report: {out / 'report.html'}"
    assert sections(page)[-4:] == list(EVALUATION) and "on the val split (6 samples)" in page


def test_report_without_data_says_how_to_give_it(tmp_path, tiny_data):
    fit(tiny_data, tmp_path / "run", report=False)
    page = hs.write_report(tmp_path / "run").read_text()  # in-memory arrays: config.yaml cannot name them
    assert sections(page)[-1] == "evaluation" and "pass it: hs.write_report(run, data)" in page
    decision = {"strategy": "linear-probe", "options": {}, "train": {"epochs": 2}, "estimates_s": {"full": 30.0},
                "reasons": ["few samples per class: a probe overfits least"]}
    (tmp_path / "run" / "auto.json").write_text(json.dumps(decision))
    page = hs.write_report(tmp_path / "run", tiny_data).read_text()
    assert sections(page) == ["overview", "curves", "lr", "strategy", "auto", *EVALUATION]
    assert "<li>few samples per class: a probe overfits least</li>" in page and "full 30" in page


def test_report_on_a_missing_run_or_one_without_a_best_model_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        write_report(tmp_path / "nope")
    (tmp_path / "plain").mkdir()
    with pytest.raises(ConfigError, match="is not a run folder"):
        write_report(tmp_path / "plain")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.yaml").write_text("train: {epochs: 2}\n")
    with pytest.raises(DataError, match="has no best model .* finished no epoch"):
        write_report(tmp_path / "empty")
    res = CliRunner().invoke(app, ["report", str(tmp_path / "empty")])
    assert res.exit_code == 2 and "has no best model" in res.output


def test_compare_sets_runs_side_by_side(tmp_path, tiny_data):
    fit(tiny_data, tmp_path / "slow", lr=0.001, report=False)
    fit(tiny_data, tmp_path / "fast", lr=0.01, report=False, epochs=3)
    res = CliRunner().invoke(app, ["compare", str(tmp_path / "slow"), str(tmp_path / "fast"), "--out",
                                   str(tmp_path / "cmp" / "c.html")])
    assert res.exit_code == 0, res.output
    page = (tmp_path / "cmp" / "c.html").read_text()
    assert sections(page) == ["config", "results", "curves"]
    assert re.search(r"<tr><td>train.lr</td><td>0.001</td><td>0.01</td></tr>", page)
    assert re.search(r"<tr><td>train.epochs</td><td>2</td><td>3</td></tr>", page)
    assert "train.weight_decay" not in page  # equal in both runs
    test = [json.loads((tmp_path / r / "test_metrics.json").read_text())["test/accuracy"] for r in ("slow", "fast")]
    assert re.search(rf"<tr><td>test/accuracy</td><td>{test[0]:.4g}</td><td>{test[1]:.4g}</td></tr>", page)
    assert len(inlined_images(page)) == 1
    with pytest.raises(ConfigError, match="at least two run folders"):
        compare_runs([tmp_path / "slow"])
    res = CliRunner().invoke(app, ["compare", str(tmp_path / "slow"), str(tmp_path / "missing")])
    assert res.exit_code == 2 and "missing' does not exist" in res.output


# -------------------------------------------------------------------------------------------------- logging

def test_tensorboard_event_files_hold_the_metrics_rows(tmp_path, tiny_data):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    fit(tiny_data, tmp_path / "run", log="tensorboard", report=False, epochs=3)
    rows = read_metrics(tmp_path / "run")
    events = EventAccumulator(str(tmp_path / "run" / "tb"))
    events.Reload()
    tags = events.Tags()["scalars"]
    numeric = [k for k, v in rows[0].items() if k != "epoch" and isinstance(v, (int, float))]
    assert sorted(tags) == sorted(numeric) and {"train/loss", "val/accuracy", "lr"} <= set(tags)
    for tag in tags:
        logged = [(e.step, e.value) for e in events.Scalars(tag)]
        assert logged == [(r["epoch"], pytest.approx(r[tag], rel=1e-6)) for r in rows], tag


def test_tensorboard_asked_for_but_not_installed_is_a_clear_error(tmp_path, tiny_data, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard now fails
    with pytest.raises(ConfigError, match="tensorboard package is not installed: pip install tensorboard"):
        fit(tiny_data, tmp_path / "run", log="tensorboard")
    with pytest.raises(ConfigError, match="train.log"):
        validate_config({"train": {"log": "wandb"}})


# ---------------------------------------------------------------------------------------- a real run, rendered

PROBE = """<script>addEventListener("load", () => {
  const out = document.createElement("pre"); out.id = "probe";
  out.textContent = JSON.stringify({sections: [...document.querySelectorAll("section")].map(s => s.id),
    images: [...document.images].map(i => i.naturalWidth)});
  document.body.appendChild(out);
});</script>"""


def chromium(*args, profile):
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.real
@pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="needs Debian's chromium (/usr/bin/chromium)")
def test_real_report_renders_in_chromium(tmp_path):
    data = hs.datasets.load("fashion-mnist", subset=20, test_subset=20)  # 200 train images, 200 test
    model = hs.create_model("timm:tf_efficientnet_lite0", weights="package:efficientnet-lite0", image_size=96)
    run = hs.fit(model, data, "linear-probe", epochs=2, lr=3e-3, batch_size=32, progress=False, out=tmp_path / "r")
    page = run.extra["report"].read_text()
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("</body>", PROBE + "</body>"))
    proc = chromium("--dump-dom", probed.as_uri(), profile=tmp_path / "profile")
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = json.loads(re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, flags=re.S).group(1)
                       .replace("&quot;", '"'))
    assert found["sections"] == ["overview", "curves", "lr", "strategy", *EVALUATION]
    assert len(found["images"]) >= 5 and all(width > 0 for width in found["images"]), found["images"]
