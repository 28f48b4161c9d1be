"""Multi-task learning: tasks in the data, masked task losses, weightings, mixing, per-task evaluation, bundles."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import headstart as hs
from conftest import differing_weights, killed_and_resumed, separable_images, without_timings
from headstart.config import validate_config
from headstart.data import Batch, TextData, from_arrays, from_texts, make_batcher
from headstart.data.tasks import MultiTaskSplit, Task, combine_tasks, derive_tasks, labelled, table_tasks
from headstart.errors import ConfigError, DataError
from headstart.objectives import WEIGHTINGS, Step, get_weighting, multitask_objective
from headstart.objectives.weighting import PCGrad
from headstart.run.trainer import prepare_head

FAST = dict(progress=False, batch_size=8, precision="fp32", lr=0.01)
GROUPS = {"a": "warm", "b": "warm", "c": "cold"}


def images(n=24, seed=0):
    x, y = separable_images(n, seed=seed)
    return from_arrays(x, y, classes=["a", "b", "c"], val_fraction=0.25, seed=0, name="tiny")


def two_tasks(n=24):
    return derive_tasks(images(n), "item", group=GROUPS)


def model_for(data, seed=0):
    torch.manual_seed(seed)
    model = hs.create_model("toy:cnn")
    prepare_head(model, data, seed)
    return model


def step_of(model, objective, batch):
    model.train()
    outputs, features = model(batch.inputs, with_features=True)
    return Step(model, outputs, features, batch), objective(model, model, batch)


# ------------------------------------------------------------------------------------------------ data


def test_derived_task_groups_every_class_and_keeps_the_main_labels():
    base = images()
    data = derive_tasks(base, "item", group=GROUPS)
    train = data.train
    assert [t.name for t in train.tasks] == ["item", "group"] and train.tasks[1].classes == ("cold", "warm")
    assert torch.equal(train.targets["item"], base.train.targets)
    expected = torch.tensor([["cold", "warm"].index(GROUPS[c]) for c in "abc"])[base.train.targets]
    assert torch.equal(train.targets["group"], expected)
    with pytest.raises(DataError, match="classes without one"):
        derive_tasks(base, "item", group={"a": "warm"})
    with pytest.raises(DataError, match="two tasks are named"):
        derive_tasks(base, "item", item=GROUPS)


def test_combined_data_sets_mark_other_tasks_missing_and_keep_their_sources():
    first, second = images(8), images(6, seed=2)
    data = combine_tasks({"one": first, "two": second})
    train = data.train
    n1 = len(first.train)
    assert len(train) == n1 + len(second.train)
    assert (train.targets["one"][:n1] >= 0).all() and (train.targets["one"][n1:] == -1).all()
    assert (train.targets["two"][:n1] == -1).all() and (train.targets["two"][n1:] >= 0).all()
    assert train.sources.tolist() == [0] * n1 + [1] * len(second.train)
    with pytest.raises(DataError, match="different sizes"):
        x, y = separable_images(4, size=12)
        combine_tasks({"one": first, "two": from_arrays(x, y, classes=["a", "b", "c"], val_fraction=0.25)})
    with pytest.raises(DataError, match="different modalities"):
        combine_tasks({"one": first, "two": from_texts(["a b", "c d", "e f", "g h"] * 3, ["x", "y"] * 6)})


@pytest.mark.parametrize("method", ["round-robin", "temperature"])
def test_mixed_batches_hold_one_task_and_follow_the_stated_epoch(method):
    big, small = images(20), images(4, seed=2)
    data = combine_tasks({"big": big, "small": small}, mixing=method, temperature=1.0)
    order = data.train.batch_order(4, True, seed=0, epoch=0)
    sources = data.train.sources
    assert all(len(set(sources[b].tolist())) == 1 for b in order)  # one task per batch
    n_big, n_small = int((sources == 0).sum()), int((sources == 1).sum())
    if method == "round-robin":  # tasks alternate; as many rounds as the larger task has batches
        assert [int(sources[b[0]]) for b in order] == [0, 1] * math.ceil(n_big / 4)
    else:  # as many batches as one pass over all samples; T=1 draws tasks in proportion to their sizes
        assert len(order) == math.ceil((n_big + n_small) / 4)
    again = data.train.batch_order(4, True, seed=0, epoch=0)
    assert [b.tolist() for b in order] == [b.tolist() for b in again]  # seeded: a resumed run replays it
    assert data.train.batch_order(4, False, seed=0, epoch=0) is None  # evaluation reads every sample in order
    # two ranks share each global batch
    r0, r1 = (data.train.batch_order(2, True, 0, 0, rank, 2) for rank in (0, 1))
    assert [torch.cat([a, b]).sort().values.tolist() for a, b in zip(r0, r1)] == \
        [b.sort().values.tolist() for b in order]


def test_temperature_mixing_flattens_task_proportions():
    big, small = images(40), images(4, seed=2)
    counts = {}
    for t in (1.0, 100.0):
        data = combine_tasks({"big": big, "small": small}, mixing="temperature", temperature=t)
        picks = [int(data.train.sources[b[0]]) for e in range(20) for b in data.train.batch_order(4, True, 0, e)]
        counts[t] = sum(picks) / len(picks)  # share of batches from the small task
    share = len(small.train) / (len(small.train) + len(big.train))
    assert counts[1.0] == pytest.approx(share, abs=0.06) and counts[100.0] == pytest.approx(0.5, abs=0.08)


def test_table_tasks_read_label_columns_with_gaps(tmp_path):
    rows = [{"text": f"text number {i}", "topic": "ab"[i % 2], "urgent": "" if i % 3 == 0 else "yn"[i % 2],
             "score": str(i / 10)} for i in range(30)]
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    data = table_tasks(path, {"topic": "topic", "urgent": None, "score": {"type": "regression"}}, val_fraction=0.2)
    allt = torch.cat([data.train.targets["urgent"], data.val.targets["urgent"]])
    assert int((allt == -1).sum()) == 10 and data.train.tasks[2].kind == "regression"
    with pytest.raises(DataError, match="label column 'missing'"):
        table_tasks(path, {"topic": "topic", "other": "missing"})
    with pytest.raises(DataError, match="not a number"):
        table_tasks(path, {"topic": "topic", "bad": {"column": "urgent", "type": "regression"}})
    with pytest.raises(DataError, match="task name"):
        table_tasks(path, {"topic": "topic", "the urgency": "urgent"})


# ------------------------------------------------------------------------------------------------ losses


def test_each_head_gets_gradient_from_its_own_task_only_and_the_backbone_from_both():
    data = two_tasks()
    model = model_for(data)
    objective = multitask_objective(model, data.train.targets)
    batch = make_batcher(data.train, model.spec, train=False).batch(torch.arange(8))
    step, _ = step_of(model, objective, batch)
    for term in objective.task_terms:
        value = term(step)
        for name, head in model.heads.items():
            grads = torch.autograd.grad(value, list(head.parameters()), retain_graph=True, allow_unused=True)
            reached = any(g is not None and g.abs().sum() > 0 for g in grads)
            assert reached == (name == term.head), (term.name, name)
        shared = torch.autograd.grad(value, list(model.backbone.parameters()), retain_graph=True)
        assert any(g.abs().sum() > 0 for g in shared)


def test_a_task_without_labels_in_a_batch_adds_zero_loss_and_no_nan():
    data = two_tasks()
    model = model_for(data)
    objective = multitask_objective(model, data.train.targets)
    batch = make_batcher(data.train, model.spec, train=False).batch(torch.arange(8))
    full = Batch(batch.inputs, dict(batch.targets))
    batch.targets["group"] = torch.full_like(batch.targets["group"], -1)
    _, out = step_of(model, objective, batch)
    assert out["task/group"].item() == 0.0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.group.parameters())
    # some labels missing: the loss is the mean over the labelled ones
    partial = Batch(full.inputs, {**full.targets, "group": full.targets["group"].clone()})
    partial.targets["group"][:3] = -1
    model.zero_grad()
    step, out = step_of(model, objective, partial)
    logits = step.outputs["group"]  # the same train-mode forward the objective ran
    expected = torch.nn.functional.cross_entropy(logits[3:], full.targets["group"][3:])
    torch.testing.assert_close(out["task/group"], expected.detach(), rtol=1e-5, atol=1e-6)
    assert not labelled(torch.tensor([math.nan, 1.0])).tolist()[0]


def test_pcgrad_removes_conflicts():
    pc = PCGrad(["a", "b"])
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    assert torch.dot(g1, g2) < 0
    for _ in range(5):  # whatever the random order, with two tasks each projects onto the other's normal plane
        projected = []
        for i, (g, other) in enumerate(((g1, g2), (g2, g1))):
            # project() sums; check each projected gradient against the other task's original
            single = g.clone()
            dot = torch.dot(single, other)
            single -= dot / other.pow(2).sum() * other
            projected.append(single)
            assert torch.dot(single, other) >= -1e-6
        torch.testing.assert_close(pc.project([g1, g2]), projected[0] + projected[1])
    # no conflict: the plain sum
    torch.testing.assert_close(pc.project([g1, torch.tensor([1.0, 1.0])]), g1 + torch.tensor([1.0, 1.0]))


def test_pcgrad_without_conflict_gives_the_equal_weighting_gradient():
    data = two_tasks()
    grads = {}
    for name in ("equal", "pcgrad"):
        model = model_for(data)
        objective = multitask_objective(model, data.train.targets, weighting=name)
        batch = make_batcher(data.train, model.spec, train=False).batch(torch.arange(8))
        _, out = step_of(model, objective, batch)
        objective.backward(out, 2, model)
        grads[name] = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads["equal"].keys() == grads["pcgrad"].keys()
    for n in grads["equal"]:
        if not n.startswith("backbone"):  # heads: their own task's plain gradient
            torch.testing.assert_close(grads["equal"][n], grads["pcgrad"][n])


def test_uncertainty_weighting_gives_the_noisier_task_less_weight():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 4)).astype(np.float32)
    y = x @ np.array([1.0, -1.0, 0.5, 0.0], dtype=np.float32)
    clean, noisy = torch.tensor(y), torch.tensor(y + rng.normal(scale=2.0, size=256).astype(np.float32))
    weighting = get_weighting("uncertainty", ["clean", "noisy"])
    heads = torch.nn.ModuleDict({"clean": torch.nn.Linear(4, 1), "noisy": torch.nn.Linear(4, 1)})
    opt = torch.optim.Adam([*heads.parameters(), *weighting.parameters()], lr=0.05)
    xt = torch.tensor(x)
    for _ in range(300):
        losses = {k: torch.nn.functional.mse_loss(heads[k](xt).squeeze(1), t) for k, t in
                  (("clean", clean), ("noisy", noisy))}
        opt.zero_grad()
        weighting.combine(losses).backward()
        opt.step()
    w = weighting.weights()
    assert w["noisy"] < 0.5 < w["clean"], w  # started at 0.5 each


def test_dwa_weights_follow_the_loss_ratios():
    dwa = get_weighting("dwa", ["a", "b"], temperature=2.0)
    assert dwa.weights() == {"a": 1.0, "b": 1.0}
    dwa.end_epoch({"a": 1.0, "b": 1.0})
    assert dwa.weights() == {"a": 1.0, "b": 1.0}  # two epochs are needed for a ratio
    dwa.end_epoch({"a": 0.5, "b": 1.0})  # a fell, b did not: b gets more weight
    w = dwa.weights()
    expected_b = 2 * math.exp(1.0 / 2) / (math.exp(0.5 / 2) + math.exp(1.0 / 2))
    assert w["b"] == pytest.approx(expected_b) and w["a"] + w["b"] == pytest.approx(2.0)


# ------------------------------------------------------------------------------------------------ runs


@pytest.mark.parametrize("weighting", sorted(WEIGHTINGS))
def test_every_weighting_trains_through_fit_and_logs_each_task(tmp_path, weighting):
    data = two_tasks()
    model = hs.create_model("toy:cnn")
    run = hs.fit(model, data, "full", out=tmp_path / "r", epochs=2, weighting=weighting, grad_accum=2, **FAST)
    row = run.history[-1]
    assert {"train/task/item", "train/task/group", "train/weight/item", "val/item/accuracy",
            "val/group/accuracy", "val/tasks_mean", "val/item/loss"} <= set(row)
    assert row["val/loss"] == pytest.approx(row["val/item/loss"] + row["val/group/loss"])
    assert run.history[-1]["train/loss"] < run.history[0]["train/loss"] or weighting == "uncertainty"


def test_multitask_bundle_reloads_and_predicts_every_task(tmp_path):
    data = two_tasks()
    model = hs.create_model("toy:cnn", head="mlp", dropout=0.2)
    hs.fit(model, data, "full", out=tmp_path / "r", epochs=1, **FAST)  # one epoch: the bundle is this model
    predictor = hs.load(tmp_path / "r")
    assert predictor.tasks == ["item", "group"]
    reloaded = predictor.model
    assert reloaded.main_task == "item" and reloaded.extra_heads["group"]["labels"] == ["cold", "warm"]
    inputs = make_batcher(data.val, model.spec, train=False).inputs(torch.arange(6))
    model.eval()
    ours, theirs = model(inputs, with_features=True)[0], reloaded(inputs, with_features=True)[0]
    assert list(ours) == list(theirs) == ["item", "group"]
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name])
    x, _ = separable_images(3)
    probs = predictor.predict_proba(x)
    assert set(probs) == {"item", "group"} and probs["group"].shape == (len(x), 2)
    preds = predictor.predict(x)
    assert [p[0] for p in preds["group"]] == [["cold", "warm"][int(np.argmax(p))] for p in probs["group"]]
    metrics = predictor.evaluate(data, "val")
    run_row = hs.run.read_metrics(tmp_path / "r")[0]
    for key in ("item/accuracy", "group/accuracy", "group/macro_f1"):
        assert metrics[f"val/{key}"] == pytest.approx(run_row[f"val/{key}"])


@pytest.mark.parametrize("weighting", ["dwa", "uncertainty", "pcgrad"])
def test_resumed_multitask_run_equals_an_uninterrupted_one(tmp_path, weighting):
    data = two_tasks()
    args = dict(epochs=3, weighting=weighting, **FAST)

    def make():
        torch.manual_seed(0)
        return hs.create_model("toy:cnn", dropout=0.3)

    full = hs.fit(make(), data, "full", out=tmp_path / "a", **args)
    resumed = killed_and_resumed(lambda resume: hs.fit(make(), data, "full", out=tmp_path / "b", resume=resume,
                                                       **args), kill_epoch=2)
    assert without_timings(resumed.history) == without_timings(full.history)
    assert full.history[-1]["train/weight/item"] != 1.0 or weighting == "pcgrad"  # the state did carry over


def test_linear_probe_on_cached_features_equals_raw_inputs(tmp_path):
    data = combine_tasks({"one": images(12), "two": images(12, seed=2)}, mixing="round-robin")
    runs = [hs.fit(model_for(data), data, "linear-probe", out=tmp_path / cache, epochs=2, cache=cache,
                   cache_dir=str(tmp_path / "cache"), augment=False, **FAST) for cache in ("on", "off")]
    assert runs[0].history[0]["inputs"] == "cached features" and runs[1].history[0]["inputs"] == "raw inputs"
    for a, b in zip(runs[0].history, runs[1].history):
        for k in a:
            if "/" in k:
                assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-5), k


# ------------------------------------------------------------------------------------------------ bad input


def test_bad_multitask_input_gets_clear_messages(tmp_path):
    data = two_tasks()
    with pytest.raises(Exception, match="unknown task weighting 'uncertanty'. Did you mean 'uncertainty'"):
        hs.fit(hs.create_model("toy:cnn"), data, "full", out=tmp_path / "a", weighting="uncertanty", **FAST)
    with pytest.raises(ConfigError, match="not tasks of the data"):
        hs.fit(hs.create_model("toy:cnn"), data, "full", out=tmp_path / "b", task_weights={"itme": 2.0}, **FAST)
    with pytest.raises(ConfigError, match="apply to multi-task data"):
        hs.fit(hs.create_model("toy:cnn"), images(), "full", out=tmp_path / "c", weighting="dwa", **FAST)
    with pytest.raises(ConfigError, match="auto"):
        hs.fit(hs.create_model("toy:cnn"), data, "auto", out=tmp_path / "d", **FAST)
    with pytest.raises(ConfigError, match="weighting 'equal' gives every task weight 1"):
        get_weighting("equal", ["a", "b"], {"a": 2.0})
    with pytest.raises(Exception, match="two tasks are named 'a'"):
        validate_config({"tasks": [{"name": "a"}, {"name": "a"}]})
    with pytest.raises(Exception, match="unknown task weighting"):
        validate_config({"multitask": {"weighting": "gradnorm"}})
    with pytest.raises(DataError, match="two tasks are named"):
        combine_tasks({"a": images(4), "b": images(4)}) and derive_tasks(images(4), "a", a=GROUPS)
    with pytest.raises(DataError, match="Python identifier"):
        Task("not a name")
    with pytest.raises(DataError, match="one table"):
        MultiTaskSplit(data.train.inputs, data.train.targets, data.train.tasks,
                       mixing=hs.data.tasks.Mixing("round-robin"))


DDP_SCRIPT = """
import os, sys, torch
sys.path.insert(0, {tests!r})
import headstart as hs
from test_multitask import two_tasks
data = two_tasks()
for weighting in ("uncertainty", "pcgrad"):
    torch.manual_seed(0)
    model = hs.create_model("toy:cnn")
    run = hs.fit(model, data, "full", epochs=2, lr=0.01, batch_size=4, progress=False, precision="fp32",
                 weighting=weighting, out={out!r} + "/" + weighting)
    torch.save({{"model": model.state_dict(), "history": run.history}},
               {out!r} + "/" + weighting + "-rank" + os.environ["RANK"] + ".pt")
"""


def test_weightings_under_ddp_keep_every_rank_in_sync(tmp_path):
    # uncertainty: its log-variances live outside the model, so the loop averages their gradients; pcgrad runs
    # its own backward outside DDP's hooks, so the loop averages every gradient. Either way the ranks must agree.
    from conftest import run_two_processes

    run_two_processes(DDP_SCRIPT, tmp_path)
    for weighting in ("uncertainty", "pcgrad"):
        a, b = (torch.load(tmp_path / f"{weighting}-rank{r}.pt") for r in (0, 1))
        assert differing_weights(a["model"], b["model"]) == [], weighting
        assert a["history"] == b["history"]  # the logged means are over both ranks' samples
        if weighting == "uncertainty":
            assert a["history"][-1]["train/weight/item"] != 0.5  # the learned weights moved


def test_a_task_head_can_have_its_own_learning_rate(tmp_path):
    data = two_tasks()
    model = hs.create_model("toy:cnn")
    hs.fit(model, data, "full", out=tmp_path / "r", epochs=1, head_lrs={"group": 0.5}, scheduler="constant", **FAST)
    from headstart.run.checkpoint import load_checkpoint

    groups = {g["name"]: g["lr"] for g in load_checkpoint(tmp_path / "r")["optimizer"]["param_groups"]}
    assert groups["head:group"] == 0.5 and groups["head"] == FAST["lr"]
    with pytest.raises(ConfigError, match="not heads of the model"):
        hs.fit(hs.create_model("toy:cnn"), data, "full", out=tmp_path / "b", head_lrs={"gruop": 0.5}, **FAST)


def test_single_task_references_and_delta_m():
    data = two_tasks()
    kind = hs.data.single_task(data, "group")
    assert kind.classes == ["cold", "warm"] and torch.equal(kind.train.targets, data.train.targets["group"])
    combined = combine_tasks({"one": images(8), "two": images(6, seed=2)})
    assert len(hs.data.single_task(combined, "two").train) == int((combined.train.targets["two"] >= 0).sum())
    with pytest.raises(DataError, match="no task 'three'"):
        hs.data.single_task(combined, "three")
    from headstart.metrics import delta_m

    assert delta_m({"a": 0.9, "b": 0.5}, {"a": 0.9, "b": 0.5}) == 0.0
    assert delta_m({"a": 0.99, "b": 0.5}, {"a": 0.9, "b": 0.5}) == pytest.approx(5.0)  # +10% on one of two
    assert delta_m({"err": 0.5}, {"err": 1.0}, lower_is_better={"err"}) == pytest.approx(50.0)


def test_rows_log_delta_m_against_single_task_references(tmp_path):
    data = two_tasks()
    run = hs.fit(hs.create_model("toy:cnn"), data, "full", out=tmp_path / "r", epochs=1,
                 task_references={"item": 0.5, "group": 0.8}, **FAST)
    row = run.history[0]
    expected = 100 * ((row["val/item/accuracy"] - 0.5) / 0.5 + (row["val/group/accuracy"] - 0.8) / 0.8) / 2
    assert row["val/delta_m"] == pytest.approx(expected)
    with pytest.raises(ConfigError, match="missing"):
        hs.fit(hs.create_model("toy:cnn"), data, "full", out=tmp_path / "b", epochs=1,
               task_references={"item": 0.5}, **FAST)


def test_every_strategy_trains_the_shared_part_and_every_head_and_reloads(tmp_path):
    from test_strategies import TEST_OPTIONS

    from headstart.strategies import STRATEGIES

    data = two_tasks(12)
    x = make_batcher(data.val, hs.create_model("toy:cnn").spec, train=False).inputs(torch.arange(4))
    for name in STRATEGIES.list():
        torch.manual_seed(0)
        model = hs.create_model("toy:cnn")
        prepare_head(model, data, 0)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        options = TEST_OPTIONS.get(name, lambda m: {})(model)
        hs.fit(model, data, name, out=tmp_path / name, epochs=2, **options, **FAST)
        after = model.state_dict()
        for head in ("head.", "group."):
            assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(head)), (name, head)
        reloaded = hs.load(tmp_path / name).model
        outputs = reloaded(x, with_features=True)[0]
        assert list(outputs) == ["item", "group"] and all(torch.isfinite(o).all() for o in outputs.values()), name
