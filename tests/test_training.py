"""Training invariants: what a strategy freezes stays bit-identical, loss falls, accumulation and resume
are exact, early stopping stops, and a run folder is never overwritten."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import headstart as hs
from headstart.data import iterate_batches
from headstart.data import make_batcher
from headstart.errors import ConfigError, DataError
from headstart.objectives import CrossEntropy, Objective, TaskTerm
from headstart.run import loop
from headstart.run.optim import build_scheduler
from headstart.strategies import STRATEGIES, build_param_groups, get_strategy, trainable_summary

FAST = dict(progress=False, batch_size=8, eval_batch_size=32)


def backbone_state(model):
    return {k: v.clone() for k, v in model.backbone.state_dict().items()}


def test_linear_probe_keeps_backbone_and_bn_buffers_bit_identical(tiny_data, tmp_path):
    model = hs.create_model("toy:cnn")
    model.reset_head(3, tiny_data.classes)
    before, head_before = backbone_state(model), model.head[0].weight.clone()
    hs.fit(model, tiny_data, "linear-probe", epochs=2, out=tmp_path / "r", lr=0.05, **FAST)
    after = model.backbone.state_dict()
    assert any("running_mean" in k for k in before)  # the toy CNN has BatchNorm buffers to protect
    for k, v in before.items():
        assert torch.equal(v, after[k]), f"{k} changed under linear-probe"
    assert not torch.equal(head_before, model.head[0].weight), "the head did not train"


def test_full_trains_everything_and_updates_bn(tiny_data, tmp_path):
    model = hs.create_model("toy:cnn", 3)
    before = backbone_state(model)
    hs.fit(model, tiny_data, "full", epochs=1, out=tmp_path / "r", lr=0.01, **FAST)
    after = model.backbone.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k]) and "num_batches" not in k]
    assert len(changed) == len(before) - sum("num_batches" in k for k in before)


def test_full_with_frozen_bn_keeps_running_stats(tiny_data, tmp_path):
    model = hs.create_model("toy:cnn", 3)
    before = backbone_state(model)
    hs.fit(model, tiny_data, "full", bn="frozen", epochs=1, out=tmp_path / "r", lr=0.01, **FAST)
    after = model.backbone.state_dict()
    for k in before:
        if "running" in k:
            assert torch.equal(before[k], after[k])
        elif k.endswith("conv.weight") or k.endswith("0.weight"):
            assert not torch.equal(before[k], after[k])


@pytest.mark.parametrize("name", STRATEGIES.list())
def test_param_groups_hold_exactly_the_trainable_parameters(name):
    model = hs.create_model("toy:cnn", 3)
    get_strategy(name).apply(model)
    groups = build_param_groups(model, lr=0.1, weight_decay=0.05, head_lr=0.5)
    in_groups = [p for g in groups for p in g["params"]]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(in_groups) == len({id(p) for p in in_groups})
    assert {id(p) for p in in_groups} == {id(p) for p in trainable}
    for g in groups:
        assert g["lr"] == (0.5 if g["name"].startswith("head") else 0.1)
        assert g["weight_decay"] == (0.0 if g["name"].endswith("no_decay") else 0.05)
        if g["weight_decay"]:
            assert all(p.ndim > 1 for p in g["params"])
    # Schedulers scale each group's own lr.
    opt = torch.optim.AdamW(groups)
    sched = build_scheduler(opt, total_steps=10, warmup_steps=0)
    opt.step(), sched.step()
    ratios = {g["lr"] / g["initial_lr"] for g in opt.param_groups}
    assert len(ratios) == 1
    summary = trainable_summary(model, opt)
    assert "head" in summary and "total" in summary


def test_strategy_errors():
    with pytest.raises(ConfigError, match="drift"):
        get_strategy("linear-probe", bn="train")
    with pytest.raises(hs.HeadstartError, match="Did you mean 'linear-probe'"):
        get_strategy("linear_probe")


def test_loss_falls_on_separable_data(tiny_data, tmp_path):
    model = hs.create_model("toy:cnn", 3)
    run = hs.fit(model, tiny_data, "full", epochs=4, out=tmp_path / "r", lr=0.01, **FAST)
    losses = [h["train/loss"] for h in run.history]
    assert losses[-1] < 0.7 * losses[0]
    assert run.best_metrics["val/accuracy"] >= 0.9


def test_gradient_accumulation_equals_one_large_batch(tiny_data):
    data = tiny_data.train.subset(torch.arange(32))
    results = []
    for batch, accum in ((8, 4), (32, 1)):
        torch.manual_seed(0)
        model = hs.create_model("toy:mlp", 3)  # no BatchNorm: batch statistics would differ per micro-batch
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        sched = build_scheduler(opt, 10, 0, "constant")
        batcher = make_batcher(data, model.spec, train=False)
        loop.train_epoch(model, model, Objective([TaskTerm(CrossEntropy())]), opt, sched, batcher, epoch=0, batch_size=batch,
                         grad_accum=accum, seed=0)
        results.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.equal(results[0][0], hs.create_model("toy:mlp", 3).backbone.net[1].weight)


def test_resume_after_a_crash_reproduces_the_uninterrupted_run(tiny_data, tmp_path, monkeypatch):
    def make():
        torch.manual_seed(0)
        return hs.create_model("toy:cnn", 3, dropout=0.3)  # dropout: the RNG state must be restored too

    args = dict(epochs=3, lr=0.01, warmup_epochs=0.5, **FAST)
    full = hs.fit(make(), tiny_data, "full", out=tmp_path / "a", **args)

    real_epoch = loop.train_epoch

    def crash_in_epoch_2(*a, **kw):
        if kw["epoch"] == 1:
            raise KeyboardInterrupt("killed")
        return real_epoch(*a, **kw)

    monkeypatch.setattr("headstart.run.trainer.train_epoch", crash_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        hs.fit(make(), tiny_data, "full", out=tmp_path / "b", **args)
    monkeypatch.setattr("headstart.run.trainer.train_epoch", real_epoch)
    assert len(hs.run.read_metrics(tmp_path / "b")) == 1

    resumed = hs.fit(make(), tiny_data, "full", out=tmp_path / "b", resume=True, **args)
    strip = lambda rows: [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in rows]  # noqa: E731
    assert strip(resumed.history) == strip(full.history)
    assert resumed.test_metrics == full.test_metrics


def test_max_steps_ends_the_run_inside_an_epoch_with_the_schedule_spent(tiny_data, tmp_path):
    from headstart.run.checkpoint import load_checkpoint

    steps = math.ceil(len(tiny_data.train) / FAST["batch_size"])
    args = dict(epochs=3, lr=0.01, scheduler="linear", **FAST)
    torch.manual_seed(0)
    capped = hs.fit(hs.create_model("toy:cnn", 3), tiny_data, "full", out=tmp_path / "a",
                    max_steps=steps + steps // 2, **args)
    assert [r["epoch"] for r in capped.history] == [1, 2]
    assert capped.history[-1]["lr"] == 0.0  # the decay ends with the last step, not after 3 epochs
    assert load_checkpoint(tmp_path / "a")["scheduler"]["last_epoch"] == steps + steps // 2
    # Whole epochs' worth of steps is the same run as those epochs, bit for bit.
    strip = lambda rows: [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in rows]  # noqa: E731
    torch.manual_seed(0)
    plain = hs.fit(hs.create_model("toy:cnn", 3), tiny_data, "full", out=tmp_path / "b", **args)
    torch.manual_seed(0)
    same = hs.fit(hs.create_model("toy:cnn", 3), tiny_data, "full", out=tmp_path / "c", max_steps=3 * steps,
                  **args)
    assert strip(same.history) == strip(plain.history) and len(plain.history) == 3
    # As HF Trainer's, it overrides epochs: 4 epochs' worth trains 4 epochs, and config.yaml says so.
    longer = hs.fit(hs.create_model("toy:cnn", 3), tiny_data, "full", out=tmp_path / "d", max_steps=4 * steps,
                    **args)
    assert len(longer.history) == 4 and hs.config.load_config(tmp_path / "d" / "config.yaml").train.epochs == 4


def test_max_steps_sets_a_text_runs_warm_up_to_a_tenth_of_its_steps():
    from headstart.run.settings import TrainSettings, with_schedule

    s, why = with_schedule(TrainSettings(max_steps=30), "text", 160, "full")  # batch 16: 10 steps an epoch
    assert s.epochs == 3 and s.warmup_epochs == pytest.approx(0.3) and "30 steps" in why
    # the steps are optimizer steps: with 2 batches to a step, an epoch holds 5
    assert with_schedule(TrainSettings(max_steps=30, grad_accum=2), "text", 160, "full")[0].epochs == 6


def test_resume_with_other_settings_is_refused(tiny_data, tmp_path):
    hs.fit(hs.create_model("toy:cnn", 3), tiny_data, "full", epochs=1, out=tmp_path / "r", **FAST)
    with pytest.raises(ConfigError, match="different settings"):
        hs.fit(hs.create_model("toy:cnn", 3), tiny_data, "full", epochs=1, lr=0.5, out=tmp_path / "r",
               resume=True, **FAST)


def test_existing_run_folder_is_never_overwritten(tiny_data, tmp_path):
    hs.fit(hs.create_model("toy:cnn", 3), tiny_data, "full", epochs=1, out=tmp_path / "r", **FAST)
    before = (tmp_path / "r" / "metrics.jsonl").read_text()
    with pytest.raises(ConfigError, match="already holds a run"):
        hs.fit(hs.create_model("toy:cnn", 3), tiny_data, "full", epochs=1, out=tmp_path / "r", **FAST)
    assert (tmp_path / "r" / "metrics.jsonl").read_text() == before


def test_the_kept_epoch_is_near_the_best_accuracy_with_the_lowest_loss_there(tiny_data, tmp_path):
    model = hs.create_model("toy:cnn", 3)
    run = hs.fit(model, tiny_data, "full", epochs=5, out=tmp_path / "r", lr=0.01, **FAST)
    acc = [h["val/accuracy"] for h in run.history]
    loss = [h["val/loss"] for h in run.history]
    top = [i for i, a in enumerate(acc) if a == max(acc)]
    assert len(top) >= 2, "separable data should reach its best val accuracy in more than one epoch"
    kept = run.best_epoch - 1
    band = math.sqrt(max(acc) * (1 - max(acc)) / len(tiny_data.val))
    assert acc[kept] >= max(acc) - band  # within one standard error of the best accuracy seen
    assert loss[kept] <= min(loss[i] for i in top)  # and never a higher loss than the most accurate epochs
    assert run.best_metrics["val/loss"] == loss[kept]


def test_early_stopping_stops_when_the_metric_stalls(tiny_data, tmp_path):
    model = hs.create_model("toy:cnn", 3)
    run = hs.fit(model, tiny_data, "linear-probe", epochs=6, lr=1e-9, solver="sgd", out=tmp_path / "r",
                 early_stopping={"metric": "val/loss", "mode": "min", "patience": 1}, scheduler="constant", **FAST)
    # lr ~ 0: the loss cannot keep improving, so the run stops well before 6 epochs.
    assert run.stopped_early and len(run.history) < 6


def test_unknown_train_key_and_bad_metric(tiny_data, tmp_path):
    with pytest.raises(ConfigError, match="epochs"):
        hs.fit(hs.create_model("toy:cnn", 3), tiny_data, epoch=3, out=tmp_path / "r")
    with pytest.raises(ConfigError, match="not logged"):
        hs.fit(hs.create_model("toy:cnn", 3), tiny_data, epochs=1, out=tmp_path / "s",
               early_stopping={"metric": "val/acc"}, **FAST)


def test_head_that_does_not_fit_the_data(tiny_data, tmp_path):
    with pytest.raises(DataError, match="num_classes=3"):
        hs.fit(hs.create_model("toy:cnn", 5), tiny_data, epochs=1, out=tmp_path / "r", **FAST)


def test_headless_model_gets_its_head_from_the_data(tiny_data, tmp_path):
    model = hs.create_model("toy:cnn")
    hs.fit(model, tiny_data, "linear-probe", epochs=1, out=tmp_path / "r", **FAST)
    assert model.num_outputs == 3 and model.labels == ["a", "b", "c"]


def test_run_folder_contents(tiny_data, tmp_path):
    run = hs.fit(hs.create_model("toy:cnn", 3), tiny_data, "full", epochs=2, out=tmp_path / "r", **FAST)
    folder = tmp_path / "r"
    for name in ("config.yaml", "metrics.jsonl", "checkpoints/last.pt", "best/model.safetensors",
                 "best/headstart.json", "test_metrics.json"):
        assert (folder / name).is_file(), name
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert {"train/loss", "val/accuracy", "val/macro_f1", "val/loss"} <= set(rows[0])
    cfg = hs.config.load_config(folder / "config.yaml")
    assert cfg.strategy.name == "full" and cfg.train.epochs == 2
    assert json.loads((folder / "test_metrics.json").read_text()) == run.test_metrics


def test_batches_cover_the_data_once_per_epoch():
    seen = torch.cat(list(iterate_batches(50, 8, shuffle=True, seed=1, epoch=3)))
    assert sorted(seen.tolist()) == list(range(50))


def test_compile_option_trains_the_same_model(tiny_data, tmp_path):
    # torch.compile changes kernels, not the maths: the same losses and a model saved without compile wrappers.
    losses = []
    for compile_ in (False, True):
        torch.manual_seed(0)
        model = hs.create_model("toy:mlp", 3)
        run = hs.fit(model, tiny_data, "full", epochs=2, lr=0.01, precision="fp32", compile=compile_,
                     out=tmp_path / f"c{compile_}", **FAST)
        losses.append([r["train/loss"] for r in run.history])
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-4)
    assert not any("_orig_mod" in k for k in hs.load(tmp_path / "cTrue").model.state_dict())
