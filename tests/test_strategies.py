"""Strategies are correct by construction: parametrised over every registered strategy and over a CNN with
BatchNorm, a ViT and a BERT, checked against an oracle written from the strategy's definition (not its code).

A new strategy is picked up automatically: it must train the head, give every trainable parameter a
gradient, keep frozen weights and statistics bit-identical, and put exactly its trainable parameters into
the optimizer. Add an entry to EXPECTED (and TEST_OPTIONS if it needs options) to check its exact set.
"""
from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import DDP_PREAMBLE

import headstart as hs
from headstart.bundle import load_model, save_bundle
from headstart.config import StrategyConfig, TrainConfig, load_config
from headstart.errors import BundleError, ConfigError
from headstart.run import loop
from headstart.run.checkpoint import load_checkpoint
from headstart.run.optim import build_scheduler, regroup, warmup_cosine
from headstart.strategies import STRATEGIES, get_strategy, select_params, trainable_summary
from headstart.strategies import named_layer_groups
from headstart.data import Batch
from headstart.objectives import Objective, Step, TaskTerm
from headstart.objectives.regularizers import L2SP, BatchSpectralShrinkage

FAST = dict(progress=False, batch_size=8, eval_batch_size=32)
KINDS = ["cnn", "vit", "bert"]
LR, HEAD_LR, WD = 1e-3, 2e-3, 0.05
BERT_WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + "the a cat dog sat on mat ran fast slow red".split()


# ------------------------------------------------------------------------------------------------ models

@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    """A tiny random BERT with its tokenizer, saved as transformers saves it (for the hf: source)."""
    from headstart.backbones import SOURCES

    if "hf" not in SOURCES:
        pytest.skip("the hf: text backbone source is not available")
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-bert")
    (folder / "vocab.txt").write_text("\n".join(BERT_WORDS) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(str(folder))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(BERT_WORDS), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32)
    BertModel(config).save_pretrained(str(folder))
    return folder


@pytest.fixture
def zoo(request):
    """zoo(kind) -> (fresh model with a 3-class head, a batch of inputs, targets)."""

    def make(kind: str, weights: str | None = None):
        torch.manual_seed(0)
        if kind == "cnn":
            x = torch.randn(6, 3, 32, 32)
            return hs.create_model("toy:cnn", 3, weights=weights), x, torch.tensor([0, 1, 2] * 2)
        if kind == "vit":
            x = torch.randn(4, 3, 160, 160)
            return hs.create_model("timm:test_vit", 3, weights=weights), x, torch.tensor([0, 1, 2, 0])
        folder = request.getfixturevalue("bert_dir")
        from headstart.backbones.hf_source import load_tokenizer

        tokens = load_tokenizer(str(folder))(["the cat sat", "a dog ran fast on the mat", "red cat", "slow dog"],
                                              padding=True, return_tensors="pt")
        return hs.create_model(f"hf:{folder}", 3), dict(tokens), torch.tensor([0, 1, 2, 0])

    return make


# ------------------------------------------------------------------------------------------------ oracles

def _head(model) -> set[str]:
    return {n for n, _ in model.named_parameters() if n.startswith("head.")}


def _all(model) -> set[str]:
    return {n for n, _ in model.named_parameters()}


def _last_groups(model, k: int) -> set[str]:
    groups = model.spec.layer_groups
    return {f"backbone.{p}" for g in groups[len(groups) - k:] for p in g.params} if k else set()


def _norm_params(model) -> set[str]:
    return {f"backbone.{m}.{n}" for m, mod in model.backbone.named_modules()
            if isinstance(mod, (nn.LayerNorm, nn.BatchNorm2d)) for n, _ in mod.named_parameters(recurse=False)}


def _discriminative_lrs(model) -> list[float]:
    return [1e-4 * (i + 1) for i in range(len(model.spec.layer_groups))] + [5e-3]


TEST_OPTIONS = {
    "gradual": lambda m: {"unfreeze_every": 1},
    "lp-ft": lambda m: {"lp_epochs": 1, "ft_lr_scale": 0.1},
    "discriminative": lambda m: {"group_lrs": _discriminative_lrs(m)},
    "lora": lambda m: {"lora_r": 2},
    "layer-decay": lambda m: {"layer_decay": 0.5},
}

# What trains at an epoch, from each strategy's definition (spec read before apply; PEFT by parameter name).
EXPECTED = {
    "linear-probe": lambda m, e, spec: _head(m),
    "full": lambda m, e, spec: _all(m),
    "l2-sp": lambda m, e, spec: _all(m),
    "bss": lambda m, e, spec: _all(m),
    "layer-decay": lambda m, e, spec: _all(m),
    "discriminative": lambda m, e, spec: _all(m),
    "partial": lambda m, e, spec: _head(m) | spec(1),
    "gradual": lambda m, e, spec: _head(m) | spec(e),
    "lp-ft": lambda m, e, spec: _head(m) if e < 1 else _all(m),
    "lora": lambda m, e, spec: _head(m) | {n for n in _all(m) if ".lora_A." in n or ".lora_B." in n},
    "ia3": lambda m, e, spec: _head(m) | {n for n in _all(m) if ".ia3_l." in n},
    "bitfit": lambda m, e, spec: _head(m) | {n for n in _all(m) if n.startswith("backbone.") and n.endswith(".bias")},
    "norm-tuning": lambda m, e, spec: _head(m) | _norm_params(m),
}


def expected_lr(name: str, model, epoch: int, group: str) -> float:
    """The peak learning rate of an optimizer group, from the strategy's definition."""
    group = group.removesuffix("/no_decay")
    names = [f"backbone.{g}" for g in model.spec.group_names] + ["head"]
    depth = len(names) - 1 - names.index(group)  # head 0, the group below it 1, ...
    base = HEAD_LR if group == "head" else LR
    if name == "layer-decay":
        return base * 0.5 ** depth
    if name == "discriminative":
        return _discriminative_lrs(model)[names.index(group)]
    if name == "lp-ft" and epoch >= 1:
        return base * 0.1
    return base


def strategy_for(name: str, model):
    return get_strategy(name, **TEST_OPTIONS.get(name, lambda m: {})(model))


def applied(zoo, kind: str, name: str, epoch: int):
    model, x, y = zoo(kind)
    spec_groups = lambda k: _last_groups(model, k)  # noqa: E731  (read before a PEFT strategy renames them)
    before = {k: spec_groups(k) for k in range(len(model.spec.layer_groups) + 1)}
    strat = strategy_for(name, model)
    strat.apply(model, epoch)
    expected = EXPECTED.get(name)
    want = expected(model, epoch, lambda k: before[min(k, len(before) - 1)]) if expected else None
    return model, x, y, strat, want


def trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def loss_of(model, strat, x, y):
    objective = Objective([TaskTerm(hs.objectives.CrossEntropy())]).with_terms(strat.regularizers(model))
    return objective(model, model, Batch(x, y))["loss"]


def step_of(model, features=None):
    """What a loss term is given, for a term that reads only the model (and the features)."""
    return Step(model, {}, features, None)


# ------------------------------------------------------------------------------------------------ invariants

@pytest.mark.parametrize("epoch", [0, 2])
@pytest.mark.parametrize("name", STRATEGIES.list())
@pytest.mark.parametrize("kind", KINDS)
def test_only_the_intended_parameters_get_gradients(zoo, kind, name, epoch):
    model, x, y, strat, want = applied(zoo, kind, name, epoch)
    got = trainable(model)
    if want is not None:
        assert got == want, f"{name} trains {sorted(got ^ want)[:6]} unexpectedly (or misses them)"
    assert _head(model) <= got, "the new head must always train"
    head_only = name == "linear-probe" or (name in ("gradual", "lp-ft") and epoch == 0)
    assert bool(got - _head(model)) != head_only, f"{name} at epoch {epoch} trains {len(got)} parameters"
    model.train()
    loss_of(model, strat, x, y).backward()
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), f"trainable {n} got no gradient"
        else:
            assert p.grad is None, f"frozen {n} got a gradient"
    backbone_grads = [p.grad.abs().sum() for n, p in model.named_parameters()
                      if p.requires_grad and n.startswith("backbone.")]
    assert not backbone_grads or sum(backbone_grads) > 0


@pytest.mark.parametrize("epoch", [0, 2])
@pytest.mark.parametrize("name", STRATEGIES.list())
@pytest.mark.parametrize("kind", ["cnn", "vit"])
def test_frozen_weights_and_bn_statistics_stay_bit_identical(zoo, kind, name, epoch):
    model, x, y, strat, _ = applied(zoo, kind, name, epoch)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # Weight decay > 0: a frozen parameter that slipped into the optimizer would still move.
    opt = torch.optim.AdamW(strat.param_groups(model, epoch, LR, 0.1, HEAD_LR))
    model.train()
    for _ in range(3):
        loss_of(model, strat, x, y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    after = model.state_dict()
    params = dict(model.named_parameters())
    for k, v in before.items():
        if k in params:
            same = torch.equal(v, after[k])
            assert same != params[k].requires_grad, f"{k}: {'changed while frozen' if not same else 'did not train'}"
    modules = dict(model.named_modules())
    norms = [n for n, m in modules.items() if isinstance(m, nn.BatchNorm2d)]
    assert norms or kind != "cnn"
    for n in norms:
        frozen = not any(p.requires_grad for p in modules[n].parameters()) or strat.bn == "frozen"
        changed = not torch.equal(before[f"{n}.running_mean"], after[f"{n}.running_mean"])
        assert changed != frozen, f"{n}: BatchNorm statistics {'drifted' if changed else 'did not update'}"


@pytest.mark.parametrize("epoch", [0, 2])
@pytest.mark.parametrize("name", STRATEGIES.list())
@pytest.mark.parametrize("kind", KINDS)
def test_optimizer_groups_hold_exactly_the_trainable_parameters_at_their_lrs(zoo, kind, name, epoch):
    model, x, y, strat, _ = applied(zoo, kind, name, epoch)
    groups = strat.param_groups(model, epoch, LR, WD, HEAD_LR)
    opt = torch.optim.AdamW(groups)
    sched = build_scheduler(opt, total_steps=10, warmup_steps=2)
    loss_of(model, strat, x, y).backward()
    opt.step(), sched.step()
    in_groups = [p for g in opt.param_groups for p in g["params"]]
    assert len(in_groups) == len({id(p) for p in in_groups}), "a parameter is in two groups"
    assert {id(p) for p in in_groups} == {id(p) for p in model.parameters() if p.requires_grad}
    factor = warmup_cosine(10, 2)(1)
    l2sp = name == "l2-sp"
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(expected_lr(name, model, epoch, g["name"]) * factor), g["name"]
        if g["name"].endswith("/no_decay"):
            assert g["weight_decay"] == 0
        else:
            assert g["weight_decay"] == (0 if l2sp else WD)  # L2-SP replaces weight decay
            assert all(p.ndim > 1 for p in g["params"])
    summary = trainable_summary(model, opt)
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert next(line for line in summary.splitlines() if line.startswith("total")).split()[1] == f"{total:,}"
    for group, named in named_layer_groups(model):
        row = next(line for line in summary.splitlines() if line.split()[0] == group)
        count = sum(p.numel() for _, p in named if p.requires_grad)
        assert row.split()[1] == f"{count:,}", row
        if count:
            assert f"{expected_lr(name, model, epoch, group):.2e}" in row, row


def test_summary_reports_adapters_and_bn_state(zoo):
    model, *_ = zoo("cnn")
    get_strategy("lora", lora_r=2).apply(model)
    summary = trainable_summary(model)
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert f"{lora:,} adapter parameters" in summary and "lora on 3 layers" in summary
    assert "frozen" in summary  # the base's BatchNorm statistics are fixed
    model, *_ = zoo("cnn")
    get_strategy("gradual").apply(model, 1)
    rows = {line.split()[0]: line.split()[-1] for line in trainable_summary(model).splitlines()[1:-1]}
    assert rows == {"backbone.stem": "frozen", "backbone.stage1": "frozen", "backbone.stage2": "train", "head": "-"}


# ------------------------------------------------------------------------------------------------ mid-run changes

def test_unfreezing_mid_run_adds_groups_that_the_schedule_keeps_scaling(zoo):
    model, x, y = zoo("cnn")
    strat = get_strategy("gradual")
    strat.apply(model, 0)
    opt = torch.optim.AdamW(strat.param_groups(model, 0, LR, WD, HEAD_LR))
    sched = build_scheduler(opt, total_steps=20, warmup_steps=3)
    for _ in range(4):
        F.cross_entropy(model(x), y).backward()
        opt.step(), opt.zero_grad(), sched.step()
    head_state = {k: v.clone() for k, v in opt.state[model.head[0].weight].items()}
    strat.apply(model, 1)
    regroup(opt, sched, strat.param_groups(model, 1, LR, WD, HEAD_LR))
    assert torch.equal(opt.state[model.head[0].weight]["exp_avg"], head_state["exp_avg"]), "head moments lost"
    names = [g["name"] for g in opt.param_groups]
    assert names == ["backbone.stage2", "backbone.stage2/no_decay", "head", "head/no_decay"]
    for _ in range(3):
        F.cross_entropy(model(x), y).backward()
        opt.step(), opt.zero_grad(), sched.step()
        factor = warmup_cosine(20, 3)(sched.last_epoch)
        for g in opt.param_groups:
            base = HEAD_LR if g["name"].startswith("head") else LR
            assert g["lr"] == pytest.approx(base * factor), g["name"]
    assert len(sched.base_lrs) == len(opt.param_groups) == len(sched.get_last_lr())


def _crash_at(monkeypatch, epoch_index: int):
    real = loop.train_epoch

    def crash(*a, **kw):
        if kw["epoch"] == epoch_index:
            raise KeyboardInterrupt("killed")
        return real(*a, **kw)

    monkeypatch.setattr("headstart.run.trainer.train_epoch", crash)
    return real


@pytest.mark.parametrize("name,options,crash", [
    ("gradual", {"unfreeze_every": 1}, 2),  # killed in the epoch where the second group unfreezes
    ("lp-ft", {"lp_epochs": 2}, 2),  # killed in the first fine-tuning epoch
    ("lp-ft", {"lp_epochs": 2}, 1),  # killed while still probing
    ("lora", {"lora_r": 2}, 1),  # adapters are re-created before the checkpoint loads
])
def test_resume_mid_schedule_reproduces_the_uninterrupted_run(tiny_data, tmp_path, monkeypatch, name, options,
                                                              crash):
    def make():
        torch.manual_seed(0)
        return hs.create_model("toy:cnn", 3)

    args = dict(epochs=4, lr=0.01, warmup_epochs=0.5, **options, **FAST)
    full_model = make()
    full = hs.fit(full_model, tiny_data, name, out=tmp_path / "a", **args)
    real = _crash_at(monkeypatch, crash)
    with pytest.raises(KeyboardInterrupt):
        hs.fit(make(), tiny_data, name, out=tmp_path / "b", **args)
    monkeypatch.setattr("headstart.run.trainer.train_epoch", real)
    resumed_model = make()
    resumed = hs.fit(resumed_model, tiny_data, name, out=tmp_path / "b", resume=True, **args)

    strip = lambda rows: [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in rows]  # noqa: E731
    assert strip(resumed.history) == strip(full.history)
    assert resumed.test_metrics == full.test_metrics
    assert trainable(resumed_model) == trainable(full_model)
    a, b = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    groups = lambda s: [{k: v for k, v in g.items() if k != "params"} | {"n": len(g["params"])}  # noqa: E731
                        for g in s["optimizer"]["param_groups"]]
    assert groups(a) == groups(b)
    assert a["scheduler"]["base_lrs"] == b["scheduler"]["base_lrs"]
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k


def test_regularisers_combine_with_any_strategy_and_cached_features(tiny_data, tmp_path):
    # Epoch 1 trains the head on cached features (frozen backbone), epoch 2 the whole model: both add the terms.
    run = hs.fit(hs.create_model("toy:cnn", 3), tiny_data, "lp-ft", lp_epochs=1, l2sp_alpha=0.1, bss_eta=0.01,
                 epochs=2, out=tmp_path / "r", lr=0.01, **FAST)
    assert len(run.history) == 2 and all(r["train/loss"] > 0 for r in run.history)


DDP_SCRIPT = DDP_PREAMBLE + """
hs.fit(model, data, "gradual", unfreeze_every=1, epochs=3, lr=0.01, batch_size=8, progress=False, cache="off",
       out={out!r} + "/run")
torch.save(model.state_dict(), {out!r} + "/rank" + os.environ["RANK"] + ".pt")
"""


def test_unfreezing_under_ddp_keeps_every_rank_in_sync(tmp_path):
    # DDP registers the parameters that need gradients when it wraps the model: without re-wrapping after
    # unfreezing, each rank would train its newly unfrozen layers on its own half of the data and drift apart.
    from conftest import run_two_processes

    run_two_processes(DDP_SCRIPT, tmp_path)
    a, b = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert [k for k in a if k.endswith(("weight", "bias")) and not torch.equal(a[k], b[k])] == []
    groups = [g["name"] for g in load_checkpoint(tmp_path / "run")["optimizer"]["param_groups"]]
    assert groups[:2] == ["backbone.stage1", "backbone.stage1/no_decay"]  # two groups were unfrozen


def test_every_registered_strategy_runs_through_fit(tiny_data, tmp_path):
    for name in STRATEGIES.list():
        model = hs.create_model("toy:cnn", 3)
        options = TEST_OPTIONS.get(name, lambda m: {})(model)
        run = hs.fit(model, tiny_data, name, out=tmp_path / name, epochs=2, lr=0.01, **options, **FAST)
        epochs = 1 if name == "linear-probe" else 2  # a linear probe's head is fitted in one pass
        assert len(run.history) == epochs and run.test_metrics is not None, name
        assert run.extra["bundle_bytes"] > 0
        cfg = load_config(tmp_path / name / "config.yaml")
        assert cfg.strategy.name == name and all(getattr(cfg.strategy, k) == v for k, v in options.items())


# ------------------------------------------------------------------------------------------------ PEFT

def _perturb_adapters(model) -> None:
    """Move the adapters off their identity start, as training would."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_B." in n or ".ia3_l." in n or n.startswith("head."):
                p.add_(torch.randn_like(p) * 0.3)


@pytest.mark.parametrize("method", ["lora", "ia3"])
@pytest.mark.parametrize("kind", KINDS)
def test_adapters_start_as_the_base_model_and_merge_to_the_same_function(zoo, kind, method):
    model, x, _ = zoo(kind)
    keys, groups = set(model.state_dict()), [g.params for g in model.spec.layer_groups]
    model.eval()
    base = model(x)
    strategy_for(method, model).apply(model)
    assert model.adapters["targets"], "no layer was adapted"
    model.eval()
    torch.testing.assert_close(model(x), base, rtol=0, atol=0)  # zero-initialised LoRA / unit IA3 vectors
    _perturb_adapters(model)
    unmerged = model(x)
    assert not torch.allclose(unmerged, base)
    model.merge_adapters()
    torch.testing.assert_close(model(x), unmerged, rtol=1e-5, atol=1e-5)
    assert set(model.state_dict()) == keys and model.adapters is None
    assert [len(g.params) for g in model.spec.layer_groups] == [len(g) for g in groups]
    model.train()  # the BN policy still names modules that exist


def test_lora_targets_conv_and_linear_layers(zoo):
    cnn, *_ = zoo("cnn")
    get_strategy("lora", lora_r=2).apply(cnn)
    assert cnn.adapters["targets"] == ["net.stem.0", "net.stage1.0", "net.stage2.0"]  # Conv2d
    vit, *_ = zoo("vit")
    get_strategy("lora", lora_r=4, peft_targets=["qkv", "fc2"]).apply(vit)
    assert len(vit.adapters["targets"]) == 12 and all(t.endswith(("qkv", "fc2")) for t in vit.adapters["targets"])
    eff = hs.create_model("timm:test_efficientnet", 3)
    get_strategy("lora", lora_r=4).apply(eff)  # depthwise convolutions are left out automatically
    mods = dict(eff.backbone.named_modules())
    assert all(mods[t].get_base_layer().groups == 1 for t in eff.adapters["targets"])


def _base_weights(zoo, kind: str, tmp_path) -> str:
    if kind == "bert":
        return None  # the hf folder itself is the base weights' source
    from safetensors.torch import save_file

    model, *_ = zoo(kind)
    path = tmp_path / f"{kind}-base.safetensors"
    save_file({k: v.contiguous() for k, v in model.backbone.net.state_dict().items()}, str(path))
    return str(path)


@pytest.mark.parametrize("name", ["lora", "ia3", "bitfit", "norm-tuning"])
@pytest.mark.parametrize("kind", KINDS)
def test_adapter_bundle_is_small_and_reloads_with_its_head(zoo, tmp_path, kind, name):
    model, x, _ = zoo(kind, weights=_base_weights(zoo, kind, tmp_path))
    assert model.spec.weights
    strategy_for(name, model).apply(model)
    _perturb_adapters(model)
    if name in ("bitfit", "norm-tuning"):
        with torch.no_grad():
            for n in trainable(model):
                dict(model.named_parameters())[n].add_(0.1)
    model.eval()
    expected = model(x)
    save_bundle(model, tmp_path / "adapters")
    meta = json.loads((tmp_path / "adapters" / "headstart.json").read_text())
    assert meta["adapters"]["method"] == name.replace("-tuning", "")
    assert meta["adapters"]["base_weights"] == model.spec.weights
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "adapters" / "model.safetensors"))
    assert {k for k in saved if k.startswith("head.")} == {k for k in model.state_dict() if k.startswith("head.")}
    full = sum(v.numel() for v in model.state_dict().values())
    assert sum(v.numel() for v in saved.values()) < 0.5 * full, "an adapter bundle must not hold the base"
    reloaded = load_model(tmp_path / "adapters")
    torch.testing.assert_close(reloaded(x), expected, rtol=1e-5, atol=1e-5)


def test_adapters_on_random_base_weights_are_saved_merged(zoo, tmp_path):
    model, x, _ = zoo("cnn")  # no weights: the base cannot be rebuilt from a source
    get_strategy("lora", lora_r=2).apply(model)
    _perturb_adapters(model)
    model.eval()
    save_bundle(model, tmp_path / "b")
    assert "adapters" not in json.loads((tmp_path / "b" / "headstart.json").read_text())
    torch.testing.assert_close(load_model(tmp_path / "b")(x), model(x), rtol=1e-5, atol=1e-5)
    assert model.adapters is not None, "saving must not merge the model being trained"


def test_adapter_bundle_refuses_changed_base_weights(zoo, tmp_path):
    from safetensors.torch import save_file

    path = _base_weights(zoo, "cnn", tmp_path)
    model, *_ = zoo("cnn", weights=path)
    get_strategy("lora", lora_r=2).apply(model)
    save_bundle(model, tmp_path / "b")
    other, *_ = zoo("cnn")
    with torch.no_grad():
        other.backbone.net.stem[0].weight.add_(1)
    save_file({k: v.contiguous() for k, v in other.backbone.net.state_dict().items()}, path)
    with pytest.raises(BundleError, match="changed since the adapters were trained"):
        load_model(tmp_path / "b")
    os.remove(path)
    with pytest.raises(BundleError, match="needs its base weights"):
        load_model(tmp_path / "b")


# ------------------------------------------------------------------------------------------------ regularisers

def test_l2sp_is_the_distance_to_the_pretrained_weights(zoo):
    model, x, y = zoo("cnn")
    term = L2SP(model, alpha=0.3, beta=0.2)
    head_sq = sum(p.pow(2).sum() for p in model.head.parameters())
    torch.testing.assert_close(term(step_of(model)), 0.1 * head_sq)  # w = w0: only beta/2 * ||head||^2
    w = model.backbone.net.stage1[0].weight
    delta = torch.randn_like(w) * 0.1
    with torch.no_grad():
        w.add_(delta)
    value = term(step_of(model))
    torch.testing.assert_close(value, 0.15 * delta.pow(2).sum() + 0.1 * head_sq)
    value.backward()
    torch.testing.assert_close(w.grad, 0.3 * delta)  # d/dw alpha/2 ||w - w0||^2 = alpha (w - w0)
    w.requires_grad_(False)  # frozen parameters are skipped: they cannot move
    torch.testing.assert_close(term(step_of(model)), 0.1 * head_sq)


def test_bss_shrinks_the_smallest_singular_values_of_the_batch_features(zoo):
    model, x, y = zoo("cnn")
    features = torch.randn(8, 5)
    sigma = torch.linalg.svdvals(features.double())
    value = BatchSpectralShrinkage(eta=0.5, k=2)(step_of(model, features))
    torch.testing.assert_close(value.double(), 0.5 * (sigma[-2:] ** 2).sum(), rtol=1e-5, atol=1e-6)
    # The objective hands the term the backbone's pooled features, taken from the real forward pass.
    seen = []

    class Spy(BatchSpectralShrinkage):
        def __call__(self, step):
            seen.append(step.features)
            return super().__call__(step)

    objective = Objective([TaskTerm(hs.objectives.CrossEntropy())]).with_terms([Spy(eta=0.5, k=1)])
    model.eval()
    out = objective(model, model, Batch(x, y))
    torch.testing.assert_close(seen[0], model.forward_features(x))
    plain = F.cross_entropy(model(x), y)
    torch.testing.assert_close(out["loss"], plain + BatchSpectralShrinkage(0.5, 1)(step_of(model, seen[0])))
    assert objective.loss(model(x), y).item() == pytest.approx(plain.item())  # evaluation loss stays plain


# ------------------------------------------------------------------------------------------------ freeze spec

@pytest.mark.parametrize("kind", KINDS)
def test_freeze_spec_selects_through_the_layer_groups(zoo, kind):
    model, *_ = zoo(kind)
    groups = model.spec.layer_groups
    params = lambda gs: {f"backbone.{p}" for g in gs for p in g.params}  # noqa: E731
    assert select_params("last:2", model) == params(groups[-2:])
    assert select_params("first:1", model) == params(groups[:1])
    assert select_params(f"from:{groups[1].name}", model) == params(groups[1:])
    assert select_params(f"backbone.{groups[0].name}", model) == params(groups[:1])  # summary names work too
    assert select_params(f"first:1, {groups[-1].name}", model) == params([groups[0], groups[-1]])
    assert select_params("head", model) == _head(model)
    biases = select_params("*.bias", model)
    assert biases and all(n.endswith(".bias") for n in biases)


def test_partial_trains_what_the_spec_selects(zoo):
    model, *_ = zoo("vit")
    assert model.spec.group_names[-2:] == ["blocks.4", "blocks.5+norm"]
    get_strategy("partial", trainable="from:blocks.4").apply(model)
    assert trainable(model) == _last_groups(model, 2) | _head(model)
    model, *_ = zoo("cnn")
    get_strategy("partial", freeze="first:2").apply(model)
    assert trainable(model) == _last_groups(model, 1) | _head(model)
    assert model.eval_modules == ("backbone.net.stem", "backbone.net.stage1")


@pytest.mark.parametrize("options,message", [
    ({"trainable": "blocks.99*"}, "matches no layer group and no parameter; the layer groups are"),
    ({"trainable": "last:9"}, "asks for 9 layer groups but the backbone has 3"),
    ({"trainable": "from:stage9"}, "no layer group named 'stage9'"),
    ({"freeze": "*"}, "freezes everything, the head included"),
    ({"freeze": "stem,head"}, "selects the head"),
    ({"trainable": "last:3"}, "that is strategy 'full'"),
    ({"freeze": "last:3"}, "that is strategy 'linear-probe'"),
    ({"trainable": "last:0"}, "positive number"),
    ({"trainable": "last:1", "freeze": "first:1"}, "not both"),
])
def test_bad_freeze_specs_raise_and_name_the_groups(zoo, options, message):
    model, *_ = zoo("cnn")
    with pytest.raises(ConfigError, match=message) as err:
        get_strategy("partial", **options).apply(model)
    if "match" in message or "asks" in message:
        assert "stem, stage1, stage2" in str(err.value)


def test_bad_peft_targets_and_lr_lists_raise(zoo):
    model, *_ = zoo("vit")
    with pytest.raises(ConfigError, match="matches no layer of the backbone.*qkv"):
        get_strategy("lora", peft_targets=["nonexistent"]).apply(model)
    with pytest.raises(ConfigError, match="matches only LayerNorm layers"):
        get_strategy("lora", peft_targets=["norm1"]).apply(model)
    with pytest.raises(ConfigError, match="no backbone layer to adapt"):
        get_strategy("lora", lora_r=512).apply(model)
    with pytest.raises(ConfigError, match="group_lrs has 2 learning rates but this backbone has 7 layer groups"):
        get_strategy("discriminative", group_lrs=[1e-4, 1e-3]).apply(model)
    with pytest.raises(ConfigError, match="does not take lp_epochs"):
        get_strategy("full", lp_epochs=2)
    with pytest.raises(ConfigError, match="already carries lora adapters"):
        get_strategy("lora", lora_r=2).apply(model)
        get_strategy("lora", lora_r=4).apply(model)
    mlp = hs.create_model("toy:mlp", 3)
    with pytest.raises(ConfigError, match="found nothing to train"):
        get_strategy("norm-tuning").apply(mlp)


def test_schedules_that_never_reach_their_later_phase_raise_before_writing(tiny_data, tmp_path):
    with pytest.raises(ConfigError, match="never reaches fine-tuning"):
        hs.fit(hs.create_model("toy:cnn", 3), tiny_data, "lp-ft", lp_epochs=3, epochs=3, out=tmp_path / "r", **FAST)
    with pytest.raises(ConfigError, match="would be a linear probe"):
        hs.fit(hs.create_model("toy:cnn", 3), tiny_data, "gradual", unfreeze_every=2, epochs=2,
               out=tmp_path / "r", **FAST)
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------------------------ config

def test_strategy_options_are_validated_config():
    assert not set(StrategyConfig.model_fields) & set(TrainConfig.model_fields), "fit splits kwargs by name"
    cfg = load_config(None, ["strategy.name=discriminative", "strategy.group_lrs=[1e-4, 3e-4, 1e-3]",
                             "strategy.l2sp_alpha=0.01"])
    assert cfg.strategy.options() == {"group_lrs": [1e-4, 3e-4, 1e-3], "l2sp_alpha": 0.01}
    cfg = load_config(None, ["strategy.name=partial", "strategy.trainable=from:blocks.3"])
    assert cfg.strategy.trainable == "from:blocks.3"
    with pytest.raises(ConfigError, match="strategy 'full' does not take strategy.lp_epochs"):
        load_config(None, ["strategy.lp_epochs=2"])
    with pytest.raises(ConfigError, match="strategy.ft_lr_scale"):
        load_config(None, ["strategy.name=lp-ft", "strategy.ft_lr_scale=3"])
    with pytest.raises(ConfigError, match="positive number"):
        load_config(None, ["strategy.name=partial", "strategy.trainable=last:0"])


def test_strategy_options_are_recorded_and_checked_on_resume(tiny_data, tmp_path):
    hs.fit(hs.create_model("toy:cnn", 3), tiny_data, "gradual", unfreeze_every=1, epochs=2, out=tmp_path / "r",
           **FAST)
    assert load_config(tmp_path / "r" / "config.yaml").strategy.unfreeze_every == 1
    with pytest.raises(ConfigError, match="different settings"):
        hs.fit(hs.create_model("toy:cnn", 3), tiny_data, "gradual", unfreeze_every=1, bn="frozen", epochs=2,
               out=tmp_path / "r", resume=True, **FAST)
