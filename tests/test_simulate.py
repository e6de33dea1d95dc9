"""The simulator's files against independent recomputation: scikit-learn, NumPy, Monte Carlo, brute force."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score

from aline.config import DEFAULT_FEATURES, DEFAULT_LATENTS, SPLITS
from aline.simulate import main, simulate
from aline.simulator.generate import generate
from aline.simulator.generative import ASKED, INPUTS, MEASUREMENTS, context, default_params, expected_sigmoid

SMALL = {"subjects": 20, "days": 8, "seed": 3}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    meta = simulate(out_dir=out, progress=False, **SMALL)
    frames = {k: pd.read_csv(out / f"synthetic_migraine_{k}.csv") for k in SPLITS}
    return out, meta, frames


def _ece15(p, y):
    """Expected calibration error over 15 uniform bins, written independently of aline.scoring."""
    total = 0.0
    edges = np.linspace(0, 1, 16)
    for i in range(15):
        inside = (p >= edges[i]) & ((p < edges[i + 1]) if i < 14 else (p <= 1.0))
        if inside.any():
            total += inside.sum() * abs(y[inside].mean() - p[inside].mean())
    return total / len(p)


def test_columns_and_window_structure(small):
    out, meta, frames = small
    expected = ["window_id", "subject_id", "day", "hour", *DEFAULT_FEATURES, f"ask_{ASKED}"]
    for name in DEFAULT_LATENTS:
        expected += [f"z_{name}", f"post_mean_{name}", f"post_std_{name}"]
    expected += ["query_value", "y_next", "p_true", "p_bayes"]
    header = (out / "synthetic_migraine_train.csv").read_text().splitlines()[0]
    assert header.split(",") == expected
    ids = []
    for df in frames.values():
        hours = df.groupby("window_id")["hour"].apply(lambda h: sorted(h.tolist()))
        assert all(h == list(range(24)) for h in hours)
        per_window = df.groupby("window_id")[["y_next", "p_true", "p_bayes", "subject_id", "day"]].nunique()
        assert (per_window == 1).all().all()
        ids.append(set(df["window_id"]))
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert sum(len(s) for s in ids) == SMALL["subjects"] * SMALL["days"]
    # Latent and posterior columns are complete; the measurements have gaps, the inputs have none.
    full = pd.concat(frames.values())
    assert full[[c for c in expected if c.startswith(("z_", "post_"))]].notna().all().all()
    assert full[list(INPUTS)].notna().all().all()
    assert full["stress_rating"].isna().mean() > 0.5 and full["heart_rate"].isna().any()
    assert full["symptom_score"].isna().mean() > 0.9
    assert meta["n_rows"] == len(full)


def test_splits_share_no_subject(small):
    _, meta, frames = small
    subjects = [set(frames[k]["subject_id"]) for k in SPLITS]
    assert not (subjects[0] & subjects[1] or subjects[0] & subjects[2] or subjects[1] & subjects[2])
    assert all(subjects)
    for k in SPLITS:
        assert sorted(subjects[SPLITS.index(k)]) == meta["split_subjects"][k]


def test_meta_figures_equal_sklearn_on_written_columns(small):
    _, meta, frames = small
    for k, df in frames.items():
        win = df.groupby("window_id").first()
        y = win["y_next"].to_numpy()
        s = meta["splits"][k]
        assert s["n_windows"] == len(win) and s["n_rows"] == len(df)
        assert s["base_rate"] == pytest.approx(y.mean(), abs=1e-12)
        for key, col in (("oracle", "p_bayes"), ("latent_oracle", "p_true")):
            p = win[col].to_numpy()
            if 0 < y.sum() < len(y):
                assert s[key]["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
                assert s[key]["pr_auc"] == pytest.approx(average_precision_score(y, p), abs=1e-12)
            assert s[key]["brier"] == pytest.approx(np.mean((p - y) ** 2), abs=1e-12)
            assert s[key]["ece"] == pytest.approx(_ece15(p, y), abs=1e-12)
        std = df[[f"post_std_{n}" for n in DEFAULT_LATENTS]].to_numpy()
        assert s["post_var_floor"] == pytest.approx(np.mean(std**2), rel=1e-12)
        assert s["query_value_mean"] == pytest.approx(df["query_value"].mean(), rel=1e-9)


def test_written_posterior_equals_brute_force_from_the_csv(small):
    """Rebuild the model of two windows from the CSV and the meta's parameters; condition directly."""
    from helpers.gaussref import condition, joint_prior

    _, meta, frames = small
    P = {k: np.asarray(v) for k, v in meta["model"]["params"].items()}
    df = frames["train"]
    daily = df.groupby("window_id").agg(subject=("subject_id", "first"), caf=("caffeine_mg", "sum"))
    habitual = daily["caf"].groupby(daily["subject"]).transform("mean") >= 50
    for wid in df["window_id"].unique()[:2]:
        rows = df[df["window_id"] == wid].sort_values("hour")
        feats = {n: rows[n].to_numpy(float)[None, :] for n in INPUTS}
        g, q, r = context(feats, habitual.loc[[wid]].to_numpy(), P)
        y = rows[list(MEASUREMENTS)].to_numpy(float)  # [24, M]
        obs = ~np.isnan(y)
        b = g[0] @ P["B"].T + P["c"]
        prior = joint_prior(P["A"], P["mu0"], P["Sigma0"], b, q[0])
        resid = y - (g[0] @ P["D"].T + P["d"])
        mean, cov = condition(*prior, P["C"], obs, resid, r[0])
        written = rows[[f"post_mean_{n}" for n in DEFAULT_LATENTS]].to_numpy()
        np.testing.assert_allclose(written, mean.reshape(24, 4), atol=6e-5)
        std = np.sqrt(np.diag(cov)).reshape(24, 4)
        np.testing.assert_allclose(
            rows[[f"post_std_{n}" for n in DEFAULT_LATENTS]].to_numpy(), std, atol=6e-5
        )


def test_answer_column_and_query_value_follow_the_pool(small):
    _, _, frames = small
    df = pd.concat(frames.values())
    ans, logged = df[f"ask_{ASKED}"], df[ASKED]
    unaskable = (df["asleep"] == 1) | (df["busy"] == 1)
    # The answer is empty exactly where the hour cannot be asked, and equals the logged value where logged.
    assert (ans.isna() == unaskable).all()
    assert (ans[logged.notna()] == logged[logged.notna()]).all()
    assert logged[unaskable].isna().all() and df.loc[df["asleep"] == 1, "stress_rating"].isna().all()
    pool = ans.notna() & logged.isna()
    assert (df.loc[~pool, "query_value"] == 0).all()
    assert (df["query_value"] >= 0).all() and (df.loc[pool, "query_value"] > 0).mean() > 0.9
    # Busy hours move from day to day: the pool is not the same set of hours every day.
    busy = df.pivot(index="window_id", columns="hour", values="busy").to_numpy()
    assert 0.02 < busy.mean() < 0.3 and len({tuple(row) for row in busy}) > len(busy) // 4


def test_answers_follow_the_measurement_model(small):
    """Standardised residuals of every answer given the true latent state are N(0, 1), in each context."""
    _, meta, frames = small
    P = {k: np.asarray(v) for k, v in meta["model"]["params"].items()}
    df = pd.concat(frames.values()).sort_values(["window_id", "hour"])
    n = len(df) // 24
    feats = {c: df[c].to_numpy(float).reshape(n, 24) for c in INPUTS}
    subject = df["subject_id"].to_numpy().reshape(n, 24)[:, 0]
    daily = pd.Series(feats["caffeine_mg"].sum(1)).groupby(subject).transform("mean").to_numpy()
    g, _, r = context(feats, daily >= 50, P)
    k = MEASUREMENTS.index(ASKED)
    z = df[[f"z_{name}" for name in DEFAULT_LATENTS]].to_numpy().reshape(n, 24, 4)
    mean = z @ P["C"][k] + g @ P["D"][k] + P["d"][k]
    ans = df[f"ask_{ASKED}"].to_numpy().reshape(n, 24)
    std = (ans - mean) / np.sqrt(r[..., k])
    seen = ~np.isnan(ans)
    noisy = r[..., k] > 3 * P["r_base"][k]
    for part in (seen & noisy, seen & ~noisy):
        u = std[part]
        assert len(u) > 300
        assert abs(u.mean()) < 4 / np.sqrt(len(u)) and abs(u.var() - 1) < 0.1, (u.mean(), u.var())
    # The context really changes the reliability: noisy hours have several times the variance.
    assert np.median(r[..., k][seen & noisy]) > 3 * np.median(r[..., k][seen & ~noisy])


def test_best_fixed_hours_are_the_train_optimum(small):
    _, meta, frames = small
    tr = frames["train"]
    qv = tr.pivot(index="window_id", columns="hour", values="query_value").to_numpy()  # [n, 24]
    by_hour = qv.mean(0)
    chosen = meta["baselines"]["best_fixed_hours"]
    assert sorted(chosen) == sorted(np.argsort(by_hour)[-3:].tolist())
    share = qv[:, chosen].sum() / np.sort(qv, axis=1)[:, -3:].sum()
    assert meta["splits"]["train"]["best_fixed_share"] == pytest.approx(share, rel=1e-9)


def test_same_seed_same_bytes_and_other_seed_differs(small, tmp_path):
    out, _, _ = small
    simulate(out_dir=tmp_path / "again", progress=False, **SMALL)
    simulate(out_dir=tmp_path / "other", progress=False, **{**SMALL, "seed": 4})
    names = [f"synthetic_migraine_{k}.csv" for k in SPLITS] + ["synthetic_migraine_meta.json"]
    for name in names:
        assert (out / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name
    assert (out / names[0]).read_bytes() != (tmp_path / "other" / names[0]).read_bytes()


def test_p_bayes_matches_monte_carlo():
    sim = generate(6, 5, seed=11)
    rng = np.random.default_rng(0)
    P = default_params()
    draws = 40_000
    a = sim["target_mean"][:, None] + np.sqrt(sim["target_var"])[:, None] * rng.standard_normal((30, draws))
    p = 1.0 / (1.0 + np.exp(-(a + P["b"])))
    mc, se = p.mean(1), p.std(1) / np.sqrt(draws)
    assert np.all(np.abs(sim["p_bayes"] - mc) <= 4.5 * se + 1e-12)
    # The posterior mean of w.Z_23 is the written posterior means weighted by w.
    np.testing.assert_allclose(sim["target_mean"], sim["post_mean"][:, 23] @ P["w"], atol=1e-12)
    # Quadrature on its own, including a wide posterior where the sigmoid's curvature matters.
    m, v = np.array([-3.0, 0.0, 1.5, 0.4]), np.array([4.0, 9.0, 0.01, 0.0])
    x = m[:, None] + np.sqrt(v)[:, None] * rng.standard_normal((4, 400_000))
    sig = 1.0 / (1.0 + np.exp(-x))
    assert np.all(np.abs(expected_sigmoid(m, v) - sig.mean(1)) <= 4.5 * sig.std(1) / np.sqrt(400_000) + 1e-12)


def test_cli_help_and_run(tmp_path):
    help_text = subprocess.run(
        [sys.executable, "-m", "aline.simulate", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for option in ("--subjects", "--days", "--seed", "--out", "--val-frac", "--test-frac"):
        assert option in help_text
    run = subprocess.run(
        [sys.executable, "-m", "aline.simulate", "--subjects", "6", "--days", "3", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert "rows/s" in run.stderr and "realism" in run.stderr
    meta = json.loads((tmp_path / "synthetic_migraine_meta.json").read_text())
    assert meta["n_rows"] == 6 * 3 * 24 and meta["seed"] == 0


def test_bad_arguments_exit_2_with_a_message(tmp_path, capsys):
    assert main(["--val-frac", "0.6", "--test-frac", "0.5", "--out", str(tmp_path)]) == 2
    assert "--val-frac" in capsys.readouterr().err
    assert main(["--subjects", "0", "--out", str(tmp_path)]) == 2
    assert "--subjects" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_empty_splits_are_allowed(tmp_path):
    meta = simulate(subjects=4, days=2, seed=1, out_dir=tmp_path, val_frac=0, test_frac=0, progress=False)
    assert meta["splits"]["val"]["n_windows"] == 0 and meta["splits"]["train"]["n_windows"] == 8
    val = pd.read_csv(tmp_path / "synthetic_migraine_val.csv")
    assert len(val) == 0 and list(val.columns)[:4] == ["window_id", "subject_id", "day", "hour"]


@pytest.mark.slow
def test_realism_at_default_size(tmp_path):
    meta = simulate(out_dir=tmp_path, progress=False)
    s = meta["splits"]
    assert 0.15 <= s["train"]["base_rate"] <= 0.30
    assert 0.70 <= s["val"]["oracle"]["auc"] <= 0.85
    assert s["val"]["latent_oracle"]["auc"] > s["val"]["oracle"]["auc"]
    assert s["val"]["logreg_auc"] <= s["val"]["oracle"]["auc"] - 0.02
    for split in ("val", "test"):
        assert s[split]["best_fixed_share"] <= 0.75
        assert s[split]["oracle_cut_share"] >= 0.15
        assert s[split]["asked"]["oracle"]["auc"] > s[split]["asked"]["none"]["auc"]
    # Trigger directions, from the CSV columns alone.
    df = pd.concat(pd.read_csv(tmp_path / f"synthetic_migraine_{k}.csv") for k in SPLITS)
    g = df.groupby("window_id")
    daily_caf = g["caffeine_mg"].sum()
    subject = g["subject_id"].first()
    habit = daily_caf.groupby(subject).transform("mean")
    stress = df.pivot(index="window_id", columns="hour", values="z_stress").to_numpy()
    flags = pd.DataFrame(
        {
            "letdown": stress[:, 8:20].max(1) - stress[:, 23] > 1.2,
            "poor_sleep": g["asleep"].sum() < 6,
            "menstrual": g["menstrual_window"].first() == 1,
            "heavy_alcohol": g["alcohol_drinks"].sum() >= 5,
            "caffeine_withdrawal": (habit >= 50) & (daily_caf == 0),
            "pressure_fall": g["pressure_hpa"].last() - g["pressure_hpa"].first() < -5,
        }
    ).astype(float)
    model = LogisticRegression(C=1e4, max_iter=1000).fit(flags.to_numpy(), g["y_next"].first().to_numpy())
    coef = dict(zip(flags.columns, model.coef_[0], strict=True))
    assert all(c > 0 for c in coef.values()), coef
