"""What a run's data means under its config, decided before any work: the data-dependent choices
(``resolve_config``), the column roles the options need, the question pool and window dataset of a split,
and the references the monitor draws (the Bayes forecast, the exact after-asking posterior)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from aline.config import Config
from aline.data import DataError, RawSplit
from aline.data.dataset import Normalizer, WindowDataset
from aline.data.splits import reference_roles
from aline.model.asking import answer_mapping_problem, has_answer_channel, pool_mask
from aline.scoring import binary_scores
from aline.training.closed_loop import resolve_info_gain, resolve_label_gain, resolve_reward
from aline.training.losses import resolve_mean_target, resolve_posterior, resolve_readings

__all__ = [
    "check_roles",
    "exact_set_share",
    "is_finite_number",
    "oracle_references",
    "pool_for",
    "resolve_config",
    "window_dataset",
]


def resolve_config(cfg: Config, splits: dict[str, RawSplit]) -> Config:
    """``cfg`` with the data-dependent choices made (``loss.posterior``, ``loss.bce_into_encoder``,
    ``loss.mean_target``, ``loss.readings``, ``policy.reward``, ``policy.info_gain``, ``policy.label_gain``,
    each when ``auto``), so the run's config.yaml says what the run did and predict/evaluate rebuild the
    same model."""
    train = splits["train"]
    posterior = resolve_posterior(cfg.loss, train.z is not None, train.sigma is not None)
    into = cfg.loss.bce_into_encoder
    if into == "auto":
        # Without latent targets the labels are the only signal the encoder gets.
        into = posterior == "none"
    mean_target = resolve_mean_target(cfg.loss, posterior, train.post_mean is not None)
    readings = resolve_readings(cfg.loss, posterior, has_likelihood=cfg.model.encoder == "kalman")
    loss = cfg.loss.model_copy(
        update={
            "posterior": posterior,
            "bce_into_encoder": into,
            "mean_target": mean_target,
            "readings": readings,
        }
    )
    reward = resolve_reward(
        cfg.policy.reward,
        has_query_value=train.query_value is not None,
        has_answers=train.answers is not None,
        has_truth=train.z is not None,
    )
    data = cfg.data.model_copy(update={"oracle_free": not reference_roles(train)})
    policy = cfg.policy.model_copy(
        update={
            "reward": reward,
            "info_gain": resolve_info_gain(cfg.policy.info_gain, has_truth=train.z is not None),
            "label_gain": resolve_label_gain(cfg.policy.label_gain, readings),
        }
    )
    return cfg.model_copy(update={"data": data, "loss": loss, "policy": policy})


def pool_for(cfg: Config, raw: RawSplit) -> np.ndarray:
    """The question pool of one split under this config. ``[N, 24]`` bool"""
    return pool_mask(raw, cfg.data.columns.asked_feature, cfg.policy.unaskable_when)


def window_dataset(cfg: Config, raw: RawSplit, normalizer: Normalizer) -> WindowDataset:
    """One split as the loaders serve it: normalised, with its question pool under this config."""
    return WindowDataset(raw, normalizer, pool=pool_for(cfg, raw), answer_channel=has_answer_channel(cfg))


def check_roles(cfg: Config, splits: dict[str, RawSplit]) -> None:
    """Columns that the chosen options need, checked before any run folder exists (exit 2, not a crash)."""
    cols = cfg.data.columns
    raw = splits["train"]
    problems = []
    posterior = resolve_posterior(cfg.loss, raw.z is not None, raw.sigma is not None)
    if posterior != "none" and raw.z is None:
        problems.append(
            f"loss.posterior={posterior} needs the latent columns {cols.latent_columns()} "
            "(data.columns.latent_prefix, data.columns.latents); without them use loss.posterior=auto or none"
        )
    if posterior == "mse" and cfg.loss.sigma_target == "posterior" and raw.sigma is None:
        where = _lacking(cols.sigma_columns(), "sigma_prefix")
        problems.append(
            f"loss.posterior=mse with loss.sigma_target=posterior needs the posterior std columns ({where}); "
            "use loss.posterior=nll (or auto), which needs no sigma target"
        )
    if cfg.loss.mean_target == "posterior" and raw.post_mean is None:
        where = _lacking(cols.post_mean_columns(), "post_mean_prefix")
        problems.append(
            f"loss.mean_target=posterior needs the posterior mean columns ({where}); "
            "use loss.mean_target=truth (or auto)"
        )
    if cfg.policy.reward == "query_value" and raw.query_value is None:
        problems.append(
            f"policy.reward=query_value needs the column {cols.query_value!r} "
            "(data.columns.query_value); use policy.reward=uncertainty instead"
        )
    if cfg.policy.reward in ("info_gain", "label_gain") and raw.answers is None:
        problems.append(
            f"policy.reward={cfg.policy.reward} needs an answer column (data.columns.answers = "
            f"{cols.answers}); use policy.reward=uncertainty instead"
        )
    if raw.answers is not None:
        misfit = answer_mapping_problem(raw, next(iter(cols.answers.values())))
        if misfit:
            problems.append(misfit)
    reward = resolve_reward(
        cfg.policy.reward,
        has_query_value=raw.query_value is not None,
        has_answers=raw.answers is not None,
        has_truth=raw.z is not None,
    )
    # The estimator is read only by the info_gain reward: with another reward, logprob needs nothing.
    if reward == "info_gain" and cfg.policy.info_gain == "logprob" and raw.z is None:
        problems.append(
            f"policy.info_gain=logprob scores answers by the latent truth: it needs the latent columns "
            f"{cols.latent_columns()}; use policy.info_gain=variance (or auto)"
        )
    if problems:
        raise DataError(f"{raw.path}: " + "; ".join(problems))


def _lacking(columns: list[str] | None, prefix_key: str) -> str:
    """Why a prefixed column group is missing: its prefix is switched off, or the file lacks the columns."""
    return f"data.columns.{prefix_key} is null" if columns is None else f"the file lacks {columns}"


def oracle_references(cfg: Config, val: RawSplit) -> dict[str, float]:
    """Best-achievable figures on the validation split, shown by the monitor as dashed lines."""
    refs: dict[str, float] = {}
    if val.p_bayes is not None and val.y is not None:
        refs.update(binary_scores(val.p_bayes, val.y))
    if val.sigma is not None:
        refs["post_mse_floor"] = float((val.sigma.astype("float64") ** 2).mean())
    meta_path = cfg.data.meta_path
    if meta_path.is_file():
        split = _meta_val_split(meta_path)
        for key in ("logreg_auc", "best_fixed_share", "random_share"):
            if is_finite_number(split.get(key)):
                refs[key] = float(split[key])
        # The exact-Bayes forecast after the oracle's k answers (simulator meta: asked.oracle.{auc,brier}).
        asked = split.get("asked")
        oracle_asked = asked.get("oracle") if isinstance(asked, dict) else None
        oracle_asked = oracle_asked if isinstance(oracle_asked, dict) else {}
        for key in ("auc", "brier"):
            if is_finite_number(oracle_asked.get(key)):
                refs[f"{key}_asked"] = float(oracle_asked[key])
    return refs


def is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) < 1e300


def _meta_val_split(path: Path) -> dict[str, Any]:
    """The simulator meta file's ``splits.val`` object ({} where the file has none); DataError when the
    file is not readable JSON."""
    from aline.evaluation.exact_reference import read_meta

    splits = read_meta(path).get("splits")
    split = splits.get("val") if isinstance(splits, dict) else None
    return split if isinstance(split, dict) else {}


def exact_set_share(cfg: Config, val: RawSplit):
    """``asked [N, 24] -> share``: the exact variance cut of the asked sets over the greedy oracle's, on
    the validation split (validation's ``policy_set_value``); None when the data has no exact model."""
    from aline.evaluation.exact_reference import load_exact, set_share

    try:
        exact = load_exact(val, cfg.data.meta_path)
    except DataError:
        return None  # a meta file that does not describe these windows: the figure is undefined
    if exact is None:
        return None
    oracle_cut = float(np.sum(exact.set_value(exact.greedy_oracle(cfg.policy.k))))
    return lambda asked: set_share(exact, asked, oracle_cut)
