"""Typed training configuration: YAML file + ``key=value`` overrides, validated all at once.

``load_config`` is the only entry point the CLI needs. Every problem (unknown key, wrong type, value out of
range) is collected into one :class:`ConfigError` before any work starts, so a user fixes a config in one go.

Each key's default and description are written here once, in its ``Field``: ``configs/train.yaml`` and
``python -m aline.train --help`` are rendered from them (:mod:`aline.config_doc`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from aline.config_overrides import (
    ConfigError,
    format_validation_error,
    key_paths,
    merge,
    override_keys,
    parse_overrides,
    read_yaml_file,
    yaml_tree,
)

DEFAULT_DATA_DIR = "data"
DEFAULT_PREFIX = "synthetic_migraine"
DEFAULT_FEATURES = (
    "asleep",
    "caffeine_mg",
    "alcohol_drinks",
    "pressure_hpa",
    "pressure_change_3h",
    "skipped_meal",
    "screen_time_min",
    "steps",
    "menstrual_window",
    "busy",
    "usual_caffeine_mg",
    "heart_rate",
    "hrv",
    "skin_temp",
    "stress_rating",
    "symptom_score",
)
# The diary question the simulator can answer at any askable hour, and the column holding the answers.
DEFAULT_ANSWERS = {"symptom_score": "ask_symptom_score"}
# Observed 0/1 features under which an hour cannot be asked about (the simulator's defaults).
DEFAULT_UNASKABLE_WHEN = ("asleep", "busy")
# Features that are readings of the latent state (wearable sensors and diary scores); the rest are inputs.
DEFAULT_MEASUREMENTS = ("heart_rate", "hrv", "skin_temp", "stress_rating", "symptom_score")
DEFAULT_LATENTS = ("stress", "sleep_debt", "hormonal", "env_load")
SPLITS = ("train", "val", "test")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ColumnsConfig(_Section):
    """Which column plays which role (docs/data.md); the defaults are the simulator's names.

    Optional roles (subject id, latents, posterior std/mean, query value, p_bayes, p_true, answers) are read
    when the file has them. A column name that the user chose (any value other than the built-in default)
    must exist, so a typo is an error rather than a silently absent role; ``null`` leaves a role out.
    """

    window_id: str = Field(
        "window_id", description="One window = one subject-day of 24 hourly rows; any text or integer id."
    )
    hour: str = Field("hour", description="Hour of the day, 0..23, each exactly once per window.")
    label: str = Field("y_next", description="Next-day migraine, 0/1, the same on all rows of a window.")
    subject_id: str | None = Field(
        "subject_id", description="Optional: a subject in two splits is an error; null if absent."
    )
    features: list[str] = Field(
        default_factory=lambda: list(DEFAULT_FEATURES),
        min_length=1,
        description="Model inputs; empty cells are allowed (the model also sees a missing-mask).",
    )
    latents: list[str] = Field(
        default_factory=lambda: list(DEFAULT_LATENTS),
        min_length=1,
        description="Latent names, the posterior's dimensions; their targets are <latent_prefix><name>.",
    )
    latent_prefix: str | None = Field(
        "z_",
        description="Optional true latent state columns (the posterior's target); without them (or with "
        "null) the run trains on the labels alone.",
    )
    post_mean_prefix: str | None = Field(
        "post_mean_",
        description="Optional exact posterior mean columns (the mean's target under loss.mean_target=auto).",
    )
    sigma_prefix: str | None = Field(
        "post_std_",
        description="Optional exact posterior std columns (the sigma target of loss.posterior=mse); null "
        "when the data has none.",
    )
    query_value: str | None = Field(
        "query_value",
        description="Optional per-hour exact value of asking (policy.reward=query_value, the policy_value "
        "metric); null if absent.",
    )
    p_bayes: str | None = Field(
        "p_bayes", description="Optional Bayes-optimal probability (a reference only); null if absent."
    )
    p_true: str | None = Field(
        "p_true", description="Optional latent-oracle probability (a reference only); null if absent."
    )
    answers: dict[str, str] | None = Field(
        default_factory=lambda: dict(DEFAULT_ANSWERS),
        description="Asked feature -> column with the answer the patient would give at each hour (empty "
        "where it cannot be asked). null or {}: no question, so no asking loop.",
    )

    @model_validator(mode="after")
    def _one_asked_feature(self) -> ColumnsConfig:
        if self.answers and len(self.answers) > 1:
            raise ValueError(f"answers: one asked feature is supported, got {sorted(self.answers)}")
        return self

    @property
    def asked_feature(self) -> str | None:
        return next(iter(self.answers or {}), None)

    def _group(self, prefix: str | None) -> list[str] | None:
        if prefix is None:
            return None
        return [prefix + n for n in self.latents]

    def latent_columns(self) -> list[str] | None:
        return self._group(self.latent_prefix)

    def sigma_columns(self) -> list[str] | None:
        return self._group(self.sigma_prefix)

    def post_mean_columns(self) -> list[str] | None:
        return self._group(self.post_mean_prefix)

    def is_default_mapping(self, role: str) -> bool:
        """Whether ``role``'s columns are the built-in (simulator) names, which may be absent from a CSV."""
        default = ColumnsConfig()
        if role in ("latents", "sigma", "post_mean"):
            getter = {
                "latents": ColumnsConfig.latent_columns,
                "sigma": ColumnsConfig.sigma_columns,
                "post_mean": ColumnsConfig.post_mean_columns,
            }[role]
            return getter(self) == getter(default)
        return getattr(self, role) == getattr(default, role)


class DataConfig(_Section):
    """Where the three splits are, and how to read them."""

    dir: str = Field(
        DEFAULT_DATA_DIR,
        description="Folder with <prefix>_{train,val,test}.csv or .parquet (the extension picks the reader). "
        "Only this default folder is filled by the simulator when empty; any other missing folder is an "
        "error.",
    )
    prefix: str = Field(
        DEFAULT_PREFIX, description="File name prefix: <prefix>_train.csv, ..., <prefix>_meta.json."
    )
    columns: ColumnsConfig = Field(default_factory=ColumnsConfig)
    oracle_free: bool | Literal["auto"] = Field(
        "auto",
        description="Whether training reads no reference column (post_mean_*, post_std_*, query_value, "
        "p_bayes, p_true), as on a cohort without a simulator. true: train's reference columns are ignored "
        "(val and test keep theirs, to score the run) | auto or false: train uses what its file holds. "
        "config.yaml and status.json record the outcome (true when training read none).",
    )

    def split_path(self, split: str) -> Path:
        """``<prefix>_<split>.parquet`` when that file exists, else ``<prefix>_<split>.csv``; the file's
        extension picks the reader (aline.data), so a folder may hold either format."""
        base = Path(self.dir) / f"{self.prefix}_{split}"
        parquet = base.with_name(base.name + ".parquet")
        return parquet if parquet.is_file() else base.with_name(base.name + ".csv")

    @property
    def meta_path(self) -> Path:
        return Path(self.dir) / f"{self.prefix}_meta.json"

    @property
    def is_default_dir(self) -> bool:
        # Only the default folder may be filled by the simulator: a typo in an explicit path must fail.
        return Path(self.dir) == Path(DEFAULT_DATA_DIR)

    @property
    def is_simulator_prefix(self) -> bool:
        """Whether the file names are the simulator's (only then is "run the simulator" a useful hint)."""
        return self.prefix == DEFAULT_PREFIX


class ModelConfig(_Section):
    """The network: encoder and widths (presets for other encoders: configs/model/)."""

    encoder: Literal["gru", "transformer", "kalman"] = Field(
        "gru",
        description="gru: bidirectional GRU, the learned analogue of the exact filter and smoother | "
        "transformer: ALINE's encoder (hour embedding + attention) | kalman: a learned Kalman filter + RTS "
        "smoother, the exact posterior's form.",
    )
    measurements: list[str] = Field(
        default_factory=lambda: list(DEFAULT_MEASUREMENTS),
        description="kalman only: the features that are noisy readings of the latent state (sensors, diary "
        "scores); the others drive it. Left at the default it shrinks to the features the data has.",
    )
    d_model: int = Field(
        128,
        ge=4,
        le=4096,
        description="Encoder width (gru, and kalman's input GRU: each direction gets half, so even).",
    )
    heads: int = Field(4, ge=1, le=64, description="transformer only: attention heads; must divide d_model.")
    layers: int = Field(
        1,
        ge=1,
        le=48,
        description="Encoder layers (stacked GRUs, or transformer blocks); one GRU layer: docs/results.md.",
    )
    ff_dim: int = Field(256, ge=4, description="transformer only: feed-forward width inside each block.")
    dropout: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Dropout between encoder layers (gru: needs layers >= 2, else an error).",
    )

    @model_validator(mode="after")
    def _width_fits_encoder(self) -> ModelConfig:
        if self.encoder == "transformer" and self.d_model % self.heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by heads ({self.heads})")
        if self.encoder == "gru" and self.d_model % 2:
            raise ValueError(f"d_model ({self.d_model}) must be even: each GRU direction gets half")
        if self.encoder == "gru" and self.dropout > 0 and self.layers < 2:
            # torch's GRU applies dropout only between its layers: with one it would silently do nothing.
            raise ValueError(
                f"dropout ({self.dropout}) acts between GRU layers and does nothing with layers=1: "
                "set layers >= 2 or dropout=0"
            )
        return self


class OptimConfig(_Section):
    """AdamW and the moving average of the weights."""

    lr: float = Field(5e-3, gt=0.0, le=10.0, description="Peak learning rate (docs/results.md).")
    weight_decay: float = Field(1e-4, ge=0.0, description="AdamW weight decay (not on the prediction head).")
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam moment decay rates, each in [0, 1).")
    grad_clip: float | None = Field(
        1.0, gt=0.0, description="Largest global gradient L2 norm; null disables clipping."
    )
    head_lr_mult: float = Field(
        20.0,
        gt=0.0,
        description="lr multiplier for the prediction head w, b: five numbers fitted to noisy labels, which "
        "need far larger steps than the encoder to be calibrated.",
    )
    ema_momentum: float | None = Field(
        0.02,
        gt=0.0,
        lt=1.0,
        description="Validation, checkpoints and predictions use an exponential moving average of the "
        "weights, updated each step by this share (the plain mean of the steps so far until "
        "1/ema_momentum steps): at a high lr the raw weights' forecast wanders from step to step "
        "(docs/results.md). null: the raw weights.",
    )

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, betas: tuple[float, float]) -> tuple[float, float]:
        # torch.optim.AdamW checks this only when it is built, inside the run: a failure there exits 1.
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError("each beta must be in [0, 1)")
        return betas


class SchedConfig(_Section):
    """The learning-rate schedule."""

    name: Literal["cosine", "step", "plateau", "none"] = Field(
        "cosine",
        description="cosine (linear warmup, then cosine decay, per iteration) | step | plateau | none.",
    )
    warmup_epochs: float = Field(
        1.0, ge=0.0, description="cosine: linear warmup length in epochs (fractions allowed)."
    )
    min_lr_ratio: float = Field(0.02, ge=0.0, le=1.0, description="cosine: final lr = lr * min_lr_ratio.")
    step_epochs: int = Field(10, ge=1, description="step: multiply the lr by gamma every step_epochs epochs.")
    gamma: float = Field(0.5, gt=0.0, le=1.0, description="step and plateau: the lr factor.")
    plateau_patience: int = Field(
        2,
        ge=0,
        description="plateau: validation epochs without improvement of early_stop.metric before the lr "
        "drops.",
    )


class TrainerConfig(_Section):
    """Epochs, batches and logging cadence."""

    init_from: str | None = Field(
        None,
        description="A run folder whose best weights and normaliser start this run (fine-tuning); its "
        "features must equal data.columns.features (CLI: --init-from RUN_DIR).",
    )
    epochs: int = Field(
        8, ge=1, description="Maximum epochs (--resume RUN trainer.epochs=N extends a finished run)."
    )
    batch_size: int = Field(
        64,
        ge=1,
        description="Training windows per step and process; small batches give more optimizer steps "
        "(docs/results.md).",
    )
    eval_batch_size: int = Field(1024, ge=1, description="Validation windows per step.")
    log_every: int = Field(
        20, ge=1, description="Write a train row to metrics.csv every N iterations (and at each epoch end)."
    )


PosteriorLoss = Literal["auto", "mse", "nll", "none"]


class LossConfig(_Section):
    """loss = L_post + alpha * L_policy + beta * L_bce (docs/design.md, "The losses")."""

    posterior: PosteriorLoss = Field(
        "auto",
        description="L_post. mse: MSE(mu_z, mean target) + lam * MSE(sigma_z, sigma*) | nll: MSE(mu_z, z) + "
        "lam * Gaussian NLL of z under sigma_z with the mean held fixed, which calibrates sigma_z with no "
        "target | none: labels only | auto: mse with the posterior-std columns, nll with latents only, "
        "none without latents. The run's config.yaml records the choice.",
    )
    lam: float = Field(1.0, ge=0.0, description="λ: weight of the sigma term inside L_post")
    alpha: float = Field(0.1, ge=0.0, description="α: weight of the policy loss")
    beta: float = Field(1.0, ge=0.0, description="β: weight of the next-day BCE")
    sigma_target: Literal["posterior", "constant"] = Field(
        "posterior",
        description="sigma* of posterior=mse: posterior (the data's posterior std) | constant.",
    )
    sigma_constant: float = Field(
        0.5,
        gt=0.0,
        description="sigma* when sigma_target=constant (sigma_z then means nothing: prefer nll).",
    )
    mean_target: Literal["auto", "truth", "posterior"] = Field(
        "auto",
        description="What mu_z fits under posterior=mse on the day as logged. truth: z itself | posterior: "
        "the exact posterior mean (post_mean_*), which has the same minimiser without the truth's scatter "
        "around it (Rao-Blackwellisation; docs/results.md) | auto: posterior when the data has it. The "
        "answer pass and val post_mse always use the truth.",
    )
    readings: Annotated[float, Field(ge=0.0)] | Literal["auto"] = Field(
        "auto",
        description="Weight of the readings' own negative log-likelihood (per possible reading) in L_post, "
        "for model.encoder=kalman, whose filter gives it: fitting the state-space model to the sensors, "
        "diary and answers teaches it how reliable each reading is with no latent truth | auto: 1 when the "
        "posterior loss is none (labels only), else 0. Other encoders have no such likelihood.",
    )
    bce_into_encoder: bool | Literal["auto"] = Field(
        "auto",
        description="false: labels train only the prediction head w, b (mu_z read through a stop-gradient, "
        "so the encoder cannot memorise noisy labels) | true: the BCE gradient flows into the encoder | "
        "auto: true only when the posterior loss is none.",
    )


class PolicyConfig(_Section):
    """The asking policy and the loop that trains it (docs/design.md, "The asking loop")."""

    k: int = Field(
        3, ge=1, le=24, description="Hours the policy asks about per day, drawn from the question pool only."
    )
    reward: Literal["auto", "uncertainty", "query_value", "info_gain", "label_gain"] = Field(
        "auto",
        description="query_value: the simulator's exact cut in Var(w.z_23) | info_gain: ALINE's, the "
        "model's own gain on the latent truth from the sampled answers | label_gain: how much the answers "
        "raise the model's log-likelihood of the observed next-day label (no oracle, no latent truth) | "
        "uncertainty: entropy(p_t) + 0.1 * mean sigma_z,t | auto: query_value if the training data has "
        "that column; else, with answers, info_gain if it has the latent truth and label_gain if not; "
        "else uncertainty.",
    )
    info_gain: Literal["auto", "variance", "logprob"] = Field(
        "auto",
        description="info_gain estimator. logprob: ALINE's, log q1(truth) - log q0(truth) of the forecast's "
        "w.z_23 | variance: 0.5 log of the model's forecast variance before / after | auto: logprob when "
        "the training data has the latent truth, else variance.",
    )
    label_gain: Literal["auto", "observed", "expected"] = Field(
        "auto",
        description="label_gain estimator. observed: log p1(y) - log p0(y) at the window's own label | "
        "expected: its mean over y under the forecast after the answers, KL(p1 || p0), the model's expected "
        "information gain on the label: no label noise, the same expectation when that forecast is "
        "calibrated | auto: expected when loss.readings fits the kalman encoder to its readings (which is "
        "what calibrates how far an answer moves the forecast), else observed.",
    )
    samples: int = Field(
        4, ge=1, le=64, description="Gumbel-top-k samples per window for the score-function estimator."
    )
    baseline: Literal["loo", "batch_mean", "none"] = Field(
        "loo", description="loo (leave-one-out over the samples) | batch_mean | none."
    )
    train_encoder: bool = Field(False, description="false: the policy gradient trains only the policy head.")
    unaskable_when: list[str] = Field(
        default_factory=lambda: list(DEFAULT_UNASKABLE_WHEN),
        description="0/1 features under which an hour cannot be asked: an hour is askable when its "
        "asked-feature cell is empty and each of these is 0, whatever an answer column holds (answers at "
        "other hours are dropped with a warning).",
    )
    random_reveal: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="Share of training windows whose answer pass reveals k random pool hours instead of "
        "the policy's draw (teaches the posterior what any answer does).",
    )
    gain_windows: int = Field(
        128,
        ge=0,
        description="Validation windows (lowest indices) whose one-answer gains give gain_spearman (24 "
        "extra no-grad passes each); 0 disables it.",
    )

    @model_validator(mode="after")
    def _loo_needs_two_samples(self) -> PolicyConfig:
        if self.baseline == "loo" and self.samples < 2:
            raise ValueError("baseline 'loo' averages the other samples of a window: it needs samples >= 2")
        return self


def _known_metric(name: str) -> str:
    from aline.contract import VAL_METRICS

    if name not in VAL_METRICS:
        raise ValueError(f"unknown metric {name!r}; choose one of {', '.join(VAL_METRICS)}")
    return name


# The validation total loss (L_post + α·L_policy + β·L_bce) serves both heads that have a target, where
# val AUC can stop a run while the posterior is still improving (docs/results.md).
DEFAULT_SELECTION_METRIC = "loss"


class EarlyStopConfig(_Section):
    """Early stopping on a validation metric."""

    metric: str = Field(
        DEFAULT_SELECTION_METRIC,
        description="Validation metric watched (any metrics.csv val column; its direction is known). loss, "
        "the val total, serves forecast and posterior alike (docs/results.md).",
    )
    patience: int | None = Field(
        5, ge=1, description="Epochs without improvement before stopping; null disables early stopping."
    )
    min_delta: float = Field(0.0, ge=0.0, description="Smallest change that counts as an improvement.")

    _metric = field_validator("metric")(_known_metric)


class CheckpointConfig(_Section):
    """The best checkpoint(s); last.pt is always kept as well."""

    metric: str = Field(
        DEFAULT_SELECTION_METRIC,
        description="Validation metric that selects the best checkpoint (see early_stop.metric).",
    )
    n_saved: int = Field(1, ge=1, description="Best checkpoints kept.")

    _metric = field_validator("metric")(_known_metric)


class LoggingConfig(_Section):
    """Console and Weights & Biases logging."""

    wandb: bool = Field(False, description="Also log to Weights & Biases (pip install 'aline[wandb]').")
    wandb_project: str = Field("aline", description="W&B project name.")
    wandb_mode: Literal["online", "offline", "disabled"] = Field(
        "offline", description="offline works without network; `wandb sync` uploads later."
    )
    progress: bool = Field(
        True, description="Progress on the console (a bar on a terminal, lines elsewhere)."
    )


class DistConfig(_Section):
    """Several processes (docs/design.md, "Several processes")."""

    nproc_per_node: int = Field(
        1,
        ge=1,
        le=64,
        description="> 1 starts that many processes on this machine (gloo on CPU, nccl on GPU); under "
        "torchrun leave it at 1.",
    )
    backend: Literal["gloo", "nccl"] | None = Field(
        None, description="null: no process group for one process | gloo | nccl."
    )
    start_method: Literal["auto", "spawn", "fork"] = Field(
        "auto",
        description="How nproc_per_node > 1 starts its ranks. fork: rank 0 in this process, the others "
        "forked from it, sharing its memory; safe only before any multi-threaded torch operation | spawn: "
        "fresh interpreters | auto: fork CPU ranks on Linux under `python -m aline.train`, spawn when "
        "train() is called from Python. Each of N ranks gets 1/N of the threads unless OMP_NUM_THREADS is "
        "set.",
    )


class RunConfig(_Section):
    """Where runs are written."""

    dir: str = Field("runs", description="Runs root; each run writes <dir>/<UTC yyyymmdd-HHMMSS>-<name>/.")
    name: str = Field(
        "aline",
        min_length=1,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="Run name suffix (letters, digits, . _ -).",
    )


class Config(_Section):
    """The whole training configuration."""

    seed: int = Field(
        0,
        ge=0,
        description="Seeds data order, initialisation and policy sampling (same seed, same run on CPU).",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto (cuda if available, else cpu) | cpu | cuda."
    )
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    sched: SchedConfig = Field(default_factory=SchedConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    early_stop: EarlyStopConfig = Field(default_factory=EarlyStopConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    dist: DistConfig = Field(default_factory=DistConfig)
    run: RunConfig = Field(default_factory=RunConfig)

    @model_validator(mode="after")
    def _defaults_follow_features(self) -> Config:
        # The built-in question (the simulator's symptom score, asleep/busy) and measurement list only apply
        # to data that has those features: left at their defaults they shrink to what the feature list
        # holds, so a cohort config naming its own features needs none of these keys. Values the user set
        # must fit exactly.
        cols, policy = self.data.columns, self.policy
        feats = set(cols.features)
        if "answers" not in cols.model_fields_set and cols.answers:
            kept = {f: a for f, a in cols.answers.items() if f in feats}
            if kept != cols.answers:
                cols.answers = kept or None
        model = self.model
        if model.measurements == list(DEFAULT_MEASUREMENTS):  # the default, whether or not written out
            kept_meas = [f for f in model.measurements if f in feats]
            if kept_meas != model.measurements:
                model.measurements = kept_meas
        if "unaskable_when" not in policy.model_fields_set:
            kept_flags = [f for f in policy.unaskable_when if f in feats]
            if kept_flags != policy.unaskable_when:
                policy.unaskable_when = kept_flags
        problems = [
            f"data.columns.answers: {name!r} is not in data.columns.features "
            "(data.columns.answers=null if your data has no question to ask)"
            for name in (cols.answers or {})
            if name not in feats
        ]
        problems += [
            f"policy.unaskable_when: {name!r} is not in data.columns.features "
            "(list only 0/1 feature columns, or [] if every hour can be asked)"
            for name in policy.unaskable_when
            if name not in feats
        ]
        problems += [
            f"model.measurements: {name!r} is not in data.columns.features (list the features that are "
            "noisy readings of the latent state: sensors, diary scores)"
            for name in model.measurements
            if name not in feats and model.encoder == "kalman"
        ]
        if model.encoder == "kalman" and not model.measurements:
            problems.append("model.measurements: the kalman encoder needs at least one measurement feature")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# --- loading ------------------------------------------------------------------------------------------


def load_config(
    path: str | Path | list[str | Path] | tuple[str | Path, ...] | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> Config:
    """Load ``path`` (YAML; built-in defaults when None), apply overrides, validate everything at once.

    ``path`` may be several files, applied in order: a later file's keys override an earlier one's (an
    encoder preset from ``configs/model/`` on top of a cohort's config). Overrides win over every file.
    """
    paths = [] if path is None else [path] if isinstance(path, (str, Path)) else list(path)
    return _validated([(read_yaml_file(one), str(one)) for one in paths], overrides)


def load_config_text(
    text: str | None, path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()
) -> Config:
    """:func:`load_config` of YAML text already read from ``path`` (None: the built-in defaults)."""
    trees = [] if text is None else [(yaml_tree(text, path), str(path))]
    return _validated(trees, overrides)


def _validated(trees: list[tuple[dict[str, Any], str]], overrides: list[str] | tuple[str, ...]) -> Config:
    raw: dict[str, Any] = {}
    files: dict[tuple[str, ...], str] = {}  # key path -> the file that set it last
    for tree, source in trees:
        raw = merge(raw, tree)
        files.update((key, source) for key in key_paths(tree))
    source = ", ".join(src for _, src in trees) or "defaults"
    overrides = list(overrides)
    raw = merge(raw, parse_overrides(overrides))
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        message = format_validation_error(err, source, override_keys(overrides), Config, files)
        raise ConfigError(message) from None
