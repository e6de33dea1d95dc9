"""The composite training loss of the simplified ALINE model, as pure functions of tensors.

``loss = L_post + α · L_policy + β · L_bce``. Every part is returned per window (shape ``[B]``) because
the evaluator averages per window; ``.mean()`` gives the batch value. The policy part is a score-function
(REINFORCE) estimator over k hours drawn without replacement from the Plackett–Luce distribution that
the policy scores define, sampled with the Gumbel-top-k trick.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from aline.contract import LOSS_COLUMNS

if TYPE_CHECKING:
    from aline.config import LossConfig, PolicyConfig
    from aline.model.network import AlineOutput

Baseline = Literal["loo", "batch_mean", "none"]
UNCERTAINTY_SIGMA_WEIGHT = 0.1  # the ticket's weight of mean_z sigma_z,t in the uncertainty reward


@dataclass
class LossParts:
    """Per-window loss parts, each ``[B]``; ``total = post + α · policy + β · bce``."""

    total: Tensor
    post: Tensor
    policy: Tensor
    bce: Tensor

    def means(self) -> dict[str, float]:
        """Batch means under the metrics.csv column names."""
        values = (self.total, self.post, self.policy, self.bce)
        return {name: float(v.detach().mean()) for name, v in zip(LOSS_COLUMNS, values, strict=True)}


# --- posterior and prediction ---------------------------------------------------------------------------


def posterior_loss(
    mu_z: Tensor, sigma_z: Tensor, z: Tensor, sigma_target: Tensor | float, lam: float
) -> Tensor:
    """``MSE(mu_z, z) + lam · MSE(sigma_z, sigma_target)`` per window, averaged over hours and latents."""
    if mu_z.shape != z.shape or sigma_z.shape != z.shape:
        raise ValueError(
            f"posterior_loss: mu_z {list(mu_z.shape)}, sigma_z {list(sigma_z.shape)} and "
            f"z {list(z.shape)} must have the same [B, T, Z] shape"
        )
    if isinstance(sigma_target, Tensor) and sigma_target.shape != z.shape:
        raise ValueError(
            f"posterior_loss: sigma_target {list(sigma_target.shape)} must match z {list(z.shape)}"
        )
    mse_mu = (mu_z - z).square().flatten(1).mean(1)  # [B]
    mse_sigma = (sigma_z - sigma_target).square().flatten(1).mean(1)  # [B]
    return mse_mu + lam * mse_sigma


def sigma_nll(mu_z: Tensor, sigma_z: Tensor, z: Tensor) -> Tensor:
    """Gaussian NLL of the truth under ``N(mu_z, sigma_z)`` as a loss on sigma alone (mean detached), per
    window ``[B]``, up to the constant ``log sqrt(2 pi)``.

    It needs no sigma target: its minimiser is ``sigma^2 = E[(z - mu)^2 | input]``, the calibrated spread.
    The answer pass uses it because the CSV's posterior std is exact only for the day as logged. The mean
    is detached so that it keeps learning from the MSE alone (the NLL would trade its accuracy for sigma).
    """
    err = (z - mu_z.detach()).square()  # [B, T, Z]
    return (sigma_z.log() + err / (2.0 * sigma_z.square())).flatten(1).mean(1)


def posterior_nll(mu_z: Tensor, sigma_z: Tensor, z: Tensor, lam: float) -> Tensor:
    """``MSE(mu_z, z) + lam · sigma_nll`` per window ``[B]``: the posterior loss that needs no sigma target.

    The full Gaussian NLL has the same minimisers (mu = E[z | input], sigma^2 = E[(z - mu)^2 | input]) but
    scales the mean's gradient by 1/sigma^2, which slows the mean where the model is unsure (Seitzer et al.
    2022, "On the pitfalls of heteroscedastic uncertainty estimation"). Here the mean learns from the MSE
    exactly as with a sigma target, and sigma from the NLL with the mean held fixed. ``[B, T, Z]`` inputs.
    """
    mse_mu = (mu_z - z).square().flatten(1).mean(1)  # [B]
    return mse_mu + lam * sigma_nll(mu_z, sigma_z, z)


def bce_loss(logit_next: Tensor, y: Tensor) -> Tensor:
    """Next-day binary cross-entropy per window, from logits (no log(0) for confident forecasts)."""
    return F.binary_cross_entropy_with_logits(logit_next, y.to(logit_next.dtype), reduction="none")


# --- rewards (always detached: the policy may not change what it is rewarded for) --------------------


def uncertainty_reward(p: Tensor, sigma_z: Tensor) -> Tensor:
    """The ticket's per-hour reward ``entropy(p_t) + 0.1 · mean_z sigma_z,t`` (nats), detached. ``[B, T]``"""
    p = p.detach()
    entropy = -(torch.special.xlogy(p, p) + torch.special.xlogy(1.0 - p, 1.0 - p))  # [B, T]
    return entropy + UNCERTAINTY_SIGMA_WEIGHT * sigma_z.detach().mean(-1)


def query_value_reward(query_value: Tensor) -> Tensor:
    """The simulator's per-hour query value (cut in Var(w*·Z_23)) as reward, detached. ``[B, T]``"""
    return query_value.detach()


# --- the Plackett–Luce policy ------------------------------------------------------------------------


def gumbel_topk(scores: Tensor, k: int, samples: int, generator: torch.Generator | None = None) -> Tensor:
    """``samples`` draws of k distinct hours per window, ``[S, B, k]``, in draw order.

    Sorting ``scores + Gumbel noise`` in decreasing order gives exactly a sequential draw without
    replacement with probabilities softmax(scores) over the hours still left (Plackett–Luce).
    """
    _check_k(scores, k)
    shape = (samples, *scores.shape)  # [S, B, T]
    tiny = torch.finfo(scores.dtype).tiny
    # Draw on the generator's device, so one CPU generator also serves scores on a GPU.
    device = scores.device if generator is None else generator.device
    u = torch.rand(shape, generator=generator, device=device, dtype=scores.dtype).to(scores.device)
    gumbel = -torch.log(-torch.log(u.clamp_min(tiny)))
    return (scores.detach() + gumbel).topk(k, dim=-1, sorted=True).indices


def plackett_luce_log_prob(scores: Tensor, hours: Tensor) -> Tensor:
    """Log-probability of drawing ``hours`` (``[..., B, k]``, in draw order) under Plackett–Luce.

    ``sum_j [s_{h_j} - logsumexp(s over hours not drawn before step j)]``, with the earlier draws masked
    to -inf rather than subtracted, which stays exact when they hold nearly all the mass.
    Returns ``[..., B]``.
    """
    t = scores.shape[-1]
    chosen = scores.expand(*hours.shape[:-1], t).gather(-1, hours)  # [..., B, k]
    onehot = F.one_hot(hours, t)  # [..., B, k, T]
    drawn_before = (onehot.cumsum(-2) - onehot).bool()  # [..., B, k, T]
    masked = scores.unsqueeze(-2).masked_fill(drawn_before, float("-inf"))  # [..., B, k, T]
    return (chosen - masked.logsumexp(-1)).sum(-1)


def policy_loss(
    scores: Tensor,
    reward: Tensor,
    k: int,
    samples: int = 4,
    baseline: Baseline = "loo",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Score-function estimator of ``-E[reward of k hours drawn from the policy]``, per window ``[B]``.

    The reward of a draw is the mean per-hour reward of its k hours; its advantage (reward − baseline,
    detached) weights the Plackett–Luce log-probability of the draw, so the gradient w.r.t. ``scores`` is
    an unbiased estimate of the gradient of the expected reward. Baselines: ``"loo"`` the mean of the
    window's other samples; ``"batch_mean"`` the mean over every other sample in the batch; ``"none"``.
    Neither baseline depends on the draw it is subtracted from, so neither adds bias.

    Why not the original ticket's ``-uncert.gather(1, scores.topk(k).indices).mean()``: ``topk`` indices
    are integers, so no gradient reaches ``scores`` and the policy never learns; the only gradient left
    flows into ``uncert``, i.e. into the model's own entropy and sigma_z, pushing the posterior to claim
    more uncertainty. Here the reward is detached and the gradient goes to the scores alone.
    """
    _check_k(scores, k)
    if reward.shape != scores.shape:
        raise ValueError(f"policy_loss: reward {list(reward.shape)} must match scores {list(scores.shape)}")
    if baseline == "loo" and samples < 2:
        raise ValueError("policy_loss: baseline 'loo' needs samples >= 2 (policy.samples)")
    hours = gumbel_topk(scores, k, samples, generator)  # [S, B, k]
    log_prob = plackett_luce_log_prob(scores, hours)  # [S, B]
    reward = reward.detach()
    set_reward = reward.expand(samples, *reward.shape).gather(-1, hours).mean(-1)  # [S, B]
    return -(advantage(set_reward, baseline, "policy_loss") * log_prob).mean(0)


def advantage(set_reward: Tensor, baseline: Baseline, who: str = "advantage") -> Tensor:
    """``set_reward`` [S, B] minus a baseline that does not depend on the draw it is subtracted from (so
    it adds no bias), detached: ``"loo"`` the mean of the window's other samples, ``"batch_mean"`` the mean
    of every other sample in the batch, ``"none"`` zero."""
    set_reward = set_reward.detach()
    samples = set_reward.shape[0]
    if baseline == "loo":
        if samples < 2:
            raise ValueError(f"{who}: baseline 'loo' needs samples >= 2 (policy.samples)")
        base = (set_reward.sum(0, keepdim=True) - set_reward) / (samples - 1)
    elif baseline == "batch_mean":
        n = set_reward.numel()
        base = (set_reward.sum() - set_reward) / max(n - 1, 1)
    elif baseline == "none":
        base = torch.zeros_like(set_reward)
    else:
        raise ValueError(f"{who}: unknown baseline {baseline!r}; choose loo, batch_mean or none")
    return set_reward - base  # [S, B]


def set_policy_loss(log_prob: Tensor, set_reward: Tensor, baseline: Baseline = "loo") -> Tensor:
    """Score-function loss from ``S`` drawn question sets per window, ``[B]``.

    ``log_prob`` [S, B] (with gradient) and ``set_reward`` [S, B] (detached here): the same estimator as
    :func:`policy_loss`, for rewards that belong to a whole set (the model's gain after its answers).
    """
    return -(advantage(set_reward, baseline, "set_policy_loss") * log_prob).mean(0)


def info_gain_reward(
    m0: Tensor, v0: Tensor, m1: Tensor, v1: Tensor, truth: Tensor, form: Literal["variance", "logprob"]
) -> Tensor:
    """ALINE's reward for one question set: the model's own gain on the forecast-relevant quantity, detached.

    ``m, v`` are the model's mean and variance of ``w . z_23`` before (0) and after (1) the answers; shapes
    broadcast (``[S, B]`` against ``[B]``). ``logprob``: ``log q1(truth) - log q0(truth)`` (paper Eq. 10);
    ``variance``: its expectation over the truth under Gaussian q, ``0.5 log(v0 / v1)`` (no truth needed,
    no sampling noise from it).
    """
    if form == "variance":
        return (0.5 * (v0.log() - v1.log())).detach()
    if form == "logprob":

        def log_q(m: Tensor, v: Tensor) -> Tensor:
            return -0.5 * (v.log() + (truth - m).square() / v)

        return (log_q(m1, v1) - log_q(m0, v0)).detach()
    raise ValueError(f"info_gain_reward: unknown form {form!r}; choose variance or logprob")


def label_gain_reward(
    logit0: Tensor, logit1: Tensor, y: Tensor, form: Literal["observed", "expected"] = "observed"
) -> Tensor:
    """The label's reward for one question set, detached: how much its answers raise the model's
    log-likelihood of the next-day outcome. Logits before (``[B]``) and after (``[S, B]``) the answers.

    ``observed``: ``log p1(y) - log p0(y)`` at the window's own label ``y`` [B]. Its mean over windows
    estimates the expected gain in log score from asking, without bias whatever the model (the label is
    the real outcome); its noise is the label's. ``expected``: ``KL(p1 || p0)``, the mean of the observed
    form over ``y ~ p1``: the same quantity when the forecast after the answers is calibrated, with none
    of the label's noise, and no label needed.
    """
    logit0 = logit0.detach()
    logit1 = logit1.detach()
    if form == "observed":
        y = y.to(logit1.dtype)
        # -BCE is log p(y); computed from logits, so a confident forecast gives no log(0).
        log_p1 = -F.binary_cross_entropy_with_logits(logit1, y.expand_as(logit1), reduction="none")
        log_p0 = -F.binary_cross_entropy_with_logits(logit0, y, reduction="none")
        return log_p1 - log_p0
    if form == "expected":
        p1 = torch.sigmoid(logit1)
        # KL(Bern(p1) || Bern(p0)) with log-probabilities from logsigmoid: finite at any logit.
        return p1 * (F.logsigmoid(logit1) - F.logsigmoid(logit0)) + (1.0 - p1) * (
            F.logsigmoid(-logit1) - F.logsigmoid(-logit0)
        )
    raise ValueError(f"label_gain_reward: unknown form {form!r}; choose observed or expected")


def select_topk_hours(scores: Tensor, k: int) -> Tensor:
    """The k highest-scoring hours of each window, sorted ascending, ``[B, k]``: the policy at evaluation."""
    _check_k(scores, k)
    return scores.topk(k, dim=-1).indices.sort(dim=-1).values


def _check_k(scores: Tensor, k: int) -> None:
    if scores.dim() != 2:
        raise ValueError(f"policy scores must be [B, T], got shape {list(scores.shape)}")
    if not 1 <= k <= scores.shape[-1]:
        raise ValueError(f"policy.k must lie in 1..{scores.shape[-1]} (the hours per window), got {k}")


# --- the total --------------------------------------------------------------------------------------


def composite_loss(
    out: AlineOutput,
    batch: dict[str, Tensor],
    loss_cfg: LossConfig,
    policy_cfg: PolicyConfig,
    generator: torch.Generator | None = None,
) -> LossParts:
    """``L_post + α · L_policy + β · L_bce`` per window, with every part.

    ``batch`` holds ``"y"`` [B]; ``"z"`` [B, T, Z] unless ``loss.posterior == "none"``; ``"sigma"``
    [B, T, Z] when the posterior loss is mse with ``loss.sigma_target == "posterior"``; ``"query_value"``
    [B, T] when ``policy.reward == "query_value"``.
    """
    post = posterior_part(out, batch, loss_cfg)

    if policy_cfg.reward == "query_value":
        reward = query_value_reward(_require(batch, "query_value", "policy.reward=query_value"))
    else:
        reward = uncertainty_reward(out.p, out.sigma_z)
    policy = policy_loss(out.scores, reward, policy_cfg.k, policy_cfg.samples, policy_cfg.baseline, generator)

    bce = bce_loss(out.logit_next, batch["y"])
    total = post + loss_cfg.alpha * policy + loss_cfg.beta * bce
    return LossParts(total=total, post=post, policy=policy, bce=bce)


def resolve_posterior(loss_cfg: LossConfig, has_latents: bool, has_sigma: bool) -> str:
    """The posterior loss that ``loss.posterior`` means for data with/without latent and sigma columns:
    ``auto`` → ``mse`` with sigma targets when the data has them, ``nll`` when it has latents only, ``none``
    without latents. ``mse`` with ``sigma_target=constant`` needs no sigma columns."""
    choice = loss_cfg.posterior
    if choice == "auto":
        if not has_latents:
            return "none"
        if has_sigma or loss_cfg.sigma_target == "constant":
            return "mse" if has_sigma else "nll"
        return "nll"
    return choice


def resolve_mean_target(loss_cfg: LossConfig, posterior: str, has_post_mean: bool) -> str:
    """What ``loss.mean_target`` means for a resolved ``loss.posterior`` on data with/without the
    posterior-mean columns: ``auto`` → ``posterior`` under ``mse`` when they exist, else ``truth``."""
    choice = loss_cfg.mean_target
    if choice == "auto":
        return "posterior" if posterior == "mse" and has_post_mean else "truth"
    return choice


def posterior_part(out: AlineOutput, batch: dict[str, Tensor], loss_cfg: LossConfig) -> Tensor:
    """L_post per window ``[B]`` under ``loss.posterior``; ``auto`` is resolved from the batch's keys as
    :func:`resolve_posterior` does from the data's columns."""
    return posterior_of(out.mu_z, out.sigma_z, batch, loss_cfg)


def posterior_of(mu_z: Tensor, sigma_z: Tensor, batch: dict[str, Tensor], loss_cfg: LossConfig) -> Tensor:
    """:func:`posterior_part` for one pass's ``mu_z``, ``sigma_z`` ``[B, T, Z]`` (the loop has two)."""
    choice = resolve_posterior(loss_cfg, "z" in batch, "sigma" in batch)
    if choice == "none":
        return mu_z.new_zeros(mu_z.shape[0])
    z = _require(batch, "z", f"loss.posterior={choice}")
    if choice == "nll":
        return posterior_nll(mu_z, sigma_z, z, loss_cfg.lam)
    if loss_cfg.sigma_target == "posterior":
        sigma_target: Tensor | float = _require(batch, "sigma", "loss.sigma_target=posterior")
    else:
        sigma_target = loss_cfg.sigma_constant
    if "post_mean" in batch and resolve_mean_target(loss_cfg, choice, True) == "posterior":
        # Same minimiser as the truth (E[post_mean | inputs] = E[z | inputs]), without the truth's scatter
        # around the posterior mean, which is most of each step's gradient noise. A split without the
        # columns (checked for the training split before a run) falls back to the truth.
        z = batch["post_mean"]
    return posterior_loss(mu_z, sigma_z, z, sigma_target, loss_cfg.lam)


def resolve_readings(loss_cfg: LossConfig, posterior: str, has_likelihood: bool) -> float:
    """The weight ``loss.readings`` means under a resolved ``loss.posterior``, for an encoder with or
    without the readings' likelihood: ``auto`` → 1 with labels only (the readings are then all a state-space
    model can be fitted to) on an encoder that has one, else 0."""
    if loss_cfg.readings != "auto":
        return float(loss_cfg.readings)
    return 1.0 if posterior == "none" and has_likelihood else 0.0


def readings_weight(out: AlineOutput, batch: dict[str, Tensor], loss_cfg: LossConfig) -> float:
    """:func:`resolve_readings` for one pass's output, ``auto`` resolved from the batch's keys as
    :func:`posterior_of` resolves ``loss.posterior``."""
    posterior = resolve_posterior(loss_cfg, "z" in batch, "sigma" in batch)
    return resolve_readings(loss_cfg, posterior, out.readings_nll is not None)


def readings_part(out: AlineOutput, batch: dict[str, Tensor], loss_cfg: LossConfig, b: int) -> Tensor:
    """``loss.readings`` times the readings' own NLL per window ``[B]``, averaged over the day as logged
    and (when the pass holds ``2B`` rows) the day with its answers. Zero for an encoder without one."""
    weight = readings_weight(out, batch, loss_cfg)
    if out.readings_nll is None or not weight:
        return out.logits.new_zeros(b)
    nll = out.readings_nll  # [B] or [2B]
    if nll.shape[0] != b:
        nll = 0.5 * (nll[:b] + nll[b:])
    return weight * nll


def _require(batch: dict[str, Tensor], key: str, why: str) -> Tensor:
    if key not in batch:
        raise KeyError(f"composite_loss: batch has no {key!r} tensor, which {why} needs")
    return batch[key]
