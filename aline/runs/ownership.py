"""One writer per run folder: exclusive creation of new run folders and an owner lock with a heartbeat.

Why not ``flock``: runs folders often live on a shared file system (NFS) seen from several machines, where
advisory locks are unreliable or silently local. Two primitives are atomic there too and are all this
module relies on:

* ``mkdir`` fails if the folder exists: a new run folder is never shared (``create_run_dir``);
* ``open(O_CREAT | O_EXCL)`` fails if the file exists (NFSv3 and later): the lock file ``owner.lock`` is
  created by exactly one process, which writes its host, pid and a random token into it.

A lock whose holder died (``kill -9``, a power cut) stays on disk, so the holder also proves it is alive:
a daemon thread touches the lock file every ``HEARTBEAT_INTERVAL_S``. A later process judges the holder
gone when the lock's mtime is older than ``HEARTBEAT_STALE_S`` or, on the holder's own host, when its pid no
longer exists. Only then is the lock broken (renamed away, then created afresh with O_EXCL, so of two
processes breaking it at once only one wins). Across machines this assumes clocks that agree to within a
few seconds (NTP); docs/run-folder.md says what is and is not guaranteed.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from aline.contract import HEARTBEAT_INTERVAL_S, HEARTBEAT_STALE_S, LOCK_FILE, _pid_alive
from aline.runs.files import RunFileError, parse_json, read_text


class OwnershipError(ValueError):
    """The run folder is owned by a live process, or cannot be created/locked (exit 2)."""


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds")


def check_runs_root(root: str | os.PathLike[str], key: str = "run.dir") -> Path:
    """``root`` is (or could be created as) a writable folder; else an OwnershipError naming ``key``.

    Creates nothing: a run that fails its checks leaves no trace.
    """
    root = Path(root)
    existing = root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = "is a file" if existing == root else f"is inside {str(existing)!r}, which is a file"
        raise OwnershipError(f"{key}={str(root)!r} {what}, not a folder; give a folder for the runs")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == root else f" ({str(existing)!r}, where it would be created)"
        raise OwnershipError(f"{key}={str(root)!r}: the folder is not writable{where}")
    return root


def create_run_dir(root: str | os.PathLike[str], name: str, stamp: str | None = None) -> Path:
    """Create ``root/<stamp>-<name>`` (or ``...-<name>-2``, ``-3``, ... when taken) and return it.

    ``mkdir`` is atomic even on NFS, so two trainings started in the same second get two folders.
    """
    root = check_runs_root(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        why = err.strerror or err
        raise OwnershipError(f"run.dir={str(root)!r}: cannot create the folder ({why})") from None
    stamp = stamp or datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    base = f"{stamp}-{name}"
    for n in range(1, 10_000):
        path = root / (base if n == 1 else f"{base}-{n}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        except OSError as err:
            raise OwnershipError(
                f"run.dir={str(root)!r}: cannot create {path.name} ({err.strerror})"
            ) from None
        return path
    raise OwnershipError(f"run.dir={str(root)!r}: too many runs named {base}")


@dataclass(frozen=True)
class Holder:
    """Who holds (or held) a run folder's lock, and when it last proved to be alive."""

    host: str
    pid: int
    token: str
    heartbeat: float  # unix seconds: the lock file's mtime

    def alive(self, now: float | None = None, this_host: str | None = None) -> bool:
        now = time.time() if now is None else now
        if now - self.heartbeat > HEARTBEAT_STALE_S:
            return False
        if self.host == (this_host or socket.gethostname()):
            return _pid_alive(self.pid)
        return True  # another machine's pid cannot be asked about: a fresh heartbeat is all we have

    def describe(self) -> str:
        return f"pid {self.pid} on host {self.host} (last heartbeat {_iso(self.heartbeat)})"


def read_holder(path: Path) -> Holder | None:
    """The lock file's holder, or None when there is no lock file."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    try:
        info = parse_json(read_text(path.parent, path) or "{}", path)
    except FileNotFoundError:
        return None
    except (OSError, RunFileError):
        info = {}  # half-written by a holder killed at once (or foreign): judged by its age alone
    if not isinstance(info, dict):
        info = {}
    pid = info.get("pid")
    pid = pid if isinstance(pid, int) and not isinstance(pid, bool) else -1
    return Holder(str(info.get("host", "?"))[:256], pid, str(info.get("token", ""))[:64], st.st_mtime)


class RunOwner:
    """The lock on one run folder, held from :meth:`acquire` to :meth:`release` (or the process's death)."""

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self.token = secrets.token_hex(8)
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.previous: Holder | None = None  # the dead holder whose lock was broken, if any
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(
                {"host": self.host, "pid": self.pid, "token": self.token, "acquired": _iso(time.time())}, fh
            )
            fh.flush()
            os.fsync(fh.fileno())
        return True

    def acquire(self) -> RunOwner:
        """Take the lock or raise OwnershipError naming the live holder's pid and host."""
        for _ in range(3):
            if self._create():
                break
            holder = read_holder(self.path)
            if holder is None:
                continue  # released between our two calls: try again
            if holder.alive():
                raise OwnershipError(
                    f"{self.run_dir}: the run is still being trained by {holder.describe()}; "
                    "stop that process first (or wait for it to end)"
                )
            # Break the stale lock: rename it to a name of ours (atomic; of two breakers only one finds
            # the source), then check that what we moved is the lock we judged stale.
            moved = self.path.with_name(f".{LOCK_FILE}.{self.token}.stale")
            try:
                os.rename(self.path, moved)
            except FileNotFoundError:
                continue
            again = read_holder(moved)
            if again is not None and again.token != holder.token:
                # Someone else broke it and re-took it in between: put theirs back and give way.
                with contextlib.suppress(OSError):
                    os.link(moved, self.path)
                moved.unlink(missing_ok=True)
                raise OwnershipError(
                    f"{self.run_dir}: another process took the run over just now ({again.describe()})"
                )
            moved.unlink(missing_ok=True)
            self.previous = holder
        else:
            raise OwnershipError(f"{self.run_dir}: could not take the lock {LOCK_FILE} (contended)")
        self._thread = threading.Thread(target=self._beat, name="aline-owner-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_INTERVAL_S):
            with contextlib.suppress(OSError, NotImplementedError):  # a vanished folder must not kill it
                os.utime(self.path, follow_symlinks=False)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * HEARTBEAT_INTERVAL_S)
        holder = read_holder(self.path)
        if holder is not None and holder.token == self.token:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> RunOwner:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def run_holder(run_dir: str | os.PathLike[str]) -> Holder | None:
    """The current (possibly dead) holder of ``run_dir``'s lock; None when nobody holds it."""
    return read_holder(Path(run_dir) / LOCK_FILE)
