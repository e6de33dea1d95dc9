"""The three splits read together: every problem of every file at once, and what the splits share."""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterable

import numpy as np

from aline.config import SPLITS, DataConfig
from aline.data.errors import DataError, fmt_value, is_parquet
from aline.data.read import RawSplit, read_split

_OPTIONAL = ("z", "sigma", "post_mean", "query_value", "p_bayes", "p_true", "subject_id", "answers")
_OPTIONAL_NAMES = {"z": "latents", "sigma": "posterior std", "post_mean": "posterior mean"}
# The columns that only a simulator can write, by role: references to score a run by, never a cohort's
# data. They may be in val and test without being in train (they score a run trained without them), never
# the other way: validation would lack what training used.
REFERENCE_ROLES = {
    "sigma": "posterior std",
    "post_mean": "posterior mean",
    "query_value": "query value",
    "p_bayes": "p_bayes",
    "p_true": "p_true",
}


def reference_roles(raw: RawSplit) -> list[str]:
    """The reference columns (by role name) that ``raw`` carries."""
    return [what for role, what in REFERENCE_ROLES.items() if getattr(raw, role) is not None]


def without_references(raw: RawSplit) -> RawSplit:
    """``raw`` with every reference column left out."""
    import dataclasses

    return dataclasses.replace(raw, **dict.fromkeys(REFERENCE_ROLES))


# How many shared ids a split-overlap message quotes.
_SHOWN_IDS = 5


def load_splits(data: DataConfig, splits: Iterable[str] = SPLITS) -> dict[str, RawSplit]:
    """Read and validate the named splits of ``data.dir`` (each a ``.parquet`` or a ``.csv``) with targets,
    and check them together.

    Every split is read even when an earlier one is bad, and every problem found is raised as one
    :class:`DataError` (one paragraph per problem): per file, its first problem; across files, that they
    carry the same optional columns (val and test may carry reference columns that train lacks), that no
    window id (nor subject id, where the files have one) is in
    two splits, and that no feature is empty in the whole train split.
    """
    splits = list(splits)
    paths = {s: data.split_path(s) for s in splits}
    both = [p for p in paths.values() if is_parquet(p) and p.with_suffix(".csv").is_file()]
    if both:
        # Which of the two is current cannot be told from the files; refuse rather than guess.
        raise DataError(
            f"data folder {data.dir}: both {both[0].with_suffix('.csv').name} and {both[0].name} exist; "
            "keep one format per split (remove or move the other file)"
        )
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise DataError(f"data folder {data.dir}: missing file(s) {', '.join(missing)}")
    out: dict[str, RawSplit] = {}
    problems: list[str] = []
    for s, p in paths.items():
        try:
            out[s] = read_split(p, data.columns, require_targets=True)
        except DataError as err:
            problems.append(str(err))
    if len(out) == len(splits):
        problems += _cross_split_problems(out)
    if "train" in out:
        problems += feature_report(out["train"])[0]
    if problems:
        raise DataError("\n".join(problems) if len(problems) == 1 else _numbered(problems))
    return_freed_memory()
    return out


def return_freed_memory() -> None:
    """Hand freed buffers back to the system. glibc keeps freed heap pages for reuse, which a process holds
    until training happens to reuse them, and which forked ranks would share as dead weight."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc (macOS, musl): no malloc_trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _numbered(problems: list[str]) -> str:
    return f"{len(problems)} data problems:\n" + "\n".join(f"  {i}. {p}" for i, p in enumerate(problems, 1))


def _cross_split_problems(out: dict[str, RawSplit]) -> list[str]:
    problems = []
    names = list(out)
    first = names[0]
    have = {s: {k for k in _OPTIONAL if getattr(raw, k) is not None} for s, raw in out.items()}
    for s in names[1:]:
        differ = have[s] ^ have[first]
        if first == "train":
            differ -= REFERENCE_ROLES.keys() & (have[s] - have[first])  # scoring-only references: allowed
        if differ:
            diff = ", ".join(_OPTIONAL_NAMES.get(k, k) for k in sorted(differ))
            problems.append(
                f"{out[s].path}: carries a different set of optional columns than {out[first].path} "
                f"(differs in: {diff}); all splits must have the same columns, except that val and test "
                "may add reference columns (posterior std and mean, query_value, p_bayes, p_true) for "
                "scoring a run trained without them"
            )
    for attr, what in (("window_id", "window id"), ("subject_id", "subject id")):
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                ids_a, ids_b = getattr(out[a], attr), getattr(out[b], attr)
                if ids_a is None or ids_b is None:
                    continue
                # Python sets: much faster than sorting both id arrays as text.
                shared = sorted(set(map(str, ids_a)).intersection(map(str, ids_b)))
                if len(shared):
                    shown = ", ".join(repr(str(v)) for v in shared[:_SHOWN_IDS])
                    more = f" ({len(shared)} in all)" if len(shared) > _SHOWN_IDS else ""
                    problems.append(
                        f"{out[a].path} and {out[b].path}: the splits share {what}(s) {shown}{more}; "
                        f"a {what} may be in one split only (the {b} figures would be measured on "
                        "data the model saw)"
                    )
    return problems


def feature_report(train: RawSplit) -> tuple[list[str], list[str]]:
    """``(errors, warnings)`` about the train split's features: a feature with no value at all is an error
    (the model could not learn what it means); a constant one a warning (it carries nothing)."""
    n, hours, f = train.features.shape
    rows = train.features.reshape(n, hours * f)  # [N, 24*F]: one window per row, so each reduction
    # step covers a whole window rather than a few values.
    # fmin/fmax skip NaN, giving NaN only where a column has no value at all, without selecting each
    # column's observed values first.
    lo = np.fmin.reduce(np.fmin.reduce(rows, axis=0).reshape(hours, f), axis=0)  # [F]
    hi = np.fmax.reduce(np.fmax.reduce(rows, axis=0).reshape(hours, f), axis=0)  # [F]
    errors, warnings = [], []
    for j, name in enumerate(train.feature_names):
        if np.isnan(lo[j]):
            errors.append(
                f"{train.path}: feature column {name!r} has no value in the whole train split; drop it "
                "from data.columns.features or fill it"
            )
        elif lo[j] == hi[j]:
            warnings.append(
                f"{train.path}: feature column {name!r} is constant ({fmt_value(lo[j])}) in the train "
                "split; it carries no information (its missing-mask may still)"
            )
    return errors, warnings
