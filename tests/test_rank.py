"""hs.rank and `headstart rank`: order, one feature pass per backbone, confirmation runs, errors."""
from __future__ import annotations

import importlib
import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

import headstart as hs
from headstart.cli import app
from headstart.data import from_arrays
from headstart.errors import ConfigError, DataError, HeadstartError
from headstart.run import RunResult
from headstart.plan.transferability import leep, nce

rank_module = importlib.import_module("headstart.plan.rank")  # hs.rank is the function, not the module

SIZE = 16  # toy:mlp reads 3x16x16 images; at this size its transform resizes nothing


def colour_images(n_per_class: int = 30, seed: int = 0):
    """Four classes of noisy flat-colour images: channel 0 tells {0, 1} from {2, 3}, channel 1 tells 0 from 1
    and 2 from 3. A backbone that reads both channels separates all four, one that reads channel 0 only
    separates two pairs, and one that reads differences of pixels (the noise) separates nothing."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for c in range(4):
        colour = np.array([60 if c < 2 else 190, 60 if c % 2 == 0 else 190, 128])
        xs.append(np.clip(colour + rng.normal(0, 12, size=(n_per_class, SIZE, SIZE, 3)), 0, 255).astype(np.uint8))
        ys += [c] * n_per_class
    return np.concatenate(xs), np.array(ys)


@pytest.fixture
def colour_data():
    x, y = colour_images()
    return from_arrays(x, y, classes=list("abcd"), val_fraction=0.25, seed=0, name="colours")


def mlp_weights(path, rows: dict[int, torch.Tensor]) -> str:
    """toy:mlp weights whose features are ReLU(+-row . x) for the given first-layer rows (the rest zero)."""
    w1 = torch.zeros(32, 3 * SIZE * SIZE)
    for i, row in rows.items():
        w1[2 * i], w1[2 * i + 1] = row, -row  # both signs, so the ReLU keeps the whole value
    save_file({"1.weight": w1, "1.bias": torch.zeros(32), "3.weight": torch.eye(32), "3.bias": torch.zeros(32)},
              str(path))
    return str(path)


def channel_mean(ch: int) -> torch.Tensor:
    row = torch.zeros(3 * SIZE * SIZE)
    row[ch * SIZE * SIZE:(ch + 1) * SIZE * SIZE] = 1.0 / (SIZE * SIZE)
    return row


def pixel_difference(a: int, b: int) -> torch.Tensor:
    row = torch.zeros(3 * SIZE * SIZE)
    row[a], row[b] = 1.0, -1.0  # same channel: the class colour cancels, only the noise is left
    return row


@pytest.fixture
def pool(tmp_path):
    """Three toy:mlp backbones, from clearly best to useless on colour_data."""
    good = mlp_weights(tmp_path / "good.safetensors", {0: channel_mean(0), 1: channel_mean(1)})
    weak = mlp_weights(tmp_path / "weak.safetensors", {0: channel_mean(0)})
    noise = mlp_weights(tmp_path / "noise.safetensors", {i: pixel_difference(3 * i, 3 * i + 1) for i in range(4)})
    return {"good": f"toy:mlp@{good}", "weak": f"toy:mlp@{weak}", "noise": f"toy:mlp@{noise}"}


@pytest.mark.parametrize("score", ["logme", "h_score", "linear_probe"])
def test_ranking_orders_clearly_different_backbones(colour_data, pool, tmp_path, score):
    result = hs.rank([pool["noise"], pool["good"], pool["weak"]], colour_data, score, cache_dir=tmp_path / "cache")
    assert [r.backbone for r in result.rows] == [pool["good"], pool["weak"], pool["noise"]]
    assert [r.rank for r in result.rows] == [1, 2, 3]
    values = [r.score for r in result.rows]
    assert values[0] > values[1] > values[2]
    assert result.recommendation == pool["good"] and "highest" in result.reason
    assert all(r.proxy_accuracy is None and r.seconds >= 0 for r in result.rows)


def test_one_feature_pass_per_backbone_and_cache_on_rerun(colour_data, pool, tmp_path, monkeypatch):
    features_module = importlib.import_module("headstart.features")
    real, calls = features_module.extract_features, []

    def counting(backbone, batcher, **kwargs):
        calls.append(len(batcher.data))
        return real(backbone, batcher, **kwargs)

    monkeypatch.setattr(features_module, "extract_features", counting)
    names = [pool["good"], pool["weak"], "toy:cnn"]
    first = hs.rank(names, colour_data, ["logme", "h_score", "linear_probe"], cache_dir=tmp_path)
    # three scores, one pass each over the training split only
    assert calls == [len(colour_data.train)] * 3
    assert not any(r.features_cached for r in first.rows)
    again = hs.rank(names, colour_data, ["logme", "h_score", "linear_probe"], cache_dir=tmp_path)
    assert len(calls) == 3 and all(r.features_cached for r in again.rows)
    assert [(r.backbone, r.scores) for r in again.rows] == [(r.backbone, r.scores) for r in first.rows]


def test_confirm_fine_tunes_top_k_and_recommends_best_val_accuracy(colour_data, pool, tmp_path, monkeypatch):
    # Proxies where the second-best score fine-tunes best: the recommendation must follow the proxy.
    proxy_acc = {pool["good"].split("@")[1]: 0.70, pool["weak"].split("@")[1]: 0.90}
    seen = []

    def fake_fit(model, data, strategy, *, out, epochs, seed, progress, cache_dir, **options):
        seen.append((model.spec.weights, strategy, epochs, data.test, out))
        return RunResult(out, [], 1, {"val/accuracy": proxy_acc[model.spec.weights]}, seconds=1.5)

    result = hs.rank([pool["noise"], pool["weak"], pool["good"]], colour_data, "linear_probe", confirm=2,
                     proxy_strategy="full", proxy_epochs=1, out=tmp_path / "r", fit=fake_fit)
    assert [s[0] for s in seen] == [pool["good"].split("@")[1], pool["weak"].split("@")[1]]  # top 2, in order
    assert all(s[1:4] == ("full", 1, None) for s in seen)  # same recipe for all; the test split stays unseen
    assert [s[4].name for s in seen] == ["proxy-1", "proxy-2"]
    assert [r.proxy_accuracy for r in result.rows] == [0.70, 0.90, None]
    assert result.recommendation == pool["weak"]
    assert "0.9000" in result.reason and pool["good"] in result.reason  # says whom it overrode
    saved = json.loads((tmp_path / "r" / "rank.json").read_text())
    assert saved["recommendation"] == pool["weak"] and saved["confirm"] == 2
    assert "proxy val acc" in (tmp_path / "r" / "rank.md").read_text()


def test_confirm_runs_real_proxies(tiny_data, tmp_path):
    result = hs.rank(["toy:cnn", "toy:mlp"], tiny_data, "logme",
                     confirm=5, out=tmp_path / "r", proxy_options={"lr": 1e-2})
    assert result.confirm == 2  # more than the backbones given: all of them
    for i in (1, 2):
        assert (tmp_path / "r" / f"proxy-{i}" / "best" / "model.safetensors").is_file()
        assert not (tmp_path / "r" / f"proxy-{i}" / "test_metrics.json").exists()
    accs = [r.proxy_accuracy for r in result.rows]
    assert all(0.0 <= a <= 1.0 for a in accs)
    assert result.best.proxy_accuracy == max(accs)
    table = result.to_markdown()
    assert table.count("\n| ") == 3 and f"`{result.recommendation}`" in table  # header + 2 rows


def test_leep_and_nce_use_the_classifier_kept_in_the_weights(tiny_data, tmp_path):
    import timm

    net = timm.create_model("test_efficientnet", num_classes=7)
    torch.nn.init.normal_(net.classifier.weight, std=0.5)  # confident, varied source predictions
    path = tmp_path / "src.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    entry = f"timm:test_efficientnet@{path}"
    result = hs.rank([entry], tiny_data, ["leep", "nce"], image_size=32, precision="fp32", cache_dir=tmp_path)

    model = hs.create_model("timm:test_efficientnet", weights=str(path), image_size=32)
    batcher = hs.data.make_batcher(tiny_data.train, model.spec, train=False)
    with torch.no_grad():
        probs = net.eval()(batcher.inputs(torch.arange(len(tiny_data.train)))).softmax(1)  # the whole source model
    y = tiny_data.train.targets
    assert math.isclose(result.rows[0].scores["leep"], leep(probs, y), rel_tol=1e-4, abs_tol=1e-6)
    assert result.rows[0].scores["nce"] == pytest.approx(nce(probs.argmax(1), y), abs=1e-9)


def test_source_classifier_needs_exactly_one_candidate(tmp_path):
    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    save_file({"body.weight": torch.ones(8, 8), "fc.weight": torch.ones(5, 8), "fc.bias": torch.zeros(5)}, str(one))
    save_file({"fc.weight": torch.ones(5, 8), "head.weight": torch.ones(3, 8)}, str(two))
    w, b = rank_module.source_classifier(str(one), 8)
    assert w.shape == (5, 8) and b.shape == (5,)
    assert rank_module.source_classifier(str(one), 9) is None  # does not read features of this width
    assert rank_module.source_classifier(str(two), 8) is None  # ambiguous
    assert rank_module.source_classifier(None, 8) is None


def test_parse_backbone():
    parse = rank_module.parse_backbone
    assert parse("timm:tf_efficientnet_lite0@package:efficientnet-lite0") == ("timm:tf_efficientnet_lite0",
                                                                                "package:efficientnet-lite0")
    assert parse("toy:cnn") == ("toy:cnn", None)
    assert parse("toy:cnn@/a/b@c.safetensors") == ("toy:cnn", "/a/b@c.safetensors")
    for bad in ("@x", "toy:cnn@", ""):
        with pytest.raises(ConfigError, match="NAME@WEIGHTS"):
            parse(bad)


def _one_class():
    """Splits with one class, built directly: the loaders refuse them, and rank must refuse them too."""
    from headstart.data import DataSplits, ImageData

    images = torch.full((20, 3, 8, 8), 100, dtype=torch.uint8)
    part = ImageData(images, torch.zeros(20, dtype=torch.long), ["only"])
    return DataSplits(part, part.subset(torch.arange(5)), None, ["only"], "one")


@pytest.mark.parametrize("case, error, match", [
    ("empty", ConfigError, "at least one backbone"),
    ("string", ConfigError, "list of names"),
    ("repeated", ConfigError, "more than once"),
    ("unknown score", HeadstartError, "unknown transferability score 'logmee'.*Did you mean 'logme'"),
    ("unknown source", HeadstartError, "unknown backbone source 'nope'"),
    ("bad model", HeadstartError, "backbone 'toy:nope' could not be built.*unknown toy model"),
    ("missing weights", HeadstartError, r"backbone 'toy:cnn@/no/such.safetensors' could not be built.*does not exist"),
    ("one class", DataError, "only one class"),
    ("negative confirm", ConfigError, "confirm must be an int >= 0"),
    ("confirm without val", DataError, "val split"),
    ("proxy clash", ConfigError, "proxy_options may not set"),
    ("leep without classifier", DataError, "leep read.*toy:cnn.*logme"),
])
def test_bad_input(tiny_data, case, error, match):
    data, kwargs = tiny_data, {}
    backbones = ["toy:cnn", "toy:mlp"]
    if case == "empty":
        backbones = []
    elif case == "string":
        backbones = "toy:cnn"
    elif case == "repeated":
        backbones = ["toy:cnn", "toy:mlp", "toy:cnn"]
    elif case == "unknown score":
        kwargs["score"] = "logmee"
    elif case == "unknown source":
        backbones = ["toy:cnn", "nope:x"]
    elif case == "bad model":
        backbones = ["toy:cnn", "toy:nope"]
    elif case == "missing weights":
        backbones = ["toy:cnn@/no/such.safetensors"]
    elif case == "one class":
        data = _one_class()
    elif case == "negative confirm":
        kwargs["confirm"] = -1
    elif case == "confirm without val":
        data = from_arrays(*_arrays(tiny_data), classes=["a", "b", "c"], val_fraction=0.0)
        kwargs["confirm"] = 1
    elif case == "proxy clash":
        kwargs.update(confirm=1, proxy_options={"epochs": 3})
    elif case == "leep without classifier":
        kwargs["score"] = "leep"
    with pytest.raises(error, match=match):
        hs.rank(backbones, data, **kwargs)


def _arrays(data):
    return data.train.images.permute(0, 2, 3, 1).numpy(), data.train.targets.numpy()


def test_constant_features_are_named_in_the_score_error(colour_data, tmp_path):
    dead = mlp_weights(tmp_path / "dead.safetensors", {})  # all-zero weights: every feature is 0
    with pytest.raises(DataError, match=f"backbone 'toy:mlp@{dead}'.*constant"):
        hs.rank([f"toy:mlp@{dead}"], colour_data, "h_score")


def test_cli_rank(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["rank", "--backbones", "toy:cnn", "toy:mlp", "--data", "digits", "--subset", "10",
                              "--image-size", "16", "--score", "linear_probe", "--score", "logme",
                              "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert "| linear_probe | logme |" in res.output and "Recommendation:" in res.output
    saved = json.loads((tmp_path / "r" / "rank.json").read_text())
    assert sorted(r["backbone"] for r in saved["rows"]) == ["toy:cnn", "toy:mlp"]
    assert saved["data"]["train_samples"] == 100  # 10 per class

    res = runner.invoke(app, ["rank", "--backbones", "toy:cnn", "--data", "digits", "--score", "logmee"])
    assert res.exit_code == 2 and "Did you mean 'logme'" in res.output
    res = runner.invoke(app, ["rank", "--backbones", "toy:cnn", "--data", "digits", "--scroe", "x"])
    assert res.exit_code == 2 and "no such option '--scroe'" in res.output
