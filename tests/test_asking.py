"""The closed loop's pieces: the question pool, drawing from it (also with extreme scores), the
Plackett-Luce log-probability over the pool, revealing answers, and an info_gain learning test."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from helpers.loop_training import toy_batch, toy_config, train_steps
from helpers.rawsplit import raw_split

from aline.data import RawSplit
from aline.model import asking
from aline.model.network import AlineModel
from aline.training.closed_loop import LoopSpec, loop_eval, resolve_info_gain, resolve_reward

HOURS = 24


def _raw(features: np.ndarray, answers: np.ndarray | None, names=("asleep", "rating", "steps")) -> RawSplit:
    return raw_split(features, names, answers, "rating")


def test_the_datasets_answers_are_the_asked_features_standardised_value(monkeypatch) -> None:
    """Answers standardised as the feature is (missing -> 0), block by block over the windows; the reference
    is the same formula on the whole array at once, in float64."""
    from aline.data.dataset import Normalizer, WindowDataset

    monkeypatch.setattr("aline.data.dataset._BLOCK_WINDOWS", 7)  # 30 windows: four blocks, the last short
    rng = np.random.default_rng(4)
    n = 30
    feats = np.stack(
        [rng.choice([0.0, 1.0], (n, HOURS)), rng.normal(5, 2, (n, HOURS)), rng.normal(0, 1, (n, HOURS))], -1
    )
    answers = np.where(rng.random((n, HOURS)) < 0.6, rng.normal(5, 2, (n, HOURS)), np.nan).astype(np.float32)
    raw = _raw(feats, answers)
    norm = Normalizer.fit(raw)
    data = WindowDataset(raw, norm, pool=asking.pool_mask(raw, "rating", ["asleep"]))
    got = data.__getitems__(list(range(n)))["answer"].numpy()  # [N, 24]
    mean, std = (
        float(np.mean(feats[:, :, 1], dtype=np.float64)),
        float(np.std(feats[:, :, 1].astype(np.float32))),
    )
    want = np.where(np.isnan(answers), 0.0, (answers.astype(np.float64) - norm.mean[1]) / norm.std[1])
    np.testing.assert_array_equal(got, want.astype(np.float32))
    assert norm.mean[1] == pytest.approx(mean) and norm.std[1] == pytest.approx(std, rel=1e-5)


def test_pool_mask_matches_the_rule_cell_by_cell():
    rng = np.random.default_rng(0)
    n = 30
    feats = np.stack(
        [
            rng.choice([0.0, 1.0, np.nan], (n, HOURS), p=[0.6, 0.35, 0.05]),  # asleep (missing: unaskable)
            np.where(rng.random((n, HOURS)) < 0.2, rng.normal(5, 1, (n, HOURS)), np.nan),  # rating
            rng.normal(0, 1, (n, HOURS)),
        ],
        axis=-1,
    )
    answers = np.where(rng.random((n, HOURS)) < 0.7, rng.normal(5, 1, (n, HOURS)), np.nan)
    with_answers = asking.pool_mask(_raw(feats, answers), "rating", ["asleep"])
    deployment = asking.pool_mask(_raw(feats, None), "rating", ["asleep"])
    answered_so_far = asking.pool_mask(_raw(feats, answers), "rating", ["asleep"], deployment=True)
    no_feature = asking.pool_mask(_raw(feats, None), None, ["asleep"])
    for i in range(n):
        for t in range(HOURS):
            logged = not math.isnan(feats[i, t, 1])
            answered = not math.isnan(answers[i, t])
            awake = feats[i, t, 0] == 0.0  # NaN compares unequal: unaskable
            # An answer never makes a sleeping hour askable.
            assert with_answers[i, t] == (answered and not logged and awake)
            assert deployment[i, t] == (awake and not logged)
            assert answered_so_far[i, t] == (awake and not logged and not answered)
            assert no_feature[i, t] == awake


def _pool(b: int, t: int, sizes: list[int], seed: int = 0) -> torch.Tensor:
    g = np.random.default_rng(seed)
    pool = np.zeros((b, t), dtype=bool)
    for i, size in enumerate(sizes):
        pool[i, g.choice(t, size, replace=False)] = True
    return torch.from_numpy(pool)


def test_gumbel_topk_never_leaves_the_pool_even_with_extreme_scores():
    k, b = 3, 6
    pool = _pool(b, HOURS, [0, 1, 2, 3, 10, 24])  # windows with fewer pool hours than k
    scores = torch.randn(b, HOURS) * 5
    off = ~pool
    # The most tempting hours sit outside the pool; pool hours get huge, tiny, infinite or NaN scores.
    scores[off] = torch.tensor(float("inf"))
    scores[4, pool[4].nonzero()[:3, 0]] = torch.tensor([1e38, -1e38, float("nan")])
    scores[5, :4] = torch.tensor([float("inf"), float("-inf"), 3e38, -3e38])
    scores.requires_grad_(True)
    hours, valid = asking.masked_gumbel_topk(scores, pool, k, samples=200)
    picked = pool.expand(200, b, HOURS).gather(-1, hours)
    assert torch.equal(picked, valid), "a slot is valid exactly when its hour is in the pool"
    assert torch.equal(valid.sum(-1), torch.tensor([0, 1, 2, 3, 3, 3]).expand(200, b))
    asked = asking.asked_from_draws(hours, valid, HOURS)
    assert not (asked & ~pool).any()
    log_prob = asking.pool_log_prob(scores, pool, hours, valid)
    assert torch.isfinite(log_prob).all()
    log_prob.sum().backward()
    assert torch.isfinite(scores.grad).all()
    assert (scores.grad[off] == 0).all(), "hours outside the pool get no gradient"
    top = asking.pool_topk(scores.detach(), pool, k)
    assert not (top & ~pool).any() and torch.equal(top.sum(-1), torch.tensor([0, 1, 2, 3, 3, 3]))


def test_pool_log_prob_is_plackett_luce_over_the_pool():
    t, k = 6, 2
    pool = torch.tensor([[True, False, True, True, False, True]])
    scores = torch.tensor([[0.3, 5.0, -1.0, 2.0, 9.0, 0.0]])
    members = [h for h in range(t) if pool[0, h]]
    total = 0.0
    for seq in itertools.permutations(members, k):
        hours = torch.tensor([[list(seq)]])  # [S=1, B=1, k]
        valid = torch.ones_like(hours, dtype=torch.bool)
        lp = float(asking.pool_log_prob(scores, pool, hours, valid))
        # Brute force: sequential softmax over the pool hours still left.
        left, ref = list(members), 0.0
        for h in seq:
            z = np.array([float(scores[0, j]) for j in left])
            ref += float(scores[0, h]) - (z.max() + math.log(np.exp(z - z.max()).sum()))
            left.remove(h)
        assert lp == pytest.approx(ref, abs=1e-5)
        total += math.exp(lp)
    assert total == pytest.approx(1.0, abs=1e-5)
    # Sampling agrees: the first draw follows softmax over the pool.
    hours, _ = asking.masked_gumbel_topk(scores, pool, k, 20000, torch.Generator().manual_seed(1))
    first = np.bincount(hours[:, 0, 0].numpy(), minlength=t) / 20000
    s = scores[0].numpy().astype(float)
    expect = np.where(pool[0].numpy(), np.exp(s), 0.0)
    np.testing.assert_allclose(first, expect / expect.sum(), atol=0.01)


def test_reveal_writes_value_and_mask_of_the_asked_cells_only():
    x = torch.randn(2, HOURS, 3)
    mask = (torch.rand(2, HOURS, 3) < 0.5).float()
    answer = torch.randn(2, HOURS)
    asked = torch.zeros(2, HOURS, dtype=torch.bool)
    asked[0, [3, 7]] = True
    asked[1, 23] = True
    x1, m1 = asking.reveal(x, mask, answer, asked, 1)
    for i in range(2):
        for t in range(HOURS):
            for f in range(3):
                if asked[i, t] and f == 1:
                    assert x1[i, t, f] == answer[i, t] and m1[i, t, f] == 1
                else:
                    assert x1[i, t, f] == x[i, t, f] and m1[i, t, f] == mask[i, t, f]


def test_auto_reward_prefers_the_exact_value_then_info_gain_then_the_label():
    def auto(**kw):
        return resolve_reward("auto", **kw)

    assert auto(has_query_value=True, has_answers=True, has_truth=True) == "query_value"
    assert auto(has_query_value=False, has_answers=True, has_truth=True) == "info_gain"
    assert auto(has_query_value=False, has_answers=True, has_truth=False) == "label_gain"
    assert auto(has_query_value=False, has_answers=False, has_truth=True) == "uncertainty"
    given = resolve_reward("uncertainty", has_query_value=True, has_answers=True, has_truth=True)
    assert given == "uncertainty"


def test_auto_info_gain_scores_by_the_truth_when_the_data_has_it():
    assert resolve_info_gain("auto", has_truth=True) == "logprob"
    assert resolve_info_gain("auto", has_truth=False) == "variance"
    assert resolve_info_gain("variance", has_truth=True) == "variance"


# --- an info_gain learning test on a small task --------------------------------------------------------


def _toy_batch(n: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """One latent per window, constant over the day, prior N(0, 1), nothing logged. Asking at hour t
    returns z + noise whose sd is 0.2 where the visible flag ``reliable`` is 1 and 2.0 elsewhere; asleep
    hours cannot be asked. The exact one-answer cut of Var(z) is 1 / (1 + sd^2)."""
    z = rng.normal(0, 1, n)
    reliable = (rng.random((n, HOURS)) < 0.25).astype(np.float32)
    asleep = np.zeros((n, HOURS), dtype=np.float32)
    asleep[:, :6] = 1.0
    sd = np.where(reliable > 0, 0.2, 2.0)
    answer = z[:, None] + sd * rng.normal(0, 1, (n, HOURS))
    p = 1 / (1 + np.exp(-2 * z))
    y = (rng.random(n) < p).astype(np.float32)
    return toy_batch(
        asleep,
        reliable,
        answer,
        y,
        z=np.repeat(z[:, None, None], HOURS, axis=1),
        sigma=torch.ones(n, HOURS, 1),
        query_value=np.where(asleep == 0, 1.0 / (1.0 + sd**2), 0.0),
    )


@pytest.mark.slow
def test_info_gain_learns_to_ask_the_reliable_hours(one_torch_thread):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    cfg = toy_config("reliable", "policy.reward=info_gain", "policy.random_reveal=0.5")
    spec = LoopSpec.from_config(cfg)
    model = AlineModel(4, 1, d_model=32, heads=2, layers=1, ff_dim=64)  # 3 features + the answer channel
    # A high lr: the task is small, and the test must stay quick.
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    val = _toy_batch(400, np.random.default_rng(99))

    def policy_value() -> float:
        model.eval()
        res = loop_eval(model, val, cfg, spec)
        return float(res["policy_qv"].sum() / res["best_qv"].sum())

    before = policy_value()
    train_steps(model, opt, _toy_batch, cfg, 175, rng)
    after = policy_value()
    # Random pool hours get (0.25 * 0.96 + 0.75 * 0.2) / 0.96 = 0.41 of the oracle; reliable ones all of it.
    # (The untrained policy head already sees the reliability input, so it may start above random.)
    assert after > 0.85 and after > before + 0.1, (before, after)
    model.eval()
    res = loop_eval(model, {**val, "index": torch.arange(400)}, cfg, spec)
    rho = res["gain_rho"][torch.isfinite(res["gain_rho"])]
    assert float(rho.median()) > 0.5, float(rho.median())
