"""Export: ONNX and TorchScript files that compute what the PyTorch model computes, carry their preprocessing,
and load back through hs.load; clear errors for bad input. Tests marked `real` check parity on 256 real
Fashion-MNIST images (EfficientNet-Lite0) and 256 BBC News texts (MiniLM), full and LoRA."""
from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import headstart as hs
from headstart.bundle import load_model
from headstart.cli import app
from headstart.data import from_texts, make_batcher
from headstart.errors import BundleError, ConfigError, DataError
from headstart.export import FORMATS, load_exported

FAST = dict(progress=False, batch_size=8, eval_batch_size=32)


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    from conftest import separable_images
    from headstart.data import from_arrays

    x, y = separable_images()
    xt, yt = separable_images(8, seed=1)
    data = from_arrays(x, y, classes=["a", "b", "c"], val_fraction=0.25, seed=0, x_test=xt, y_test=yt, name="tiny")
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("export") / "run"
    hs.fit(hs.create_model("toy:cnn", 3), data, "full", epochs=2, lr=0.05, out=out, **FAST)
    return out, data


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_export_matches_pytorch_carries_metadata_and_predicts_through_hs_load(image_run, fmt, tmp_path):
    run, data = image_run
    path = hs.export(run, fmt, tmp_path / f"m{FORMATS[fmt]}", data=data, echo=None)
    sidecar = json.loads(path.with_name(path.name + ".json").read_text())
    parity = sidecar["parity"]
    assert parity["passed"] and parity["max_abs_diff"] <= 1e-4 and parity["top1_agreement"] == 1.0
    assert set(parity["batch_sizes"]) == {"1", "7", "64"} and parity["samples"] == len(data.val)
    assert json.loads((run / "export" / "parity.json").read_text())["file"] == str(path)
    assert sidecar["batchnorm_folded"] == 3  # toy:cnn's three conv-BN pairs

    # The preprocessing and labels travel inside the file itself, not only beside it.
    if fmt == "onnx":
        import onnx

        props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
        inside = json.loads(props["headstart"])
        assert json.loads(props["labels"]) == ["a", "b", "c"]
    else:
        with zipfile.ZipFile(path) as z:
            inside = json.loads(z.read(next(n for n in z.namelist() if n.endswith("extra/headstart.json"))))
    pre = load_model(run).spec.preprocessing
    assert inside["preprocessing"] == json.loads(json.dumps(pre.to_dict())) and inside["labels"] == ["a", "b", "c"]
    assert inside["inputs"] == ["pixels"] and inside["outputs"] == ["head"]

    # hs.load runs the file with the same preprocessing and the same API as the bundle.
    exported, original = hs.load(path), hs.load(run, precision="fp32")
    images = data.test.images.permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(exported.predict_proba(images), original.predict_proba(images), atol=1e-5)
    assert [lab for lab, _ in exported.predict(images)] == [lab for lab, _ in original.predict(images)]
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, im in enumerate(images[:5]):
        Image.fromarray(im).save(folder / f"{i}.png")
    paths, preds = exported.predict_files(folder)
    assert paths == original.predict_files(folder)[0]
    assert [lab for lab, _ in preds] == [lab for lab, _ in original.predict_files(folder)[1]]
    assert exported.evaluate(data)["test/accuracy"] == original.evaluate(data)["test/accuracy"]


def test_a_broken_export_fails_the_parity_check(image_run, tmp_path, monkeypatch):
    """The check must be able to fail: an export whose folded weights are perturbed is reported, not passed."""
    import sys

    run, data = image_run
    module = sys.modules["headstart.export"]  # the module: headstart.export is the function
    real = module.inference_graph

    def perturbed(model, sample):
        graph, done = real(model, sample)
        with torch.no_grad():
            next(p for n, p in graph.named_parameters() if n.startswith("head") and n.endswith("bias")).add_(1e-2)
        return graph, done

    monkeypatch.setattr(module, "inference_graph", perturbed)
    with pytest.warns(UserWarning, match="differs from the PyTorch model"):
        path = hs.export(run, "torchscript", tmp_path / "bad.pt", data=data, echo=None)
    parity = json.loads(path.with_name(path.name + ".json").read_text())["parity"]
    assert not parity["passed"] and parity["max_abs_diff"] == pytest.approx(1e-2, rel=1e-3)


def test_lora_export_is_merged_and_equals_the_unmerged_model(tmp_path):
    from conftest import separable_images
    from headstart.data import from_arrays

    x, y = separable_images()
    data = from_arrays(x, y, classes=["a", "b", "c"], val_fraction=0.25, seed=0, name="tiny")
    from safetensors.torch import save_file

    torch.manual_seed(0)  # base weights in a file: the bundle then holds the adapters and head only
    save_file(hs.create_model("toy:cnn").backbone.net.state_dict(), str(tmp_path / "base.safetensors"))
    hs.fit(hs.create_model("toy:cnn", 3, weights=str(tmp_path / "base.safetensors")), data, "lora", lora_r=4, epochs=1, lr=0.05,
           out=tmp_path / "run", **FAST)
    model = load_model(tmp_path / "run")
    assert model.adapters is not None  # the bundle holds adapters; the export must merge them
    path = hs.export(tmp_path / "run", "onnx", data=data, echo=None)
    meta = json.loads(path.with_name(path.name + ".json").read_text())
    assert meta["adapters_merged"] == "lora" and meta["parity"]["passed"]
    x = make_batcher(data.val, model.spec, train=False).inputs(torch.arange(len(data.val)))
    with torch.no_grad():
        expected = model.eval()(x)
    got = load_exported(path)(x)
    assert (got - expected).abs().max() <= 1e-4


def write_tiny_bert(folder):
    from transformers import BertConfig, BertModel

    words = "the a cat dog sat on mat good great bad awful film plot".split()
    folder.mkdir(parents=True)
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=5 + len(words), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64)).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_text_export_pads_like_pytorch_and_carries_its_tokenizer(tmp_path, fmt):
    texts = ["good", "the cat sat on the mat and it was good", "bad film", "awful plot the dog sat",
             "great", "a film", "the plot was bad bad bad", "a great great film"] * 3
    labels = ["pos", "pos", "neg", "neg", "pos", "pos", "neg", "pos"] * 3
    data = from_texts(texts, labels, val_fraction=0.5, seed=0)
    model = hs.create_model(f"hf:{write_tiny_bert(tmp_path / 'bert')}", pooling="mean")
    hs.fit(model, data, "full", epochs=1, out=tmp_path / "run", precision="fp32", **FAST)
    path = hs.export(tmp_path / "run", fmt, data=data, echo=None)
    meta = json.loads(path.with_name(path.name + ".json").read_text())
    assert meta["parity"]["passed"], meta["parity"]  # batches of 1, 7 and 64 texts pad to different widths
    assert (path.parent / meta["preprocessing"]["tokenizer"] / "tokenizer_config.json").is_file()
    assert meta["inputs"][:2] == ["input_ids", "attention_mask"]
    new = ["good film", "the dog sat on the mat", "bad"]
    np.testing.assert_allclose(hs.load(path).predict_proba(new),
                               hs.load(tmp_path / "run", precision="fp32").predict_proba(new), atol=1e-5)


def test_bad_input_gives_clear_errors(image_run, tmp_path):
    run, data = image_run
    with pytest.raises(ConfigError, match="unknown export format 'tflite'; choose one of onnx, torchscript"):
        hs.export(run, "tflite", data=data)
    with pytest.raises(ConfigError, match="pass data="):
        hs.export(run, "onnx")
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text("out: unfinished\n")
    with pytest.raises(BundleError, match="has no best model yet"):
        hs.export(unfinished, "onnx", data=data)
    fake = tmp_path / "fake.onnx"
    fake.write_bytes(b"not onnx")
    with pytest.raises(BundleError, match="damaged or not an ONNX model"):
        hs.load(fake)
    path = hs.export(run, "onnx", tmp_path / "m.onnx", data=data, echo=None)
    predictor = hs.load(path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files in .*empty.*: it is empty"):
        predictor.predict(tmp_path / "empty")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("hello")
    with pytest.raises(DataError, match="it holds only .txt files"):
        predictor.predict_files(tmp_path / "notes")
    with pytest.raises(DataError, match="is not an image file"):
        predictor.predict([tmp_path / "notes" / "a.txt"])


def test_cli_export_checks_parity_and_refuses_bad_input(tmp_path):
    from conftest import separable_images

    x, y = separable_images(8)
    for i, (im, c) in enumerate(zip(x, y)):
        (tmp_path / "pics" / "abc"[c]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(tmp_path / "pics" / "abc"[c] / f"{i}.png")
    runner = CliRunner()
    fitted = runner.invoke(app, ["fit", "--backbone", "toy:cnn", "--weights", "random", "--data",
                                 str(tmp_path / "pics"), "--epochs", "1", "--set", "train.progress=false",
                                 "--set", "data.val_fraction=0.25", "--out", str(tmp_path / "run")])
    assert fitted.exit_code == 0, fitted.output
    result = runner.invoke(app, ["export", str(tmp_path / "run"), "--format", "torchscript"])
    assert result.exit_code == 0, result.output
    assert "top-1 agreement 100.00%: passed" in result.output
    assert json.loads((tmp_path / "run" / "export" / "parity.json").read_text())["passed"]
    assert (tmp_path / "run" / "export" / "model.pt").is_file()
    predicted = runner.invoke(app, ["predict", str(tmp_path / "run" / "export" / "model.pt"), str(tmp_path / "pics")])
    assert predicted.exit_code == 0 and len(predicted.output.splitlines()) == len(x)
    bad = runner.invoke(app, ["export", str(tmp_path / "run"), "--format", "coreml"])
    assert bad.exit_code == 2 and "unknown export format 'coreml'" in bad.output
    bare = runner.invoke(app, ["export", str(tmp_path / "run" / "best")])
    assert bare.exit_code == 2 and "not a run folder" in bare.output


# ----------------------------------------------------------------------------------------------------------
# Real weights, real data: the acceptance figures (max |logit difference| <= 1e-4, 100% top-1)


@pytest.mark.real
@pytest.mark.parametrize("strategy", ["full", "lora"])
def test_real_lite0_fashion_mnist_parity_on_256_images(tmp_path, strategy):
    data = hs.datasets.load("fashion-mnist", subset=10, val_subset=26)  # 260 val images
    model = hs.create_model("timm:tf_efficientnet_lite0", weights="package:efficientnet-lite0", image_size=128)
    hs.fit(model, data, strategy, epochs=1, out=tmp_path / "run", progress=False, batch_size=32,
           **({"lora_r": 4} if strategy == "lora" else {}))
    path = hs.export(tmp_path / "run", "onnx", data=data, echo=None)
    meta = json.loads(path.with_name(path.name + ".json").read_text())
    parity = meta["parity"]
    assert parity["samples"] >= 256 and parity["max_abs_diff"] <= 1e-4 and parity["top1_agreement"] == 1.0
    assert meta["batchnorm_folded"] > 40 and meta["adapters_merged"] == ("lora" if strategy == "lora" else None)


@pytest.mark.real
@pytest.mark.parametrize("strategy", ["full", "lora"])
def test_real_minilm_bbc_news_parity_on_256_texts(tmp_path, strategy):
    data = hs.datasets.load("bbc-news", subset=4, val_fraction=0.2, val_subset=52)  # 260 val texts
    model = hs.create_model("hf:sentence-transformers/all-MiniLM-L6-v2", max_length=128)
    hs.fit(model, data, strategy, epochs=1, out=tmp_path / "run", progress=False, batch_size=8,
           **({"lora_r": 4} if strategy == "lora" else {}))
    path = hs.export(tmp_path / "run", "onnx", data=data, echo=None)
    meta = json.loads(path.with_name(path.name + ".json").read_text())
    parity = meta["parity"]
    assert parity["samples"] >= 256 and parity["max_abs_diff"] <= 1e-4 and parity["top1_agreement"] == 1.0
    assert meta["adapters_merged"] == ("lora" if strategy == "lora" else None)
    texts = ["Shares fell after the bank cut its forecast.", "The striker scored twice in the final."]
    np.testing.assert_allclose(hs.load(path).predict_proba(texts),
                               hs.load(tmp_path / "run", precision="fp32").predict_proba(texts), atol=1e-5)
