"""ALINE's closed loop as the training loss and the validation pass (the engines' step closures call these).

Training step, per batch of B windows:

1. A no-grad pass reads the day as logged (D0): the policy scores and the model's forecast posterior q0.
2. The policy draws ``policy.samples`` sets of up to k hours from the pool (Gumbel-top-k, non-pool hours at
   -inf). Each set gets a detached reward: ``query_value`` (the exact variance cut of its hours),
   ``info_gain`` (the model's own gain on the latent, from one extra no-grad pass over all sets with their
   answers written in), ``label_gain`` (from the same pass: how much the answers raise the model's
   log-likelihood of the window's observed next-day label) or ``uncertainty`` (the ticket's proxy).
3. One gradient pass over [D0 ; D0 + answers] (a single forward call, which distributed data parallel
   needs): the answer half reveals the policy's first draw for some windows and a random pool draw for the
   others (``policy.random_reveal``), so the posterior learns what answers do to its uncertainty on
   question sets the policy would not choose as well.
4. loss = L_post(D0) + L_post'(answers) + alpha * L_policy + beta * mean(BCE(D0), BCE(answers)), where
   L_post' replaces the sigma target (exact only for D0) with the target-free Gaussian NLL.

Without an answer column the loop reduces to the old single pass with the policy restricted to the pool.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from aline.config import Config
from aline.model import asking
from aline.model.network import AlineOutput, unwrap
from aline.training.losses import (
    LossParts,
    bce_loss,
    info_gain_reward,
    label_gain_reward,
    posterior_nll,
    posterior_of,
    readings_part,
    readings_weight,
    resolve_posterior,
    set_policy_loss,
    uncertainty_reward,
)

Batch = dict[str, Tensor]
REWARDS = ("query_value", "info_gain", "label_gain", "uncertainty")

__all__ = [
    "REWARDS",
    "LoopSpec",
    "loop_loss",
    "loop_loss_with_first",
    "loop_eval",
    "resolve_info_gain",
    "resolve_label_gain",
    "resolve_reward",
]


def resolve_reward(reward: str, *, has_query_value: bool, has_answers: bool, has_truth: bool) -> str:
    """``policy.reward=auto``: the exact query value when the training data has it; else, with answers,
    ALINE's info gain when it has the latent truth and the label gain when it has labels only; else the
    uncertainty proxy. Other values pass through."""
    if reward != "auto":
        return reward
    if has_query_value:
        return "query_value"
    if has_answers:
        return "info_gain" if has_truth else "label_gain"
    return "uncertainty"


def resolve_info_gain(form: str, *, has_truth: bool) -> str:
    """``policy.info_gain=auto``: ``logprob`` (ALINE's estimator, ``log q1(z) - log q0(z)`` at the latent
    truth) when the training data has it, else ``variance``. With the GRU encoder, whose variance barely
    follows what an answer is worth, logprob's reward also sees how far the answers move the mean towards
    the truth (docs/design.md, "The asking loop"). Other values pass through."""
    if form != "auto":
        return form
    return "logprob" if has_truth else "variance"


def resolve_label_gain(form: str, readings: float) -> str:
    """``policy.label_gain=auto``: ``expected`` (KL(p1 || p0), no label noise) when the readings' own
    likelihood trains the model (``loss.readings`` > 0), since that is what makes an answer move the
    forecast by as much as it is worth; else ``observed``, unbiased whatever the model. Other values pass
    through."""
    if form != "auto":
        return form
    return "expected" if readings > 0.0 else "observed"


@dataclass(frozen=True)
class LoopSpec:
    """What the loop needs beyond the config: the input column answers are revealed into, the answer
    channel after the features (None: no question, no answers)."""

    feature: int | None

    @classmethod
    def from_config(cls, cfg: Config) -> LoopSpec:
        cols = cfg.data.columns
        return cls(None if cols.asked_feature is None else len(cols.features))


def _pool(batch: Batch) -> Tensor:
    if "pool" in batch:
        return batch["pool"] > 0.5  # [B, T] bool
    x = batch["x"]
    return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)


def _has_answers(batch: Batch, spec: LoopSpec) -> bool:
    return spec.feature is not None and "answer" in batch


def loop_loss(model: torch.nn.Module, batch: Batch, cfg: Config, spec: LoopSpec) -> LossParts:
    """The training loss of one batch through the closed loop (see the module docstring)."""
    return loop_loss_with_first(model, batch, cfg, spec)[0]


def loop_loss_with_first(
    model: torch.nn.Module, batch: Batch, cfg: Config, spec: LoopSpec
) -> tuple[LossParts, AlineOutput]:
    """:func:`loop_loss` and its first, no-grad pass over the day as logged (D0), which validation reuses
    for the forecast and :func:`loop_eval` instead of reading the day again."""
    pol = cfg.policy
    x, mask, y = batch["x"], batch["mask"], batch["y"]
    z = batch.get("z")  # [B, T, Z]; absent when training on labels alone
    b, t = x.shape[:2]
    pool = _pool(batch)
    answers = _has_answers(batch, spec)
    bare = unwrap(model)
    w = bare.w.detach()  # [Z] the forecast's own weights: what "forecast-relevant" means to the model

    # 1-2. Draw the policy's sets and reward them, all without gradient.
    with torch.no_grad():
        out_ng = bare(x, mask)
        hours, valid = asking.masked_gumbel_topk(out_ng.scores, pool, pol.k, pol.samples)  # [S, B, k]
        asked_s = asking.asked_from_draws(hours, valid, t)  # [S, B, T]
        set_reward = _set_reward(bare, batch, cfg, spec, out_ng, asked_s, w)  # [S, B]
        if answers:
            coin = torch.rand(b, device=x.device) < pol.random_reveal  # [B]
            asked_t = torch.where(coin.unsqueeze(1), asking.random_pool_draw(pool, pol.k), asked_s[0])
            x1, m1 = asking.reveal(x, mask, batch["answer"], asked_t, spec.feature)

    # 3. One gradient pass over both halves.
    if answers:
        out = model(torch.cat([x, x1]), torch.cat([mask, m1]))
        mu, sigma, scores, logit = out.mu_z, out.sigma_z, out.scores[:b], out.logit_next
    else:
        out = model(x, mask)
        mu, sigma, scores, logit = out.mu_z, out.sigma_z, out.scores, out.logit_next

    post = posterior_of(mu[:b], sigma[:b], batch, cfg.loss)  # [B], under loss.posterior
    bce = bce_loss(logit[:b], y)
    if answers:
        if z is not None and resolve_posterior(cfg.loss, True, "sigma" in batch) != "none":
            # No column holds the exact std after answers: sigma learns from the NLL (mean from the MSE).
            post = post + posterior_nll(mu[b:], sigma[b:], z, cfg.loss.lam)
        bce = 0.5 * (bce + bce_loss(logit[b:], y))
    post = post + readings_part(out, batch, cfg.loss, b)
    log_prob = asking.pool_log_prob(scores, pool, hours, valid)  # [S, B]
    policy = set_policy_loss(log_prob, set_reward, pol.baseline)
    total = post + cfg.loss.alpha * policy + cfg.loss.beta * bce
    return LossParts(total=total, post=post, policy=policy, bce=bce), out_ng


def _set_reward(
    bare: torch.nn.Module,
    batch: Batch,
    cfg: Config,
    spec: LoopSpec,
    out0,
    asked_s: Tensor,
    w: Tensor,
) -> Tensor:
    """Detached reward of each drawn set ``[S, B]`` under ``policy.reward``."""
    reward = cfg.policy.reward
    a = asked_s.to(batch["x"].dtype)  # [S, B, T]
    if reward == "query_value":
        if "query_value" not in batch:
            raise KeyError("loop_loss: policy.reward=query_value needs the batch's 'query_value'")
        return (a * batch["query_value"]).sum(-1)
    if reward == "uncertainty":
        return (a * asking_uncertainty(out0)).sum(-1) / cfg.policy.k
    if reward in ("info_gain", "label_gain"):
        if not _has_answers(batch, spec):
            raise KeyError(f"loop_loss: policy.reward={reward} needs answers (data.columns.answers)")
        s, b = asked_s.shape[:2]
        x, mask = batch["x"], batch["mask"]
        xs, ms = asking.reveal(
            x.expand(s, *x.shape), mask.expand(s, *mask.shape), batch["answer"], asked_s, spec.feature
        )
        outs = bare(xs.reshape(s * b, *x.shape[1:]), ms.reshape(s * b, *mask.shape[1:]))
        if reward == "label_gain":
            logit1 = outs.logit_next.reshape(s, b)  # [S, B]
            form = resolve_label_gain(cfg.policy.label_gain, readings_weight(out0, batch, cfg.loss))
            return label_gain_reward(out0.logit_next, logit1, batch["y"], form)
        m0, v0 = asking.forecast_moments(out0, w)  # [B]
        m1, v1 = asking.forecast_moments(outs, w)
        form = resolve_info_gain(cfg.policy.info_gain, has_truth="z" in batch)
        if "z" not in batch and form == "logprob":
            raise KeyError("loop_loss: policy.info_gain=logprob needs the latent truth; use variance")
        truth = batch["z"][:, -1] @ w if "z" in batch else m0  # [B]; the variance form ignores it
        return info_gain_reward(m0, v0, m1.reshape(s, b), v1.reshape(s, b), truth, form)
    raise ValueError(f"policy.reward={reward!r} was not resolved (auto must be resolved before training)")


def asking_uncertainty(out) -> Tensor:
    """The ticket's per-hour uncertainty reward for one pass's output. ``[B, T]``"""
    return uncertainty_reward(out.p, out.sigma_z)


@torch.no_grad()
def loop_eval(
    model: torch.nn.Module, batch: Batch, cfg: Config, spec: LoopSpec, out0: AlineOutput | None = None
) -> dict[str, Tensor]:
    """The validation pass's loop columns, per window (see :mod:`aline.training.metrics` for the contract).

    ``asked`` [B, T] (the policy's top-k pool hours), ``pool`` [B, T], ``policy_qv``/``best_qv`` [B],
    ``p_asked`` [B] (p_next after those answers; NaN without answers) and ``gain_rho`` [B] (within-window
    Spearman of the model's one-answer gain vs the exact query value, for windows with index below
    ``policy.gain_windows``; NaN elsewhere). ``out0``: the model's output for the day as logged, when the
    caller has it already.
    """
    bare = unwrap(model)
    x, mask = batch["x"], batch["mask"]
    b, t = x.shape[:2]
    pool = _pool(batch)
    if out0 is None:
        out0 = bare(x, mask)
    asked = asking.pool_topk(out0.scores, pool, cfg.policy.k)  # [B, T]
    nan = torch.full((b,), float("nan"), device=x.device)
    res: dict[str, Tensor] = {"asked": asked.float(), "pool": pool.float(), "p_asked": nan, "gain_rho": nan}
    qv = batch.get("query_value")
    if qv is None:
        res["policy_qv"] = res["best_qv"] = nan
    else:
        qv_pool = qv * pool
        res["policy_qv"] = (qv_pool * asked).sum(1)
        res["best_qv"] = qv_pool.topk(cfg.policy.k, dim=1).values.sum(1)
    if _has_answers(batch, spec):
        x1, m1 = asking.reveal(x, mask, batch["answer"], asked, spec.feature)
        res["p_asked"] = bare(x1, m1).p_next
        chosen = batch["index"] < cfg.policy.gain_windows
        if qv is not None and bool(chosen.any()):
            w = bare.w.detach()
            sel = chosen.nonzero().squeeze(1)
            _, v0 = asking.forecast_moments(out0, w)
            gains = asking.one_answer_gains(
                bare, x[sel], mask[sel], batch["answer"][sel], pool[sel], spec.feature, w, v0[sel]
            )
            rho = asking.within_window_spearman(
                gains.double().cpu().numpy(), qv[sel].double().cpu().numpy(), pool[sel].cpu().numpy()
            )
            res["gain_rho"] = res["gain_rho"].clone()
            res["gain_rho"][sel] = torch.from_numpy(rho).to(nan)
    return res
