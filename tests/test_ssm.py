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


def test_readings_nll_is_the_joint_gaussian_likelihood_of_the_observed_readings() -> None:
    """The filter's prediction-error NLL against the readings' joint Gaussian written out by brute force."""
    from scipy.stats import multivariate_normal

    enc = _encoder(4)
    x, mask = _inputs(5)
    with torch.no_grad():
        nll = enc(x, mask).readings_nll.numpy()
        drive, q, offset, r = (a.numpy() for a in _model_terms(enc, x, mask))
    a_mat, c_mat = enc.A.detach().numpy(), enc.C.detach().numpy()
    s0 = np.diag(F.softplus(enc.s0_raw).detach().numpy() + VAR_FLOOR)
    m = len(MEAS)
    for i in range(B):
        # z = mean + L e with independent e_0 ~ N(0, S0 + diag q_0), e_t ~ N(0, diag q_t).
        mean = np.zeros((T, Z))
        mean[0] = enc.mu0.detach().numpy() + drive[i, 0]
        for t in range(1, T):
            mean[t] = a_mat @ mean[t - 1] + drive[i, t]
        lmat = np.zeros((T * Z, T * Z))
        for t in range(T):
            for s in range(t + 1):
                lmat[t * Z : (t + 1) * Z, s * Z : (s + 1) * Z] = np.linalg.matrix_power(a_mat, t - s)
        e_cov = np.zeros((T * Z, T * Z))
        for t in range(T):
            e_cov[t * Z : (t + 1) * Z, t * Z : (t + 1) * Z] = (s0 if t == 0 else 0.0) + np.diag(q[i, t])
        z_cov = lmat @ e_cov @ lmat.T
        obs_map = np.kron(np.eye(T), c_mat)  # [T*M, T*Z]
        y_mean = obs_map @ mean.reshape(-1) + offset[i].reshape(-1)
        y_cov = obs_map @ z_cov @ obs_map.T + np.diag(r[i].reshape(-1))
        seen = mask[i][:, MEAS].numpy().reshape(-1) > 0
        y = x[i][:, MEAS].numpy().reshape(-1)[seen]
        ref = -multivariate_normal(y_mean[seen], y_cov[np.ix_(seen, seen)]).logpdf(y) / (T * m)
        np.testing.assert_allclose(nll[i], ref, rtol=1e-9)


def test_fitting_the_readings_likelihood_learns_which_hours_read_noisily() -> None:
    """No latent truth, no labels: the readings' own likelihood teaches the measurement noise per hour.
    A flag (an input) marks the hours whose reading has 40 times the noise variance of the others."""
    g = torch.Generator().manual_seed(0)
    n, t = 256, 24
    z = torch.zeros(n, t)
    z[:, 0] = torch.randn(n, generator=g)
    for h in range(1, t):
        z[:, h] = 0.8 * z[:, h - 1] + 0.6 * torch.randn(n, generator=g)
    flag = (torch.rand(n, t, generator=g) < 0.5).float()
    noise_sd = torch.where(flag > 0, 2.0**0.5, 0.05**0.5)
    reading = z + noise_sd * torch.randn(n, t, generator=g)
    x = torch.stack([flag, reading], dim=-1)  # [N, T, 2]: one input, one measurement
    mask = torch.ones_like(x)
    torch.manual_seed(0)
    enc = KalmanEncoder(2, [1], 1, hidden=8)
    with torch.no_grad():
        # Off the zero loading: there the readings' gradient on C vanishes when nothing but the readings
        # moves the state (in training the labels move it first).
        enc.C.fill_(0.5)
    opt = torch.optim.Adam(enc.parameters(), lr=3e-2)
    for _ in range(100):
        opt.zero_grad()
        enc(x, mask).readings_nll.mean().backward()
        opt.step()
    with torch.no_grad():
        ctx_in = torch.cat([x[..., :1], mask[..., :1]], dim=-1)
        terms = enc.to_noise(enc.context(ctx_in)[0]) + enc.direct(ctx_in)
        r = F.softplus(terms[..., -1]) + VAR_FLOOR  # [N, T] the reading's noise variance
    ratio = float(r[flag > 0].mean() / r[flag == 0].mean())
    assert 20.0 < ratio < 80.0, f"noisy hours' learned variance {ratio:.2f}x the quiet hours', not about 40x"
