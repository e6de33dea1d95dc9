"""status.json as the monitor shows it: the states a run can be in, and a reader that never raises."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aline import contract as C
from aline.runs import RunFileError, RunFolder
from aline.runs.ownership import run_holder

# Shown instead of status.json's state: a run whose files cannot be read or parsed, and a run folder with no
# status.json yet, whose trainer is still setting up (it holds the lock) or was stopped before its first
# checkpoint (nobody holds it; ``--resume`` starts it again from scratch).
STATE_UNREADABLE = "unreadable"
STATE_STARTING = "starting"
STATE_NEVER_STARTED = "never started"


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
    max_epochs: int | None = None
    heartbeat: str | None = None
    problem: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)  # the file as parsed, for contract.display_state
    unreadable: bool = False  # the file is there but cannot be read or parsed
    missing: bool = False
    owner_alive: bool = False  # (missing status.json) a live process holds the run's lock

    def display_state(self, now: float | None = None) -> str:
        """running | interrupted | finished | failed | stopped (see ``contract.display_state``); unreadable,
        starting or never started (see above); "unknown" when status.json says something else."""
        if self.unreadable:
            return STATE_UNREADABLE
        if self.missing:
            return STATE_STARTING if self.owner_alive else STATE_NEVER_STARTED
        if self.state not in C.STATES:
            return "unknown"
        return C.display_state(self.raw, now=now) or "unknown"


def read_status(run_dir: Path) -> Status:
    """Parse ``run_dir/status.json``; a missing, broken or odd file gives a ``Status`` with ``problem``."""
    path = run_dir / C.STATUS_FILE
    try:
        data = RunFolder(run_dir).status()
    except RunFileError as exc:
        return Status(problem=_one_line(exc), unreadable=True)
    except OSError as exc:
        return Status(problem=f"{path} cannot be read: {exc.strerror}", unreadable=True)
    if data is None:
        holder = run_holder(run_dir)
        return Status(
            problem=f"{path} is missing", missing=True, owner_alive=holder is not None and holder.alive()
        )
    state = data.get("state")
    problem = None
    if state not in C.STATES:
        problem = f"{path}: state {_short(state)} is not one of {', '.join(C.STATES)}"
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
        oracle={str(k): float(v) for k, v in oracle.items() if _is_number(v)},
        reason=_str_or_none(data.get("reason")),
        pid=_int_or_none(data.get("pid")),
        max_epochs=_int_or_none(data.get("max_epochs")),
        heartbeat=_str_or_none(data.get("heartbeat")),
        problem=problem,
        raw=data,
    )


def _one_line(text: object, limit: int = 300) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _short(value: Any) -> str:
    return _one_line(repr(value), 80)


def _str_or_none(v: Any) -> str | None:
    return None if v is None else _one_line(v, 2000) if isinstance(v, str) else _short(v)


def _int_or_none(v: Any) -> int | None:
    return int(v) if _is_number(v) and abs(v) < 2**63 else None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
