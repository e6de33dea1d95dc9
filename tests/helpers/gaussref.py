"""Reference Gaussian conditioning of a whole linear-Gaussian window, for the Kalman and simulator tests.

Deliberately naive: the joint covariance of every state, then one direct solve.
"""

from __future__ import annotations

import numpy as np


def joint_prior(A, mu0, Sigma0, b, q):
    """Mean [T*Z] and covariance [T*Z, T*Z] of (Z_0..Z_{T-1}) of one window, built as X = m + M e."""
    T, Z = b.shape
    mean = np.empty((T, Z))
    mean[0] = mu0
    for t in range(1, T):
        mean[t] = A @ mean[t - 1] + b[t]
    M = np.zeros((T * Z, T * Z))  # block [t, s] = A^(t-s) for s <= t
    for t in range(T):
        for s in range(t + 1):
            M[t * Z : (t + 1) * Z, s * Z : (s + 1) * Z] = np.linalg.matrix_power(A, t - s)
    E = np.zeros((T * Z, T * Z))  # covariance of the innovations (Z_0 - mu0, eps_1, ...)
    E[:Z, :Z] = Sigma0
    for t in range(1, T):
        E[t * Z : (t + 1) * Z, t * Z : (t + 1) * Z] = np.diag(q[t])
    return mean.ravel(), M @ E @ M.T


def condition(mean, cov, C, obs, y, r, extra=None):
    """Condition the joint prior on the observed entries (plus an optional extra (row, variance))."""
    T, M = obs.shape
    Z = C.shape[1]
    H, vals, noise = [], [], []
    for t in range(T):
        for j in range(M):
            if obs[t, j]:
                h = np.zeros(T * Z)
                h[t * Z : (t + 1) * Z] = C[j]
                H.append(h)
                vals.append(y[t, j])
                noise.append(r[t, j])
    if extra is not None:
        H.append(extra[0])
        vals.append(0.0)  # the variance does not depend on the value
        noise.append(extra[1])
    if not H:
        return mean, cov
    H = np.array(H)
    S = H @ cov @ H.T + np.diag(noise)
    K = np.linalg.solve(S, H @ cov).T
    return mean + K @ (np.array(vals) - H @ mean), cov - K @ H @ cov
