"""``status.json`` parsed in one place: resume, evaluate, predict and the monitor all read it here.

The file is written atomically by the trainer (``aline.training.handlers.status.RunStatus``), so a reader
meets either a whole file or a foreign one; a foreign one (hand-edited, planted, damaged) is a
:class:`RunFileError` naming it, never a traceback.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from aline.contract import STATUS_FILE
from aline.runs.files import RunFileError, parse_json, read_text

__all__ = ["parse_status", "read_status", "status_int"]


def parse_status(text: str, path: str | os.PathLike[str]) -> dict[str, Any]:
    """status.json's object, or a RunFileError (not JSON, nested too deeply, not an object)."""
    data = parse_json(text, path)
    if not isinstance(data, dict):
        raise RunFileError(f"{path} holds a JSON {type(data).__name__}, not an object")
    return data


def read_status(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """``run_dir/status.json`` as a dict; None when there is none; RunFileError when it cannot be used
    (a symbolic link, not UTF-8, not a JSON object)."""
    path = Path(run_dir) / STATUS_FILE
    try:
        text = read_text(run_dir, path)
    except FileNotFoundError:
        return None
    return parse_status(text, path)


def status_int(status: dict[str, Any], key: str, default: int = 0) -> int:
    """A whole-number field (epoch, iteration) as an int; ``default`` when absent or not a finite number."""
    value = status.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return default
    if isinstance(value, float) and not math.isfinite(value):
        return default
    return int(value)
