"""The simplified ALINE network: an encoder over a day's 24 hourly tokens with three heads.

The default encoder is a bidirectional GRU: the exact posterior is a Kalman filter run forwards and a
smoother run backwards, and a recurrence read both ways is that computation's learned analogue. On the
default data it reached the posterior and forecast of a 2-layer transformer (ALINE's choice, kept as
``model.encoder=transformer``) in far fewer epochs, each cheaper (docs/results.md). ``model.encoder=kalman``
(:mod:`aline.model.ssm`) has the exact computation's form, with its parameters learned; its smoother gives the
posterior directly and a full covariance that the forecast and the info-gain reward use.

Per hour it returns a Gaussian posterior over the latent state (``mu_z``, ``sigma_z``), a policy score
(how worth querying that hour is) and a next-day migraine logit read off the posterior mean. The losses
that train it live in :mod:`aline.training.losses`; this module only maps inputs to outputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aline.contract import HOURS
from aline.model.ssm import KalmanEncoder

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
    cov_z: Tensor | None = None  # [B, T, Z, Z] full posterior covariance, when the encoder has one
    readings_nll: Tensor | None = None  # [B] the readings' own NLL, when the encoder is a state-space model

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
    """Token = Linear([x, mask]) → bidirectional GRU (or hour embedding + pre-norm transformer) → heads.

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
        encoder: str = "gru",
        d_model: int = 64,
        heads: int = 4,
        layers: int = 2,
        ff_dim: int = 128,
        dropout: float = 0.0,
        hours: int = HOURS,
        measurements: list[int] | None = None,
        detach_prediction: bool = True,
        detach_policy: bool = True,
    ) -> None:
        super().__init__()
        if n_features < 1 or n_latents < 1 or hours < 1:
            raise ValueError(
                f"AlineModel needs n_features, n_latents and hours >= 1 "
                f"(got {n_features}, {n_latents}, {hours})"
            )
        self.n_features = n_features
        self.n_latents = n_latents
        self.hours = hours
        self.detach_prediction = detach_prediction
        self.detach_policy = detach_policy

        self.encoder_kind = encoder
        # Modules are created in a fixed order (the kalman encoder's last), so a seed gives the GRU and
        # transformer the same initial weights whatever other encoders exist.
        if encoder != "kalman":
            self.input_proj = nn.Linear(2 * n_features, d_model)
        if encoder == "gru":
            # A recurrence knows each hour's place from the order it reads them in; an added hour
            # embedding made the posterior worse (docs/results.md).
            if d_model % 2:
                raise ValueError(f"the gru encoder needs an even d_model (got {d_model})")
            self.encoder = nn.GRU(
                d_model, d_model // 2, layers, batch_first=True, bidirectional=True, dropout=dropout
            )
        elif encoder == "transformer":
            if d_model % heads:
                raise ValueError(f"d_model ({d_model}) must be divisible by heads ({heads})")
            self.hour_embedding = nn.Embedding(hours, d_model)
            # Not persistent: it is a constant, so checkpoints need not carry it.
            self.register_buffer("hour_index", torch.arange(hours), persistent=False)
            layer = nn.TransformerEncoderLayer(
                d_model, heads, ff_dim, dropout, activation="gelu", batch_first=True, norm_first=True
            )
            # Nested tensors only help with padding masks, which 24 fixed hours never need.
            self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        elif encoder == "kalman":
            # The smoother gives the posterior itself (no posterior head); the policy head reads the
            # filter's input context and the smoothed state.
            self.encoder = KalmanEncoder(n_features, list(measurements or []), n_latents, d_model // 2)
        else:
            raise ValueError(f"encoder must be gru, transformer or kalman (got {encoder!r})")
        # The one-hot hour the policy head sees (constant, so not saved in checkpoints).
        self.register_buffer("hour_onehot", torch.eye(hours), persistent=False)
        if encoder != "kalman":
            self.final_norm = nn.LayerNorm(d_model)
            self.posterior_head = nn.Sequential(
                nn.Linear(d_model, d_model), nn.GELU(), nn.Linear(d_model, 2 * n_latents)
            )
        state_width = d_model // 2 + 2 * n_latents if encoder == "kalman" else d_model
        # The policy also sees the hour's own inputs and its position: whether an answer can be given and
        # how reliable it would be are read off that hour (asleep, busy, screen use), and how much it says
        # about the evening depends on how late it is.
        self.policy_head = nn.Sequential(
            nn.Linear(state_width + 2 * n_features + hours, d_model), nn.GELU(), nn.Linear(d_model, 1)
        )
        # Small non-zero w so that, with the stop-gradient switched off, the labels reach the encoder at once.
        self.w = nn.Parameter(torch.randn(n_latents) * (0.1 / math.sqrt(n_latents)))
        self.b = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor, mask: Tensor) -> AlineOutput:
        """``x``: normalised features with missing values set to 0; ``mask``: the missing-mask channel."""
        self._check_input(x, mask)
        inputs = torch.cat([x, mask.to(x.dtype)], dim=-1)  # [B, T, 2F]
        if self.encoder_kind == "kalman":
            return self._forward_kalman(x, mask, inputs)
        tokens = self.input_proj(inputs)  # [B, T, D]
        if self.encoder_kind == "gru":
            h = self.encoder(tokens)[0]  # [B, T, D]: forward and backward halves
        else:
            h = self.encoder(tokens + self.hour_embedding(self.hour_index))  # [B, T, D]
        # Both encoders leave an unnormalised stream (pre-norm residuals, GRU states); the heads get a
        # normalised one.
        h = self.final_norm(h)

        raw = self.posterior_head(h)  # [B, T, 2Z]
        mu_z, raw_sigma = raw.split(self.n_latents, dim=-1)
        sigma_z = F.softplus(raw_sigma) + SIGMA_FLOOR  # [B, T, Z]

        hour = self.hour_onehot.to(x.dtype).expand(x.shape[0], -1, -1)  # [B, T, T]
        seen = torch.cat([h.detach() if self.detach_policy else h, inputs, hour], dim=-1)  # [B, T, D+2F+T]
        scores = self.policy_head(seen).squeeze(-1)  # [B, T]
        mu_pred = mu_z.detach() if self.detach_prediction else mu_z
        logits = mu_pred @ self.w + self.b  # [B, T]
        return AlineOutput(mu_z=mu_z, sigma_z=sigma_z, scores=scores, logits=logits)

    def _forward_kalman(self, x: Tensor, mask: Tensor, inputs: Tensor) -> AlineOutput:
        st = self.encoder(x, mask)
        var = st.cov.diagonal(dim1=-2, dim2=-1).clamp_min(0.0)  # [B, T, Z]
        mu_z, sigma_z = st.mean, var.sqrt() + SIGMA_FLOOR
        h = torch.cat([st.context, mu_z, sigma_z.log()], dim=-1)  # [B, T, H + 2Z]
        hour = self.hour_onehot.to(x.dtype).expand(x.shape[0], -1, -1)  # [B, T, T]
        seen = torch.cat([h.detach() if self.detach_policy else h, inputs, hour], dim=-1)
        scores = self.policy_head(seen).squeeze(-1)  # [B, T]
        mu_pred = mu_z.detach() if self.detach_prediction else mu_z
        cov = st.cov.detach() if self.detach_prediction else st.cov
        # E[sigmoid(a)] for a ~ N(m, v) ~= sigmoid(m / sqrt(1 + pi v / 8)) (MacKay 1992): the forecast
        # shrinks towards 1/2 as the state gets less certain, as the Bayes forecast does.
        v = torch.einsum("z,btzy,y->bt", self.w, cov, self.w)  # [B, T]
        logits = (mu_pred @ self.w + self.b) / torch.sqrt(1.0 + math.pi / 8.0 * v)
        return AlineOutput(
            mu_z=mu_z,
            sigma_z=sigma_z,
            scores=scores,
            logits=logits,
            cov_z=st.cov,
            readings_nll=st.readings_nll,
        )

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


def unwrap(obj: Any) -> Any:
    """The object inside a (Distributed)DataParallel wrapper, or the object itself (optimizers and other
    checkpointed objects pass through)."""
    if isinstance(obj, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        return obj.module
    return obj


def build_model(cfg: Config, n_features: int) -> AlineModel:
    """The model that ``cfg`` describes, for data with ``n_features`` feature columns (plus the answer
    channel when the config names a question, :func:`aline.model.asking.answer_channel`)."""
    m = cfg.model
    channel = cfg.data.columns.asked_feature is not None  # as aline.model.asking.has_answer_channel
    # The answer channel is a reading of the latent state like the feature it answers.
    measurements = [i for i, f in enumerate(cfg.data.columns.features) if f in m.measurements]
    if channel:
        measurements.append(n_features)
    into = cfg.loss.bce_into_encoder
    if into == "auto":  # a run's config.yaml holds the resolved choice; this is the same rule
        into = cfg.loss.posterior == "none"
    return AlineModel(
        n_features + int(channel),
        len(cfg.data.columns.latents),
        encoder=m.encoder,
        d_model=m.d_model,
        heads=m.heads,
        layers=m.layers,
        ff_dim=m.ff_dim,
        dropout=m.dropout,
        measurements=measurements,
        detach_prediction=not into,
        detach_policy=not cfg.policy.train_encoder,
    )
