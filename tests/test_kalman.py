"""The batched Kalman filter + RTS smoother against direct Gaussian conditioning of the whole window."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.gaussref import condition as _condition
from helpers.gaussref import joint_prior as _joint_prior

from aline.simulator.kalman import smooth


def _random_problem(seed: int, n: int = 4, T: int = 7, Z: int = 4, M: int = 3):
    rng = np.random.default_rng(seed)
    A = rng.normal(0, 0.35, (Z, Z)) + 0.5 * np.eye(Z)
    C = rng.normal(0, 1.0, (M, Z))
    L = rng.normal(0, 0.5, (Z, Z))
    Sigma0 = L @ L.T + 0.3 * np.eye(Z)
    mu0 = rng.normal(0, 1, Z)
    b = rng.normal(0, 0.5, (n, T, Z))
    q = rng.uniform(0.05, 0.6, (n, T, Z))
    r = rng.uniform(0.1, 2.0, (n, T, M))
    obs = rng.random((n, T, M)) < 0.55
    obs[0] = False  # a window without a single observation: posterior = prior
    obs[1, 2:5] = False  # a run of fully missing hours
    y = rng.normal(0, 2, (n, T, M))
    y[~obs] = np.nan
    return A, C, mu0, Sigma0, b, q, r, obs, y


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_posterior_equals_direct_conditioning(seed):
    A, C, mu0, Sigma0, b, q, r, obs, y = _random_problem(seed)
    n, T, _ = y.shape
    Z = A.shape[0]
    w = np.array([0.7, -1.2, 0.4, 0.9])
    post = smooth(y, obs, b, q, r, A, C, mu0, Sigma0, target=w, full_cov=True, chunk=3)
    for i in range(n):
        m, S = _condition(*_joint_prior(A, mu0, Sigma0, b[i], q[i]), C, obs[i], y[i], r[i])
        np.testing.assert_allclose(post.mean[i], m.reshape(T, Z), rtol=0, atol=1e-8)
        for t in range(T):
            block = S[t * Z : (t + 1) * Z, t * Z : (t + 1) * Z]
            np.testing.assert_allclose(post.cov[i, t], block, rtol=0, atol=1e-8)
            np.testing.assert_allclose(post.var[i, t], np.diag(block), rtol=0, atol=1e-8)
        last = slice((T - 1) * Z, T * Z)
        assert post.target_mean[i] == pytest.approx(w @ m[last], abs=1e-8)
        assert post.target_var[i] == pytest.approx(w @ S[last, last] @ w, abs=1e-8)
    # The window without observations keeps its prior.
    prior_mean, prior_cov = _joint_prior(A, mu0, Sigma0, b[0], q[0])
    np.testing.assert_allclose(post.mean[0], prior_mean.reshape(T, Z), atol=1e-10)


@pytest.mark.parametrize("seed", [5, 6])
def test_loglik_is_the_density_of_the_observed_entries(seed):
    # log p(y_obs) written out as one multivariate normal over every observed entry of the window.
    from scipy.stats import multivariate_normal

    A, C, mu0, Sigma0, b, q, r, obs, y = _random_problem(seed)
    n, T, M = y.shape
    Z = A.shape[0]
    post = smooth(y, obs, b, q, r, A, C, mu0, Sigma0, chunk=3)
    for i in range(n):
        mean, cov = _joint_prior(A, mu0, Sigma0, b[i], q[i])
        rows = [(t, j) for t in range(T) for j in range(M) if obs[i, t, j]]
        if not rows:
            assert post.loglik[i] == 0.0  # nothing observed: log 1
            continue
        H = np.zeros((len(rows), T * Z))
        for k, (t, j) in enumerate(rows):
            H[k, t * Z : (t + 1) * Z] = C[j]
        S = H @ cov @ H.T + np.diag([r[i, t, j] for t, j in rows])
        ref = multivariate_normal(H @ mean, S).logpdf([y[i, t, j] for t, j in rows])
        assert post.loglik[i] == pytest.approx(ref, abs=1e-8)


@pytest.mark.parametrize("seed", [3, 4])
def test_query_value_equals_conditioning_with_and_without_the_extra_observation(seed):
    A, C, mu0, Sigma0, b, q, r, obs, y = _random_problem(seed)
    n, T, _ = y.shape
    Z = A.shape[0]
    rng = np.random.default_rng(seed + 100)
    w = rng.normal(0, 1, Z)
    qrow = np.array([1.8, 0.0, 0.3, 0.0])
    qvar = rng.uniform(0.2, 1.0, (n, T))
    post = smooth(y, obs, b, q, r, A, C, mu0, Sigma0, target=w, query_row=qrow, query_var=qvar)
    wide = np.zeros(T * Z)
    wide[(T - 1) * Z :] = w
    for i in range(n):
        prior = _joint_prior(A, mu0, Sigma0, b[i], q[i])
        _, S = _condition(*prior, C, obs[i], y[i], r[i])
        base = wide @ S @ wide
        for t in range(T):
            h = np.zeros(T * Z)
            h[t * Z : (t + 1) * Z] = qrow
            _, S2 = _condition(*prior, C, obs[i], y[i], r[i], extra=(h, qvar[i, t]))
            assert post.query_value[i, t] == pytest.approx(base - wide @ S2 @ wide, abs=1e-9)
    assert (post.query_value >= 0).all()


def test_bad_shapes_are_named():
    A, C, mu0, Sigma0, b, q, r, obs, y = _random_problem(0)
    with pytest.raises(ValueError, match="obs"):
        smooth(y, obs[:, :-1], b, q, r, A, C, mu0, Sigma0)


def test_query_cov_is_the_joint_posterior_of_the_query_scalars():
    A, C, mu0, Sigma0, b, q, r, obs, y = _random_problem(5)
    n, T, _ = y.shape
    Z = A.shape[0]
    w = np.array([0.3, -0.8, 1.1, 0.5])
    qrow = np.array([0.0, 1.4, 0.3, 1.8])
    post = smooth(y, obs, b, q, r, A, C, mu0, Sigma0, target=w, query_row=qrow, query_cov=True, chunk=3)
    H = np.zeros((T, T * Z))  # rows: q·Z_t
    for t in range(T):
        H[t, t * Z : (t + 1) * Z] = qrow
    wide = np.zeros(T * Z)
    wide[(T - 1) * Z :] = w
    for i in range(n):
        m, S = _condition(*_joint_prior(A, mu0, Sigma0, b[i], q[i]), C, obs[i], y[i], r[i])
        np.testing.assert_allclose(post.query_mean[i], H @ m, atol=1e-8)
        np.testing.assert_allclose(post.query_cov[i], H @ S @ H.T, atol=1e-8)
        np.testing.assert_allclose(post.query_cross[i], H @ S @ wide, atol=1e-8)
