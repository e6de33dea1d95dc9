"""Read-only view of a runs folder for the monitor: which runs exist, their status and their logged tables.

Nothing here writes to disk. Run names are checked so that a name from a URL or a symlink can never make
the monitor read outside the runs root. Each run keeps one ``TailedTable`` per CSV, so a refresh costs
only the bytes appended since the last one.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aline import contract as C
from aline.tail import TailedTable

DEFAULT_RUNS_DIR = "runs"
RUNS_ENV = "ALINE_RUNS"


def runs_root_from(argv: list[str], environ: dict[str, str] | os._Environ[str]) -> Path:
    """The runs folder: ``--runs DIR`` (or ``--runs=DIR``) beats ``$ALINE_RUNS`` beats ``runs``."""
    for i, arg in enumerate(argv):
        if arg == "--runs" and i + 1 < len(argv):
            return Path(argv[i + 1])
        if arg.startswith("--runs="):
            return Path(arg.split("=", 1)[1])
    return Path(environ.get(RUNS_ENV) or DEFAULT_RUNS_DIR)


def resolve_run(root: Path, name: str) -> Path:
    """The folder of run ``name`` inside ``root``; ``ValueError`` if the name leads anywhere else."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        raise ValueError(f"run name {name!r} is not a plain folder name inside the runs folder {root}")
    base = root.resolve()
    path = (base / name).resolve()
    if path.parent != base:
        raise ValueError(
            f"run {name!r} resolves to {path}, outside the runs folder {base}; refusing to read it"
        )
    return path


def list_runs(root: Path) -> list[str]:
    """Run folders under ``root`` (newest name first); symlinks leading outside ``root`` are left out."""
    if not root.is_dir():
        return []
    names = []
    for entry in root.iterdir():
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        try:
            resolve_run(root, entry.name)
        except ValueError:
            continue
        if any((entry / f).exists() for f in (C.STATUS_FILE, C.CONFIG_FILE, C.METRICS_FILE)):
            names.append(entry.name)
    # Run names start with a UTC timestamp, so reverse name order is newest first.
    return sorted(names, reverse=True)


@dataclass
class Status:
    """status.json as the monitor needs it; ``problem`` says why the file could not be used."""

    state: str | None = None
    started: str | None = None
    updated: str | None = None
    finished: str | None = None
    epoch: int | None = None
    iteration: int | None = None
    best: dict[str, Any] = field(default_factory=dict)
    oracle: dict[str, float] = field(default_factory=dict)
    reason: str | None = None
    pid: int | None = None
    problem: str | None = None


def read_status(run_dir: Path) -> Status:
    """Parse ``run_dir/status.json``; a missing, broken or odd file gives a ``Status`` with ``problem``."""
    path = run_dir / C.STATUS_FILE
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Status(problem=f"{path} is missing")
    except OSError as exc:
        return Status(problem=f"{path} cannot be read: {exc.strerror}")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        return Status(problem=f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})")
    if not isinstance(data, dict):
        return Status(problem=f"{path} holds a JSON {type(data).__name__}, not an object")
    state = data.get("state")
    problem = None
    if state not in C.STATES:
        problem = f"{path}: state {state!r} is not one of {', '.join(C.STATES)}"
    oracle = data.get("oracle") if isinstance(data.get("oracle"), dict) else {}
    best = data.get("best") if isinstance(data.get("best"), dict) else {}
    return Status(
        state=state if isinstance(state, str) else None,
        started=_str_or_none(data.get("started")),
        updated=_str_or_none(data.get("updated")),
        finished=_str_or_none(data.get("finished")),
        epoch=_int_or_none(data.get("epoch")),
        iteration=_int_or_none(data.get("iteration")),
        best=best,
        oracle={k: float(v) for k, v in oracle.items() if _is_number(v)},
        reason=_str_or_none(data.get("reason")),
        pid=_int_or_none(data.get("pid")),
        problem=problem,
    )


def _str_or_none(v: Any) -> str | None:
    return None if v is None else str(v)


def _int_or_none(v: Any) -> int | None:
    return int(v) if _is_number(v) else None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class RunData:
    """One run's status and tables, refreshed incrementally; the object lives across monitor refreshes."""

    def __init__(self, root: Path, name: str) -> None:
        self.name = name
        self.dir = resolve_run(root, name)
        self.metrics = TailedTable(self.dir / C.METRICS_FILE, text_columns=("split",))
        self.calibration = TailedTable(self.dir / C.CALIBRATION_FILE)
        self.topk = TailedTable(self.dir / C.TOPK_FILE)
        self.status = Status()
        self.errors: list[str] = []  # parse errors of this refresh, for the page to show

    def refresh(self) -> int:
        """Re-read status.json and the appended CSV rows; returns how many metrics rows arrived."""
        self.status = read_status(self.dir)
        self.errors = []
        new = 0
        for table in (self.metrics, self.calibration, self.topk):
            try:
                k = table.refresh()
            except ValueError:
                k = 0
            if table is self.metrics:
                new = k
            if table.error:
                self.errors.append(table.error)
        return new

    @property
    def has_metrics(self) -> bool:
        return len(self.metrics) > 0

    def split_rows(self, split: str) -> np.ndarray:
        """Boolean mask (``[n]``) of the metrics rows of one split."""
        return self.metrics.column("split") == split

    def series(self, split: str, column: str, x: str = "iteration") -> tuple[np.ndarray, np.ndarray]:
        """(x, y) of one metric for one split, rows where the metric is empty dropped (``[m]``, ``[m]``).

        A resumed run appends rows again from its checkpoint's iteration on; a later row supersedes every
        earlier row of the same split at the same or a later iteration, so each curve stays one line.
        """
        mask = self.split_rows(split)
        it = self.metrics.column("iteration")[mask]  # [m]
        # Smallest iteration logged after each row; a row survives only if every later row is further on.
        after = np.minimum.accumulate(np.r_[it[1:], np.inf][::-1])[::-1]  # [m]
        keep = (it < after) & ~np.isnan(self.metrics.column(column)[mask])
        return self.metrics.column(x)[mask][keep], self.metrics.column(column)[mask][keep]

    def epochs_done(self) -> int | None:
        """Highest epoch with a validation row, else the epoch in status.json."""
        ep = self.metrics.column("epoch")[self.split_rows(C.SPLIT_VAL)]
        ep = ep[~np.isnan(ep)]
        return int(ep.max()) if ep.size else self.status.epoch

    def best_val_auc(self) -> float | None:
        """Best validation AUC logged so far (falls back to status.json when it tracks AUC)."""
        _, auc = self.series(C.SPLIT_VAL, "auc", x="epoch")
        if auc.size:
            return float(np.max(auc))
        best = self.status.best
        if best.get("metric") == "auc" and _is_number(best.get("value")):
            return float(best["value"])
        return None

    def calibration_epochs(self) -> list[int]:
        ep = self.calibration.column("epoch")
        return sorted({int(e) for e in ep[~np.isnan(ep)]})

    def calibration_for(self, epoch: int) -> dict[str, np.ndarray]:
        """The calibration rows of one epoch, as columns sorted by bin (each ``[bins]``)."""
        mask = self.calibration.column("epoch") == epoch
        order = np.argsort(self.calibration.column("bin")[mask], kind="stable")
        return {name: self.calibration.column(name)[mask][order] for name in C.CALIBRATION_HEADER}

    def topk_matrix(self) -> tuple[np.ndarray, np.ndarray]:
        """(epochs ``[E]``, frequency ``[E, 24]``) from topk_hours.csv; hours never listed are 0."""
        ep = self.topk.column("epoch")
        hour = self.topk.column("hour")
        freq = self.topk.column("frequency")
        ok = ~(np.isnan(ep) | np.isnan(hour))
        epochs = np.unique(ep[ok]).astype(int)  # [E]
        matrix = np.zeros((len(epochs), C.HOURS))  # [E, 24]
        rows = np.searchsorted(epochs, ep[ok].astype(int))
        cols = hour[ok].astype(int)
        inside = (cols >= 0) & (cols < C.HOURS)
        # Later rows for the same (epoch, hour) win, as a re-logged epoch supersedes the earlier one.
        matrix[rows[inside], cols[inside]] = freq[ok][inside]
        return epochs, matrix

    def metric_at_epoch(self, column: str, epoch: int) -> float | None:
        """The last validation value of ``column`` logged for ``epoch``."""
        ep, vals = self.series(C.SPLIT_VAL, column, x="epoch")
        hit = vals[ep == epoch]
        return float(hit[-1]) if hit.size else None


@dataclass
class RunSummary:
    """One line of the run list."""

    name: str
    state: str
    started: str
    epochs: int | None
    best_auc: float | None
    note: str


def summarize(run: RunData) -> RunSummary:
    """The run list's line for ``run``: the state, or what is wrong with the status, and the reason."""
    st = run.status
    note = ""
    if st.problem:
        note = st.problem
    elif st.state in (C.STATE_FAILED, C.STATE_STOPPED):
        note = st.reason or "no reason recorded"
    elif not run.has_metrics:
        note = "no metrics yet"
    return RunSummary(
        name=run.name,
        state=st.state or "unknown",
        started=st.started or "",
        epochs=run.epochs_done(),
        best_auc=run.best_val_auc(),
        note=note,
    )


def metrics_csv_bytes(runs: list[RunData]) -> bytes:
    """The selected runs' metrics as one CSV with a leading ``run`` column (built in memory, on demand)."""
    import pandas as pd

    frames = []
    for run in runs:
        frame = run.metrics.to_pandas()
        if frame.empty:
            continue
        frame.insert(0, "run", run.name)
        frames.append(frame)
    if not frames:
        return ("run," + ",".join(C.METRICS_HEADER) + "\n").encode()
    return pd.concat(frames, ignore_index=True).to_csv(index=False).encode()
