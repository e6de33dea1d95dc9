"""aline.evaluate: figures against scikit-learn and brute force, policy baselines, the CLI contract."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.evalhelp import make_run
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score
from sklearn.preprocessing import StandardScaler

from aline import contract, evaluate, scoring
from aline import predict as predict_mod
from aline.config import load_config
from aline.data import read_split
from aline.data.dataset import Normalizer, WindowDataset
from aline.evaluation import baselines
from aline.model.network import build_model

REQUIRED_TOP = {"auc", "pr_auc", "brier", "ece", "post_mse", "oracle", "policy"}
REQUIRED_ORACLE = {"auc", "brier", "ece", "post_mse_floor"}
REQUIRED_POLICY = {"trained", "random", "fixed_schedule", "best_fixed", "uncertainty", "oracle"}


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, evaluate.EvalResult]:
    run = make_run(tmp_path_factory.mktemp("eval"))
    return run, evaluate.evaluate(run, "val")


def _ece_brute(p: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = (p >= lo) & ((p < hi) if b < bins - 1 else (p <= hi))
        if inside.any():
            total += inside.sum() * abs(y[inside].mean() - p[inside].mean())
    return total / len(p)


# --- pure policy arithmetic against brute force -------------------------------------------------------


def test_policy_values_match_brute_force_over_all_hour_sets() -> None:
    rng = np.random.default_rng(3)
    qv = rng.exponential(size=(4, 24))
    k = 3
    combos = np.array(list(itertools.combinations(range(24), k)))  # [2024, 3]
    per_set = qv[:, combos].sum(axis=2)  # [4, 2024]
    np.testing.assert_allclose(scoring.oracle_value(qv, k), per_set.max(axis=1), rtol=1e-12)
    # Uniform k distinct hours: the mean over every k-subset.
    np.testing.assert_allclose(baselines.random_value(qv, k), per_set.mean(axis=1), rtol=1e-12)
    best_set = combos[np.argmax(per_set.sum(axis=0))]
    np.testing.assert_array_equal(scoring.best_fixed_hours(qv, k), best_set)


def test_policy_shares_oracle_is_one_and_baselines_below() -> None:
    rng = np.random.default_rng(4)
    qv = rng.exponential(size=(50, 24))
    k = 3
    top = np.argsort(-qv, axis=1)[:, :k]
    bottom = np.argsort(qv, axis=1)[:, :k]
    shares = baselines.policy_shares(
        qv, k, trained=top, uncertainty=bottom, best_fixed=scoring.best_fixed_hours(qv, k)
    )
    assert shares["oracle"] == pytest.approx(1.0)
    assert shares["trained"] == pytest.approx(1.0)  # choosing each window's best hours is the oracle
    expected_bottom = np.sort(qv, axis=1)[:, :k].sum() / np.sort(qv, axis=1)[:, -k:].sum()
    assert shares["uncertainty"] == pytest.approx(expected_bottom)
    assert 0 < shares["random"] < shares["best_fixed"] < 1.0
    assert shares["fixed_schedule"] == pytest.approx(
        qv[:, [8, 12, 20]].sum() / np.sort(qv, axis=1)[:, -k:].sum()
    )


def test_policy_shares_are_nan_without_any_query_value() -> None:
    qv = np.zeros((5, 24))
    hours = np.tile(np.arange(3), (5, 1))
    shares = baselines.policy_shares(qv, 3, trained=hours, uncertainty=hours, best_fixed=np.arange(3))
    assert all(np.isnan(v) for v in shares.values())


# --- a whole evaluation -------------------------------------------------------------------------------


def test_report_has_the_contract_keys(evaluated: tuple[Path, evaluate.EvalResult]) -> None:
    run, result = evaluated
    assert result.json_path == run / contract.EVAL_DIR / "val.json"
    report = json.loads(result.json_path.read_text())
    assert set(report) >= REQUIRED_TOP
    assert set(report["oracle"]) >= REQUIRED_ORACLE
    assert set(report["policy"]) == REQUIRED_POLICY
    assert report["n_windows"] == 60
    for name in ("val_roc.html", "val_reliability.html", "val_policy.html"):
        assert "plotly" in (run / contract.EVAL_DIR / name).read_text()


def test_figures_equal_sklearn_on_written_predictions(evaluated: tuple[Path, evaluate.EvalResult]) -> None:
    _, result = evaluated
    report = json.loads(result.json_path.read_text())
    df = pd.read_csv(result.predictions_path)
    y, p = df["y"].to_numpy(), df["p"].to_numpy()
    assert report["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert report["pr_auc"] == pytest.approx(average_precision_score(y, p), abs=1e-12)
    assert report["brier"] == pytest.approx(brier_score_loss(y, p), abs=1e-12)
    assert report["ece"] == pytest.approx(_ece_brute(p, y), abs=1e-12)
    pb = df["p_bayes"].to_numpy()
    assert report["oracle"]["auc"] == pytest.approx(roc_auc_score(y, pb), abs=1e-12)
    assert report["oracle"]["brier"] == pytest.approx(brier_score_loss(y, pb), abs=1e-12)
    assert report["oracle"]["ece"] == pytest.approx(_ece_brute(pb, y), abs=1e-12)
    pt = df["p_true"].to_numpy()
    assert report["latent_oracle"]["auc"] == pytest.approx(roc_auc_score(y, pt), abs=1e-12)
    pl = df["p_logreg"].to_numpy()
    assert report["logreg"]["auc"] == pytest.approx(roc_auc_score(y, pl), abs=1e-12)
    assert report["logreg"]["brier"] == pytest.approx(brier_score_loss(y, pl), abs=1e-12)


def test_brier_decomposition_adds_up_within_binning_error(
    evaluated: tuple[Path, evaluate.EvalResult],
) -> None:
    _, result = evaluated
    report = json.loads(result.json_path.read_text())
    df = pd.read_csv(result.predictions_path)
    y, p = df["y"].to_numpy(float), df["p"].to_numpy()
    d = report["brier_decomposition"]
    bins = np.clip((p * 15).astype(int), 0, 14)
    # Exact: Brier = REL - RES + UNC + mean over windows of [(p - p̄_bin)² - 2 (p - p̄_bin)(y - ȳ_bin)].
    within = 0.0
    for b in np.unique(bins):
        sel = bins == b
        dp, dy = p[sel] - p[sel].mean(), y[sel] - y[sel].mean()
        within += np.sum(dp**2 - 2 * dp * dy)
    within /= len(p)
    recombined = d["reliability"] - d["resolution"] + d["uncertainty"]
    assert d["brier"] == pytest.approx(recombined + within, abs=1e-12)
    # The within-bin terms are bounded by the bin width h: |.| <= h² + 2h·max|y - ȳ| over the bin.
    h = 1 / 15
    assert abs(d["brier"] - recombined) <= h**2 + 2 * h
    assert d["uncertainty"] == pytest.approx(y.mean() * (1 - y.mean()), abs=1e-12)


def test_posterior_figures_against_an_independent_forward_pass(
    evaluated: tuple[Path, evaluate.EvalResult],
) -> None:
    run, result = evaluated
    report = json.loads(result.json_path.read_text())
    cfg = load_config(run / contract.CONFIG_FILE)
    raw = read_split(cfg.data.split_path("val"), cfg.data.columns)
    # The trainer's own input path: WindowDataset batches into the model, no Predictor involved.
    ds = WindowDataset(raw, Normalizer.load(run / contract.NORMALIZER_FILE), answer_channel=True)
    model = build_model(cfg, len(cfg.data.columns.features))
    model.load_state_dict(
        torch.load(run / json.loads((run / "status.json").read_text())["best"]["checkpoint"])["model"]
    )
    model.eval()
    with torch.no_grad():
        batch = ds.__getitems__(list(range(len(ds))))
        out = model(batch["x"], batch["mask"])
    mu, sigma = out.mu_z.double().numpy(), out.sigma_z.double().numpy()
    z, s_post = raw.z.astype(float), raw.sigma.astype(float)
    assert report["post_mse"] == pytest.approx(np.mean((mu - z) ** 2), rel=1e-5)
    assert report["sigma_mae"] == pytest.approx(np.mean(np.abs(sigma - s_post)), rel=1e-5)
    half = 1.6448536269514722  # scipy.stats.norm.ppf(0.95)
    assert report["coverage_90"] == pytest.approx(np.mean(np.abs(z - mu) <= half * sigma), abs=1e-3)
    assert report["oracle"]["post_mse_floor"] == pytest.approx(np.mean(s_post**2), rel=1e-9)
    df = pd.read_csv(result.predictions_path)
    np.testing.assert_allclose(df["p"].to_numpy(), out.p_next.double().numpy(), rtol=0, atol=1e-6)


def test_policy_shares_recomputed_from_the_csvs(evaluated: tuple[Path, evaluate.EvalResult]) -> None:
    run, result = evaluated
    report = json.loads(result.json_path.read_text())
    cfg = load_config(run / contract.CONFIG_FILE)
    qv = read_split(cfg.data.split_path("val"), cfg.data.columns).query_value.astype(float)  # [N, 24]
    qv_train = read_split(cfg.data.split_path("train"), cfg.data.columns).query_value.astype(float)
    df = pd.read_csv(result.predictions_path)
    trained = np.array([[int(h) for h in s.split()] for s in df["topk_hours"]])
    oracle_total = sum(max(row[list(c)].sum() for c in itertools.combinations(range(24), 3)) for row in qv)
    policy = report["policy"]
    assert policy["oracle"] == pytest.approx(1.0)
    assert policy["trained"] == pytest.approx(np.take_along_axis(qv, trained, 1).sum() / oracle_total)
    # Random: k pool hours uniformly (pool = an answer exists and the symptom score was not logged).
    frame = pd.read_csv(cfg.data.split_path("val")).sort_values(["window_id", "hour"])
    pool = (frame["ask_symptom_score"].notna() & frame["symptom_score"].isna()).to_numpy().reshape(-1, 24)
    random_total = 0.0
    for row, hours in zip(qv, pool, strict=True):
        members = np.flatnonzero(hours)
        combos = list(itertools.combinations(members, min(3, len(members))))
        random_total += np.mean([row[list(c)].sum() for c in combos]) if len(members) else 0.0
    assert policy["random"] == pytest.approx(random_total / oracle_total)
    assert policy["random"] < 1.0
    best3 = max(itertools.combinations(range(24), 3), key=lambda c: qv_train[:, list(c)].sum())
    assert report["policy_detail"]["best_fixed_hours"] == list(best3)
    assert policy["best_fixed"] == pytest.approx(qv[:, list(best3)].sum() / oracle_total)
    assert policy["fixed_schedule"] == pytest.approx(qv[:, [8, 12, 20]].sum() / oracle_total)
    for name in ("trained", "random", "fixed_schedule", "best_fixed", "uncertainty"):
        assert 0.0 <= policy[name] <= 1.0 + 1e-12


def test_logreg_matches_an_sklearn_pipeline(evaluated: tuple[Path, evaluate.EvalResult]) -> None:
    run, result = evaluated
    cfg = load_config(run / contract.CONFIG_FILE)
    train = read_split(cfg.data.split_path("train"), cfg.data.columns)
    val = read_split(cfg.data.split_path("val"), cfg.data.columns)

    def design(raw):  # [N, 24*F] values (NaN where missing) and "observed" indicators
        flat = raw.features.reshape(len(raw), -1).astype(float)
        return flat, (~np.isnan(flat)).astype(float)

    values, seen = design(train)
    mu, sd = np.nanmean(values, axis=0), np.nanstd(values, axis=0)
    masks = StandardScaler().fit(seen)

    def prep(values, seen):
        # A cell never observed in train (sd 0 or NaN) becomes 0, as in the code under test.
        with np.errstate(invalid="ignore", divide="ignore"):
            scaled = (values - mu) / sd
        return np.hstack([np.nan_to_num(scaled, nan=0.0, posinf=0.0, neginf=0.0), masks.transform(seen)])

    clf = LogisticRegression(C=0.05, tol=1e-10, max_iter=10000).fit(prep(values, seen), train.y)
    expected = clf.predict_proba(prep(*design(val)))[:, 1]
    got = pd.read_csv(result.predictions_path)["p_logreg"].to_numpy()
    np.testing.assert_allclose(got, expected, atol=1e-3)


def test_summary_table_names_every_figure(evaluated: tuple[Path, evaluate.EvalResult]) -> None:
    _, result = evaluated
    text = evaluate.format_summary(result.report)
    for word in ("auc", "brier", "ece", "post_mse", "coverage_90", *REQUIRED_POLICY):
        assert word in text
    assert f"{result.report['auc']:.4f}" in text


# --- the command line ---------------------------------------------------------------------------------


def test_cli_help_explains_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in (
        "--split",
        "--checkpoint",
        "--data-dir",
        "--batch-size",
        "--no-figures",
        "--quiet",
        "RUN_DIR",
    ):
        assert option in text


@pytest.mark.slow  # a fresh interpreter importing torch: several seconds on a busy machine
def test_cli_bad_run_folder_exits_2_without_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "aline.evaluate", str(tmp_path / "nope")], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "nope" in proc.stderr and proc.stderr.count("\n") == 1


def _run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = evaluate.main(argv)
    return code, capsys.readouterr().err


def test_cli_errors_name_what_is_wrong(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = _run_main([str(empty)], capsys)
    assert code == 2 and "config.yaml" in err

    # status.json names a checkpoint that is gone
    best = run / json.loads((run / "status.json").read_text())["best"]["checkpoint"]
    saved = best.read_bytes()
    best.unlink()
    code, err = _run_main([str(run), "--quiet"], capsys)
    assert code == 2 and best.name in err and "does not exist" in err
    best.write_bytes(b"not a checkpoint")
    code, err = _run_main([str(run), "--quiet"], capsys)
    assert code == 2 and "not a readable torch checkpoint" in err
    best.write_bytes(saved)

    # a bad value in the split's CSV
    cfg = load_config(run / contract.CONFIG_FILE)
    path = cfg.data.split_path("val")
    df = pd.read_csv(path)
    df["heart_rate"] = df["heart_rate"].astype(object)
    df.loc[30, "heart_rate"] = "high"
    df.to_csv(path, index=False)
    code, err = _run_main([str(run), "--quiet"], capsys)
    assert code == 2 and "heart_rate" in err and str(path) in err and "32" in err  # CSV line of row 30

    code, err = _run_main([str(run), "--data-dir", str(tmp_path / "elsewhere"), "--quiet"], capsys)
    assert code == 2 and "--data-dir" in err


def test_cli_writes_the_split_and_prints_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run(tmp_path)
    assert evaluate.main([str(run), "--split", "test", "--no-figures"]) == 0
    out = capsys.readouterr().out
    report = json.loads((run / contract.EVAL_DIR / "test.json").read_text())
    assert report["split"] == "test" and report["n_windows"] == 60
    assert "policy" in out and f"{report['brier']:.4f}" in out
    assert not (run / contract.EVAL_DIR / "test_roc.html").exists()


# --- on the simulator's data: its meta file is an independent implementation of the references ---------


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, evaluate.EvalResult]:
    from aline.simulate import simulate

    root = tmp_path_factory.mktemp("sim")
    meta = simulate(subjects=30, days=10, seed=1, out_dir=root / "data", progress=False)
    run = make_run(root, data_dir=root / "data")
    return meta, evaluate.evaluate(run, "val", figures=False)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the simulator's nanmean of never-observed hours
def test_oracle_policy_is_one_and_random_below_on_simulated_data(
    simulated: tuple[dict, evaluate.EvalResult],
) -> None:
    _, result = simulated
    policy = result.report["policy"]
    assert policy["oracle"] == pytest.approx(1.0, abs=1e-12)
    assert 0.0 < policy["random"] < policy["oracle"]
    assert max(v for k, v in policy.items() if k != "oracle") < 1.0


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_references_agree_with_the_simulators_meta(simulated: tuple[dict, evaluate.EvalResult]) -> None:
    meta, result = simulated
    ref, report = meta["splits"]["val"], result.report
    assert report["n_windows"] == ref["n_windows"]
    for key in ("auc", "brier", "ece", "pr_auc"):
        assert report["oracle"][key] == pytest.approx(ref["oracle"][key], abs=1e-6)
        assert report["latent_oracle"][key] == pytest.approx(ref["latent_oracle"][key], abs=1e-6)
    assert report["oracle"]["post_mse_floor"] == pytest.approx(ref["post_var_floor"], rel=1e-5)
    assert report["policy"]["best_fixed"] == pytest.approx(ref["best_fixed_share"], rel=1e-5)
    assert report["policy_detail"]["best_fixed_hours"] == meta["baselines"]["best_fixed_hours"]
    # Same recipe as the simulator's baseline, written separately; only the lbfgs tolerances differ, which
    # on 40 windows can swap a pair or two (one pair moves this AUC by 1/(positives x negatives) ~ 0.003).
    theirs = meta["baselines"]["logreg"]["splits"]["val"]
    assert report["logreg"]["auc"] == pytest.approx(theirs["auc"], abs=0.01)
    assert report["logreg"]["brier"] == pytest.approx(theirs["brier"], abs=3e-3)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_asking_none_is_the_csv_p_bayes_and_oracle_matches_the_meta(
    simulated: tuple[dict, evaluate.EvalResult],
) -> None:
    meta, result = simulated
    asking = result.report["asking"]
    frame = pd.read_csv(Path(result.report["data_file"])).groupby("window_id").first()
    y, p_bayes = frame["y_next"].to_numpy(float), frame["p_bayes"].to_numpy(float)
    assert asking["none"]["brier_bayes"] == pytest.approx(float(np.mean((p_bayes - y) ** 2)), abs=1e-6)
    assert asking["none"]["auc_bayes"] == pytest.approx(roc_auc_score(y, p_bayes), abs=1e-6)
    ref = meta["splits"]["val"]["asked"]["oracle"]
    assert asking["oracle"]["brier_bayes"] == pytest.approx(ref["brier"], abs=1e-9)
    assert asking["oracle"]["auc_bayes"] == pytest.approx(ref["auc"], abs=1e-9)
    # Every strategy that draws from the pool stays inside it; the clinic's fixed schedule does not.
    for name in ("none", "trained", "random", "uncertainty", "oracle"):
        assert asking[name]["outside_pool"] == 0.0, name
    assert asking["fixed_schedule"]["outside_pool"] > 0.0
    # Answers can only help the exact posterior: each strategy's exact cut is positive, the oracle's largest.
    cuts = {name: asking[name]["exact_cut"] for name in asking if name != "none"}
    assert all(c > 0 for c in cuts.values()) and max(cuts, key=cuts.get) == "oracle"


# --- end to end on a tiny trained run -----------------------------------------------------------------


@pytest.mark.slow  # trains for one epoch
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_trained_run_evaluates_to_the_trainers_own_validation_figures(tmp_path: Path) -> None:
    from aline.simulate import simulate
    from aline.train import train

    simulate(subjects=20, days=8, seed=2, out_dir=tmp_path / "data", progress=False)
    cfg = load_config(
        None,
        [
            f"data.dir={tmp_path / 'data'}",
            f"run.dir={tmp_path / 'runs'}",
            "trainer.epochs=1",
            "trainer.batch_size=32",
            "model.d_model=16",
            "model.heads=2",
            "model.layers=1",
            "model.ff_dim=32",
            "logging.progress=false",
        ],
    )
    run = train(cfg, announce=lambda _msg: None).run_dir
    report = evaluate.evaluate(run, "val").report
    metrics = pd.read_csv(run / contract.METRICS_FILE)
    status = json.loads((run / contract.STATUS_FILE).read_text())
    row = metrics[(metrics["split"] == "val") & (metrics["epoch"] == status["best"]["epoch"])].iloc[-1]
    for key in ("auc", "pr_auc", "brier", "ece", "post_mse", "sigma_mae"):
        assert report[key] == pytest.approx(row[key], abs=1e-6), key
    assert report["policy"]["trained"] == pytest.approx(row["policy_value"], abs=1e-6)
    trained = report["asking"]["trained"]
    assert trained["query_value_share"] == pytest.approx(row["policy_value"], abs=1e-6)
    assert trained["brier_model"] == pytest.approx(row["brier_asked"], abs=1e-6)
    assert trained["auc_model"] == pytest.approx(row["auc_asked"], abs=1e-6)
    assert trained["outside_pool"] == row["ask_outside_pool"] == 0.0
    assert report["checkpoint"] == status["best"]["checkpoint"]

    # predict on the same CSV gives the evaluator's probabilities, bit for bit
    written = pd.read_csv(run / contract.EVAL_DIR / "val_predictions.csv")
    served = predict_mod.load(run).predict(cfg.data.split_path("val")).to_frame()
    np.testing.assert_array_equal(served["p_next"].to_numpy(), written["p"].to_numpy())


def test_random_value_over_the_pool_is_the_mean_over_every_pool_subset() -> None:
    rng = np.random.default_rng(5)
    qv = rng.gamma(2.0, 1.0, size=(6, 24))
    pool = rng.random((6, 24)) < 0.3
    pool[0] = False
    pool[1, :] = False
    pool[1, [4, 9]] = True  # fewer pool hours than k: both are asked
    got = baselines.random_value(qv, 3, pool)
    for i in range(6):
        hours = np.flatnonzero(pool[i])
        subsets = list(itertools.combinations(hours, min(3, len(hours)))) if len(hours) else [()]
        expected = np.mean([qv[i, list(s)].sum() for s in subsets])
        assert got[i] == pytest.approx(expected, rel=1e-12, abs=1e-15)
