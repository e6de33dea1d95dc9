"""The one way a checkpoint is loaded, on every path (train, resume, evaluate, predict, init-from, the API).

``torch.load(weights_only=True)``: a file that holds pickled Python objects is refused, never run. Torch's
own message for such a file ends with advice to load it with ``weights_only=False``, which would run
whatever code it holds, so none of torch's text reaches the user: the error names the file and says
what is wrong in our words.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import re
import stat
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from aline.contract import atomic_write
from aline.runs.files import RunFileError, inside, is_link, open_binary

__all__ = [
    "CheckpointError",
    "load_checkpoint",
    "load_checkpoint_dict",
    "model_state",
    "save_checkpoint",
    "state_mismatch",
]


class CheckpointError(RunFileError):
    """A checkpoint that cannot be used: one line naming the file and what is wrong (exit 2)."""


def _why_unreadable(err: BaseException, path: Path) -> str:
    text = str(err)
    if isinstance(err, pickle.UnpicklingError):
        found = re.search(r"GLOBAL (\S+)", text)
        if found:
            return (
                f"refused: the checkpoint holds pickled Python objects (here {found.group(1)}), which a "
                "weights-only load does not execute. Only tensors and plain containers are accepted; "
                "re-save the model's state_dict"
            )
    if zipfile.is_zipfile(path):
        return f"not a readable torch checkpoint (a damaged archive: {type(err).__name__})"
    found = _first_global(path)
    if found:  # a raw pickle (not torch.save's archive) that names Python code
        return (
            f"refused: the checkpoint holds pickled Python objects (here {found}), which a weights-only "
            "load does not execute. Only tensors and plain containers are accepted; re-save the model's "
            "state_dict with torch.save"
        )
    # torch.save writes a zip archive: a cut one loses its directory, a raw pickle never had one.
    return "not a readable torch checkpoint (truncated, corrupt, or not written by torch.save)"


def _first_global(path: Path, limit: int = 1 << 20) -> str | None:
    """The first Python object a raw pickle names (``module.name``), found by reading its opcodes only
    (``pickletools.genops`` runs nothing); None when there is none or the bytes are no pickle."""
    strings: list[str] = []
    try:
        with path.open("rb") as fh:
            for op, arg, _ in pickletools.genops(io.BytesIO(fh.read(limit))):
                if op.name == "GLOBAL" and isinstance(arg, str):
                    return arg.replace(" ", ".")
                if op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    return f"{strings[-2]}.{strings[-1]}"
                if isinstance(arg, str):
                    strings.append(arg)
    except Exception:  # noqa: BLE001 - any bytes may be here; only a name found in them is reported
        return None
    return None


def load_checkpoint(path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, or a CheckpointError naming the file.

    ``root``: the run folder the file belongs to, when the path came from the run folder itself (its
    ``last.pt``, ``status.json``'s best checkpoint): the file must then lie inside it, and is not followed
    if it is a symbolic link. A path the user gave (``--checkpoint``) is opened as given."""
    path = Path(path)
    try:
        if root is not None:
            fh = open_binary(root, path)
        else:  # O_NONBLOCK: a FIFO given as a checkpoint must not hang the process
            fh = os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb")
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint file not found") from None
    except RunFileError as err:
        raise CheckpointError(str(err)) from None
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read it ({err.strerror or type(err).__name__})") from None
    with fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise CheckpointError(f"{path}: not a regular file")
        try:
            with warnings.catch_warnings():  # torch warns about pickle protocols of files it then refuses
                warnings.simplefilter("ignore")
                return torch.load(fh, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - torch raises many kinds for hostile bytes; all mean "unusable"
            raise CheckpointError(f"{path}: {_why_unreadable(err, path)}") from None


def load_checkpoint_dict(path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None) -> dict:
    """:func:`load_checkpoint` of a file that must hold a mapping (every checkpoint this trainer writes)."""
    payload = load_checkpoint(path, root)
    if not isinstance(payload, Mapping):
        raise CheckpointError(f"{path}: not a checkpoint of this trainer (a {type(payload).__name__})")
    return dict(payload)


def model_state(payload: Any, path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The model's state_dict in a loaded checkpoint: the trainer's (under ``"model"``) or a bare one."""
    state = payload.get("model") if isinstance(payload, Mapping) and "model" in payload else payload
    if not (
        isinstance(state, Mapping)
        and state
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())
    ):
        raise CheckpointError(
            f"{path}: no model weights found (expected a state_dict of tensors under key 'model', "
            "or a bare state_dict)"
        )
    return dict(state)


def state_mismatch(err: RuntimeError) -> str:
    """The informative lines of torch's ``load_state_dict`` error (missing, unexpected, mis-sized keys)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return " ".join(lines[1:4] or lines[:1])


def save_checkpoint(payload: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` to a temporary file beside ``path``, renamed over it once complete (a reader or a kill
    sees the old checkpoint or the new one). Its folder is created if need be; a link there is refused."""
    path = Path(path)
    if is_link(path.parent):
        raise CheckpointError(f"{path.parent}: is a symbolic link; refusing to write {path.name} through it")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(inside(path.parent, path), "wb") as fh:
        torch.save(payload, fh)
