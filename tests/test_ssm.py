"""The learned state-space encoder against the exact Kalman smoother (aline.simulator.kalman) and by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from aline.model.network import AlineModel
from aline.model.ssm import VAR_FLOOR, KalmanEncoder
from aline.simulator import kalman

B, T, N_FEATURES, Z = 6, 24, 7, 3
MEAS = [2, 4, 6]


def _encoder(seed: int = 0) -> KalmanEncoder:
    torch.manual_seed(seed)
    enc = KalmanEncoder(N_FEATURES, MEAS, Z, hidden=8).double()
    with torch.no_grad():  # away from the initial values, so every term of the model matters
        enc.A.copy_(0.7 * torch.eye(Z, dtype=torch.float64) + 0.2 * torch.randn(Z, Z, dtype=torch.float64))
        enc.C.normal_(0.0, 0.5)
        enc.mu0.normal_()
        enc.s0_raw.normal_()
        enc.to_noise.weight.normal_(0.0, 0.3)
        enc.to_noise.bias.normal_(0.0, 0.3)
        enc.direct.weight.normal_(0.0, 0.3)
    return enc


def _inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(B, T, N_FEATURES, generator=g) < 0.6).double()
    x = torch.randn(B, T, N_FEATURES, generator=g, dtype=torch.float64) * mask
    return x, mask


def _model_terms(enc: KalmanEncoder, x: torch.Tensor, mask: torch.Tensor):
    """The encoder's per-hour drive, variances and offsets, recomputed from its parameters."""
    inp = enc.input_idx
    ctx_in = torch.cat([x[..., inp], mask[..., inp]], dim=-1)
    ctx = enc.context(ctx_in)[0]
    m = len(MEAS)
    drive, log_q, offset, log_r = (enc.to_noise(ctx) + enc.direct(ctx_in)).split([Z, Z, m, m], dim=-1)
    q = F.softplus(log_q) + VAR_FLOOR
    r = F.softplus(log_r) + VAR_FLOOR
    return drive, q, offset, r


def test_smoothed_posterior_equals_the_exact_numpy_smoother() -> None:
    enc = _encoder()
    x, mask = _inputs()
    with torch.no_grad():
        st = enc(x, mask)
        drive, q, offset, r = (a.numpy() for a in _model_terms(enc, x, mask))
    y = x[..., MEAS].numpy() - offset
    obs = mask[..., MEAS].numpy() > 0
    s0 = np.diag(F.softplus(enc.s0_raw).detach().numpy() + VAR_FLOOR)
    for i in range(B):
        # aline.simulator.kalman starts from N(mu0, Sigma0) at hour 0; the encoder adds hour 0's drive, noise.
        post = kalman.smooth(
            y[i : i + 1],
            obs[i : i + 1],
            drive[i : i + 1],
            q[i : i + 1],
            r[i : i + 1],
            enc.A.detach().numpy(),
            enc.C.detach().numpy(),
            enc.mu0.detach().numpy() + drive[i, 0],
            s0 + np.diag(q[i, 0]),
            full_cov=True,
        )
        np.testing.assert_allclose(st.mean[i].numpy(), post.mean[0], rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(st.cov[i].numpy(), post.cov[0], rtol=1e-9, atol=1e-10)


def test_a_missing_measurement_changes_nothing_whatever_its_value() -> None:
    enc = _encoder(2)
    x, mask = _inputs(3)
    mask[:, :, MEAS[0]] = 0.0
    x2 = x.clone()
    x2[:, :, MEAS[0]] = 123.0  # a value behind a zero mask must be ignored
    with torch.no_grad():
        a, b = enc(x, mask), enc(x2, mask)
    torch.testing.assert_close(a.mean, b.mean, rtol=0, atol=0)
    torch.testing.assert_close(a.cov, b.cov, rtol=0, atol=0)


def test_an_extra_reading_never_raises_the_posterior_variance() -> None:
    enc = _encoder(4)
    x, mask = _inputs(5)
    mask[:, 10, MEAS[1]] = 0.0
    more = mask.clone()
    more[:, 10, MEAS[1]] = 1.0  # one more observed reading at hour 10
    with torch.no_grad():
        before = enc(x, mask).cov.diagonal(dim1=-2, dim2=-1)
        after = enc(x, more).cov.diagonal(dim1=-2, dim2=-1)
    assert bool((after <= before + 1e-12).all())
    assert bool((after[:, 10] < before[:, 10]).any())


def test_measurements_never_reach_the_context_network() -> None:
    # Readings may change the state only through the Kalman gain, or the posterior's variance would no
    # longer say what a reading is worth.
    enc = _encoder(6)
    x, mask = _inputs(7)
    x2 = x.clone()
    x2[..., MEAS] += 5.0
    with torch.no_grad():
        c1 = enc.context(torch.cat([x[..., enc.input_idx], mask[..., enc.input_idx]], -1))[0]
        s1, s2 = enc(x, mask), enc(x2, mask)
    torch.testing.assert_close(s1.context, c1)
    torch.testing.assert_close(s1.context, s2.context, rtol=0, atol=0)
    torch.testing.assert_close(s1.cov, s2.cov, rtol=0, atol=0)


def test_model_forecast_shrinks_with_the_state_variance() -> None:
    torch.manual_seed(0)
    model = AlineModel(N_FEATURES, Z, encoder="kalman", d_model=16, measurements=MEAS).double()
    x, mask = _inputs(8)
    with torch.no_grad():
        model.w.copy_(torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64))
        model.b.fill_(0.3)
        out = model(x, mask)
        st = model.encoder(x, mask)
    w = model.w.detach()
    mean = st.mean @ w + 0.3  # [B, T]
    var = torch.einsum("z,btzy,y->bt", w, st.cov, w)
    expected = mean / torch.sqrt(1.0 + np.pi * var / 8.0)
    torch.testing.assert_close(out.logits, expected)
    torch.testing.assert_close(out.sigma_z, st.cov.diagonal(dim1=-2, dim2=-1).sqrt() + 1e-3)


@pytest.mark.parametrize("bad", [[], [0, 0], [N_FEATURES]])
def test_bad_measurement_lists_are_refused(bad: list[int]) -> None:
    with pytest.raises(ValueError, match="measurement"):
        KalmanEncoder(N_FEATURES, bad, Z, hidden=4)
