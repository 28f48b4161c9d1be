"""Precision policy: depthwise convolutions pinned to fp32 under bf16 autocast, everything else bf16."""
import pytest
import torch
import torch.nn as nn

import headstart as hs
from headstart.runtime import bf16_supported, depthwise_in_fp32, is_depthwise, pin_depthwise

pytestmark = pytest.mark.skipif(not bf16_supported(torch.device("cpu")), reason="no bf16 on this CPU")


class SamePad(nn.Conv2d):
    """A Conv2d subclass with its own forward (like timm's Conv2dSame): the pin must keep that forward."""

    def forward(self, x):
        return super().forward(nn.functional.pad(x, (0, 1, 0, 1)))


def tiny() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, padding=1, groups=8), SamePad(8, 8, 2, groups=8),
                         nn.Conv2d(8, 4, 1))


def dtypes(model: nn.Module, x: torch.Tensor) -> list[torch.dtype]:
    seen = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype)) for m in model]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(x).float().sum().backward()
    for h in hooks:
        h.remove()
    return seen


def test_depthwise_runs_fp32_pointwise_bf16_and_the_swap_is_undone():
    model, x = tiny(), torch.randn(2, 3, 6, 6)
    keys, classes = list(model.state_dict()), [type(m) for m in model]
    assert dtypes(model, x) == [torch.bfloat16] * 4  # plain autocast: every conv in bf16
    with depthwise_in_fp32(model) as pinned:
        assert pinned == 2 and [is_depthwise(m) for m in model] == [False, True, True, False]
        assert dtypes(model, x) == [torch.bfloat16, torch.float32, torch.float32, torch.bfloat16]
        assert list(model.state_dict()) == keys
        assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())
    assert [type(m) for m in model] == classes
    assert dtypes(model, x) == [torch.bfloat16] * 4


def test_pinned_depthwise_matches_fp32_and_keeps_a_subclass_forward():
    model, x = tiny(), torch.randn(2, 8, 6, 6)
    depthwise = nn.Sequential(model[1], model[2])
    with torch.no_grad():
        reference = depthwise(x)
        with depthwise_in_fp32(model), torch.autocast("cpu", dtype=torch.bfloat16):
            pinned = depthwise(x)
    assert pinned.shape == reference.shape == (2, 8, 6, 6)  # SamePad's own padding still applied
    torch.testing.assert_close(pinned, reference)  # the exact fp32 path: no bf16 rounding


def test_nested_pins_swap_once_and_disabled_pins_nothing():
    model = tiny()
    with depthwise_in_fp32(model) as outer:
        with depthwise_in_fp32(model) as inner:
            assert (outer, inner) == (2, 0)
        assert type(model[1]).__name__ == "Fp32Conv2d"  # the inner exit leaves the outer pin in place
    with depthwise_in_fp32(model, enabled=False) as none:
        assert none == 0 and type(model[1]) is nn.Conv2d


def test_pin_only_for_bf16_cpu_models_with_depthwise_convs():
    cpu = torch.device("cpu")
    assert pin_depthwise(True, tiny(), cpu)
    assert not pin_depthwise(False, tiny(), cpu)
    assert not pin_depthwise(True, nn.Sequential(nn.Conv2d(3, 8, 1)), cpu)


# `bf16` pins the depthwise layers; `auto` trains such a model in fp32 (bf16 cost full fine-tuning accuracy).
@pytest.mark.parametrize("precision,expected", [
    ("bf16", {"depthwise": {torch.float32}, "pointwise": {torch.bfloat16}}),
    ("auto", {"depthwise": {torch.float32}, "pointwise": {torch.float32}})])
def test_fit_on_a_depthwise_model_learns_and_leaves_its_classes(tiny_data, tmp_path, precision, expected):
    net = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.Conv2d(16, 16, 3, 1, 1, groups=16), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 1))
    model = hs.create_model(net, 3, preprocessing=hs.ImagePreprocessing(input_size=(3, 16, 16)))
    classes = [type(m) for m in model.modules()]
    seen: dict[str, set] = {"depthwise": set(), "pointwise": set()}
    for name, conv in (("depthwise", net[3]), ("pointwise", net[6])):
        conv.register_forward_hook(lambda m, _i, out, name=name: seen[name].add(out.dtype) if m.training else None)
    run = hs.fit(model, tiny_data, "full", epochs=4, lr=3e-3, batch_size=8, precision=precision, progress=False,
                 out=tmp_path / "run")
    losses = [row["train/loss"] for row in run.history]
    assert losses[-1] < losses[0]
    assert [type(m) for m in model.modules()] == classes  # the pin is undone after every epoch
    assert seen == expected  # what the training steps ran in
