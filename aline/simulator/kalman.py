"""Exact posterior of a batch of short linear-Gaussian windows: Kalman filter + RTS smoother.

The one job of this module is inference in

    Z_0 ~ N(mu0, Sigma0),   Z_t = A Z_{t-1} + b_t + eps_t,  eps_t ~ N(0, diag(q_t))      (t >= 1)
    y_t = C Z_t + delta_t,  delta_t ~ N(0, diag(r_t)),  only where ``obs[t]`` is true

for many independent windows at once (the known input terms are folded into ``b_t`` and subtracted from
``y_t`` by the caller). Per-window, per-hour noise and observation masks are allowed, so the context
dependence of the simulator keeps the posterior exact. Measurements are absorbed one scalar at a time
(exact because R is diagonal), which needs no matrix inverse in the filter and skips a missing value by
zeroing its gain. The smoother's gain needs one 4x4 inverse per window and hour.

It also returns the value of one extra scalar observation ``q·Z_t + noise`` at each hour for a target
``w·Z_{T-1}``: Var(w·Z_{T-1} | y) - Var(w·Z_{T-1} | y, extra) = Cov(w·Z_{T-1}, q·Z_t | y)^2 /
(Var(q·Z_t | y) + r). The smoothed cross-covariance Cov(Z_t, Z_{T-1} | y) = J_t Cov(Z_{t+1}, Z_{T-1} | y)
comes from the RTS gains, so this costs one extra vector per hour instead of 24 more filters.

Arrays are laid out windows-first: a batch of matrices is [n, Z, Z] so that ``np.matmul`` runs over the
batch (measured faster here than einsum or per-entry arrays for 4x4 blocks).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Posterior:
    """Smoothed posterior of every window and hour."""

    mean: np.ndarray  # [N, T, Z]
    var: np.ndarray  # [N, T, Z] marginal variances
    cov: np.ndarray | None  # [N, T, Z, Z] full covariances, only when asked for
    query_value: np.ndarray | None  # [N, T] variance cut of w·Z_{T-1} by one extra observation at t
    target_mean: np.ndarray | None  # [N] E[w·Z_{T-1} | y]
    target_var: np.ndarray | None  # [N] Var(w·Z_{T-1} | y)
    # With query_cov: the joint posterior of the scalars s_t = query_row·Z_t and w·Z_{T-1}, all that
    # further answers of the query measurement need (exact rank-one conditioning, no second smoother).
    query_mean: np.ndarray | None = None  # [N, T] E[s_t | y]
    query_cov: np.ndarray | None = None  # [N, T, T] Cov(s_t, s_u | y)
    query_cross: np.ndarray | None = None  # [N, T] Cov(s_t, w·Z_{T-1} | y)
    # log p(y | model) of the observed entries, from the filter's innovations: compares models of a window
    # (for instance with and without a subject-level flag the window does not show).
    loglik: np.ndarray | None = None  # [N]


def smooth(
    y: np.ndarray,
    obs: np.ndarray,
    b: np.ndarray,
    q: np.ndarray,
    r: np.ndarray,
    A: np.ndarray,
    C: np.ndarray,
    mu0: np.ndarray,
    Sigma0: np.ndarray,
    *,
    target: np.ndarray | None = None,
    query_row: np.ndarray | None = None,
    query_var: np.ndarray | None = None,
    full_cov: bool = False,
    query_cov: bool = False,
    chunk: int = 1024,
) -> Posterior:
    """Filter and smooth all windows.

    Shapes: y, obs, r [N, T, M] (y may hold NaN where obs is false); b, q [N, T, Z] (row t=0 unused:
    the prior covers hour 0); A [Z, Z]; C [M, Z]; mu0 [Z]; Sigma0 [Z, Z]; target, query_row [Z];
    query_var [N, T]. The query value needs all three of target, query_row and query_var; ``query_cov``
    (which needs target and query_row) also returns the joint posterior of query_row·Z_t over hours and
    of the target, from the smoothed lag covariances Cov(Z_t, Z_u | y) = J_t Cov(Z_{t+1}, Z_u | y), t < u.
    """
    y = np.asarray(y, dtype=np.float64)
    n_all, T, M = y.shape
    Z = A.shape[0]
    if obs.shape != y.shape or r.shape != y.shape:
        raise ValueError(f"y {y.shape}, obs {obs.shape} and r {r.shape} must have the same shape")
    if b.shape != (n_all, T, Z) or q.shape != (n_all, T, Z):
        raise ValueError(f"b {b.shape} and q {q.shape} must be {(n_all, T, Z)}")
    want_query = target is not None and query_row is not None and query_var is not None
    mean = np.empty((n_all, T, Z))
    var = np.empty((n_all, T, Z))
    cov = np.empty((n_all, T, Z, Z)) if full_cov else None
    qv = np.zeros((n_all, T)) if want_query else None
    t_mean = np.zeros(n_all) if target is not None else None
    t_var = np.zeros(n_all) if target is not None else None
    if query_cov and (target is None or query_row is None):
        raise ValueError("query_cov needs target and query_row")
    q_mean = np.zeros((n_all, T)) if query_cov else None
    q_cov = np.zeros((n_all, T, T)) if query_cov else None
    q_cross = np.zeros((n_all, T)) if query_cov else None
    loglik = np.empty(n_all)
    for lo in range(0, n_all, chunk):
        sl = slice(lo, min(lo + chunk, n_all))
        out = _smooth_chunk(
            y[sl],
            obs[sl],
            b[sl],
            q[sl],
            r[sl],
            A,
            C,
            mu0,
            Sigma0,
            target,
            query_row if (want_query or query_cov) else None,
            query_var[sl] if want_query else None,
            full_cov,
            query_cov,
        )
        mean[sl], var[sl], loglik[sl] = out["mean"], out["var"], out["loglik"]
        if full_cov:
            cov[sl] = out["cov"]
        if want_query:
            qv[sl] = out["qv"]
        if target is not None:
            t_mean[sl], t_var[sl] = out["t_mean"], out["t_var"]
        if query_cov:
            q_mean[sl], q_cov[sl], q_cross[sl] = out["q_mean"], out["q_cov"], out["q_cross"]
    return Posterior(mean, var, cov, qv, t_mean, t_var, q_mean, q_cov, q_cross, loglik)


def _smooth_chunk(y, obs, b, q, r, A, C, mu0, Sigma0, target, query_row, query_var, full_cov, query_cov):
    n, T, M = y.shape
    Z = A.shape[0]
    diag = np.arange(Z)
    At = A.T
    mf = np.empty((T, n, Z))  # filtered means
    Pf = np.empty((T, n, Z, Z))  # filtered covariances
    mp = np.empty((T, n, Z))  # one-step predictions
    Pp = np.empty((T, n, Z, Z))
    m = np.broadcast_to(mu0, (n, Z)).copy()
    P = np.broadcast_to(Sigma0, (n, Z, Z)).copy()
    loglik = np.zeros(n)
    for t in range(T):
        if t > 0:
            m = m @ At + b[:, t]
            P = _sandwich(P, At)
            P[:, diag, diag] += q[:, t]
        mp[t], Pp[t] = m, P
        for j in range(M):
            c = C[j]
            Pc = (P.reshape(-1, Z) @ c).reshape(n, Z)  # one gemv over the batch
            s = Pc @ c + r[:, t, j]  # [n]
            o = obs[:, t, j]
            innov = np.where(o, y[:, t, j] - m @ c, 0.0)
            # A missing value contributes nothing: its weight o/s is zero.
            wgt = o / s
            loglik -= 0.5 * o * (np.log(2.0 * np.pi * s) + innov * innov / s)
            m = m + Pc * (innov * wgt)[:, None]
            P -= Pc[:, :, None] * (Pc * wgt[:, None])[:, None, :]
        mf[t], Pf[t] = m, P

    mean = np.empty((n, T, Z))
    var = np.empty((n, T, Z))
    cov = np.empty((n, T, Z, Z)) if full_cov else None
    out: dict[str, np.ndarray] = {}
    ms, Ps = mf[T - 1], Pf[T - 1]
    v = Ps @ target if target is not None else None  # [n, Z] Cov(Z_t, w·Z_{T-1} | y)
    if target is not None:
        out["t_mean"] = ms @ target
        out["t_var"] = v @ target
    qv = np.zeros((n, T)) if query_var is not None else None
    if query_cov:
        # U[:, :, u] = Cov(Z_t, s_u | y) for the hours u >= t reached so far (t runs backwards).
        U = np.zeros((n, Z, T))
        q_cov = np.zeros((n, T, T))
        q_mean = np.zeros((n, T))
        q_cross = np.zeros((n, T))

    def record(t, ms, Ps, v):
        mean[:, t] = ms
        var[:, t] = Ps[:, diag, diag]
        if full_cov:
            cov[:, t] = Ps
        if qv is not None:
            num = (v @ query_row) ** 2
            den = (Ps @ query_row) @ query_row + query_var[:, t]
            qv[:, t] = num / den
        if query_cov:
            U[:, :, t] = Ps @ query_row
            q_cov[:, t, t:] = np.einsum("z,nzu->nu", query_row, U[:, :, t:])
            q_mean[:, t] = ms @ query_row
            q_cross[:, t] = v @ query_row

    record(T - 1, ms, Ps, v)
    for t in range(T - 2, -1, -1):
        # J_t = Pf_t A^T Pp_{t+1}^{-1}; Pp is symmetric positive definite, so one inverse per window.
        J = (Pf[t].reshape(-1, Z) @ At).reshape(n, Z, Z) @ inv_spd(Pp[t + 1])  # [n, Z, Z]
        ms = mf[t] + (J @ (ms - mp[t + 1])[:, :, None])[:, :, 0]
        Ps = Pf[t] + J @ (Ps - Pp[t + 1]) @ J.transpose(0, 2, 1)
        Ps = 0.5 * (Ps + Ps.transpose(0, 2, 1))
        if v is not None:
            v = (J @ v[:, :, None])[:, :, 0]
        if query_cov:
            U[:, :, t + 1 :] = J @ U[:, :, t + 1 :]
        record(t, ms, Ps, v)
    out["mean"], out["var"], out["loglik"] = mean, var, loglik
    if full_cov:
        out["cov"] = cov
    if qv is not None:
        out["qv"] = qv
    if query_cov:
        upper = np.triu(q_cov, 1)
        out["q_cov"] = q_cov + upper.transpose(0, 2, 1)
        out["q_mean"], out["q_cross"] = q_mean, q_cross
    return out


def _sandwich(P: np.ndarray, At: np.ndarray) -> np.ndarray:
    """A P A^T for a batch of symmetric P [n, Z, Z] and a shared A, as two flat gemms over the batch."""
    n, Z, _ = P.shape
    X = (P.reshape(-1, Z) @ At).reshape(n, Z, Z)  # P A^T
    # (P A^T)^T A^T = A P A^T because P is symmetric.
    return (X.transpose(0, 2, 1).reshape(-1, Z) @ At).reshape(n, Z, Z)


def inv_spd(P: np.ndarray) -> np.ndarray:
    """Inverse of a batch of symmetric positive-definite matrices [n, k, k] by 2x2-block Schur complements.

    Closed forms for k <= 2 and batched matmuls above: faster than ``np.linalg.inv``, which calls LAPACK
    once per matrix.
    """
    k = P.shape[-1]
    if k == 1:
        return 1.0 / P
    if k == 2:
        a, b, d = P[:, 0, 0], P[:, 0, 1], P[:, 1, 1]
        det = a * d - b * b
        out = np.empty_like(P)
        out[:, 0, 0], out[:, 1, 1] = d / det, a / det
        out[:, 0, 1] = out[:, 1, 0] = -b / det
        return out
    h = k // 2
    Ai = inv_spd(P[:, :h, :h])
    B = P[:, :h, h:]
    AiB = Ai @ B  # [n, h, k-h]
    Si = inv_spd(P[:, h:, h:] - B.transpose(0, 2, 1) @ AiB)
    top_right = -AiB @ Si
    out = np.empty_like(P)
    out[:, :h, :h] = Ai - top_right @ AiB.transpose(0, 2, 1)
    out[:, :h, h:] = top_right
    out[:, h:, :h] = top_right.transpose(0, 2, 1)
    out[:, h:, h:] = Si
    return out
