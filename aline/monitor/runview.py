"""Read-only view of a runs folder for the monitor: which runs exist, their status and their logged tables.

Nothing here writes to disk. Run names are checked so that a name from a URL or a symlink can never make
the monitor read outside the runs root. Each run keeps one ``TailedTable`` per CSV, so a refresh costs
only the bytes appended since the last one.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aline import contract as C
from aline.monitor.runstatus import (  # noqa: F401  (STATE_*, Status, read_status: part of this API)
    STATE_NEVER_STARTED,
    STATE_STARTING,
    STATE_UNREADABLE,
    Status,
    _is_number,
    _one_line,
    read_status,
)
from aline.monitor.tail import TailedTable
from aline.runs import RunFileError, RunFolder
from aline.runs.files import open_binary

DEFAULT_RUNS_DIR = "runs"
RUNS_ENV = "ALINE_RUNS"
_SERIALS = itertools.count()


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


class RunData:
    """One run's status and tables, refreshed incrementally; the object lives across monitor refreshes.

    ``refresh(tables=False)`` reads only status.json and the tail of metrics.csv (what the runs table
    needs), so fifty long runs cost fifty small reads; the full tables are parsed only for runs on show.
    """

    def __init__(self, root: Path, name: str) -> None:
        self.name = name
        self.dir = resolve_run(root, name)
        self.metrics = TailedTable(self.dir / C.METRICS_FILE, text_columns=("split",))
        self.calibration = TailedTable(self.dir / C.CALIBRATION_FILE)
        self.topk = TailedTable(self.dir / C.TOPK_FILE)
        self.status = Status()
        self.errors: list[str] = []  # parse errors still standing, for the page to show
        self.tables_loaded = False
        self._config: tuple[tuple[int, int], dict[str, Any] | None, str | None] | None = None
        self._newest: tuple[tuple[int, int], dict[str, float] | None] | None = None
        # Split masks of the metrics table at one table version: comparing 200,000 strings costs a few ms,
        # and one refresh's charts ask for the same two masks dozens of times.
        self._masks: tuple[int, dict[str, np.ndarray]] = (-1, {})
        self.serial = next(_SERIALS)  # part of ``version``: tells two RunData of one run apart in caches
        # The monitor's sessions (threads of their own) share RunData objects; they refresh and read the
        # tables only while holding this lock (``aline.monitor.sharedruns.locked``).
        self.lock = threading.Lock()

    def refresh(self, tables: bool = True) -> int:
        """Re-read status.json and, with ``tables``, the appended CSV rows; returns new metrics rows."""
        self.status = read_status(self.dir)
        if not tables:
            return 0
        self.tables_loaded = True
        new = 0
        for table in (self.metrics, self.calibration, self.topk):
            try:
                k = table.refresh()
            except ValueError:
                k = 0
            if table is self.metrics:
                new = k
        # A table keeps its last parse error until the file is replaced, so the warning stays while its
        # cause (the bad line) is still in the file.
        self.errors = [t.error for t in (self.metrics, self.calibration, self.topk) if t.error]
        return new

    @property
    def version(self) -> tuple[int, int, int, int]:
        """Changes whenever any table's content changes, and differs between two RunData of the same run
        (for caching figures between refreshes and between sessions)."""
        return (self.serial, self.metrics.version, self.calibration.version, self.topk.version)

    @property
    def has_metrics(self) -> bool:
        if self.tables_loaded:
            return len(self.metrics) > 0
        return self.newest_row(C.SPLIT_TRAIN) is not None or self.newest_row(C.SPLIT_VAL) is not None

    @property
    def columns(self) -> tuple[str, ...]:
        """The metrics.csv header as written (older and newer trainers log different metric columns)."""
        return self.metrics.header or ()

    def split_rows(self, split: str) -> np.ndarray:
        """Boolean mask (``[n]``) of the metrics rows of one split (read only)."""
        if self._masks[0] != self.metrics.version:
            self._masks = (self.metrics.version, {})
        masks = self._masks[1]
        if split not in masks:
            mask = self.metrics.column("split") == split
            mask.flags.writeable = False
            masks[split] = mask
        return masks[split]

    def series(self, split: str, column: str, x: str = "iteration") -> tuple[np.ndarray, np.ndarray]:
        """(x, y) of one metric for one split, rows where the metric is empty dropped (``[m]``, ``[m]``).

        ``x`` is a metrics column (``iteration``, ``epoch``, ``time``) or ``relative`` (hours since the
        run's first row). A resumed run appends rows again from its checkpoint's iteration on; a later row
        supersedes every earlier row of the same split at the same or a later iteration, so each curve
        stays one line.
        """
        mask = self.split_rows(split)
        it = self.metrics.column("iteration")[mask]  # [m]
        # Smallest iteration logged after each row; a row survives only if every later row is further on.
        after = np.minimum.accumulate(np.r_[it[1:], np.inf][::-1])[::-1]  # [m]
        y = self.metrics.column(column)[mask]
        if y.size == 0:
            return np.empty(0), np.empty(0)
        keep = (it < after) & ~np.isnan(y)
        if x == "relative":
            t = self.metrics.column("time")
            t0 = float(np.nanmin(t)) if t.size else 0.0
            xs = (t[mask] - t0) / 3600.0
        else:
            xs = self.metrics.column(x)[mask]
        return xs[keep], y[keep]

    def epochs_done(self) -> int | None:
        """Highest epoch with a validation row, else the epoch in status.json."""
        if self.tables_loaded:
            ep = self.metrics.column("epoch")[self.split_rows(C.SPLIT_VAL)]
            ep = ep[~np.isnan(ep)]
            if ep.size:
                return int(ep.max())
        newest = self.newest_row(C.SPLIT_VAL)
        if newest and _is_number(newest.get("epoch")):
            return int(newest["epoch"])
        return self.status.epoch

    def best_val_auc(self) -> float | None:
        """Best validation AUC logged so far (falls back to status.json when it tracks AUC)."""
        if self.tables_loaded:
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

    # --- what the runs table needs, cheap enough for every run on every refresh ---------------------------

    def newest_row(self, split: str) -> dict[str, float] | None:
        """The last complete metrics row of ``split`` (numeric cells; empty ones left out), or None.

        From the parsed table when it is loaded, else from the last few KiB of metrics.csv (cached on the
        file's size and mtime), so the runs table never parses a whole long file.
        """
        if self.tables_loaded and len(self.metrics):
            idx = np.flatnonzero(self.split_rows(split))
            if idx.size == 0:
                return None
            i = int(idx[-1])
            out = {}
            for name in self.columns:
                if name == "split":
                    continue
                v = float(self.metrics.column(name)[i])
                if math.isfinite(v):
                    out[name] = v
            return out
        return _tail_rows(self, split)

    def config(self) -> tuple[dict[str, Any] | None, str | None]:
        """(config.yaml as a dict, None) or (None, why it cannot be shown); re-read only when it changes."""
        path = self.dir / C.CONFIG_FILE
        try:
            st = path.lstat()
        except OSError:
            return None, f"{path} is missing"
        key = (st.st_size, st.st_mtime_ns)
        if self._config is None or self._config[0] != key:
            try:
                cfg, err = RunFolder(self.dir).config_dict(), None
            except FileNotFoundError:
                cfg, err = None, f"{path} is missing"
            except (RunFileError, OSError) as exc:
                cfg, err = None, _one_line(exc)
            self._config = (key, cfg, err)
        return self._config[1], self._config[2]

    def max_epochs(self) -> int | None:
        """The run's epoch budget: status.json's ``max_epochs``, else config.yaml's ``trainer.epochs``."""
        if self.status.max_epochs is not None:
            return self.status.max_epochs
        cfg, _ = self.config()
        trainer = (cfg or {}).get("trainer")
        epochs = trainer.get("epochs") if isinstance(trainer, dict) else None
        return int(epochs) if _is_number(epochs) else None


_TAIL_BYTES = 16384


def _tail_rows(run: RunData, split: str) -> dict[str, float] | None:
    path = run.dir / C.METRICS_FILE
    try:
        st = path.stat()
    except OSError:
        return None
    key = (st.st_size, st.st_mtime_ns)
    if run._newest is None or run._newest[0] != key:
        run._newest = (key, _read_tail(path, st.st_size))
    rows = run._newest[1] or {}
    return rows.get(split)


def _read_tail(path: Path, size: int) -> dict[str, dict[str, float]] | None:
    """The last row of each split in the last ``_TAIL_BYTES`` of a metrics file (header from line 1)."""
    try:
        with open_binary(path.parent, path) as fh:
            header = fh.readline(1 << 16)
            start = max(len(header), size - _TAIL_BYTES)
            fh.seek(start)
            chunk = fh.read(max(0, size - start))
    except (OSError, RunFileError):
        return None
    if not header.endswith(b"\n"):
        return None
    names = [c.strip() for c in header.decode("utf-8", "replace").rstrip("\r\n").split(",")]
    end = chunk.rfind(b"\n")
    lines = chunk[: end + 1].decode("utf-8", "replace").split("\n")
    if start > len(header):
        lines = lines[1:]  # the first line of the chunk may start mid-line
    out: dict[str, dict[str, float]] = {}
    for line in reversed(lines):
        cells = line.split(",")
        if len(cells) != len(names):
            continue
        row = dict(zip(names, cells, strict=True))
        split = row.get("split")
        if split in out or split not in (C.SPLIT_TRAIN, C.SPLIT_VAL):
            continue
        parsed = {}
        for k, v in row.items():
            try:
                f = float(v)
            except ValueError:
                continue
            if math.isfinite(f):
                parsed[k] = f
        out[split] = parsed
        if len(out) == 2:
            break
    return out


def parse_time(value: str | None) -> float | None:
    """Unix seconds from a UTC ISO string of status.json (``...Z`` or with an offset); None if unreadable."""
    if not value:
        return None
    from datetime import datetime

    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


@dataclass
class Progress:
    """Where a run stands, in numbers (seconds, epochs) for the runs table."""

    state: str
    epoch: int | None
    max_epochs: int | None
    elapsed_s: float | None
    eta_s: float | None
    last_update_age_s: float | None


def progress(run: RunData, now: float) -> Progress:
    """Epoch x/max, elapsed time, ETA (running runs only) and how long ago the run last wrote anything."""
    st = run.status
    state = st.display_state(now)
    epoch = run.epochs_done()
    max_ep = run.max_epochs()
    started = parse_time(st.started)
    end = parse_time(st.finished) if st.finished else None
    if state == C.STATE_INTERRUPTED:
        end = parse_time(st.heartbeat) or parse_time(st.updated)
    elapsed = None if started is None else max(0.0, (end or now) - started)
    # Last sign of life: the newest of the status writes and of the metrics file's mtime.
    stamps = [parse_time(st.updated), parse_time(st.heartbeat)]
    with contextlib.suppress(OSError):
        stamps.append((run.dir / C.METRICS_FILE).stat().st_mtime)
    seen = [s for s in stamps if s is not None]
    age = max(0.0, now - max(seen)) if seen else None
    eta = None
    if state == C.STATE_RUNNING and elapsed and epoch and max_ep and max_ep > epoch:
        eta = elapsed / epoch * (max_ep - epoch)
    elif state == C.STATE_RUNNING and max_ep is not None and epoch is not None and epoch >= max_ep:
        eta = 0.0
    return Progress(state, epoch, max_ep, elapsed, eta, age)


def human_duration(seconds: float | None) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 07 min``, ``1 d 3 h``; empty for None."""
    if seconds is None:
        return ""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    if s < 86400:
        return f"{s // 3600} h {(s % 3600) // 60:02d} min"
    return f"{s // 86400} d {(s % 86400) // 3600} h"


@dataclass
class RunSummary:
    """One line of the run list."""

    name: str
    state: str
    started: str
    epochs: int | None
    best_auc: float | None
    note: str


def summarize(run: RunData, now: float | None = None) -> RunSummary:
    """The run list's line for ``run``: the state, or what is wrong with the status, and the reason."""
    import time

    st = run.status
    state = st.display_state(time.time() if now is None else now)
    note = ""
    if state == STATE_NEVER_STARTED:
        note = (
            "stopped before its first checkpoint (no status.json, nobody holds the run); start it again "
            f"with python -m aline.train --resume {run.dir}"
        )
    elif state == STATE_STARTING:
        note = "the trainer is setting up (no status.json yet)"
    elif st.problem:
        note = st.problem
    elif st.state in (C.STATE_FAILED, C.STATE_STOPPED):
        note = st.reason or "no reason recorded"
    elif state == C.STATE_INTERRUPTED:
        note = "the training process is gone (no heartbeat); resume with python -m aline.train --resume"
    elif not run.has_metrics:
        note = "no metrics yet"
    return RunSummary(
        name=run.name,
        state=state,
        started=st.started or "",
        epochs=run.epochs_done(),
        best_auc=run.best_val_auc(),
        note=note,
    )


def flatten(cfg: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (lists stay values), for the config diff."""
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def config_diff(configs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows ``{"key": k, run: value, ...}`` for every dotted key whose value differs between the runs
    (a key one run lacks counts as different and shows as ``"(absent)"``), sorted by key."""
    flat = {name: flatten(cfg) for name, cfg in configs.items()}
    keys = sorted(set().union(*flat.values())) if flat else []
    rows = []
    for key in keys:
        values = [flat[name].get(key, _ABSENT) for name in flat]
        if all(v == values[0] for v in values[1:]):
            continue
        row: dict[str, Any] = {"key": key}
        for name, v in zip(flat, values, strict=True):
            row[name] = "(absent)" if v is _ABSENT else _show(v)
        rows.append(row)
    return rows


_ABSENT = object()


def _show(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def _iso(seconds: np.ndarray) -> list[str]:
    from datetime import UTC, datetime

    return [
        "" if not math.isfinite(s) else datetime.fromtimestamp(s, UTC).isoformat(timespec="milliseconds")
        for s in seconds
    ]


_INTEGER_COLUMNS = ("epoch", "iteration", "bin", "hour", "count")


def table_csv_bytes(runs: list[RunData], which: str) -> bytes:
    """One CSV of the runs' ``metrics`` | ``calibration`` | ``topk`` table with a leading ``run`` column,
    from the full tables (never the downsampled drawing data). Times become UTC ISO 8601 strings, epochs,
    iterations, bins, hours and counts whole numbers. Built in memory, on demand."""
    import pandas as pd

    header = {"metrics": C.METRICS_HEADER, "calibration": C.CALIBRATION_HEADER, "topk": C.TOPK_HEADER}[which]
    frames = []
    for run in runs:
        table = {"metrics": run.metrics, "calibration": run.calibration, "topk": run.topk}[which]
        frame = table.to_pandas()
        if frame.empty:
            continue
        for col in _INTEGER_COLUMNS:
            if col in frame:
                frame[col] = frame[col].astype("Int64")  # empty cells stay empty, not 1.0 / NaN
        if "time" in frame:
            frame["time"] = _iso(frame["time"].to_numpy(dtype=np.float64))
        frame.insert(0, "run", run.name)
        frames.append(frame)
    if not frames:
        return ("run," + ",".join(header) + "\n").encode()
    return pd.concat(frames, ignore_index=True).to_csv(index=False).encode()


def metrics_csv_bytes(runs: list[RunData]) -> bytes:
    """The selected runs' metrics as one CSV (see :func:`table_csv_bytes`)."""
    return table_csv_bytes(runs, "metrics")
