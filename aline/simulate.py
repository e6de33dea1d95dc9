"""Synthetic migraine data with known truth: ``python -m aline.simulate``.

The module's one job is to write ``DIR/synthetic_migraine_{train,val,test}.csv`` and
``DIR/synthetic_migraine_meta.json``: hourly rows of one subject-day per window, the true latent state,
the exact posterior of that state given the window's observations, the value of asking the diary at each
hour, the next-day label and the best forecasts that any model could make (``p_bayes``) or that one knowing
the latent state could make (``p_true``).

Generative model: see :mod:`aline.simulator.generative` (one window = one subject-day, hours t = 0..23;
windows are independent given the observed inputs, which is what makes each window's posterior exact). Z =
(stress, sleep_debt, hormonal, env_load); y = (heart_rate, hrv, skin_temp, stress_rating, symptom_score). g_t
is a known function of the observed inputs (thresholds, recent sums), and q_t, r_t depend on them too: a
skipped meal or a falling barometer makes stress more volatile, walking makes the heart rate noisier, and
screens, walking and drinks make the premonitory-symptom score less reliable. One subject-level value
enters g as well: whether the subject is a habitual caffeine user (mean daily caffeine over all of the
subject's days >= 50 mg, computable from the CSV by subject), which drives caffeine withdrawal on a day
without caffeine. The posterior columns condition on the window's rows and that flag.

Wearable values have gaps (a day without the watch, charging, off-wrist hours, motion artefacts in HRV);
the diary stress rating is logged at a few waking hours a day, the symptom score rarely. The symptom score
is the question that can be asked: ``ask_symptom_score`` holds the answer the patient would give at each
askable hour (awake and not busy), drawn from the same measurement model (equal to the logged value where
logged, empty where unaskable), and ``query_value`` the exact cut in Var(w·Z_23) from one answer there
(:mod:`aline.simulator.exact`). Measurements are written rounded to two decimals and the posterior is
computed from the rounded values (the rounding error, variance 1e-4/12, is ignored next to the measurement
noise). The diary scores are continuous on a 0-10 scale and not clipped, so that they stay linear-Gaussian.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from aline.config import DEFAULT_FEATURES, DEFAULT_LATENTS, SPLITS
from aline.scoring import best_fixed_hours
from aline.simulator.generate import FLOAT_DECIMALS, HABITS, generate, split_subjects
from aline.simulator.generative import (
    ANSWER_COLUMN,
    ASKED,
    ASKING,
    CONTEXT_NOISE,
    G_DEFINITIONS,
    G_NAMES,
    INPUTS,
    INTEGER_INPUTS,
    MEASUREMENTS,
    UNITS,
    T,
    default_params,
)
from aline.simulator.references import (
    BEST_K,
    TARGETS,
    asking_figures,
    logreg_baseline,
    realism_checks,
    realism_summary,
    split_figures,
    trigger_flags,
    trigger_odds,
)

__all__ = ["main", "simulate"]


PREFIX = "synthetic_migraine"

# --- files -------------------------------------------------------------------------------------------------


def columns() -> list[str]:
    """CSV header, in order."""
    cols = ["window_id", "subject_id", "day", "hour", *DEFAULT_FEATURES, ANSWER_COLUMN]
    for name in DEFAULT_LATENTS:
        cols += [f"z_{name}", f"post_mean_{name}", f"post_std_{name}"]
    return cols + ["query_value", "y_next", "p_true", "p_bayes"]


def _round_outputs(sim: dict[str, Any]) -> None:
    """Round the written values in place so that every figure in the meta comes from the CSV's values."""
    for key in ("z", "post_mean", "post_std"):
        sim[key] = np.round(sim[key], FLOAT_DECIMALS["latent"])
    sim["query_value"] = np.round(sim["query_value"], FLOAT_DECIMALS["query_value"])
    for key in ("p_true", "p_bayes"):
        sim[key] = np.round(sim[key], FLOAT_DECIMALS["prob"])


def _table(sim: dict[str, Any], rows: np.ndarray, days: int):
    import pyarrow as pa

    n = len(rows)

    def per_row(a: np.ndarray) -> np.ndarray:  # [n] per window -> [n * 24]
        return np.repeat(a, T)

    data: dict[str, Any] = {
        "window_id": per_row(sim["subject"][rows] * days + sim["day"][rows]),
        "subject_id": per_row(sim["subject"][rows]),
        "day": per_row(sim["day"][rows]),
        "hour": np.tile(np.arange(T), n),
    }
    for name in INPUTS:
        v = sim["feats"][name][rows].ravel()
        data[name] = v.astype(np.int64) if name in INTEGER_INPUTS else v
    y = sim["y"][rows]  # [n, 24, M], one gather per array rather than one per column
    for j, name in enumerate(MEASUREMENTS):
        v = y[:, :, j].ravel()
        data[name] = pa.array(v, mask=np.isnan(v))  # NaN -> null -> empty cell
    v = sim["answer"][rows].ravel()
    data[ANSWER_COLUMN] = pa.array(v, mask=np.isnan(v))
    z, mean, std = sim["z"][rows], sim["post_mean"][rows], sim["post_std"][rows]  # [n, 24, Z]
    for i, name in enumerate(DEFAULT_LATENTS):
        data[f"z_{name}"] = z[:, :, i].ravel()
        data[f"post_mean_{name}"] = mean[:, :, i].ravel()
        data[f"post_std_{name}"] = std[:, :, i].ravel()
    data["query_value"] = sim["query_value"][rows].ravel()
    data["y_next"] = per_row(sim["y_next"][rows])
    data["p_true"] = per_row(sim["p_true"][rows])
    data["p_bayes"] = per_row(sim["p_bayes"][rows])
    assert list(data) == columns()
    return pa.table(data)


def _write_csv(table, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.csv as pcsv

    tmp = path.with_name(path.name + ".tmp")
    # pyarrow quotes header names whatever the quoting style; a plain header is friendlier to other tools.
    with pa.OSFile(str(tmp), "wb") as sink:
        sink.write((",".join(table.column_names) + "\n").encode())
        pcsv.write_csv(table, sink, pcsv.WriteOptions(include_header=False, quoting_style="none"))
    tmp.replace(path)


def _write_parquet(table, path: Path) -> None:
    import pyarrow.parquet as pq

    tmp = path.with_name(path.name + ".tmp")
    # Same column types and values as the CSV (float64, int64), so both formats load to identical arrays.
    pq.write_table(table, tmp, compression="zstd")
    tmp.replace(path)


WRITERS = {"csv": _write_csv, "parquet": _write_parquet}


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        return None if not np.isfinite(x) else float(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


class _Progress:
    """Stage lines on stderr: elapsed time and hourly rows per second so far."""

    def __init__(self, rows: int, enabled: bool) -> None:
        self.rows, self.enabled, self.t0 = rows, enabled, time.perf_counter()

    def __call__(self, stage: str) -> None:
        if self.enabled:
            dt = time.perf_counter() - self.t0
            rate = f", {self.rows / dt:,.0f} rows/s so far" if dt > 0.05 else ""
            print(f"[simulate] {dt:6.2f}s  {stage}  ({self.rows:,} rows{rate})", file=sys.stderr)


# --- entry points ------------------------------------------------------------------------------------------


def _import_reference_libraries() -> None:
    import pyarrow.csv  # noqa: F401
    import sklearn.linear_model  # noqa: F401
    import sklearn.metrics  # noqa: F401


def simulate(
    subjects: int = 300,
    days: int = 60,
    seed: int = 0,
    out_dir: str | Path = "data",
    val_frac: float = 0.15,
    test_frac: float = 0.15,
    progress: bool = True,
    fmt: str = "csv",
) -> dict[str, Any]:
    """Simulate, write the three splits (``fmt``: csv or parquet) and the meta JSON into ``out_dir``;
    returns the meta."""
    if fmt not in WRITERS:
        raise ValueError(f"--format {fmt!r}: expected one of {', '.join(WRITERS)}")
    args = (subjects, days, seed, out_dir, val_frac, test_frac, progress, fmt)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - scikit-learn depends on it
        return _simulate(*args)
    # The batched 4x4 algebra makes many small BLAS calls: extra BLAS threads only spin, and the CSV
    # writer threads need the cores.
    with threadpool_limits(limits=1, user_api="blas"):
        return _simulate(*args)


def _simulate(subjects, days, seed, out_dir, val_frac, test_frac, progress, fmt) -> dict[str, Any]:
    if subjects < 1 or days < 1:
        raise ValueError(f"--subjects ({subjects}) and --days ({days}) must be at least 1")
    split_ids = split_subjects(subjects, val_frac, test_frac, seed)
    # scikit-learn (with pandas and scipy) takes about a second to import; do it while numpy simulates.
    importer = threading.Thread(target=_import_reference_libraries, daemon=True)
    importer.start()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_rows = subjects * days * T
    tick = _Progress(n_rows, progress)
    tick(f"simulating {subjects} subjects x {days} days (seed {seed})")
    P = default_params()
    sim = generate(subjects, days, seed, P)
    _round_outputs(sim)
    tick("latent state, measurements, Kalman posterior and labels done")

    importer.join()

    split_rows = {k: np.flatnonzero(np.isin(sim["subject"], ids)) for k, ids in split_ids.items()}
    paths = {k: out / f"{PREFIX}_{k}.{fmt}" for k in SPLITS}
    write = WRITERS[fmt]
    # CSV writing releases the GIL; the reference figures below run meanwhile.
    pool = ThreadPoolExecutor(max_workers=2)
    futures = [pool.submit(lambda k=k: write(_table(sim, split_rows[k], days), paths[k])) for k in SPLITS]

    qv = sim["query_value"]
    train_rows = split_rows["train"]
    best_hours = best_fixed_hours(qv[train_rows], BEST_K)
    logreg = logreg_baseline(sim, split_rows) if len(np.unique(sim["y_next"][train_rows])) == 2 else None
    tick("reference figures (oracle, logistic regression, best fixed hours) done")
    flags = trigger_flags(sim)
    trig = trigger_odds(flags, sim["y_next"])
    splits: dict[str, Any] = {}
    for i, (k, rows) in enumerate(split_rows.items()):
        splits[k] = split_figures(
            sim, rows, len(split_ids[k]), best_hours, logreg["splits"].get(k) if logreg else None
        )
        if len(rows):
            splits[k].update(asking_figures(sim, rows, best_hours, np.random.default_rng([seed, 13, i])))
    tick("asking references (greedy oracle, best fixed, random askable hours) done")
    for fut in futures:
        fut.result()
    pool.shutdown()
    tick(f"{fmt} files written")
    for k in SPLITS:
        # A split left from an earlier run in the other format would disagree with the new meta, and the
        # loader refuses a folder holding both formats of one split.
        for other in WRITERS.keys() - {fmt}:
            (out / f"{PREFIX}_{k}.{other}").unlink(missing_ok=True)

    meta = _meta(subjects, days, seed, val_frac, test_frac, P, split_ids, splits, logreg, best_hours, trig)
    meta["files"] = {k: p.name for k, p in paths.items()}
    meta_path = out / f"{PREFIX}_meta.json"
    tmp = meta_path.with_name(meta_path.name + ".tmp")
    tmp.write_text(json.dumps(_jsonable(meta), indent=1, allow_nan=False) + "\n", encoding="utf-8")
    tmp.replace(meta_path)
    tick(f"meta written; files in {out}")
    if progress:
        print(realism_summary(meta), file=sys.stderr)
    return _jsonable(meta)


def _meta(subjects, days, seed, val_frac, test_frac, P, split_ids, splits, logreg, best_hours, trig):
    feats = [
        {"name": n, "unit": UNITS[n], "kind": "measurement" if n in MEASUREMENTS else "input"}
        for n in DEFAULT_FEATURES
    ]
    checks = realism_checks(splits)
    return {
        "generator": "aline.simulate",
        "seed": seed,
        "subjects": subjects,
        "days": days,
        "hours": T,
        "val_frac": val_frac,
        "test_frac": test_frac,
        "n_windows": subjects * days,
        "n_rows": subjects * days * T,
        "files": {k: f"{PREFIX}_{k}.csv" for k in SPLITS},
        "columns": columns(),
        "features": feats,
        "inputs": list(INPUTS),
        "measurements": list(MEASUREMENTS),
        "latents": list(DEFAULT_LATENTS),
        "window_id": "subject_id * days + day (unique across the three files)",
        "split_subjects": {k: v.tolist() for k, v in split_ids.items()},
        "model": {
            "equations": [
                "Z_0 ~ N(mu0, Sigma0)",
                "Z_t = A Z_{t-1} + B g_t + c + eps_t, eps_t ~ N(0, diag q_t), t = 1..23",
                "y_t = C Z_t + D g_t + d + delta_t, delta_t ~ N(0, diag r_t), observed entries only",
                "y_next ~ Bernoulli(sigmoid(w . Z_23 + b))",
            ],
            "g": list(G_NAMES),
            "context_noise": CONTEXT_NOISE,
            "g_definitions": G_DEFINITIONS,
            "params": P,
            "measurement_rounding_decimals": 2,
        },
        "habits": HABITS,
        "asking": ASKING,
        "query_value": f"Var(w.Z_23 | obs) - Var(w.Z_23 | obs + {ASKED} answered at hour t); "
        "0 outside the pool (an unaskable hour, or one where it was logged)",
        "p_bayes": "E[sigmoid(w.Z_23 + b) | obs], 48-node Gauss-Hermite quadrature",
        "splits": splits,
        "baselines": {
            "logreg": logreg,
            "best_fixed_hours": best_hours.tolist(),
            "best_fixed_k": BEST_K,
            "best_fixed_note": "chosen on train by mean query value; share = its summed query value / the "
            "summed query value of each window's own best 3 hours (the trainer's policy_value); "
            "*_set_share: the exact variance cut of the set's answers / that of the greedy oracle's; "
            "*_cut_share: mean over windows of that cut / Var(w.Z_23 | D0); asked.<strategy>: exact-Bayes "
            "AUC and Brier of the forecast given D0 plus that strategy's answers (fixed hours outside a "
            "window's pool are not asked); random: k pool hours drawn uniformly (seed [seed, 13, split])",
        },
        "triggers": trig,
        "realism": {"targets": TARGETS, "checks": checks},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m aline.simulate",
        description="Write synthetic hourly migraine-diary data with its exact posterior and oracle figures: "
        "DIR/synthetic_migraine_{train,val,test}.csv (or .parquet with --format parquet) and "
        "DIR/synthetic_migraine_meta.json.",
    )
    parser.add_argument("--subjects", type=int, default=300, help="number of subjects (default 300)")
    parser.add_argument(
        "--days", type=int, default=60, help="days per subject; one window per day (default 60)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default 0)")
    parser.add_argument("--out", default="data", help="output folder, created if needed (default data)")
    parser.add_argument(
        "--val-frac",
        type=float,
        default=0.15,
        help="share of subjects in the validation split (default 0.15)",
    )
    parser.add_argument(
        "--test-frac", type=float, default=0.15, help="share of subjects in the test split (default 0.15)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines or realism summary on stderr")
    parser.add_argument(
        "--format",
        choices=sorted(WRITERS),
        default="csv",
        help="file format of the three splits: csv or parquet (.parquet; the trainer reads either; "
        "default csv)",
    )
    args = parser.parse_args(argv)
    try:
        simulate(
            args.subjects,
            args.days,
            args.seed,
            args.out,
            args.val_frac,
            args.test_frac,
            not args.quiet,
            args.format,
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
