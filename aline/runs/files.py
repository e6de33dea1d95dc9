"""A run folder's files opened without leaving the folder: no symbolic link is followed, no path that
resolves outside the folder is opened, and nothing but a regular file is read.

Every reader here is defensive: bytes that are not UTF-8, JSON nested past Python's recursion limit or a
file too large for what it should hold give a :class:`RunFileError` naming the file, never a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

# A status.json, normalizer.json or config.yaml of this trainer is a few KiB; anything far larger is not one,
# and reading it whole (the monitor does so every refresh) must not cost the memory it claims.
MAX_SMALL_FILE_BYTES = 8 << 20


class RunFileError(ValueError):
    """A run file that cannot be used (a symbolic link, a path outside the run folder, unreadable or
    unparsable bytes): ``str(err)`` is one line naming the file and what is wrong (exit 2)."""


def inside(root: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """``path`` (absolute, or relative to the current folder like ``root`` itself) with its folders
    resolved, checked to lie inside ``root``.

    The last component is not resolved: the open that follows refuses it if it is a link."""
    root_real = os.path.realpath(root)
    p = Path(path)
    if p.name in ("", ".", ".."):
        raise RunFileError(f"{p}: not a file name inside the run folder {root}")
    full = os.path.join(os.path.realpath(p.parent), p.name)
    if os.path.commonpath([root_real, full]) != root_real or full == root_real:
        raise RunFileError(f"{p}: lies outside the run folder {root}; refusing to open it")
    return Path(full)


def _open_fd(
    root: str | os.PathLike[str], path: str | os.PathLike[str], flags: int, mode: int = 0o644
) -> int:
    real = inside(root, path)
    try:
        # O_NONBLOCK: a FIFO planted where a run file should be must not hang the open or a read (it is
        # then refused as no regular file); on a regular file the flag changes nothing.
        return os.open(real, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode)
    except FileNotFoundError:
        raise
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.EMLINK):
            raise RunFileError(
                f"{path}: is a symbolic link; a run's files are never followed out of its folder"
            ) from None
        raise RunFileError(f"{path}: cannot open it ({err.strerror or type(err).__name__})") from None


def is_link(path: str | os.PathLike[str]) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(path).st_mode)
    except OSError:
        return False


def read_bytes(root: str | os.PathLike[str], path: str | os.PathLike[str], limit: int | None = None) -> bytes:
    """The bytes of a regular file inside ``root``; FileNotFoundError when it is absent, RunFileError when it
    is a link, not a regular file, outside ``root``, unreadable or over ``limit`` bytes."""
    with open_binary(root, path) as fh:
        st = os.fstat(fh.fileno())
        if limit is not None and st.st_size > limit:
            raise RunFileError(f"{path}: {st.st_size} bytes, more than a file of this kind holds ({limit})")
        try:
            return fh.read()
        except OSError as err:
            raise RunFileError(f"{path}: cannot read it ({err.strerror or type(err).__name__})") from None


def decode_utf8(data: bytes, path: str | os.PathLike[str]) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise RunFileError(
            f"{path}: line {line}: not UTF-8 text ({err.reason} at byte {err.start})"
        ) from None


def read_text(
    root: str | os.PathLike[str], path: str | os.PathLike[str], limit: int = MAX_SMALL_FILE_BYTES
) -> str:
    return decode_utf8(read_bytes(root, path, limit), path)


def parse_json(text: str, path: str | os.PathLike[str]) -> Any:
    """JSON, or a RunFileError naming the file and where it breaks (deep nesting included)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise RunFileError(
            f"{path} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})"
        ) from None
    except RecursionError:
        raise RunFileError(f"{path} is not usable JSON (nested too deeply)") from None
    except ValueError as err:  # a number too long to convert
        raise RunFileError(f"{path} is not usable JSON ({err})") from None


def open_for_append(root: str | os.PathLike[str], path: str | os.PathLike[str]) -> io.TextIOWrapper:
    """``path`` opened for appending UTF-8 text (created if absent), never through a link."""
    return _regular(_open_fd(root, path, os.O_WRONLY | os.O_APPEND | os.O_CREAT), path, "a")


def open_for_write(root: str | os.PathLike[str], path: str | os.PathLike[str]) -> io.TextIOWrapper:
    """``path`` created or emptied for writing UTF-8 text, never through a link."""
    return _regular(_open_fd(root, path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), path, "w")


def open_binary(root: str | os.PathLike[str], path: str | os.PathLike[str], write: bool = False) -> IO[bytes]:
    """``path`` opened for reading bytes (``rb``), or created or emptied for writing them (``wb``);
    FileNotFoundError when absent, RunFileError for a link, a folder, anything but a regular file."""
    if write:
        return _regular(_open_fd(root, path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), path, "wb")
    return _regular(_open_fd(root, path, os.O_RDONLY), path, "rb")


def _regular(fd: int, path: str | os.PathLike[str], mode: str) -> Any:
    """``fd`` as a file object, if it is a regular file (else closed, and a RunFileError)."""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise RunFileError(f"{path}: not a regular file")
        if "b" in mode:
            return os.fdopen(fd, mode)
        return open(fd, mode, encoding="utf-8", newline="")  # noqa: SIM115 (the caller closes it)
    except BaseException:
        os.close(fd)
        raise


@contextlib.contextmanager
def update_in_place(root: str | os.PathLike[str], path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """``path`` opened for reading and writing bytes (``rb+``), never through a link."""
    with _regular(_open_fd(root, path, os.O_RDWR), path, "rb+") as fh:
        yield fh


def truncate(root: str | os.PathLike[str], path: str | os.PathLike[str], size: int) -> None:
    """Cut ``path`` to ``size`` bytes, never through a link."""
    fd = _open_fd(root, path, os.O_WRONLY)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)
