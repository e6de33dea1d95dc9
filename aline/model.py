"""The simplified ALINE network: one transformer over a day's 24 hourly tokens with three heads.

Per hour it returns a Gaussian posterior over the latent state (``mu_z``, ``sigma_z``), a policy score
(how worth querying that hour is) and a next-day migraine logit read off the posterior mean. The losses
that train it live in :mod:`aline.losses`; this module only maps inputs to outputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aline.contract import HOURS

if TYPE_CHECKING:
    from aline.config import Config

SIGMA_FLOOR = 1e-3  # keeps sigma_z strictly positive even where softplus underflows


@dataclass
class AlineOutput:
    """Everything one forward pass produces; ``B`` windows, ``T`` hours, ``Z`` latents."""

    mu_z: Tensor  # [B, T, Z]
    sigma_z: Tensor  # [B, T, Z], > 0
    scores: Tensor  # [B, T] logits of the query distribution over hours
    logits: Tensor  # [B, T] migraine logits mu_z,t · w + b

    @property
    def p(self) -> Tensor:  # [B, T]
        return torch.sigmoid(self.logits)

    @property
    def p_next(self) -> Tensor:  # [B]: the forecast made with the whole day seen
        return self.p[:, -1]

    @property
    def logit_next(self) -> Tensor:  # [B]
        return self.logits[:, -1]

    @property
    def posterior(self) -> torch.distributions.Normal:
        return torch.distributions.Normal(self.mu_z, self.sigma_z)


class AlineModel(nn.Module):
    """Token = Linear([x, mask]) + hour embedding → pre-norm TransformerEncoder → three heads.

    ``detach_prediction`` (default) makes the labels train only ``w`` and ``b``: the prediction head reads
    ``mu_z`` through a stop-gradient, because letting the noisy next-day labels into the encoder made a
    prototype memorise them (validation Brier 1.5× the Bayes value). ``detach_policy`` (default) keeps the
    high-variance score-function gradient out of the shared encoder, as the ALINE paper does.
    """

    def __init__(
        self,
        n_features: int,
        n_latents: int,
        *,
        d_model: int = 64,
        heads: int = 4,
        layers: int = 2,
        ff_dim: int = 128,
        dropout: float = 0.0,
        hours: int = HOURS,
        detach_prediction: bool = True,
        detach_policy: bool = True,
    ) -> None:
        super().__init__()
        if n_features < 1 or n_latents < 1 or hours < 1:
            raise ValueError(
                f"AlineModel needs n_features, n_latents and hours >= 1 "
                f"(got {n_features}, {n_latents}, {hours})"
            )
        if d_model % heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by heads ({heads})")
        self.n_features = n_features
        self.n_latents = n_latents
        self.hours = hours
        self.detach_prediction = detach_prediction
        self.detach_policy = detach_policy

        self.input_proj = nn.Linear(2 * n_features, d_model)
        self.hour_embedding = nn.Embedding(hours, d_model)
        # Not persistent: it is a constant, so checkpoints need not carry it.
        self.register_buffer("hour_index", torch.arange(hours), persistent=False)
        layer = nn.TransformerEncoderLayer(
            d_model, heads, ff_dim, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        # Nested tensors only help with padding masks, which 24 fixed hours never need.
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        # Pre-norm blocks leave the residual stream unnormalised; the heads get a normalised one.
        self.final_norm = nn.LayerNorm(d_model)
        self.posterior_head = nn.Sequential(
            nn.Linear(d_model, d_model), nn.GELU(), nn.Linear(d_model, 2 * n_latents)
        )
        self.policy_head = nn.Sequential(nn.Linear(d_model, d_model), nn.GELU(), nn.Linear(d_model, 1))
        # Small non-zero w so that, with the stop-gradient switched off, the labels reach the encoder at once.
        self.w = nn.Parameter(torch.randn(n_latents) * (0.1 / math.sqrt(n_latents)))
        self.b = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor, mask: Tensor) -> AlineOutput:
        """``x``: normalised features with missing values set to 0; ``mask``: the missing-mask channel."""
        self._check_input(x, mask)
        tokens = self.input_proj(torch.cat([x, mask.to(x.dtype)], dim=-1))  # [B, T, D]
        tokens = tokens + self.hour_embedding(self.hour_index)  # [T, D] broadcast over B
        h = self.final_norm(self.encoder(tokens))  # [B, T, D]

        raw = self.posterior_head(h)  # [B, T, 2Z]
        mu_z, raw_sigma = raw.split(self.n_latents, dim=-1)
        sigma_z = F.softplus(raw_sigma) + SIGMA_FLOOR  # [B, T, Z]

        scores = self.policy_head(h.detach() if self.detach_policy else h).squeeze(-1)  # [B, T]
        mu_pred = mu_z.detach() if self.detach_prediction else mu_z
        logits = mu_pred @ self.w + self.b  # [B, T]
        return AlineOutput(mu_z=mu_z, sigma_z=sigma_z, scores=scores, logits=logits)

    def prediction_head_parameters(self) -> list[nn.Parameter]:
        """``w`` and ``b``: the only parameters the labels train under the default stop-gradient."""
        return [self.w, self.b]

    @torch.no_grad()
    def init_prediction_bias(self, base_rate: float) -> None:
        """Start ``b`` at the logit of the training base rate: early forecasts are calibrated on average."""
        if not 0.0 < base_rate < 1.0:
            raise ValueError(f"base_rate must lie strictly between 0 and 1 (got {base_rate})")
        self.b.fill_(math.log(base_rate / (1.0 - base_rate)))

    def _check_input(self, x: Tensor, mask: Tensor) -> None:
        expected = f"[batch, {self.hours}, {self.n_features}]"
        if x.dim() != 3 or x.shape[1:] != (self.hours, self.n_features):
            raise ValueError(f"AlineModel input x: expected shape {expected}, got {list(x.shape)}")
        if mask.shape != x.shape:
            raise ValueError(
                f"AlineModel input mask: expected the shape of x {list(x.shape)}, got {list(mask.shape)}"
            )


def build_model(cfg: Config, n_features: int) -> AlineModel:
    """The model that ``cfg`` describes, for data with ``n_features`` feature columns."""
    m = cfg.model
    return AlineModel(
        n_features,
        len(cfg.data.columns.latents),
        d_model=m.d_model,
        heads=m.heads,
        layers=m.layers,
        ff_dim=m.ff_dim,
        dropout=m.dropout,
        detach_prediction=not cfg.loss.bce_into_encoder,
        detach_policy=not cfg.policy.train_encoder,
    )
