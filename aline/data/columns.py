"""Which columns to read, and in which role: the header checked against the column mapping."""

from __future__ import annotations

import csv
import difflib
from dataclasses import dataclass
from pathlib import Path

from aline.config import ColumnsConfig
from aline.data.errors import DataError, is_parquet

# A column only the simulator's files have, and the default features an earlier aline.simulate did not
# write: a file with the first and without some of the second was written by an earlier simulator.
SIMULATOR_MARK = "p_bayes"
ADDED_TO_SIMULATOR = frozenset({"usual_caffeine_mg"})


def read_header(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if is_parquet(path):
        from aline.data.parquet_input import parquet_header  # imports this module: load it lazily

        return parquet_header(path)
    with path.open("rb") as fh:
        raw = fh.readline()
    # The first line ends at \n, \r\n or a lone \r (a file saved with old Mac line ends is one long
    # "line" to readline).
    raw = raw.split(b"\r", 1)[0] if b"\r" in raw else raw
    try:
        first = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: line 1: not UTF-8 text ({err.reason} at byte {err.start})") from None
    if not first.strip():
        raise DataError(f"{path}: the file is empty (expected a header line with column names)")
    # Names are kept exactly as written (pyarrow matches them so): " hour" is not "hour", and the
    # missing-column message then suggests the near miss.
    try:
        return next(csv.reader([first.rstrip("\r\n")]))
    except csv.Error as err:
        raise DataError(f"{path}: line 1: not a CSV header line ({err})") from None


@dataclass(frozen=True)
class ReadPlan:
    """Which columns to read, and of which role; derived from the header and the column mapping."""

    window_id: str
    hour: str
    features: list[str]
    subject_id: str | None = None
    latents: list[str] | None = None
    sigma: list[str] | None = None
    post_mean: list[str] | None = None
    label: str | None = None
    query_value: str | None = None
    p_bayes: str | None = None
    p_true: str | None = None
    answer: str | None = None  # the answer column of the closed loop (data.columns.answers)

    def text_columns(self) -> list[str]:
        """Columns read as text, exactly as written (ids)."""
        return [c for c in (self.window_id, self.subject_id) if c is not None]

    def columns(self) -> list[str]:
        out = [self.window_id, self.hour, *self.features]
        for group in (self.latents, self.sigma, self.post_mean):
            out += group or []
        singles = (self.label, self.query_value, self.p_bayes, self.p_true, self.subject_id, self.answer)
        out += [c for c in singles if c is not None]
        return out


# Optional roles: (role in ColumnsConfig.is_default_mapping, the config key a user sets, a description).
_OPTIONAL_ROLES = (
    ("subject_id", "data.columns.subject_id", "subject id"),
    ("latents", "data.columns.latent_prefix/latents", "latent"),
    ("sigma", "data.columns.sigma_prefix", "posterior std"),
    ("post_mean", "data.columns.post_mean_prefix", "posterior mean"),
    ("query_value", "data.columns.query_value", "query value"),
    ("p_bayes", "data.columns.p_bayes", "p_bayes"),
    ("p_true", "data.columns.p_true", "p_true"),
    ("answers", "data.columns.answers", "answer"),
)


def _role_columns(columns: ColumnsConfig, role: str) -> list[str] | None:
    if role == "latents":
        return columns.latent_columns()
    if role == "sigma":
        return columns.sigma_columns()
    if role == "post_mean":
        return columns.post_mean_columns()
    if role == "answers":
        return list((columns.answers or {}).values()) or None
    name = getattr(columns, role)
    return None if name is None else [name]


def _missing_text(names: list[str], header: list[str]) -> str:
    hints = []
    for name in names:
        close = difflib.get_close_matches(name, header, n=1, cutoff=0.75)
        hints.append(f"{name!r} (did you mean {close[0]!r}?)" if close else repr(name))
    return ", ".join(hints)


def _header_text(header: list[str]) -> str:
    more = " ..." if len(header) > 40 else ""
    return f"the header has {len(header)} columns: " + ", ".join(header[:40]) + more


def plan_columns(path: Path, header: list[str], columns: ColumnsConfig, require_targets: bool) -> ReadPlan:
    """Required: window id, hour, features (and the label when training). Optional roles are read when the
    CSV has them; a column name the user chose that is not in the header is an error (a typo must not
    silently drop a role), while the built-in simulator names may be absent. Prediction input
    (``require_targets=False``) reads only the id, hour and feature columns and ignores everything else."""
    present = set(header)
    wanted = [columns.window_id, columns.hour, *columns.features]
    if require_targets:
        wanted.append(columns.label)
    problems = []
    missing = [c for c in wanted if c not in present]
    if missing and SIMULATOR_MARK in present and set(missing) <= ADDED_TO_SIMULATOR:
        # The simulator's output of an earlier release (usual_caffeine_mg came later): say how to renew it,
        # rather than suggest a near-miss name.
        names = ", ".join(repr(c) for c in missing)
        again = f"python -m aline.simulate --out {path.parent}"
        problems.append(
            f"missing column(s) {names} (data from an earlier aline.simulate? simulate it again: {again})"
        )
    elif missing:
        problems.append(f"missing column(s) {_missing_text(missing, header)}")
    roles: dict[str, list[str] | None] = {}
    if require_targets:
        for role, key, what in _OPTIONAL_ROLES:
            names = _role_columns(columns, role)
            have = [c for c in (names or []) if c in present]
            if not names or (not have and columns.is_default_mapping(role)):
                roles[role] = None
            elif not have:
                problems.append(
                    f"{key} maps the {what} column(s) {_missing_text(names, header)}, which the file lacks "
                    f"(set {key.split('/')[0]}=null to leave them out)"
                )
            elif len(have) < len(names):
                # A group of per-latent columns is all-or-nothing: half of them is a broken file.
                lacking = ", ".join(repr(c) for c in names if c not in present)
                problems.append(f"{what} columns incomplete: has {have[0]!r} but is missing {lacking}")
            else:
                roles[role] = names
    if problems:
        raise DataError(f"{path}: " + "; ".join(problems) + "; " + _header_text(header))

    def single(role: str) -> str | None:
        names = roles.get(role)
        return names[0] if names else None

    plan = ReadPlan(
        window_id=columns.window_id,
        hour=columns.hour,
        features=list(columns.features),
        subject_id=single("subject_id"),
        latents=roles.get("latents"),
        sigma=roles.get("sigma"),
        post_mean=roles.get("post_mean"),
        label=columns.label if require_targets else None,
        query_value=single("query_value"),
        p_bayes=single("p_bayes"),
        p_true=single("p_true"),
        answer=single("answers"),
    )
    used = plan.columns()
    twice = sorted({c for c in used if header.count(c) > 1})
    if twice:
        raise DataError(
            f"{path}: column(s) {', '.join(map(repr, twice))} appear more than once in the header"
        )
    clash = sorted({c for c in used if used.count(c) > 1})
    if clash:
        raise DataError(f"{path}: the column mapping uses {', '.join(map(repr, clash))} for two roles")
    return plan
