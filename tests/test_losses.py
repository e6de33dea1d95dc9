"""Loss values against NumPy, the Plackett–Luce policy against brute-force enumeration, gradient flow."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy import stats

from aline.config import Config
from aline.contract import LOSS_COLUMNS
from aline.model.network import AlineModel
from aline.training.losses import (
    bce_loss,
    composite_loss,
    gumbel_topk,
    plackett_luce_log_prob,
    policy_loss,
    posterior_loss,
    posterior_nll,
    posterior_of,
    query_value_reward,
    select_topk_hours,
    uncertainty_reward,
)

DT = torch.float64


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- NumPy references, written from the formulas, not from the code under test --------------------------


def np_pl_prob(scores: np.ndarray, order: tuple[int, ...]) -> float:
    """Probability of drawing ``order`` one hour at a time, each ∝ exp(score) among those left."""
    w = np.exp(scores - scores.max())
    left = np.ones_like(w, dtype=bool)
    prob = 1.0
    for h in order:
        prob *= w[h] / w[left].sum()
        left[h] = False
    return prob


def np_pl_grad_log_prob(scores: np.ndarray, order: np.ndarray) -> np.ndarray:
    """d log P(order) / d scores: at each step, one-hot(chosen) minus the softmax over the hours left."""
    grad = np.zeros_like(scores)
    left = np.ones_like(scores, dtype=bool)
    for h in order:
        w = np.where(left, np.exp(scores - scores[left].max()), 0.0)
        grad -= w / w.sum()
        grad[h] += 1.0
        left[h] = False
    return grad


def np_bce(logit: np.ndarray, y: np.ndarray) -> np.ndarray:
    # log(1 + e^x) - y x, written with logaddexp so large logits stay finite
    return np.logaddexp(0.0, logit) - y * logit


def np_entropy(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(p * np.log(p) + (1 - p) * np.log(1 - p))
    return np.nan_to_num(h, nan=0.0)


# --- values ----------------------------------------------------------------------------------------------


def test_posterior_loss_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    mu, z, tgt = rng.normal(size=(3, 5, 24, 4))
    sig = rng.uniform(0.1, 2.0, size=(5, 24, 4))
    lam = 0.7
    ref = ((mu - z) ** 2).mean(axis=(1, 2)) + lam * ((sig - tgt) ** 2).mean(axis=(1, 2))
    t = [torch.tensor(a) for a in (mu, sig, z, tgt)]
    got = posterior_loss(*t, lam=lam)
    assert got.shape == (5,)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-12)
    # a constant sigma target
    ref_c = ((mu - z) ** 2).mean(axis=(1, 2)) + lam * ((sig - 0.5) ** 2).mean(axis=(1, 2))
    np.testing.assert_allclose(posterior_loss(t[0], t[1], t[2], 0.5, lam).numpy(), ref_c, rtol=1e-12)


def test_posterior_loss_rejects_mismatched_shapes() -> None:
    a = torch.zeros(2, 24, 4)
    with pytest.raises(ValueError, match="same"):
        posterior_loss(a, a, torch.zeros(2, 24, 3), 0.5, 1.0)
    with pytest.raises(ValueError, match="sigma_target"):
        posterior_loss(a, a, a, torch.zeros(2, 24, 3), 1.0)


def test_bce_matches_numpy_including_extreme_logits() -> None:
    rng = np.random.default_rng(1)
    logit = np.concatenate([rng.normal(scale=3, size=50), [-200.0, 200.0, -40.0, 40.0]])
    y = np.concatenate([rng.integers(0, 2, 50), [1, 0, 0, 1]]).astype(float)
    got = bce_loss(torch.tensor(logit), torch.tensor(y))
    assert torch.isfinite(got).all()
    np.testing.assert_allclose(got.numpy(), np_bce(logit, y), rtol=1e-10, atol=1e-12)


def test_uncertainty_reward_matches_numpy_and_is_detached() -> None:
    rng = np.random.default_rng(2)
    p = rng.uniform(size=(4, 24))
    p[0, :3] = [0.0, 1.0, 0.5]
    sig = rng.uniform(0.01, 3.0, size=(4, 24, 4))
    p_t = torch.tensor(p, requires_grad=True)
    s_t = torch.tensor(sig, requires_grad=True)
    got = uncertainty_reward(p_t, s_t)
    assert not got.requires_grad
    np.testing.assert_allclose(got.numpy(), np_entropy(p) + 0.1 * sig.mean(-1), rtol=1e-12, atol=1e-15)
    assert got[0, 2].item() == pytest.approx(np.log(2) + 0.1 * sig[0, 2].mean())


def test_query_value_reward_is_the_column_detached() -> None:
    q = torch.rand(3, 24, requires_grad=True)
    got = query_value_reward(q)
    assert not got.requires_grad
    assert torch.equal(got, q.detach())


# --- Plackett–Luce and Gumbel-top-k ------------------------------------------------------------------


@pytest.mark.parametrize(("t", "k"), [(4, 1), (5, 3), (6, 2), (5, 5)])
def test_plackett_luce_log_prob_equals_brute_force(t: int, k: int) -> None:
    rng = np.random.default_rng(t * 10 + k)
    scores = rng.normal(scale=1.5, size=t)
    orders = list(itertools.permutations(range(t), k))
    ref = np.array([np_pl_prob(scores, o) for o in orders])
    assert ref.sum() == pytest.approx(1.0, abs=1e-12)
    hours = torch.tensor(orders).unsqueeze(1)  # [N, 1, k]: every ordered draw as a "sample"
    logp = plackett_luce_log_prob(torch.tensor(scores).unsqueeze(0), hours)  # [N, 1]
    assert logp.shape == (len(orders), 1)
    np.testing.assert_allclose(logp[:, 0].exp().numpy(), ref, rtol=1e-10)
    assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-10)


def test_plackett_luce_log_prob_stays_finite_when_first_draws_hold_all_the_mass() -> None:
    scores = torch.tensor([[60.0, 0.0, -1.0, 0.5]], dtype=DT)
    hours = torch.tensor([[[0, 3, 1]]])
    ref = np.log(np_pl_prob(scores[0].numpy(), (0, 3, 1)))
    got = plackett_luce_log_prob(scores, hours)
    assert torch.isfinite(got).all()
    assert got.item() == pytest.approx(ref, rel=1e-9)


def test_gumbel_topk_shapes_distinct_and_reproducible() -> None:
    scores = torch.randn(7, 24)
    h = gumbel_topk(scores, 3, 5, _gen(3))
    assert h.shape == (5, 7, 3) and h.dtype == torch.long
    assert ((h >= 0) & (h < 24)).all()
    srt = h.sort(-1).values
    assert (srt[..., 1:] != srt[..., :-1]).all(), "an hour drawn twice in one sample"
    assert torch.equal(h, gumbel_topk(scores, 3, 5, _gen(3)))
    with pytest.raises(ValueError, match="policy.k"):
        gumbel_topk(scores, 25, 1)


def test_gumbel_topk_frequencies_match_plackett_luce() -> None:
    # Unbiasedness of the estimator rests on this: the sampler draws exactly the distribution whose
    # log-probability we differentiate. Chi-square over all 5·4 = 20 ordered draws.
    scores = np.array([1.0, 0.2, -0.5, 0.0, -1.5])
    n = 100_000
    h = gumbel_topk(torch.tensor(scores).unsqueeze(0), 2, n, _gen(4))[:, 0, :].numpy()  # [n, 2]
    orders = list(itertools.permutations(range(5), 2))
    code = {o: i for i, o in enumerate(orders)}
    observed = np.bincount([code[(a, b)] for a, b in h], minlength=len(orders))
    expected = n * np.array([np_pl_prob(scores, o) for o in orders])
    _, pvalue = stats.chisquare(observed, expected)
    assert pvalue > 1e-3


def test_select_topk_hours_is_sorted_top_k() -> None:
    rng = np.random.default_rng(5)
    scores = rng.normal(size=(30, 24))
    got = select_topk_hours(torch.tensor(scores), 4).numpy()
    ref = np.sort(np.argsort(-scores, axis=1)[:, :4], axis=1)
    np.testing.assert_array_equal(got, ref)


# --- the policy loss ---------------------------------------------------------------------------------


@pytest.mark.parametrize("baseline", ["loo", "batch_mean", "none"])
def test_policy_loss_and_its_gradient_match_numpy(baseline: str) -> None:
    rng = np.random.default_rng(6)
    b, t, k, s = 6, 24, 3, 5
    scores = rng.normal(size=(b, t))
    reward = rng.uniform(size=(b, t))
    st = torch.tensor(scores, requires_grad=True)
    loss = policy_loss(st, torch.tensor(reward), k, s, baseline, _gen(7))
    (grad,) = torch.autograd.grad(loss.sum(), st)
    hours = gumbel_topk(torch.tensor(scores), k, s, _gen(7)).numpy()  # the same draws: same seed

    r = np.take_along_axis(np.broadcast_to(reward, (s, b, t)), hours, -1).mean(-1)  # [s, b]
    if baseline == "loo":
        base = np.array([[np.delete(r[:, i], j).mean() for i in range(b)] for j in range(s)])
    elif baseline == "batch_mean":
        flat = r.ravel()
        base = np.array([np.delete(flat, m).mean() for m in range(flat.size)]).reshape(s, b)
    else:
        base = np.zeros_like(r)
    adv = r - base
    logp = np.array([[np.log(np_pl_prob(scores[i], tuple(hours[j, i]))) for i in range(b)] for j in range(s)])
    np.testing.assert_allclose(loss.detach().numpy(), -(adv * logp).mean(0), rtol=1e-10)
    ref_grad = np.zeros_like(scores)
    for j in range(s):
        for i in range(b):
            ref_grad[i] -= adv[j, i] * np_pl_grad_log_prob(scores[i], hours[j, i]) / s
    np.testing.assert_allclose(grad.numpy(), ref_grad, rtol=1e-9, atol=1e-12)


def test_policy_gradient_is_unbiased_for_the_expected_reward() -> None:
    # Exact gradient of E[mean reward of the k drawn hours] by enumeration + central differences.
    scores = np.array([0.3, -0.2, 0.8, 0.0, -1.0])
    reward = np.array([0.1, 0.9, 0.4, 0.7, 0.2])
    k = 2
    orders = list(itertools.permutations(range(5), k))

    def expected(sc: np.ndarray) -> float:
        return sum(np_pl_prob(sc, o) * reward[list(o)].mean() for o in orders)

    eps = 1e-6
    exact = np.array(
        [(expected(scores + eps * e) - expected(scores - eps * e)) / (2 * eps) for e in np.eye(5)]
    )
    st = torch.tensor(scores, requires_grad=True)
    for baseline in ("loo", "none"):
        loss = policy_loss(st.unsqueeze(0), torch.tensor(reward).unsqueeze(0), k, 100_000, baseline, _gen(8))
        (grad,) = torch.autograd.grad(loss.sum(), st)
        # minimising the loss ascends the expected reward: -grad estimates +d E[R] / d scores
        np.testing.assert_allclose(-grad.numpy(), exact, atol=4e-3)


def test_baselines_cut_the_gradient_variance() -> None:
    # Rewards with a per-day level far above their hourly spread, like entropy(p_t): without a baseline
    # every draw's log-prob gradient is scaled by that level, which is pure noise.
    w, t, k, repeats = 48, 24, 3, 40
    g = _gen(16)
    scores = (0.5 * torch.randn(w, t, generator=g, dtype=DT)).requires_grad_(True)
    reward = (
        0.5 + 0.2 * torch.rand(w, 1, generator=g, dtype=DT) + 0.05 * torch.rand(w, t, generator=g, dtype=DT)
    )
    var = {}
    for baseline in ("none", "batch_mean", "loo"):
        gen = _gen(17)
        draws = [
            torch.autograd.grad(policy_loss(scores, reward, k, 4, baseline, gen).sum(), scores)[0]
            for _ in range(repeats)
        ]
        var[baseline] = torch.stack(draws).var(0).sum().item()
    assert var["batch_mean"] < var["none"] / 3
    assert var["loo"] < var["batch_mean"] / 3


def test_policy_loss_rejects_bad_arguments() -> None:
    s = torch.zeros(2, 24)
    with pytest.raises(ValueError, match="samples >= 2"):
        policy_loss(s, s, 3, samples=1, baseline="loo")
    with pytest.raises(ValueError, match="reward"):
        policy_loss(s, torch.zeros(2, 23), 3)
    with pytest.raises(ValueError, match="unknown baseline"):
        policy_loss(s, s, 3, baseline="median")  # type: ignore[arg-type]


def test_policy_loss_learns_the_best_hours_of_each_window() -> None:
    # Free scores, one set per window; a fixed known reward per (window, hour). The k best hours of each
    # window (drawn at random) get rewards in [0.6, 1], the others in [0, 0.5]: a known margin, because
    # with no margin at all no estimator can tell the k-th hour from the (k+1)-th in a few hundred steps.
    torch.manual_seed(0)
    w, t, k = 200, 24, 3
    reward = torch.rand(w, t) * 0.5
    best_hours = torch.rand(w, t).argsort(1)[:, :k]
    reward.scatter_(1, best_hours, 0.6 + 0.4 * torch.rand(w, k))
    scores = torch.zeros(w, t, requires_grad=True)
    opt = torch.optim.Adam([scores], lr=0.1)
    gen = _gen(9)
    for _ in range(300):
        opt.zero_grad()
        policy_loss(scores, reward, k, 4, "loo", gen).mean().backward()
        opt.step()
    best = np.sort(np.argsort(-reward.numpy(), axis=1)[:, :k], axis=1)
    hit = (select_topk_hours(scores.detach(), k).numpy() == best).all(axis=1)
    assert hit.mean() >= 0.95, f"top-k equals the best hours on only {hit.mean():.1%} of windows"


@pytest.mark.parametrize("encoder", ["gru", "transformer"])
def test_model_policy_head_learns_reward_that_depends_on_the_hour(encoder: str) -> None:
    # Through the real model with the default stop-gradient: only the policy head trains.
    torch.manual_seed(1)
    model = AlineModel(3, 2, encoder=encoder, d_model=32, heads=2, layers=1, ff_dim=32)
    opt = torch.optim.Adam(model.policy_head.parameters(), lr=1e-2)
    # The known reward of each hour, same every day; three hours stand clearly above the rest (with
    # near-ties, REINFORCE can settle on a near-best set, which is not what this test is about).
    per_hour = 0.5 * torch.rand(24, generator=torch.Generator().manual_seed(5))
    per_hour[[4, 13, 20]] = 1.0
    best = {4, 13, 20}
    gen = _gen(10)
    for _ in range(300):
        x = torch.randn(64, 24, 3)
        mask = (torch.rand(64, 24, 3) < 0.2).float()
        out = model(x, mask)
        opt.zero_grad()
        policy_loss(out.scores, per_hour.expand(64, 24), 3, 4, "loo", gen).mean().backward()
        opt.step()
    with torch.no_grad():
        x = torch.randn(256, 24, 3)
        picked = select_topk_hours(model(x, (torch.rand(256, 24, 3) < 0.2).float()).scores, 3)
    hit = np.mean([set(row) == best for row in picked.tolist()])
    assert hit >= 0.95, f"top-k equals the best hours on only {hit:.1%} of windows"


# --- composite loss ----------------------------------------------------------------------------------


def _batch(b: int = 8, z: int = 4) -> dict[str, torch.Tensor]:
    g = _gen(11)
    return {
        "z": torch.randn(b, 24, z, generator=g),
        "sigma": torch.rand(b, 24, z, generator=g) + 0.1,
        "y": (torch.rand(b, generator=g) < 0.3).float(),
        "query_value": torch.rand(b, 24, generator=g),
    }


def test_composite_loss_is_the_weighted_sum_of_independent_parts() -> None:
    torch.manual_seed(2)
    model = AlineModel(5, 4, d_model=16, heads=2, layers=1, ff_dim=16)
    x = torch.randn(8, 24, 5)
    out = model(x, torch.zeros_like(x))
    batch = _batch()
    cfg = Config.model_validate({"loss": {"lam": 0.3, "alpha": 0.2, "beta": 1.7}, "policy": {"k": 2}})
    parts = composite_loss(out, batch, cfg.loss, cfg.policy, _gen(12))

    mu, sig, z, tgt = (a.detach().numpy() for a in (out.mu_z, out.sigma_z, batch["z"], batch["sigma"]))
    post = ((mu - z) ** 2).mean(axis=(1, 2)) + 0.3 * ((sig - tgt) ** 2).mean(axis=(1, 2))
    bce = np_bce(out.logits[:, -1].detach().numpy(), batch["y"].numpy())
    reward = uncertainty_reward(out.p, out.sigma_z)
    pol = policy_loss(out.scores, reward, 2, cfg.policy.samples, cfg.policy.baseline, _gen(12))
    np.testing.assert_allclose(parts.post.detach().numpy(), post, rtol=1e-5)
    np.testing.assert_allclose(parts.bce.detach().numpy(), bce, rtol=1e-5)
    torch.testing.assert_close(parts.policy, pol)
    ref_total = post + 0.2 * pol.detach().numpy() + 1.7 * bce
    np.testing.assert_allclose(parts.total.detach().numpy(), ref_total, rtol=1e-5)

    means = parts.means()
    assert tuple(means) == LOSS_COLUMNS
    assert means["loss"] == pytest.approx(float(ref_total.mean()), rel=1e-5)


def test_composite_loss_reward_and_sigma_target_switches() -> None:
    torch.manual_seed(3)
    model = AlineModel(5, 4, d_model=16, heads=2, layers=1, ff_dim=16)
    x = torch.randn(8, 24, 5)
    out = model(x, torch.zeros_like(x))
    batch = _batch()
    cfg = Config.model_validate(
        {"loss": {"sigma_target": "constant", "sigma_constant": 0.25}, "policy": {"reward": "query_value"}}
    )
    parts = composite_loss(out, batch, cfg.loss, cfg.policy, _gen(13))
    pol = policy_loss(out.scores, batch["query_value"], cfg.policy.k, cfg.policy.samples, "loo", _gen(13))
    torch.testing.assert_close(parts.policy, pol)
    post = posterior_loss(out.mu_z, out.sigma_z, batch["z"], 0.25, cfg.loss.lam)
    torch.testing.assert_close(parts.post, post)

    del batch["query_value"]
    with pytest.raises(KeyError, match="query_value"):
        composite_loss(out, batch, cfg.loss, cfg.policy)
    default = Config()
    del batch["sigma"]
    mse = Config.model_validate({"loss": {"posterior": "mse"}})
    with pytest.raises(KeyError, match="sigma"):
        composite_loss(out, batch, mse.loss, mse.policy)
    # auto without sigma targets: MSE of the mean + lam * Gaussian NLL of sigma; the NLL's reference here
    # is scipy's log-density.
    parts = composite_loss(out, batch, default.loss, default.policy)
    mu, sd, z = (t.detach().double().numpy() for t in (out.mu_z, out.sigma_z, batch["z"]))
    nll = -(stats.norm.logpdf(z, mu, sd) + 0.5 * np.log(2 * np.pi))
    ref = (((z - mu) ** 2) + default.loss.lam * nll).reshape(8, -1).mean(1)
    np.testing.assert_allclose(parts.post.detach().double().numpy(), ref, rtol=1e-5)
    # Without latent targets there is no posterior loss (labels only).
    del batch["z"]
    parts = composite_loss(out, batch, default.loss, default.policy)
    assert torch.equal(parts.post, torch.zeros(8))


def test_mean_target_is_the_exact_posterior_mean_when_the_data_has_it() -> None:
    """loss.mean_target: auto and posterior fit mu to the post_mean columns, truth to z; sigma is fitted to
    its target either way. NumPy reference from the formula."""
    rng = np.random.default_rng(5)
    mu, sd, z, pm, st = (rng.normal(size=(6, 24, 4)) for _ in range(5))
    sd, st = np.abs(sd) + 0.1, np.abs(st) + 0.1
    batch = {"z": torch.tensor(z), "post_mean": torch.tensor(pm), "sigma": torch.tensor(st)}

    def ref(target: np.ndarray) -> np.ndarray:
        return (((mu - target) ** 2) + 0.5 * (sd - st) ** 2).reshape(6, -1).mean(1)

    for choice, target in (("auto", pm), ("posterior", pm), ("truth", z)):
        cfg = Config.model_validate({"loss": {"mean_target": choice, "lam": 0.5}})
        got = posterior_of(torch.tensor(mu), torch.tensor(sd), batch, cfg.loss)
        np.testing.assert_allclose(got.numpy(), ref(target), rtol=1e-12, err_msg=choice)
    del batch["post_mean"]
    auto = Config.model_validate({"loss": {"lam": 0.5}})
    np.testing.assert_allclose(
        posterior_of(torch.tensor(mu), torch.tensor(sd), batch, auto.loss).numpy(), ref(z)
    )


def test_posterior_nll_matches_scipy_and_is_minimised_by_the_mean_and_the_true_spread() -> None:
    rng = np.random.default_rng(0)
    mu = rng.normal(size=(5, 24, 3))
    sd = rng.uniform(0.2, 2.0, size=(5, 24, 3))
    z = rng.normal(size=(5, 24, 3))
    got = posterior_nll(*(torch.tensor(a) for a in (mu, sd, z)), lam=0.5)
    nll = -(stats.norm.logpdf(z, mu, sd) + 0.5 * np.log(2 * np.pi))
    ref = ((z - mu) ** 2 + 0.5 * nll).reshape(5, -1).mean(1)
    assert got.shape == (5,)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-12)
    # The mean's gradient is the MSE's, whatever sigma says (the full NLL would scale it by 1/sigma^2).
    mu_t = torch.tensor(mu, requires_grad=True)
    posterior_nll(mu_t, torch.tensor(sd), torch.tensor(z), lam=1.0).sum().backward()
    np.testing.assert_allclose(mu_t.grad.numpy(), 2 * (mu - z) / (24 * 3), rtol=1e-12)
    # Its minimiser over one shared sigma is the root-mean-square error (closed form), with no target.
    err = torch.tensor(rng.normal(0.0, 0.7, size=(1, 2000, 1)))
    sigmas = torch.linspace(0.3, 1.5, 1201, dtype=torch.float64)
    values = torch.stack(
        [posterior_nll(torch.zeros_like(err), torch.full_like(err, s), err, 1.0) for s in sigmas]
    )
    best = float(sigmas[values.squeeze(1).argmin()])
    assert abs(best - float(err.square().mean().sqrt())) < 1.5e-3


# --- gradient flow -----------------------------------------------------------------------------------


def _grads(model: torch.nn.Module, loss: torch.Tensor) -> dict[str, float]:
    """Largest |grad| per top-level submodule (0 where no gradient arrived)."""
    model.zero_grad(set_to_none=True)
    loss.backward(retain_graph=True)
    out: dict[str, float] = {}
    for name, p in model.named_parameters():
        part = name.split(".")[0]
        g = 0.0 if p.grad is None else p.grad.abs().max().item()
        out[part] = max(out.get(part, 0.0), g)
    return out


ENCODER = ("input_proj", "encoder", "final_norm")


def _setup(**kw: bool) -> tuple[AlineModel, object, dict[str, torch.Tensor]]:
    torch.manual_seed(4)
    model = AlineModel(5, 4, d_model=16, heads=2, layers=1, ff_dim=16, **kw)  # the default gru encoder
    x = torch.randn(8, 24, 5)
    out = model(x, (torch.rand(8, 24, 5) < 0.3).float())
    return model, out, _batch()


def test_policy_loss_reaches_only_the_policy_head_by_default() -> None:
    model, out, _ = _setup()
    reward = uncertainty_reward(out.p, out.sigma_z)
    g = _grads(model, policy_loss(out.scores, reward, 3, 4, "loo", _gen(14)).mean())
    assert g["policy_head"] > 0
    for part in (*ENCODER, "posterior_head", "w", "b"):
        assert g[part] == 0, part


def test_policy_loss_reaches_the_encoder_with_the_switch() -> None:
    model, out, _ = _setup(detach_policy=False)
    reward = uncertainty_reward(out.p, out.sigma_z)
    g = _grads(model, policy_loss(out.scores, reward, 3, 4, "loo", _gen(14)).mean())
    assert g["policy_head"] > 0 and g["encoder"] > 0 and g["input_proj"] > 0
    assert g["posterior_head"] == 0 and g["w"] == 0


def test_posterior_loss_sends_nothing_to_the_policy_head() -> None:
    model, out, batch = _setup()
    g = _grads(model, posterior_loss(out.mu_z, out.sigma_z, batch["z"], batch["sigma"], 1.0).mean())
    assert g["posterior_head"] > 0 and g["encoder"] > 0
    assert g["policy_head"] == 0 and g["w"] == 0 and g["b"] == 0


def test_bce_trains_only_w_and_b_by_default() -> None:
    model, out, batch = _setup()
    g = _grads(model, bce_loss(out.logit_next, batch["y"]).mean())
    assert g["w"] > 0 and g["b"] > 0
    for part in (*ENCODER, "posterior_head", "policy_head"):
        assert g[part] == 0, part


def test_bce_reaches_the_encoder_with_the_switch() -> None:
    model, out, batch = _setup(detach_prediction=False)
    g = _grads(model, bce_loss(out.logit_next, batch["y"]).mean())
    assert g["w"] > 0 and g["encoder"] > 0 and g["posterior_head"] > 0
    assert g["policy_head"] == 0


def test_ticket_pseudo_code_sends_no_gradient_to_the_scores() -> None:
    # The original ticket's policy loss, verbatim in spirit: it cannot train the policy, and its only
    # gradient pushes the model's own uncertainty up.
    model, out, _ = _setup()
    scores = out.scores
    p = out.p
    entropy = -(p * torch.log(p + 1e-6) + (1 - p) * torch.log(1 - p + 1e-6))
    uncert = entropy + 0.1 * out.sigma_z.mean(-1)
    ticket_loss = -uncert.gather(1, scores.topk(k=3, dim=1).indices).mean()
    g_scores, g_sigma = torch.autograd.grad(
        ticket_loss, [scores, out.sigma_z], allow_unused=True, retain_graph=True
    )
    assert g_scores is None, "topk indices carry no gradient"
    assert (g_sigma <= 0).all() and (g_sigma < 0).any(), "descent on this loss raises sigma_z"
    g = _grads(model, ticket_loss)
    assert g["policy_head"] == 0 and g["posterior_head"] > 0
    # ours: the policy part reaches the scores and nothing that shapes the reward
    ours = policy_loss(scores, uncertainty_reward(p, out.sigma_z), 3, 4, "loo", _gen(15)).mean()
    g_scores, g_sigma = torch.autograd.grad(ours, [scores, out.sigma_z], allow_unused=True)
    assert g_scores is not None and g_scores.abs().max() > 0
    assert g_sigma is None
