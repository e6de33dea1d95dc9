"""A learned linear-Gaussian state-space encoder: a differentiable Kalman filter and RTS smoother.

The exact posterior of the simulator is a Kalman smoother whose drive and noise depend on the observed
inputs (:mod:`aline.simulator.generative`). This encoder has that shape with everything learned:

    z_0 = mu0 + u_0 + e_0,          e_0 ~ N(0, S0 + diag q_0)
    z_t = A z_{t-1} + u_t + e_t,    e_t ~ N(0, diag q_t)                    t = 1..T-1
    x_tj = C_j z_t + o_tj + d_tj,   d_tj ~ N(0, r_tj)    for each measurement j observed at t

A causal GRU reads the non-measurement inputs (flags, counts, weather: what the patient did, never what
the sensors said) and gives, per hour, the drive ``u_t``, the process variances ``q_t``, the measurement
offsets ``o_t`` and variances ``r_t``. Measurements never enter that GRU, so they reach the state only
through the Kalman gain: the posterior's uncertainty then says what a reading (or an answer written into
the input) is worth, which the policy's info-gain reward and the sigma head rely on.

The filter also gives the readings' own likelihood, as the product of each reading's Gaussian density
given those before it (the prediction-error decomposition): ``readings_nll``, per window and possible
reading. Fitting it needs no latent truth and no label, only the readings themselves, and it is what
teaches ``r_t`` how noisy a reading (or an answer) is in each hour's context when the data has labels
only (``loss.readings``).

Measurements are absorbed one scalar at a time (exact for diagonal ``r``), so a missing value just zeroes
its gain and the filter needs no inverse; the smoother's gains come from one batched solve. Products of
these tiny matrices are written as broadcast multiply-and-sum, which is far faster on CPU than batched
4x4 ``bmm`` (Z is the number of latents, a handful). Shapes are batch-first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LOG_2PI = math.log(2.0 * math.pi)
VAR_FLOOR = 1e-4  # keeps every variance, and so every covariance the filter builds, positive definite


@dataclass
class SmoothedState:
    mean: Tensor  # [B, T, Z]
    cov: Tensor  # [B, T, Z, Z]
    context: Tensor  # [B, T, H] the input GRU's states
    readings_nll: Tensor  # [B] -log p(readings) per possible reading: the filter's innovation likelihood


class KalmanEncoder(nn.Module):
    """Inputs → (drive, noise) by a causal GRU; then an exact filter/smoother over the measurements."""

    def __init__(self, n_features: int, measurements: list[int], n_latents: int, hidden: int) -> None:
        super().__init__()
        if not measurements:
            raise ValueError("the kalman encoder needs at least one measurement feature")
        if len(set(measurements)) != len(measurements) or not all(0 <= j < n_features for j in measurements):
            raise ValueError(f"measurement indices must be distinct and in 0..{n_features - 1}")
        inputs = [j for j in range(n_features) if j not in set(measurements)]
        self.register_buffer("meas_idx", torch.tensor(measurements), persistent=False)
        self.register_buffer("input_idx", torch.tensor(inputs, dtype=torch.long), persistent=False)
        z, m = n_latents, len(measurements)
        self.n_latents, self.n_meas = z, m
        # Inputs and their mask; with no input feature at all the GRU still gets the hour from its order.
        ctx_width = max(2 * len(inputs), 1)
        self.context = nn.GRU(ctx_width, hidden, batch_first=True)
        n_out = z + z + m + m  # drive, log q, offset, log r
        self.to_noise = nn.Linear(hidden, n_out)
        # Most of the drive and of the offsets is linear in the hour's own inputs (awake, steps, caffeine):
        # a direct path gives those at once, and the GRU adds what needs the past (drinks so far today).
        self.direct = nn.Linear(ctx_width, n_out)
        self.A = nn.Parameter(0.9 * torch.eye(z))
        # Zero loadings: the filter starts by ignoring the readings, and every seed starts from the same
        # filter. The gradient at C = 0 is not zero (a reading's pull on the mean is P c (y - c·m) / r), so
        # C still learns. Random loadings (0.3 · N(0, 1)) left one seed in three with a posterior no better
        # than the inputs alone after 8 epochs.
        self.C = nn.Parameter(torch.zeros(m, z))
        self.mu0 = nn.Parameter(torch.zeros(z))
        self.s0_raw = nn.Parameter(torch.zeros(z))  # initial state spread (diagonal, softplus)
        nn.init.zeros_(self.to_noise.weight)
        nn.init.zeros_(self.direct.weight)
        nn.init.zeros_(self.direct.bias)
        with torch.no_grad():
            self.to_noise.bias.zero_()
            self.to_noise.bias[z : 2 * z] = -3.0  # small process noise to start with
            self.to_noise.bias[2 * z + m :] = 0.0  # measurement noise about one standardised unit

    def forward(self, x: Tensor, mask: Tensor) -> SmoothedState:
        b, t, _ = x.shape
        z, m = self.n_latents, self.n_meas
        if self.input_idx.numel():
            ctx_in = torch.cat([x[..., self.input_idx], mask[..., self.input_idx]], dim=-1)  # [B, T, 2I]
        else:
            ctx_in = x.new_zeros(b, t, 1)
        ctx = self.context(ctx_in)[0]  # [B, T, H]
        terms = self.to_noise(ctx) + self.direct(ctx_in)  # [B, T, 2Z + 2M]
        drive, log_q, offset, log_r = terms.split([z, z, m, m], dim=-1)
        q = F.softplus(log_q) + VAR_FLOOR  # [B, T, Z]
        r = F.softplus(log_r) + VAR_FLOOR  # [B, T, M]
        y = x[..., self.meas_idx] - offset  # [B, T, M]: the measurement minus its input-driven part
        obs = mask[..., self.meas_idx].to(x.dtype)  # [B, T, M]

        eye = torch.eye(z, dtype=x.dtype, device=x.device)
        s0 = eye * (F.softplus(self.s0_raw) + VAR_FLOOR)  # [Z, Z]
        a, at = self.A, self.A.T
        mean = self.mu0 + drive[:, 0]  # [B, Z]
        cov = s0 + eye * q[:, 0].unsqueeze(-1)  # [B, Z, Z]
        means_f, covs_f, means_p, covs_p = [], [], [], []
        nll = x.new_zeros(b)  # [B]
        for h in range(t):
            if h:
                mean = _mv(a, mean) + drive[:, h]
                cov = _mm(_mm(a, cov), at) + eye * q[:, h].unsqueeze(-1)
            means_p.append(mean)
            covs_p.append(cov)
            # One scalar measurement at a time: exact for diagonal r, no matrix inverse, and a missing
            # value (obs 0) just zeroes its gain.
            for j in range(m):
                c = self.C[j]  # [Z]
                pc = (cov * c).sum(-1)  # [B, Z] = P c
                s = (pc * c).sum(-1) + r[:, h, j]  # [B]
                gain = pc * (obs[:, h, j] / s).unsqueeze(-1)  # [B, Z]
                innovation = y[:, h, j] - (mean * c).sum(-1)  # [B]
                # The prediction error decomposition: the readings' likelihood is the product of each
                # one's Gaussian predictive density given those before it.
                nll = nll + obs[:, h, j] * 0.5 * (s.log() + innovation.square() / s + LOG_2PI)
                mean = mean + gain * innovation.unsqueeze(-1)
                cov = cov - gain.unsqueeze(-1) * pc.unsqueeze(-2)
            means_f.append(mean)
            covs_f.append(cov)

        # Rauch-Tung-Striebel. Every gain J_t = P_t|t A^T P_t+1|t^-1 depends on the filter alone, so all
        # T-1 come from one batched solve; the backward pass is then a few products per hour.
        pf = torch.stack(covs_f[:-1], dim=1)  # [B, T-1, Z, Z]
        pp = torch.stack(covs_p[1:], dim=1)
        jt_all = torch.linalg.solve(pp, _mm(a, pf))  # [B, T-1, Z, Z] = J_t^T
        ms, ps = [means_f[-1]], [covs_f[-1]]
        for h in range(t - 2, -1, -1):
            jt = jt_all[:, h]
            jm = jt.transpose(-1, -2)
            ms.append(means_f[h] + _mv(jm, ms[-1] - means_p[h + 1]))
            cov = covs_f[h] + _mm(_mm(jm, ps[-1] - covs_p[h + 1]), jt)
            ps.append(0.5 * (cov + cov.transpose(-1, -2)))
        mean_s = torch.stack(ms[::-1], dim=1)  # [B, T, Z]
        cov_s = torch.stack(ps[::-1], dim=1)  # [B, T, Z, Z]
        return SmoothedState(mean=mean_s, cov=cov_s, context=ctx, readings_nll=nll / (t * m))


def _mm(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` for small trailing matrices, as one broadcast product and a sum (see the module note)."""
    return (a.unsqueeze(-1) * b.unsqueeze(-3)).sum(-2)


def _mv(a: Tensor, v: Tensor) -> Tensor:
    """``a @ v`` for a small matrix ``a`` [.., Z, Z] and vectors ``v`` [.., Z]."""
    return (a * v.unsqueeze(-2)).sum(-1)
