"""The fast CPU dropout: the same distribution as torch's, exact in eval mode, and a drop-in for BERT."""
import pytest
import torch
import torch.nn as nn

import headstart as hs
from headstart.run import dropout as fd


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_rate_is_one_minus_p_in_every_lane(p):
    torch.manual_seed(0)
    keep = fd.keep_mask(torch.Size([400_000]), p).float()
    # Each int64 draw feeds four consecutive elements; a biased lane (the sign bit) would show here.
    for lane in range(4):
        assert keep[lane::4].mean().item() == pytest.approx(1 - p, abs=0.005)
    # No structure between neighbours: the pair-keep rate is the product of the rates.
    assert (keep[:-1] * keep[1:]).mean().item() == pytest.approx((1 - p) ** 2, abs=0.005)


def test_output_is_scaled_mask_and_gradient_flows_through_kept_elements_only():
    torch.manual_seed(0)
    x = torch.rand(64, 256) + 0.5  # no zeros, so a zero output means dropped
    x.requires_grad_(True)
    y = fd.fast_dropout(x, 0.25, training=True)
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] / 0.75)
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / 0.75)
    assert y.mean().item() == pytest.approx(x.mean().item(), rel=0.02)  # expectation preserved


def test_seeded_identity_in_eval_and_p_zero():
    x = torch.randn(8, 100)
    torch.manual_seed(3)
    a = fd.fast_dropout(x, 0.3)
    torch.manual_seed(3)
    b = fd.fast_dropout(x, 0.3)
    torch.manual_seed(4)
    c = fd.fast_dropout(x, 0.3)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert fd.fast_dropout(x, 0.3, training=False) is x and fd.fast_dropout(x, 0.0) is x
    layer = fd.FastDropout(0.3).eval()
    assert torch.equal(layer(x), x) and isinstance(layer, nn.Dropout)


def tiny_bert(attention_dropout=0.1, hidden_dropout=0.1):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32,
                        attention_probs_dropout_prob=attention_dropout, hidden_dropout_prob=hidden_dropout)
    return BertModel(config, add_pooling_layer=False)


def padded_batch():
    ids = torch.randint(5, 50, (3, 11))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 2:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def test_install_keeps_eval_outputs_and_state_dict_exactly():
    net = tiny_bert().eval()
    batch = padded_batch()
    before, keys = net(**batch).last_hidden_state, list(net.state_dict())
    counts = fd.install(net)
    assert counts["attention_models"] == 1 and counts["dropout_layers"] >= 5
    assert not any(type(m) is nn.Dropout for m in net.modules())
    assert torch.equal(net(**batch).last_hidden_state, before)
    assert list(net.state_dict()) == keys


def test_training_attention_with_padding_matches_reference_when_nothing_is_dropped():
    # p tiny: every element kept, so the eager path with its mask handling must equal SDPA's result.
    net = tiny_bert(attention_dropout=1e-9, hidden_dropout=0.0)
    batch = padded_batch()
    reference = net.eval()(**batch).last_hidden_state
    fd.install(net)
    torch.testing.assert_close(net.train()(**batch).last_hidden_state, reference, atol=1e-5, rtol=1e-5)


def test_training_attention_drops_at_the_configured_rate():
    net = tiny_bert(attention_dropout=0.5, hidden_dropout=0.0)
    fd.install(net)
    captured = []
    real = fd.fast_dropout

    def spy(x, p, training=True):
        out = real(x, p, training)
        if x.dim() == 4:  # attention probabilities
            captured.append((out == 0).float().mean().item())
        return out

    fd.fast_dropout = spy
    try:
        torch.manual_seed(0)
        net.train()(**padded_batch())
    finally:
        fd.fast_dropout = real
    assert len(captured) == 2  # one per layer
    # Masked (padded) keys have probability 0 already, so the zero fraction is at least p.
    assert all(0.45 < z < 0.75 for z in captured)


def test_fit_installs_it_by_default_and_the_switch_turns_it_off(tmp_path):
    x, y = torch.rand(40, 3, 16, 16), torch.arange(40) % 2
    data = hs.data.from_arrays(x.numpy(), y.numpy(), val_fraction=0.25)
    kw = dict(epochs=1, batch_size=8, progress=False, precision="fp32")
    on = hs.create_model("toy:cnn", num_classes=2, dropout=0.2)
    hs.fit(on, data, "full", out=tmp_path / "on", **kw)
    off = hs.create_model("toy:cnn", num_classes=2, dropout=0.2)
    hs.fit(off, data, "full", out=tmp_path / "off", fast_dropout=False, **kw)
    assert any(isinstance(m, fd.FastDropout) for m in on.modules())
    assert not any(isinstance(m, fd.FastDropout) for m in off.modules())
    assert any(type(m) is nn.Dropout and m.p == 0.2 for m in off.modules())
