"""``python -m aline.evaluate RUN``: score one checkpoint against the Bayes limit and simple baselines.

Loads the run's best checkpoint (weights-only) through :func:`aline.predict.load`, so evaluation and serving
share one forward pass, and scores one split: forecast quality (ROC AUC, PR AUC, Brier with its Murphy
decomposition, ECE) next to the Bayes-optimal ``p_bayes``, the latent oracle ``p_true`` and a logistic
regression fitted on train; posterior quality (MSE of mu_z against the posterior-variance floor, sigma
error, 90 % interval coverage); and the query policy against baselines on the simulator's ``query_value``,
each as a share of the per-window best k hours. Writes ``RUN/eval/<split>.json``, per-window predictions
``RUN/eval/<split>_predictions.csv`` and plotly HTML figures, and prints a summary table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aline import contract, scoring
from aline.config import ConfigError
from aline.contract import EXIT_FAILURE, EXIT_INVALID, EXIT_OK
from aline.data import DataError, RawSplit, read_split
from aline.evaluation.baselines import (
    FIXED_SCHEDULE,
    LOGREG_C,
    chosen_value,
    fit_logreg,
    policy_shares,
    predict_logreg,
)
from aline.evaluation.strategies import POLICY_NAMES, asking_report, top_in_pool
from aline.predict import Prediction, Predictor, RunError, load, positive_int
from aline.runs import RunFolder
from aline.scoring import best_fixed_hours, oracle_value

COVERAGE_LEVEL = 0.90

__all__ = ["EvalResult", "evaluate", "format_summary", "main"]


# --- evaluation ------------------------------------------------------------------------------------------


@dataclass
class EvalResult:
    report: dict[str, Any]
    prediction: Prediction
    json_path: Path
    predictions_path: Path
    figures: list[Path]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _rel(path: Path | None, root: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return str(path.resolve().relative_to(root.resolve())) if root is not None else str(path)
    except ValueError:
        return str(path)


def _split_path(predictor: Predictor, split: str, data_dir: str | Path | None) -> Path:
    data = predictor.cfg.data
    if data_dir is not None:
        data = data.model_copy(update={"dir": str(data_dir)})
    path = data.split_path(split)
    if not path.is_file():
        raise DataError(
            f"{path}: the {split} split of the run's data is not there (data.dir={data.dir!r} in the run's "
            "config); point --data-dir at the folder holding "
            f"{data.prefix}_{{train,val,test}}.csv"
        )
    return path


def _coverage(z: np.ndarray, mu: np.ndarray, sigma: np.ndarray, level: float = COVERAGE_LEVEL) -> float:
    half = statistics.NormalDist().inv_cdf(0.5 + level / 2.0)  # 1.6449 for 90 %
    return float(np.mean(np.abs(z - mu) <= half * sigma))


def evaluate(
    run: str | Path,
    split: str = "val",
    *,
    checkpoint: str | Path | None = None,
    data_dir: str | Path | None = None,
    batch_size: int | None = None,
    figures: bool = True,
) -> EvalResult:
    """Evaluate a run's checkpoint on one split and write ``RUN/eval/<split>.json`` and companions.

    Raises :class:`aline.predict.RunError` or :class:`aline.data.DataError` for unusable input.
    """
    predictor = load(run, checkpoint=checkpoint, batch_size=batch_size)
    cols = predictor.cfg.data.columns
    k = predictor.k
    path = _split_path(predictor, split, data_dir)
    warn = _stderr
    raw = predictor.without_unaskable_answers(read_split(path, cols, require_targets=True), warn)
    train = (
        raw
        if split == "train"
        else predictor.without_unaskable_answers(
            read_split(_split_path(predictor, "train", data_dir), cols), warn
        )
    )
    # The day as logged; the pool is the hours with an answer to reveal, as in training.
    pred = predictor.predict_raw(raw, reveal_answers=False)

    y = raw.y.astype(np.float64)  # [N]
    z = None if raw.z is None else raw.z.astype(np.float64)  # [N, 24, Z]; None: labels-only data
    p = pred.p_next  # [N] float64
    mu = pred.mu_z.astype(np.float64)
    sig = pred.sigma_z.astype(np.float64)

    report: dict[str, Any] = {
        "split": split,
        "run": str(predictor.run_dir),
        "checkpoint": _rel(predictor.checkpoint, predictor.run_dir),
        "data_file": str(path),
        "n_windows": len(raw),
        "base_rate": float(y.mean()),
        "k": k,
    }
    report.update(scoring.binary_scores(p, y))
    report["brier_decomposition"] = scoring.brier_decomposition(p, y)
    report["post_mse"] = report["post_mse_per_latent"] = report["coverage_90"] = None
    if z is not None:
        report["post_mse"] = float(np.mean((mu - z) ** 2))
        report["post_mse_per_latent"] = dict(
            zip(cols.latents, np.mean((mu - z) ** 2, axis=(0, 1)).tolist(), strict=True)
        )
        report["coverage_90"] = _coverage(z, mu, sig)
    report["sigma_mae"] = None if raw.sigma is None else float(np.mean(np.abs(sig - raw.sigma)))

    oracle: dict[str, Any] = {"auc": None, "pr_auc": None, "brier": None, "ece": None, "post_mse_floor": None}
    if raw.p_bayes is not None:
        oracle.update(scoring.binary_scores(raw.p_bayes.astype(np.float64), y))
        oracle["brier_decomposition"] = scoring.brier_decomposition(raw.p_bayes.astype(np.float64), y)
    if raw.sigma is not None:
        oracle["post_mse_floor"] = float(np.mean(raw.sigma.astype(np.float64) ** 2))
    if raw.post_mean is not None and z is not None:
        # The exact posterior's own error: equals the floor up to sampling noise when the data is right.
        oracle["post_mse_exact"] = float(np.mean((raw.post_mean.astype(np.float64) - z) ** 2))
        if raw.sigma is not None:
            oracle["coverage_90"] = _coverage(
                z, raw.post_mean.astype(np.float64), raw.sigma.astype(np.float64)
            )
    report["oracle"] = oracle
    report["latent_oracle"] = (
        None if raw.p_true is None else scoring.binary_scores(raw.p_true.astype(np.float64), y)
    )

    fitted = fit_logreg(train)
    p_logreg = predict_logreg(fitted, raw.features)
    report["logreg"] = {**scoring.binary_scores(p_logreg, y), "C": LOGREG_C}

    # Uncertainty sampling asks its top-k hours among the askable ones, like every other strategy.
    unc_pool = top_in_pool(pred.uncertainty.astype(np.float64), pred.pool, k)  # [N, 24]
    uncertainty_hours = np.sort(np.where(unc_pool, np.arange(contract.HOURS), contract.HOURS), axis=1)[:, :k]
    uncertainty_hours = np.where(uncertainty_hours < contract.HOURS, uncertainty_hours, -1)  # [N, k]
    policy: dict[str, Any] = dict.fromkeys(POLICY_NAMES)
    detail: dict[str, Any] = {
        "k": k,
        "measure": "sum of query_value over the chosen hours and all windows / the same for each "
        "window's best k hours",
        "random": "expected value of k distinct pool hours drawn uniformly, exact, no seed",
        "fixed_schedule_hours": list(FIXED_SCHEDULE),
        "best_fixed_hours": None,
        "trained_topk_frequency": pred.asked.sum(axis=0).astype(np.int64).tolist(),
    }
    qv_trained = qv_oracle = None
    if raw.query_value is not None and train.query_value is not None:
        best_fixed = best_fixed_hours(train.query_value, k)
        detail["best_fixed_hours"] = best_fixed.tolist()
        policy.update(
            policy_shares(
                raw.query_value,
                k,
                trained=pred.asked,
                uncertainty=unc_pool,
                best_fixed=best_fixed,
                pool=pred.pool,
            )
        )
        qv = raw.query_value.astype(np.float64)
        qv_trained, qv_oracle = chosen_value(qv, pred.asked), oracle_value(qv, k)
        detail["oracle_value_per_window"] = float(qv_oracle.mean())
    report["policy"] = policy
    report["policy_detail"] = detail
    report["asking"], report["asking_detail"] = asking_report(
        predictor,
        raw,
        pred,
        train,
        pred.uncertainty,
        meta_path=predictor.cfg.data.model_copy(update={"dir": str(path.parent)}).meta_path,
    )

    ratios: dict[str, Any] = {}
    if oracle["auc"]:
        ratios["auc_vs_bayes"] = report["auc"] / oracle["auc"]
        ratios["brier_vs_bayes"] = report["brier"] / oracle["brier"]
    if oracle["post_mse_floor"] and report["post_mse"] is not None:
        ratios["post_mse_vs_floor"] = report["post_mse"] / oracle["post_mse_floor"]
    report["ratios"] = ratios

    out_dir = RunFolder(predictor.run_dir).output_dir(contract.EVAL_DIR)  # never through a link
    predictions_path = out_dir / f"{split}_predictions.csv"
    _write_predictions(predictions_path, raw, pred, p_logreg, uncertainty_hours, qv_trained, qv_oracle)
    figure_paths = _write_figures(out_dir, split, report, raw, p, p_logreg) if figures else []
    report["figures"] = [p_.name for p_ in figure_paths]
    json_path = out_dir / f"{split}.json"
    contract.write_json_atomic(json_path, report)
    return EvalResult(report, pred, json_path, predictions_path, figure_paths)


def _hours_text(hours: np.ndarray) -> list[str]:
    return [" ".join(str(int(h)) for h in row if h >= 0) for row in hours]


def _write_predictions(
    path: Path,
    raw: RawSplit,
    pred: Prediction,
    p_logreg: np.ndarray,
    uncertainty_hours: np.ndarray,
    qv_trained: np.ndarray | None,
    qv_oracle: np.ndarray | None,
) -> None:
    import pandas as pd

    cols: dict[str, Any] = {
        "window_id": pred.window_id,
        "y": raw.y.astype(np.int64),
        "p": pred.p_next,
        "p_logreg": p_logreg,
    }
    if raw.p_bayes is not None:
        cols["p_bayes"] = raw.p_bayes.astype(np.float64)
    if raw.p_true is not None:
        cols["p_true"] = raw.p_true.astype(np.float64)
    cols["topk_hours"] = _hours_text(pred.topk_hours)
    cols["uncertainty_hours"] = _hours_text(uncertainty_hours)
    if qv_trained is not None:
        cols["qv_trained"] = qv_trained
        cols["qv_oracle"] = qv_oracle
    # Default float formatting is the shortest repr that round-trips, so a reader recovers p exactly.
    pd.DataFrame(cols).to_csv(path, index=False)


def _write_figures(
    out_dir: Path, split: str, report: dict[str, Any], raw: RawSplit, p: np.ndarray, p_logreg: np.ndarray
) -> list[Path]:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots
    from sklearn.metrics import roc_curve

    y = raw.y
    forecasts = {"model": p, "logistic regression": p_logreg}
    if raw.p_bayes is not None:
        forecasts["Bayes optimal (p_bayes)"] = raw.p_bayes
    if raw.p_true is not None:
        forecasts["latent oracle (p_true)"] = raw.p_true
    paths = []

    roc = go.Figure()
    for name, values in forecasts.items():
        fpr, tpr, _ = roc_curve(y, values)
        roc.add_trace(
            go.Scatter(x=fpr, y=tpr, mode="lines", name=f"{name} (AUC {scoring.auc(values, y):.3f})")
        )
    roc.add_trace(
        go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "grey"}, name="chance")
    )
    roc.update_layout(
        title=f"ROC, {split} split ({len(y)} windows)",
        xaxis_title="false positive rate",
        yaxis_title="true positive rate",
    )
    paths.append(out_dir / f"{split}_roc.html")
    roc.write_html(paths[-1], include_plotlyjs="directory")

    rel = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.7, 0.3], vertical_spacing=0.05)
    rel.add_trace(
        go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "grey"}, name="perfect"),
        row=1,
        col=1,
    )
    for name in [n for n in forecasts if n != "latent oracle (p_true)"]:
        table = scoring.calibration_table(forecasts[name], y)
        used = table.count > 0
        label = f"{name} (ECE {scoring.ece(forecasts[name], y):.3f})"
        rel.add_trace(
            go.Scatter(x=table.mean_pred[used], y=table.frac_pos[used], mode="lines+markers", name=label),
            row=1,
            col=1,
        )
    table = scoring.calibration_table(p, y)
    rel.add_trace(
        go.Bar(x=(table.lo + table.hi) / 2, y=table.count, width=table.hi - table.lo, name="model forecasts"),
        row=2,
        col=1,
    )
    rel.update_xaxes(range=[0, 1], title_text="forecast probability", row=2, col=1)
    rel.update_yaxes(range=[0, 1], title_text="observed frequency", row=1, col=1)
    rel.update_yaxes(title_text="windows", row=2, col=1)
    rel.update_layout(title=f"Reliability diagram, {split} split ({scoring.ECE_BINS} uniform bins)")
    paths.append(out_dir / f"{split}_reliability.html")
    rel.write_html(paths[-1], include_plotlyjs="directory")

    shares = report["policy"]
    if all(v is not None for v in shares.values()):
        bar = go.Figure(
            go.Bar(x=list(shares), y=list(shares.values()), text=[f"{v:.3f}" for v in shares.values()])
        )
        bar.update_layout(
            title=f"Query value captured, share of the per-window best k={report['k']} hours ({split})",
            yaxis_title="share of oracle",
        )
        paths.append(out_dir / f"{split}_policy.html")
        bar.write_html(paths[-1], include_plotlyjs="directory")
    return paths


# --- summary ---------------------------------------------------------------------------------------------


def _num(value: Any, width: int = 9) -> str:
    return f"{value:>{width}.4f}" if isinstance(value, (int, float)) and value == value else f"{'-':>{width}}"


def format_summary(report: dict[str, Any]) -> str:
    """A plain-text table of the report, for the console."""
    oracle, latent, logreg = report["oracle"], report.get("latent_oracle") or {}, report["logreg"]
    lines = [
        f"evaluation of {report['run']} ({report['checkpoint']}) on {report['split']}: "
        f"{report['n_windows']} windows, base rate {report['base_rate']:.3f}",
        "",
        f"{'forecast':<12}{'model':>9}{'bayes':>9}{'latent':>9}{'logreg':>9}",
    ]
    for key in ("auc", "pr_auc", "brier", "ece"):
        lines.append(
            f"{key:<12}{_num(report[key])}{_num(oracle.get(key))}{_num(latent.get(key))}{_num(logreg.get(key))}"
        )
    d = report["brier_decomposition"]
    lines.append(
        f"brier = reliability {d['reliability']:.4f} - resolution {d['resolution']:.4f} "
        f"+ uncertainty {d['uncertainty']:.4f} (model)"
    )
    lines += [
        "",
        f"{'posterior':<12}{'model':>9}{'exact':>9}",
        f"{'post_mse':<12}{_num(report['post_mse'])}{_num(oracle.get('post_mse_floor'))}   (exact: floor)",
        f"{'coverage_90':<12}{_num(report['coverage_90'])}{_num(oracle.get('coverage_90'))}",
        f"{'sigma_mae':<12}{_num(report.get('sigma_mae'))}",
        "",
        f"policy: share of the oracle's query value (k={report['k']})",
    ]
    detail = report["policy_detail"]
    notes = {
        "fixed_schedule": f"hours {detail['fixed_schedule_hours']}",
        "best_fixed": f"hours {detail['best_fixed_hours']} (best on train)",
        "random": "expected value",
        "uncertainty": "top-k of the model's own uncertainty",
    }
    for name in POLICY_NAMES:
        lines.append(f"  {name:<16}{_num(report['policy'][name])}  {notes.get(name, '')}".rstrip())
    asking = report.get("asking")
    if asking:
        cols = (
            "query_value_share",
            "set_share",
            "outside_pool",
            "brier_model",
            "log_loss_model",
            "auc_model",
            "brier_bayes",
            "auc_bayes",
        )
        heads = ("qv share", "set shr", "outside", "brier", "logloss", "auc", "brier*", "auc*")
        lines += [
            "",
            "asking: forecasts after each strategy's answers (* = exact Bayes with the same answers)",
            f"  {'strategy':<16}" + "".join(f"{h:>9}" for h in heads),
        ]
        for name, entry in asking.items():
            lines.append(f"  {name:<16}" + "".join(_num(entry.get(c)) for c in cols))
        for pair, rules in ((report.get("asking_detail") or {}).get("paired") or {}).items():
            for rule, b in rules.items():
                lines.append(
                    f"  {pair.replace('_', ' ')} ({rule}): {b['mean']:+.5f}, "
                    f"{b['level']:.0%} interval [{b['lo']:+.5f}, {b['hi']:+.5f}]"
                )
        rho = (report.get("asking_detail") or {}).get("gain_spearman")
        lines.append(f"  one-answer gain Spearman (model vs exact, median over windows): {_num(rho).strip()}")
    return "\n".join(lines)


# --- command line --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m aline.evaluate",
        description=(
            "Evaluate a trained run's best checkpoint on one split against the Bayes-optimal forecast, the "
            "latent oracle, a logistic regression, and policy baselines. Writes RUN_DIR/eval/<split>.json, "
            "RUN_DIR/eval/<split>_predictions.csv (one row per window) and plotly HTML figures "
            "(<split>_roc.html, <split>_reliability.html, <split>_policy.html), and prints a summary."
        ),
        epilog=(
            "Policy figures are shares of the query value that each window's own best k hours capture. "
            "Exit codes: 0 success, 2 invalid run folder, checkpoint or data, 1 any other failure."
        ),
    )
    parser.add_argument("run", metavar="RUN_DIR", help="run folder written by python -m aline.train")
    parser.add_argument(
        "--split",
        choices=("val", "test", "train"),
        default="val",
        help="which split of the run's data to score (default: val)",
    )
    parser.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="checkpoint to evaluate instead of the best one named in status.json "
        "(e.g. RUN_DIR/checkpoints/last.pt)",
    )
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        help="folder with <prefix>_{train,val,test}.csv (default: data.dir from the run's config.yaml); "
        "train is read as well, for the logistic regression and the best fixed hours",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        metavar="N",
        help="windows per forward pass (default: trainer.eval_batch_size)",
    )
    parser.add_argument("--no-figures", action="store_true", help="skip the plotly HTML figures")
    parser.add_argument("--quiet", action="store_true", help="do not print the summary table")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = evaluate(
            args.run,
            args.split,
            checkpoint=args.checkpoint,
            data_dir=args.data_dir,
            batch_size=args.batch_size,
            figures=not args.no_figures,
        )
    except (RunError, DataError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_INVALID
    except OSError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILURE
    if not args.quiet:
        print(format_summary(result.report))
        print(f"\nwrote {result.json_path}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
