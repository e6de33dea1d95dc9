"""The ALINE network: shapes, the three heads' formulas, positivity, config wiring, input checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aline.config import Config, load_config
from aline.model.network import AlineModel, AlineOutput, build_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _inputs(b: int = 6, f: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(b, 24, f, generator=g) < 0.3).float()
    x = torch.randn(b, 24, f, generator=g) * (1 - mask)  # missing values are 0, as the loader gives them
    return x, mask


def _model(**kw: object) -> AlineModel:
    torch.manual_seed(0)
    return AlineModel(5, 4, d_model=16, heads=2, layers=2, ff_dim=32, **kw)  # type: ignore[arg-type]


def test_output_shapes_and_probabilities() -> None:
    model = _model()
    out = model(*_inputs())
    assert isinstance(out, AlineOutput)
    assert out.mu_z.shape == out.sigma_z.shape == (6, 24, 4)
    assert out.scores.shape == out.logits.shape == out.p.shape == (6, 24)
    assert out.p_next.shape == out.logit_next.shape == (6,)
    assert torch.equal(out.p_next, out.p[:, -1]) and torch.equal(out.logit_next, out.logits[:, -1])
    assert ((out.p > 0) & (out.p < 1)).all()
    post = out.posterior
    assert isinstance(post, torch.distributions.Normal)
    assert torch.equal(post.mean, out.mu_z) and torch.equal(post.stddev, out.sigma_z)


def test_prediction_head_is_mu_dot_w_plus_b() -> None:
    model = _model()
    out = model(*_inputs())
    mu = out.mu_z.detach().numpy().astype(np.float64)
    w = model.w.detach().numpy().astype(np.float64)
    b = model.b.detach().item()
    logits = mu @ w + b
    np.testing.assert_allclose(out.logits.detach().numpy(), logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.p.detach().numpy(), 1 / (1 + np.exp(-logits)), rtol=1e-5)


def test_sigma_stays_strictly_positive_when_the_head_pushes_it_down() -> None:
    model = _model()
    with torch.no_grad():
        model.posterior_head[-1].bias[4:] = -1e4  # raw sigma far below zero: softplus underflows to 0
    out = model(*_inputs())
    assert (out.sigma_z > 0).all()
    out.posterior.log_prob(torch.zeros_like(out.mu_z))  # Normal accepts it (validate_args on by default)


def test_init_prediction_bias_sets_the_logit_of_the_base_rate() -> None:
    model = _model()
    model.init_prediction_bias(0.2)
    assert model.b.detach().item() == pytest.approx(np.log(0.2 / 0.8))
    with torch.no_grad():
        model.w.zero_()
    np.testing.assert_allclose(model(*_inputs()).p.detach().numpy(), 0.2, rtol=1e-6)
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="base_rate"):
            model.init_prediction_bias(bad)


@pytest.mark.parametrize("encoder", ["gru", "transformer"])
def test_constant_buffers_stay_out_of_checkpoints_and_hours_are_told_apart(encoder: str) -> None:
    model = _model(encoder=encoder)
    buffers = dict(model.named_buffers())
    assert torch.equal(buffers["hour_onehot"], torch.eye(24))
    if encoder == "transformer":
        assert torch.equal(buffers["hour_index"], torch.arange(24))
    assert not set(buffers) & set(model.state_dict())  # constants: checkpoints need not carry them
    # identical inputs at every hour still give different outputs per hour (the GRU by its order, the
    # transformer by its hour embedding), and the policy sees the hour too
    x = torch.ones(2, 24, 5)
    out = model(x, torch.zeros_like(x))
    assert out.mu_z[0].std(0).min() > 0
    assert out.scores[0].std() > 0


def test_windows_are_independent_and_order_of_the_batch_does_not_matter() -> None:
    model = _model().eval()
    x, mask = _inputs(b=6)
    full = model(x, mask)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    shuffled = model(x[perm], mask[perm])
    torch.testing.assert_close(shuffled.mu_z, full.mu_z[perm])
    torch.testing.assert_close(shuffled.scores, full.scores[perm])


def test_fast_inference_path_agrees_with_the_training_path() -> None:
    # nn.TransformerEncoder switches to a fused kernel under inference_mode in eval(): same numbers.
    model = _model(encoder="transformer")
    x, mask = _inputs(b=32)
    slow = model(x, mask)
    model.eval()
    with torch.inference_mode(), torch.profiler.profile() as prof:
        fast = model(x, mask)
    ops = {e.key for e in prof.key_averages()}
    assert "aten::_transformer_encoder_layer_fwd" in ops, "the fused encoder fast path was not taken"
    torch.testing.assert_close(fast.mu_z, slow.mu_z.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast.sigma_z, slow.sigma_z.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast.scores, slow.scores.detach(), rtol=1e-4, atol=1e-5)


def test_dropout_is_active_only_in_training() -> None:
    model = _model(dropout=0.5)
    x, mask = _inputs()
    model.train()
    assert not torch.allclose(model(x, mask).mu_z, model(x, mask).mu_z)
    model.eval()
    torch.testing.assert_close(model(x, mask).mu_z, model(x, mask).mu_z)


def test_bad_input_shapes_name_the_problem() -> None:
    model = _model()
    x, mask = _inputs()
    with pytest.raises(ValueError, match=r"input x: expected shape \[batch, 24, 5\], got \[6, 24, 4\]"):
        model(x[..., :4], mask[..., :4])
    with pytest.raises(ValueError, match="input x"):
        model(x[:, :23], mask[:, :23])
    with pytest.raises(ValueError, match="input mask"):
        model(x, mask[:, :, :4])
    with pytest.raises(ValueError, match="divisible"):
        AlineModel(5, 4, encoder="transformer", d_model=10, heads=4)
    with pytest.raises(ValueError, match="even"):
        AlineModel(5, 4, encoder="gru", d_model=11)
    with pytest.raises(ValueError, match="gru, transformer or kalman"):
        AlineModel(5, 4, encoder="lstm")


def test_build_model_follows_the_config() -> None:
    cfg = load_config(
        None,
        [
            "model.encoder=transformer",
            "model.d_model=32",
            "model.heads=8",
            "model.layers=3",
            "model.ff_dim=48",
            "model.dropout=0.1",
            "loss.bce_into_encoder=true",
            "data.columns.latents=[a, b]",
        ],
    )
    model = build_model(cfg, n_features=7)
    # The config asks the default question, so the input has the answer channel after the 7 features.
    assert (model.n_features, model.n_latents, model.hours) == (8, 2, 24)
    assert len(model.encoder.layers) == 3
    layer = model.encoder.layers[0]
    assert layer.self_attn.num_heads == 8 and layer.self_attn.embed_dim == 32
    assert layer.linear1.out_features == 48 and layer.dropout.p == 0.1
    assert model.detach_prediction is False and model.detach_policy is True
    x = torch.randn(3, 24, 8)
    assert model(x, torch.zeros_like(x)).mu_z.shape == (3, 24, 2)
    no_question = build_model(load_config(None, ["data.columns.answers=null"]), n_features=7)
    assert no_question.n_features == 7


def test_build_model_follows_the_config_for_the_gru() -> None:
    cfg = load_config(None, ["model.encoder=gru", "model.d_model=32", "model.layers=3", "model.dropout=0.1"])
    model = build_model(cfg, n_features=7)
    gru = model.encoder
    assert isinstance(gru, torch.nn.GRU) and gru.bidirectional and gru.batch_first
    assert (gru.input_size, gru.hidden_size, gru.num_layers, gru.dropout) == (32, 16, 3, 0.1)
    x = torch.randn(3, 24, 8)  # 7 features and the answer channel
    assert model(x, torch.zeros_like(x)).mu_z.shape == (3, 24, 4)

    default = build_model(Config(), n_features=15)
    assert default.detach_prediction and default.detach_policy
    assert build_model(load_config(None, ["policy.train_encoder=true"]), 15).detach_policy is False
