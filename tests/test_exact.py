"""aline.simulator.exact against brute-force Gaussian conditioning of windows and the simulator's CSV."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from helpers.gaussref import condition, joint_prior

from aline.config import DEFAULT_LATENTS
from aline.simulate import simulate
from aline.simulator.exact import exact_posterior, load_exact_split
from aline.simulator.generative import ASKED, INPUTS, MEASUREMENTS, context, expected_sigmoid

K = 2  # index of the asked measurement in the random problems


def _problem(seed: int, n: int = 3, T: int = 6, Z: int = 4, M: int = 3):
    rng = np.random.default_rng(seed)
    P = {
        "A": rng.normal(0, 0.3, (Z, Z)) + 0.6 * np.eye(Z),
        "C": rng.normal(0, 1.0, (M, Z)),
        "mu0": rng.normal(0, 1, Z),
        "w": rng.normal(0, 1, Z),
        "b": -1.0,
    }
    L = rng.normal(0, 0.5, (Z, Z))
    P["Sigma0"] = L @ L.T + 0.3 * np.eye(Z)
    drive = rng.normal(0, 0.5, (n, T, Z))
    q = rng.uniform(0.05, 0.5, (n, T, Z))
    r = rng.uniform(0.1, 2.0, (n, T, M))
    obs = rng.random((n, T, M)) < 0.5
    resid = np.where(obs, rng.normal(0, 2, (n, T, M)), np.nan)
    askable = rng.random((n, T)) < 0.7
    # The answer equals the logged value where logged, as the simulator writes it.
    answers = np.where(askable, np.where(obs[..., K], resid[..., K], rng.normal(0, 2, (n, T))), np.nan)
    obs[..., K] &= askable  # logged only where it could have been asked
    resid[..., K] = np.where(obs[..., K], resid[..., K], np.nan)
    return P, resid, obs, answers, drive, q, r


def _brute(P, resid, obs, drive, q, r, i):
    T, Z = drive.shape[1:]
    mean, cov = condition(
        *joint_prior(P["A"], P["mu0"], P["Sigma0"], drive[i], q[i]), P["C"], obs[i], resid[i], r[i]
    )
    last = slice((T - 1) * Z, T * Z)
    return mean.reshape(T, Z), cov, P["w"] @ mean[last], P["w"] @ cov[last, last] @ P["w"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_posterior_with_answers_equals_direct_conditioning(seed):
    P, resid, obs, answers, drive, q, r = _problem(seed)
    n, T, _ = resid.shape
    Z = drive.shape[2]
    rng = np.random.default_rng(seed + 50)
    asked = rng.random((n, T)) < 0.5  # includes hours outside the pool: those must be ignored
    res = exact_posterior(resid, obs, answers, drive, q, r, P, asked, asked_index=K, want_query_value=True)
    pool = ~obs[..., K] & ~np.isnan(answers)
    used = asked & pool
    assert used.any() and (asked & ~pool).any()
    obs2 = obs.copy()
    obs2[..., K] |= used
    resid2 = resid.copy()
    resid2[..., K] = np.where(used, answers, resid[..., K])
    wide = np.zeros(T * Z)
    wide[(T - 1) * Z :] = P["w"]
    for i in range(n):
        mean, cov, tm, tv = _brute(P, resid2, obs2, drive, q, r, i)
        np.testing.assert_allclose(res.mean[i], mean, atol=1e-8)
        np.testing.assert_allclose(res.std[i] ** 2, np.diag(cov).reshape(T, Z), atol=1e-8)
        assert res.target_mean[i] == pytest.approx(tm, abs=1e-8)
        assert res.target_var[i] == pytest.approx(tv, abs=1e-8)
        assert res.p_bayes[i] == pytest.approx(expected_sigmoid(np.array([tm + P["b"]]), np.array([tv]))[0])
        # One more answer at each hour left in the pool, by conditioning once more.
        prior = joint_prior(P["A"], P["mu0"], P["Sigma0"], drive[i], q[i])
        for t in range(T):
            if not (pool[i, t] and not used[i, t]):
                assert res.query_value[i, t] == 0.0
                continue
            h = np.zeros(T * Z)
            h[t * Z : (t + 1) * Z] = P["C"][K]
            _, S2 = condition(*prior, P["C"], obs2[i], resid2[i], r[i], extra=(h, r[i, t, K]))
            assert res.query_value[i, t] == pytest.approx(tv - wide @ S2 @ wide, abs=1e-9)


def test_no_answers_and_asked_outside_the_pool_change_nothing():
    P, resid, obs, answers, drive, q, r = _problem(5)
    base = exact_posterior(resid, obs, answers, drive, q, r, P, None, asked_index=K)
    pool = ~obs[..., K] & ~np.isnan(answers)
    outside = exact_posterior(resid, obs, answers, drive, q, r, P, ~pool, asked_index=K)
    np.testing.assert_array_equal(base.mean, outside.mean)
    np.testing.assert_array_equal(base.target_var, outside.target_var)
    for i in range(resid.shape[0]):
        mean, _, _, tv = _brute(P, resid, obs, drive, q, r, i)
        np.testing.assert_allclose(base.mean[i], mean, atol=1e-8)
        assert base.target_var[i] == pytest.approx(tv, abs=1e-8)


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    simulate(subjects=12, days=5, seed=2, out_dir=out, val_frac=0.25, test_frac=0.25, progress=False)
    csv = out / "synthetic_migraine_train.csv"
    return load_exact_split(csv, out / "synthetic_migraine_meta.json"), pd.read_csv(csv), out


def test_split_without_answers_reproduces_the_csv(split):
    s, df, _ = split
    df = df.sort_values(["window_id", "hour"])
    n = len(s.window_id)
    np.testing.assert_array_equal(s.window_id, df["window_id"].to_numpy()[::24])
    res = s.posterior(None)
    np.testing.assert_allclose(res.p_bayes, df["p_bayes"].to_numpy()[::24], atol=1e-6)
    np.testing.assert_allclose(res.p_bayes, s.p_bayes_csv, atol=1e-6)
    mean = df[[f"post_mean_{z}" for z in DEFAULT_LATENTS]].to_numpy().reshape(n, 24, -1)
    std = df[[f"post_std_{z}" for z in DEFAULT_LATENTS]].to_numpy().reshape(n, 24, -1)
    np.testing.assert_allclose(res.mean, mean, atol=6e-5)
    np.testing.assert_allclose(res.std, std, atol=6e-5)
    askable = (df[f"ask_{ASKED}"].notna() & df[ASKED].isna()).to_numpy().reshape(n, 24)
    np.testing.assert_array_equal(s.askable, askable)
    np.testing.assert_array_equal(s.y, df["y_next"].to_numpy()[::24])


def test_set_value_of_one_hour_is_the_query_value_column(split):
    s, _, _ = split
    rows, hours = np.nonzero(s.askable)
    pick = np.zeros_like(s.askable)
    first = np.unique(rows, return_index=True)[1]  # one askable hour per window
    pick[rows[first], hours[first]] = True
    got = s.set_value(pick)
    np.testing.assert_allclose(got[rows[first]], s.query_value[pick], atol=2e-6)
    assert np.all(got[~pick.any(1)] == 0)


def test_split_posterior_with_answers_equals_brute_force_from_the_csv(split):
    """One window rebuilt from the CSV columns alone, answers included, conditioned directly."""
    s, df, out = split
    import json

    meta = json.loads((out / "synthetic_migraine_meta.json").read_text())
    P = {k: np.asarray(v) for k, v in meta["model"]["params"].items()}
    i = int(np.argmax(s.askable.sum(1)))
    asked = np.zeros_like(s.askable)
    asked[i, np.flatnonzero(s.askable[i])[:3]] = True
    res = s.posterior(asked)
    rows = df[df["window_id"] == s.window_id[i]].sort_values("hour")
    subj = df[df["subject_id"] == rows["subject_id"].iloc[0]]
    habitual = subj.groupby("window_id")["caffeine_mg"].sum().mean() >= 50
    feats = {c: rows[c].to_numpy(float)[None, :] for c in INPUTS}
    g, q, r = context(feats, np.array([habitual]), P)
    y = rows[list(MEASUREMENTS)].to_numpy(float)
    k = MEASUREMENTS.index(ASKED)
    y[asked[i], k] = rows[f"ask_{ASKED}"].to_numpy(float)[asked[i]]
    offset = g[0] @ P["D"].T + P["d"]
    prior = joint_prior(P["A"], P["mu0"], P["Sigma0"], g[0] @ P["B"].T + P["c"], q[0])
    mean, cov = condition(*prior, P["C"], ~np.isnan(y), y - offset, r[0])
    np.testing.assert_allclose(res.mean[i], mean.reshape(24, 4), atol=1e-7)
    w = np.zeros(96)
    w[-4:] = P["w"]
    assert res.target_var[i] == pytest.approx(w @ cov @ w, abs=1e-9)
    assert res.target_var[i] < s.posterior(None).target_var[i]


def test_greedy_oracle_matches_brute_force_greedy(split):
    s, _, _ = split
    sub = s.take(np.arange(6))
    chosen = sub.greedy_oracle(3)
    base = sub.posterior(None).target_var
    pool = sub.askable
    assert (chosen <= pool).all() and (chosen.sum(1) == np.minimum(3, pool.sum(1))).all()
    # Independent greedy: try every remaining pool hour with set_value and keep the best.
    for i in range(6):
        picked: list[int] = []
        for _ in range(min(3, pool[i].sum())):
            best, best_v = None, -np.inf
            for t in np.flatnonzero(pool[i]):
                if t in picked:
                    continue
                m = np.zeros_like(pool)
                m[i, picked + [t]] = True
                v = (base - sub.posterior(m).target_var)[i]
                if v > best_v + 1e-12:
                    best, best_v = t, v
            picked.append(best)
        assert sorted(picked) == np.flatnonzero(chosen[i]).tolist()
    # No other set of 3 pool hours in a window beats the greedy set by much (submodular-ish here).
    i = int(np.argmax(pool[:6].sum(1)))
    greedy_v = sub.set_value(chosen)[i]
    for combo in itertools.combinations(np.flatnonzero(pool[i])[:8], 3):
        m = np.zeros_like(pool)
        m[i, list(combo)] = True
        assert sub.set_value(m)[i] <= greedy_v * 1.05 + 1e-12


def test_load_exact_split_names_a_bad_file(tmp_path, split):
    _, _, out = split
    bad = tmp_path / "bad.csv"
    bad.write_text("window_id,hour\n1,0\n")
    with pytest.raises(ValueError, match="bad.csv"):
        load_exact_split(bad, out / "synthetic_migraine_meta.json")


def test_scalar_conditioning_equals_the_smoother_with_answers(split):
    """The fast set-level path (AnswerScalars) against a second smoother pass with the answers absorbed."""
    s, _, _ = split
    rng = np.random.default_rng(7)
    asked = rng.random(s.askable.shape) < 0.25  # up to ~6 hours a window, some outside the pool
    full = s.posterior(asked)
    mean, var = s.scalars().condition(asked)
    np.testing.assert_allclose(mean, full.target_mean, atol=1e-9)
    np.testing.assert_allclose(var, full.target_var, atol=1e-9)
    np.testing.assert_allclose(s.scalars().p_bayes(asked), full.p_bayes, atol=1e-9)
    np.testing.assert_allclose(s.set_value(asked), s.posterior(None).target_var - full.target_var, atol=1e-9)


def test_load_exact_split_names_a_bad_meta_file(tmp_path, split):
    _, _, out = split
    meta = tmp_path / "meta.json"
    meta.write_text('{"model": {}}')
    with pytest.raises(ValueError, match="meta.json.*not a meta file"):
        load_exact_split(out / "synthetic_migraine_train.csv", meta)


def test_meta_asking_figures_equal_a_recomputation_from_the_csv(split):
    """The simulator's asking references, recomputed from the written CSV with the full smoother."""
    import json

    from sklearn.metrics import roc_auc_score

    s, _, out = split
    meta = json.loads((out / "synthetic_migraine_meta.json").read_text())
    ref = meta["splits"]["train"]
    base = s.posterior(None)
    oracle = s.greedy_oracle(3)
    fixed = np.zeros_like(s.askable)
    fixed[:, meta["baselines"]["best_fixed_hours"]] = True
    for name, asked in (("none", None), ("oracle", oracle), ("best_fixed", fixed)):
        res = s.posterior(asked)
        assert ref["asked"][name]["auc"] == pytest.approx(roc_auc_score(s.y, res.p_bayes), abs=1e-9)
        assert ref["asked"][name]["brier"] == pytest.approx(np.mean((res.p_bayes - s.y) ** 2), abs=1e-9)
    cut = base.target_var - s.posterior(oracle).target_var
    assert ref["oracle_cut_share"] == pytest.approx(np.mean(cut / base.target_var), rel=1e-6)
    cut_fixed = base.target_var - s.posterior(fixed).target_var
    assert ref["best_fixed_set_share"] == pytest.approx(cut_fixed.sum() / cut.sum(), rel=1e-6)
    top3 = np.sort(s.query_value, axis=1)[:, -3:].sum()
    assert ref["best_fixed_share"] == pytest.approx(s.query_value[fixed].sum() / top3, rel=1e-6)
    np.testing.assert_allclose(ref["oracle_hour_frequency"], oracle.mean(0), atol=1e-4)
    assert 0 < ref["random_share"] < 1


def test_simulator_and_exact_import_no_torch():
    import subprocess
    import sys

    code = "import sys, aline.simulator.exact, aline.simulate; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
