"""Typed training configuration: YAML file + ``key=value`` overrides, validated all at once.

``load_config`` is the only entry point the CLI needs. Every problem (unknown key, wrong type, value out of
range) is collected into one :class:`ConfigError` before any work starts, so a user fixes a config in one go.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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


class ConfigError(ValueError):
    """Invalid configuration; ``str(err)`` lists every problem, one per line."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ColumnsConfig(_Section):
    """Which CSV columns play which role; defaults match ``python -m aline.simulate``.

    Optional roles (subject id, latents, posterior std/mean, query value, p_bayes, p_true) are read when
    the CSV has them. A column name that the user chose (any value other than the built-in default) must
    exist, so a typo is an error rather than a silently absent role; ``null`` leaves a role out.
    """

    window_id: str = "window_id"
    hour: str = "hour"
    label: str = "y_next"
    subject_id: str | None = "subject_id"
    features: list[str] = Field(default_factory=lambda: list(DEFAULT_FEATURES), min_length=1)
    # Latent names: the dimensions of the model's posterior. Their target columns <latent_prefix><name>
    # are optional: without them (or with latent_prefix null) the run trains on the labels alone.
    latents: list[str] = Field(default_factory=lambda: list(DEFAULT_LATENTS), min_length=1)
    latent_prefix: str | None = "z_"
    post_mean_prefix: str | None = "post_mean_"
    # Column prefix of the per-hour posterior std used as sigma target; null when the CSV has none.
    sigma_prefix: str | None = "post_std_"
    query_value: str | None = "query_value"
    p_bayes: str | None = "p_bayes"
    p_true: str | None = "p_true"
    # Asked feature -> column with the answer the patient would give at each hour (empty where the hour
    # cannot be asked). Null or empty: no question can be asked, so no closed loop.
    answers: dict[str, str] | None = Field(default_factory=lambda: dict(DEFAULT_ANSWERS))

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
    dir: str = DEFAULT_DATA_DIR
    prefix: str = DEFAULT_PREFIX
    columns: ColumnsConfig = Field(default_factory=ColumnsConfig)

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
    encoder: Literal["gru", "transformer", "kalman"] = "gru"
    # kalman only: the features that are noisy readings of the latent state (sensors, diary scores); the
    # other features drive it. Left at the default it shrinks to the names data.columns.features holds.
    measurements: list[str] = Field(default_factory=lambda: list(DEFAULT_MEASUREMENTS))
    d_model: int = Field(128, ge=4, le=4096)
    heads: int = Field(4, ge=1, le=64)
    # One GRU layer (measured at optim.lr=5e-3): 9-13 s epochs against 16-20 s for two, the same forecast,
    # and every quality target met in 0.64x the time over 3 seeds (README "Time to quality").
    layers: int = Field(1, ge=1, le=48)
    ff_dim: int = Field(256, ge=4)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)

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
    # 5e-3: with the subject's usual caffeine as an input, every quality target falls at epochs 2-3 either
    # way, and 5e-3 ended nearer the Bayes forecast than 6e-3 (seed 2: val AUC 0.997x against 0.995x). The
    # one-layer GRU at 3e-3 left its one-answer gain ranking hours far worse (oracle-free Spearman
    # 0.23-0.34 against 0.50-0.61) for the same forecast (README "Results").
    lr: float = Field(5e-3, gt=0.0, le=10.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float | None = Field(1.0, gt=0.0)
    # The prediction head (w, b: five numbers fitted to noisy labels) needs far larger steps than the
    # encoder; with the shared lr it was still far from calibrated after the encoder had converged.
    head_lr_mult: float = Field(20.0, gt=0.0)
    # Validation, checkpoints and predictions use an exponential moving average of the weights: at a high
    # lr the raw weights' forecast wanders from step to step (val AUC 0.981-0.984x Bayes at epochs 4-5 at
    # lr 5e-3, then 0.991x once the lr had decayed); the average met every quality target at epochs 5, 4,
    # 5 instead of 6, 6, 6 (README "Time to quality", before usual_caffeine_mg). None: the raw weights.
    ema_momentum: float | None = Field(0.02, gt=0.0, lt=1.0)

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, betas: tuple[float, float]) -> tuple[float, float]:
        # torch.optim.AdamW checks this only when it is built, inside the run: a failure there exits 1.
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError("each beta must be in [0, 1)")
        return betas


class SchedConfig(_Section):
    name: Literal["cosine", "step", "plateau", "none"] = "cosine"
    warmup_epochs: float = Field(1.0, ge=0.0)
    min_lr_ratio: float = Field(0.02, ge=0.0, le=1.0)
    step_epochs: int = Field(10, ge=1)
    gamma: float = Field(0.5, gt=0.0, le=1.0)
    plateau_patience: int = Field(2, ge=0)


class TrainerConfig(_Section):
    # A run folder whose weights and normaliser start this run (fine-tuning); its features must match.
    init_from: str | None = None
    epochs: int = Field(8, ge=1)
    # 64, not 256: on 2 CPU cores an epoch costs only a little more (about 30 s against 22 s) for four
    # times the optimizer steps, which brought post_mse from 1.09x to 1.04x the floor (README "Results").
    batch_size: int = Field(64, ge=1)
    eval_batch_size: int = Field(1024, ge=1)
    log_every: int = Field(20, ge=1)


PosteriorLoss = Literal["auto", "mse", "nll", "none"]


class LossConfig(_Section):
    # auto: mse (with the posterior-std columns as sigma target) when the CSV has them, nll (MSE of the
    # mean + Gaussian NLL of sigma) when it has latents but no posterior std, none when it has no latents
    # (labels only). The trainer writes the resolved choice into the run's config.yaml.
    posterior: PosteriorLoss = "auto"
    lam: float = Field(1.0, ge=0.0, description="λ: weight of the sigma term inside L_post")
    alpha: float = Field(0.1, ge=0.0, description="α: weight of the policy loss")
    beta: float = Field(1.0, ge=0.0, description="β: weight of the next-day BCE")
    sigma_target: Literal["posterior", "constant"] = "posterior"
    sigma_constant: float = Field(0.5, gt=0.0)
    # What the mean learns from under loss.posterior=mse, on the day as logged. truth: the latent state
    # itself. posterior: the exact posterior mean (the post_mean_ columns), which has the same minimiser
    # (the truth's mean given the inputs) without the truth's scatter around it, most of each step's
    # gradient noise (Rao-Blackwellisation). Val, 3 seeds: AUC 0.990-0.992x Bayes against 0.987-0.990x,
    # post_mse 1.012-1.019x the floor against 1.032-1.040x. auto: posterior when the data has those
    # columns. The answer pass always learns from the truth (no column holds the posterior after answers),
    # and validation's post_mse is always measured against the truth.
    mean_target: Literal["auto", "truth", "posterior"] = "auto"
    # auto: false with latent targets (labels train only w, b), true without (labels are all there is).
    bce_into_encoder: bool | Literal["auto"] = "auto"


class PolicyConfig(_Section):
    k: int = Field(3, ge=1, le=24)
    # auto: query_value when the data has that column, else info_gain when it has answers, else uncertainty.
    reward: Literal["auto", "uncertainty", "query_value", "info_gain"] = "auto"
    # auto: logprob when the training data has the latent truth (ALINE's own estimator), else variance.
    info_gain: Literal["auto", "variance", "logprob"] = "auto"
    samples: int = Field(4, ge=1, le=64)
    baseline: Literal["loo", "batch_mean", "none"] = "loo"
    train_encoder: bool = False
    # An hour is askable when its asked-feature cell is empty and every feature listed here is 0.
    unaskable_when: list[str] = Field(default_factory=lambda: list(DEFAULT_UNASKABLE_WHEN))
    random_reveal: float = Field(0.5, ge=0.0, le=1.0)
    gain_windows: int = Field(128, ge=0)

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


# The validation total loss (L_post + α·L_policy + β·L_bce) serves both heads that have a target: val AUC
# plateaued and stopped runs while the posterior was still improving (benchmarks/bench_real_data.py).
DEFAULT_SELECTION_METRIC = "loss"


class EarlyStopConfig(_Section):
    metric: str = DEFAULT_SELECTION_METRIC
    patience: int | None = Field(5, ge=1)
    min_delta: float = Field(0.0, ge=0.0)

    _metric = field_validator("metric")(_known_metric)


class CheckpointConfig(_Section):
    metric: str = DEFAULT_SELECTION_METRIC
    n_saved: int = Field(1, ge=1)

    _metric = field_validator("metric")(_known_metric)


class LoggingConfig(_Section):
    wandb: bool = False
    wandb_project: str = "aline"
    wandb_mode: Literal["online", "offline", "disabled"] = "offline"
    progress: bool = True


class DistConfig(_Section):
    nproc_per_node: int = Field(1, ge=1, le=64)
    backend: Literal["gloo", "nccl"] | None = None
    start_method: Literal["auto", "spawn", "fork"] = "auto"


class RunConfig(_Section):
    dir: str = "runs"
    name: str = Field("aline", min_length=1, pattern=r"^[A-Za-z0-9._-]+$")


class Config(_Section):
    seed: int = Field(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
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


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Turn ``["optim.lr=3e-4", "policy.k=5"]`` into a nested dict; values are parsed as YAML scalars."""
    tree: dict[str, Any] = {}
    problems = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            problems.append(f"override {item!r}: expected key=value, e.g. optim.lr=3e-4")
            continue
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                problems.append(f"override {item!r}: {part!r} is a value, not a section")
                break
        else:
            node[leaf] = value
    if problems:
        raise ConfigError("\n".join(problems))
    return tree


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _override_keys(overrides: list[str]) -> dict[tuple[str, ...], str]:
    """Dotted key path → the override text that set it, so errors can name the override, not the file."""
    out = {}
    for item in overrides:
        key, sep, _ = item.partition("=")
        if sep and key:
            out[tuple(key.split("."))] = item
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load ``path`` (YAML; built-in defaults when None), apply overrides, validate everything at once."""
    text = None
    if path is not None:
        try:
            data = Path(path).read_bytes()
        except OSError as err:
            raise ConfigError(f"config file {path}: cannot read it ({err.strerror or err})") from None
        text = config_text(data, path)
    return load_config_text(text, path, overrides)


def config_text(data: bytes, path: str | Path) -> str:
    """The UTF-8 text of a config file's bytes, or a ConfigError naming the line that is not."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ConfigError(
            f"config file {path}: line {line}: not UTF-8 text ({err.reason} at byte {err.start}); "
            "save it as UTF-8"
        ) from None


def load_config_text(
    text: str | None, path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()
) -> Config:
    """:func:`load_config` of YAML text already read from ``path`` (None: the built-in defaults)."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if text is not None:
        source = str(path)
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path}: not valid YAML ({err})") from None
        except RecursionError:
            raise ConfigError(f"config file {path}: not usable YAML (nested too deeply)") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {path}: the top level must be a mapping of sections")
    overrides = list(overrides)
    raw = _merge(raw, parse_overrides(overrides))
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source, _override_keys(overrides))) from None


def format_validation_error(
    err: ValidationError, source: str, overrides: dict[tuple[str, ...], str] | None = None
) -> str:
    """One line per problem; a problem whose key (or a section above it) was set on the command line
    names that override, the others name ``source`` (the YAML file, or the defaults)."""
    overrides = overrides or {}
    lines = [f"invalid config: {err.error_count()} problem(s)"]
    for e in err.errors():
        loc = tuple(str(p) for p in e["loc"])
        key = ".".join(loc)
        origin = _origin(loc, overrides, source)
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key{_did_you_mean(e['loc'])} (from {origin})")
            continue
        got = e.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"  {key or '<top>'}: {msg}{shown} (from {origin})")
    return "\n".join(lines)


def _origin(loc: tuple[str, ...], overrides: dict[tuple[str, ...], str], source: str) -> str:
    # The key itself or a section above it set on the command line; for a check over a whole section
    # (loc = the section), the overrides inside it.
    for n in range(len(loc), 0, -1):
        if loc[:n] in overrides:
            return f"override {overrides[loc[:n]]!r}"
    inside = [text for key, text in overrides.items() if loc and key[: len(loc)] == loc]
    if inside:
        return "override " + ", ".join(map(repr, inside))
    return source if source == "defaults" else f"config file {source}"


def _did_you_mean(loc: tuple[Any, ...]) -> str:
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return ""
        model = ann
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1, cutoff=0.6)
    return f"; did you mean {'.'.join(map(str, loc[:-1] + (close[0],)))!r}?" if close else ""
