"""Composed objectives, named heads and two-stream batches: the seams multi-task and domain adaptation use."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

import headstart as hs
from conftest import separable_images
from headstart.data import BATCHERS, Batch, DataSplits, ImageData, TwoStreamBatcher, from_arrays, make_batcher
from headstart.data.batcher import ImageBatcher
from headstart.errors import HeadstartError
from headstart.objectives import CrossEntropy, Objective, TaskTerm
from headstart.run import TrainSettings
from headstart.run import fit as run_fit
from headstart.strategies import get_strategy


@dataclass
class TwoTargetImages(ImageData):
    """Images with a second label per image (for a second head)."""

    modality = "test-two-targets"
    aux_targets: torch.Tensor | None = None


class TwoTargetBatcher(ImageBatcher):
    def batch(self, idx, generator=None):
        return Batch(self.inputs(idx, generator), {"head": self.data.targets[idx], "aux": self.data.aux_targets[idx]})


if "test-two-targets" not in BATCHERS:
    BATCHERS.register("test-two-targets")(TwoTargetBatcher)


class UnlabeledFeatureNorm:
    """A stand-in for a domain-adaptation term: it reads the unlabeled stream and touches the backbone only."""

    name = "dummy/unlabeled"

    def __init__(self):
        self.seen: list[int] = []

    def __call__(self, step):
        x = step.batch.streams["unlabeled"]
        self.seen.append(x.shape[0])
        return 1e-3 * step.model.forward_features(x).pow(2).mean()


def two_task_setup():
    x, y = separable_images(16)
    base = from_arrays(x, y, classes=["a", "b", "c"], val_fraction=0.25, seed=0, name="tiny")
    train = base.train
    aux = (train.targets == 0).long()  # a second task on the same images: "is it class a?"
    train = TwoTargetImages(train.images, train.targets, train.classes, aux_targets=aux)
    xu, _ = separable_images(8, seed=3)  # unlabeled images of another draw
    unlabeled = from_arrays(xu, _, classes=["a", "b", "c"], val_fraction=0.0, seed=0, name="u").train
    data = DataSplits(train, base.val, None, base.classes, "two-tasks", unlabeled=unlabeled)
    torch.manual_seed(0)
    model = hs.create_model("toy:cnn", 3)
    model.add_head("aux", 2)
    extra = UnlabeledFeatureNorm()
    objective = Objective([TaskTerm(CrossEntropy(), "head"), TaskTerm(CrossEntropy(), "aux"), extra])
    return model, data, objective, extra


def test_each_head_gets_gradients_from_its_own_term_only_and_the_backbone_from_all():
    model, data, objective, _ = two_task_setup()
    batcher = TwoStreamBatcher(make_batcher(data.train, model.spec, train=True),
                               make_batcher(data.unlabeled, model.spec, train=True))
    idx = batcher.order(8, shuffle=True, seed=0, epoch=0)[0]
    batch = batcher.batch(idx)
    assert set(batch.targets) == {"head", "aux"} and batch.streams["unlabeled"].shape[0] == len(idx)
    model.train()
    outputs, features = model(batch.inputs, with_features=True)
    from headstart.objectives import Step

    step = Step(model, outputs, features, batch)
    heads = {name: list(head.parameters()) for name, head in model.heads.items()}
    backbone = list(model.backbone.parameters())
    for term in objective.terms:
        value = term(step)
        grads = torch.autograd.grad(value, heads["head"] + heads["aux"] + backbone, retain_graph=True,
                                    allow_unused=True)
        nonzero = lambda gs: any(g is not None and g.abs().sum() > 0 for g in gs)  # noqa: E731
        main, aux, shared = grads[:len(heads["head"])], grads[len(heads["head"]):-len(backbone)], \
            grads[-len(backbone):]
        assert nonzero(shared), f"{term.name} does not reach the shared backbone"
        assert nonzero(main) == (term.name == "task/head"), f"{term.name} and the main head"
        assert nonzero(aux) == (term.name == "task/aux"), f"{term.name} and the aux head"


def test_two_heads_and_two_streams_train_through_the_real_fit(tmp_path):
    model, data, objective, extra = two_task_setup()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    settings = TrainSettings(epochs=1, batch_size=8, lr=0.05, progress=False, precision="fp32", seed=0)
    result = run_fit(model, data, get_strategy("full"), objective, settings, tmp_path / "r")
    after = model.state_dict()
    for prefix in ("head.", "aux.", "backbone.net.stem.0"):
        changed = [k for k in before if k.startswith(prefix) and not torch.equal(before[k], after[k])]
        assert changed, f"{prefix} did not train"
    row = result.history[0]
    assert {"train/task/head", "train/task/aux", "train/dummy/unlabeled"} <= set(row), row
    assert row["train/loss"] == pytest.approx(row["train/task/head"] + row["train/task/aux"]
                                              + row["train/dummy/unlabeled"], rel=1e-6)
    assert extra.seen == [8] * (len(data.train) // 8) + ([len(data.train) % 8] if len(data.train) % 8 else [])
    assert row["inputs"] == "raw inputs"  # a second stream goes through the whole model, never a cache
    reloaded = hs.load(tmp_path / "r").model  # the bundle keeps every head
    assert set(reloaded.heads) == {"head", "aux"}
    x = make_batcher(data.val, model.spec, train=False).inputs(torch.arange(4))
    model.eval()
    torch.testing.assert_close(reloaded(x, with_features=True)[0]["aux"], model(x, with_features=True)[0]["aux"])


def test_two_stream_pairs_are_seeded_per_epoch():
    model, data, *_ = two_task_setup()

    def pairs(epoch):
        b = TwoStreamBatcher(make_batcher(data.train, model.spec, train=False),
                             make_batcher(data.unlabeled, model.spec, train=False))
        idx = b.order(8, shuffle=True, seed=0, epoch=epoch)[0]
        return b.batch(idx).streams["unlabeled"]

    assert torch.equal(pairs(0), pairs(0)) and not torch.equal(pairs(0), pairs(1))


def test_objective_weights_and_names():
    model, data, objective, _ = two_task_setup()
    with pytest.raises(ValueError, match="distinct names"):
        Objective([TaskTerm(CrossEntropy()), TaskTerm(CrossEntropy())])
    with pytest.raises(ValueError, match="2 weights for 1 terms"):
        Objective([TaskTerm(CrossEntropy())], [1.0, 2.0])
    y = data.val.targets[:6]
    inputs = make_batcher(data.val, model.spec, train=False).inputs(torch.arange(6))
    main = Objective([TaskTerm(CrossEntropy())])
    doubled = Objective([TaskTerm(CrossEntropy())], [2.0])
    model.eval()
    one, two = main(model, model, Batch(inputs, y)), doubled(model, model, Batch(inputs, y))
    torch.testing.assert_close(two["loss"], 2 * one["loss"])
    assert "task/head" not in one  # a lone term's value is the loss itself


def test_head_names_are_checked():
    model = hs.create_model("toy:cnn", 3)
    for bad in ("head", "backbone", "not a name"):
        with pytest.raises(HeadstartError, match="head name"):
            model.add_head(bad, 2)
    model.add_head("aux", 2, task="multilabel")
    assert list(model.heads) == ["head", "aux"]
    assert set(model.head_parameter_names()) == {n for n, _ in model.named_parameters()
                                                 if n.startswith(("head.", "aux."))}
