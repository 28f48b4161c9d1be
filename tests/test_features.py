"""The feature cache: keyed by weights, preprocessing and data; damaged or stale files are rebuilt."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import DDP_PREAMBLE

import headstart as hs
from headstart.data import make_batcher
from headstart.features import cache_key, cached_features, extract_features


@pytest.fixture
def setup(tiny_data):
    model = hs.create_model("toy:cnn", 3)
    batcher = make_batcher(tiny_data.train, model.spec, train=False)
    return model, batcher, tiny_data.train.fingerprint()


def test_cache_hit_returns_identical_features(setup, tmp_path):
    model, batcher, fp = setup
    a, hit_a = cached_features(model.backbone, model.spec, batcher, fp, cache_dir=tmp_path)
    b, hit_b = cached_features(model.backbone, model.spec, batcher, fp, cache_dir=tmp_path)
    assert (hit_a, hit_b) == (False, True)
    assert torch.equal(a, b)
    with torch.no_grad():
        direct = model.backbone.eval().forward_features(batcher.inputs(torch.arange(len(batcher.data))))
    torch.testing.assert_close(a, direct)


def test_key_changes_with_weights_preprocessing_and_data(setup, tiny_data):
    model, _, fp = setup
    base = cache_key(model.backbone, model.spec, fp)
    with torch.no_grad():
        next(model.backbone.parameters())[0, 0, 0, 0] += 1e-3  # a tiny edit of the weights
    assert cache_key(model.backbone, model.spec, fp) != base
    model2 = hs.create_model("toy:cnn", 3)
    k2 = cache_key(model2.backbone, model2.spec, fp)
    spec = dataclasses.replace(model2.spec, preprocessing=model2.spec.preprocessing.with_size(24))
    assert cache_key(model2.backbone, spec, fp) != k2
    other = tiny_data.train.subset(torch.arange(len(tiny_data.train) - 1))
    assert cache_key(model2.backbone, model2.spec, other.fingerprint()) != k2
    assert cache_key(model2.backbone, model2.spec, fp, view="aug0") != k2
    assert cache_key(model2.backbone, model2.spec, fp, bf16=True) != k2


@pytest.mark.parametrize("damage", ["truncate", "garble", "stale"])
def test_damaged_or_stale_cache_is_rebuilt(setup, tmp_path, damage):
    model, batcher, fp = setup
    good, _ = cached_features(model.backbone, model.spec, batcher, fp, cache_dir=tmp_path)
    (path,) = tmp_path.glob("*.safetensors")
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "garble":  # same length, flipped bytes inside the tensor data: only the checksum sees it
        path.write_bytes(raw[:-16] + bytes(b ^ 0xFF for b in raw[-16:]))
    else:  # a file under the right name made for other data
        from safetensors.torch import save_file

        save_file({"features": torch.zeros(3, good.shape[1])}, str(path), metadata={"key": "other"})
    with pytest.warns(UserWarning, match="rebuilding"):
        again, hit = cached_features(model.backbone, model.spec, batcher, fp, cache_dir=tmp_path)
    assert not hit and torch.equal(again, good)
    _, hit = cached_features(model.backbone, model.spec, batcher, fp, cache_dir=tmp_path)
    assert hit  # the rebuilt file is good again


def test_extract_restores_train_mode(setup):
    model, batcher, _ = setup
    model.backbone.train()
    extract_features(model.backbone, batcher)
    assert model.backbone.training


def test_cached_and_uncached_linear_probes_learn_the_same_head(tiny_data, tmp_path):
    heads, histories, tests = [], [], []
    for cache in ("on", "off"):
        torch.manual_seed(0)
        model = hs.create_model("toy:cnn", 3)
        run = hs.fit(model, tiny_data, "linear-probe", epochs=3, lr=0.05, batch_size=8, augment=False, solver="sgd",
                     precision="fp32", cache=cache, cache_dir=str(tmp_path / "cache"), progress=False,
                     out=tmp_path / cache)
        heads.append(model.head.state_dict())
        histories.append(run.history)
        tests.append(run.test_metrics)
    for k in heads[0]:
        torch.testing.assert_close(heads[0][k], heads[1][k], rtol=1e-4, atol=1e-5)
    assert [round(h["val/accuracy"], 6) for h in histories[0]] == [round(h["val/accuracy"], 6) for h in histories[1]]
    # The cached run also scores the test split on cached features: the same metrics as through the model.
    assert tests[0].keys() == tests[1].keys()
    assert all(abs(tests[0][k] - tests[1][k]) < 1e-4 for k in tests[0] if k != "test/loss")
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 3  # train, val and test features


def test_unfrozen_backbone_never_uses_the_cache(tiny_data, tmp_path):
    hs.fit(hs.create_model("toy:cnn", 3), tiny_data, "full", epochs=1, cache="on", batch_size=8,
           cache_dir=str(tmp_path / "cache"), progress=False, out=tmp_path / "r")
    assert not (tmp_path / "cache").exists()


def test_stage_chain_reproduces_forward_features_and_refuses_non_chains():
    from headstart.backbones.stages import sequential_stages

    for name in ("toy:cnn", "timm:test_efficientnet", "timm:resnet18", "torchvision:resnet18"):
        model = hs.create_model(name, 3)
        x = torch.randn(2, *model.spec.preprocessing.input_size)
        assert sequential_stages(model.backbone, x) is not None, name
    vit = hs.create_model("timm:test_vit", 3)  # position embeddings are added outside any child: no chain
    assert sequential_stages(vit.backbone, torch.randn(2, *vit.spec.preprocessing.input_size)) is None


def test_suffix_on_cached_prefix_equals_the_full_forward(tiny_data):
    from headstart.backbones.stages import frozen_prefix_length, sequential_stages
    from headstart.run.inputs import SuffixModel, prefix_activations

    model = hs.create_model("toy:cnn", 3)
    stages = sequential_stages(model.backbone, torch.randn(2, 3, 32, 32))
    stem = model.backbone.net.stem
    stem.requires_grad_(False)
    model.keep_in_eval(("backbone.net.stem",))
    model.train()
    k = frozen_prefix_length(stages)
    assert k == len(list(stem.children()))  # conv, bn, relu of the stem; stage1 trains
    batcher = make_batcher(tiny_data.train, model.spec, train=False)
    acts = prefix_activations(stages[:k], batcher, bf16=False, channels_last=False, batch_size=16)
    suffix = SuffixModel(model, stages[k:]).eval()
    x = batcher.inputs(torch.arange(len(tiny_data.train)))
    with torch.no_grad():
        torch.testing.assert_close(suffix(acts), model.eval()(x), rtol=1e-5, atol=1e-5)
    model.keep_in_eval(())
    model.train()  # the stem's BatchNorm would now update its statistics: the prefix may not be cached
    assert frozen_prefix_length(stages) == 1  # only the conv before it


def test_partial_fine_tune_on_cached_prefix_matches_the_uncached_run(tiny_data, tmp_path):
    results = []
    for cache in ("auto", "off"):
        torch.manual_seed(0)
        model = hs.create_model("toy:cnn", 3)
        run = hs.fit(model, tiny_data, "partial", trainable="last:1", epochs=2, lr=0.01, batch_size=8,
                     augment=False, precision="fp32", cache=cache, progress=False, out=tmp_path / cache)
        results.append((model.state_dict(), run.history))
    (cached, h_cached), (plain, h_plain) = results
    assert h_cached[0]["inputs"].startswith("cached activations") and h_plain[0]["inputs"] == "raw inputs"
    for k in plain:
        torch.testing.assert_close(cached[k].float(), plain[k].float(), rtol=1e-4, atol=1e-5)
    assert [h["val/accuracy"] for h in h_cached] == [h["val/accuracy"] for h in h_plain]


DDP_SCRIPT = DDP_PREAMBLE + """
import json
import headstart.features
headstart.features.inference_module = lambda module, run: module  # count only the extraction's own rows
seen = []
forward = model.backbone.forward_features
model.backbone.forward_features = lambda x: seen.append(len(x)) or forward(x)
hs.fit(model, data, "linear-probe", epochs=3, lr=0.05, batch_size=8, eval_batch_size=8, progress=False,
       precision="fp32",
       cache_dir={out!r} + "/cache", out={out!r} + "/run")
torch.save(model.state_dict(), {out!r} + "/rank" + os.environ["RANK"] + ".pt")
json.dump(sum(seen), open({out!r} + "/rows" + os.environ["RANK"], "w"))
"""


def test_ddp_shards_extraction_and_keeps_the_head_in_sync(tmp_path):
    # Two processes: each extracts half the batches, both receive every row, rank 0 writes the file, and the
    # head trains on cached features with its gradients averaged, so both ranks end with the same head.
    import json

    from conftest import run_two_processes, separable_images

    from headstart.data import from_arrays

    run_two_processes(DDP_SCRIPT, tmp_path)
    a, b = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    torch.manual_seed(0)
    start = hs.create_model("toy:cnn", 3)
    assert not torch.equal(a["head.0.weight"], start.state_dict()["head.0.weight"])  # the head did train
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["inputs"] for r in rows] == ["cached features"] * 3
    # The gathered file holds every row in data order: what one process extracts on its own.
    x, y = separable_images()
    data = from_arrays(x, y, classes=["a", "b", "c"], val_fraction=0.25, seed=0, name="tiny")
    files = sorted((tmp_path / "cache").glob("*.safetensors"))
    assert len(files) == 2  # train and val
    from safetensors.torch import load_file

    extracted = [json.loads((tmp_path / f"rows{r}").read_text()) for r in (0, 1)]
    assert min(extracted) > 0 and sum(extracted) == len(data.train) + len(data.val)  # each row once, split
    cached = {load_file(f)["features"].shape[0]: load_file(f)["features"] for f in files}
    train = data.train
    reference = extract_features(start.backbone, make_batcher(train, start.spec, train=False))
    torch.testing.assert_close(cached[len(train)], reference, atol=1e-5, rtol=1e-4)
