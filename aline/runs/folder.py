"""One object that owns a run folder's files (docs/run-folder.md).

The trainer, resume, init-from, evaluate, predict and the monitor read and write a run's files through
:class:`RunFolder`: every file is opened inside the folder and never through a symbolic link
(:mod:`aline.runs.files`), status.json is parsed in one place (:mod:`aline.runs.status`) and every
checkpoint is loaded by one function (:mod:`aline.runs.checkpoint`). Heavy modules (torch, the config's
pydantic models) are imported where a method needs them, so that the monitor stays light.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aline import contract as C
from aline.runs import files
from aline.runs.files import RunFileError
from aline.runs.status import read_status, status_int

if TYPE_CHECKING:
    import io

    import torch

    from aline.config import Config
    from aline.data.dataset import Normalizer
    from aline.runs.ownership import RunOwner

# Files of a run that the trainer writes or truncates; a symbolic link at any of them refuses a resume.
WRITTEN_FILES = (
    C.STATUS_FILE,
    C.CONFIG_FILE,
    C.METRICS_FILE,
    C.CALIBRATION_FILE,
    C.TOPK_FILE,
    C.NORMALIZER_FILE,
    C.LOG_FILE,
    C.LOCK_FILE,
)
CSV_HEADERS = {
    C.METRICS_FILE: C.METRICS_HEADER,
    C.CALIBRATION_FILE: C.CALIBRATION_HEADER,
    C.TOPK_FILE: C.TOPK_HEADER,
}
# Temporary files a killed writer leaves: contract.atomic_write's ".<name>.<random>.tmp" in the run folder
# and checkpoints/, and ignite's best-checkpoint "tmp<random>" (tempfile.NamedTemporaryFile) in checkpoints/.
TMP_GLOBS = {"": (".*.tmp",), C.CHECKPOINT_DIR: (".*.tmp", "tmp*")}


def check_header_line(path: Path, line: bytes, header: tuple[str, ...]) -> None:
    """RunFileError naming the first column where a CSV log's first ``line`` differs from ``header``."""
    found = tuple(line.decode("utf-8", "replace").rstrip("\r\n").split(","))
    header = tuple(header)
    if found == header:
        return
    diff = next(
        (i for i, (a, b) in enumerate(zip(found, header, strict=False)) if a != b),
        min(len(found), len(header)),
    )
    got = found[diff] if diff < len(found) else "<end of header>"
    want = header[diff] if diff < len(header) else "<end of header>"
    raise RunFileError(
        f"{path}: existing header does not match this version's columns (column {diff + 1}: found "
        f"{got[:80]!r}, expected {want!r}); start a new run or move the file away"
    )


class RunFolder:
    """The files of one run folder, read and written without leaving it."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def checkpoints(self) -> Path:
        return self.path / C.CHECKPOINT_DIR

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / C.LAST_CHECKPOINT

    # --- status.json ------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any] | None:
        """status.json as a dict; None when there is none; RunFileError when it cannot be used."""
        return read_status(self.path)

    def status_or_empty(self) -> dict[str, Any]:
        """status.json, or {} when it is missing or unusable (the trainer then starts it afresh)."""
        try:
            return self.status() or {}
        except RunFileError:
            return {}

    def write_status(self, payload: dict[str, Any], name: str = C.STATUS_FILE) -> None:
        """Replace status.json atomically (the rename replaces a link at that name, never follows it)."""
        C.write_json_atomic(files.inside(self.path, self.path / name), payload)

    # --- config.yaml ------------------------------------------------------------------------------------

    def config_text(self) -> str:
        """config.yaml's text; FileNotFoundError when absent, RunFileError when unusable."""
        return files.read_text(self.path, self.file(C.CONFIG_FILE))

    def config_dict(self) -> dict[str, Any]:
        """config.yaml as plain data (the monitor's view); RunFileError when it is not a YAML mapping."""
        import yaml

        path = self.file(C.CONFIG_FILE)
        text = self.config_text()
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise RunFileError(f"{path}: not valid YAML ({' '.join(str(err).split())})") from None
        except RecursionError:
            raise RunFileError(f"{path}: not usable YAML (nested too deeply)") from None
        if not isinstance(data, dict):
            raise RunFileError(f"{path}: not a mapping of config sections")
        try:  # YAML anchors can make a mapping that holds itself, which no reader of it survives
            json.dumps(data, default=str)
        except (ValueError, RecursionError):
            raise RunFileError(f"{path}: a mapping that refers to itself (a YAML alias loop)") from None
        return data

    def load_config(self, overrides: list[str] | tuple[str, ...] = ()) -> Config:
        """The run's config (plus overrides); ConfigError naming the file for anything wrong with it."""
        from aline.config import ConfigError, load_config_text

        path = self.file(C.CONFIG_FILE)
        try:
            text = self.config_text()
        except FileNotFoundError:
            raise ConfigError(f"{self.path}: no {C.CONFIG_FILE} there; is it a run folder?") from None
        except RunFileError as err:
            raise ConfigError(str(err)) from None
        return load_config_text(text, path, overrides)

    def write_config(self, cfg: Config) -> None:
        import yaml

        text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
        C.write_text_atomic(files.inside(self.path, self.file(C.CONFIG_FILE)), text)

    # --- normalizer.json --------------------------------------------------------------------------------

    def normalizer(self) -> Normalizer:
        """The feature statistics the run was trained with; DataError naming the file when unusable."""
        from aline.data import DataError
        from aline.data.dataset import Normalizer

        path = self.file(C.NORMALIZER_FILE)
        try:
            text = files.read_text(self.path, path)
        except FileNotFoundError:
            raise DataError(f"{path}: normalizer file not found") from None
        except RunFileError as err:
            raise DataError(str(err)) from None
        return Normalizer.from_text(text, path)

    def save_normalizer(self, normalizer: Normalizer) -> None:
        normalizer.save(files.inside(self.path, self.file(C.NORMALIZER_FILE)))

    # --- checkpoints ------------------------------------------------------------------------------------

    def best_checkpoint(self) -> Path:
        """The best checkpoint that status.json names, else ``last.pt``; RunFileError when status.json is
        unusable, names a file outside ``checkpoints/`` or a file that does not exist, or there is none."""
        status_path = self.file(C.STATUS_FILE)
        best = (self.status() or {}).get("best")
        name = best.get("checkpoint") if isinstance(best, dict) else None
        if isinstance(name, str) and name:
            path = self.path / name
            try:
                real = files.inside(self.path, path)
                files.inside(self.checkpoints, real)  # and not through a linked checkpoints/ folder
            except RunFileError:
                raise RunFileError(
                    f"{status_path}: best.checkpoint {name!r} is not a file in the run's "
                    f"{C.CHECKPOINT_DIR}/ folder; refusing to load it"
                ) from None
            if files.is_link(real):
                raise RunFileError(f"{status_path}: best.checkpoint {name!r} is a symbolic link; refusing it")
            if not real.is_file():
                raise RunFileError(f"{status_path}: best.checkpoint {name!r} does not exist ({path})")
            return path
        if self.last_checkpoint.is_file() or files.is_link(self.last_checkpoint):
            return self.last_checkpoint
        raise RunFileError(
            f"{self.path}: no checkpoint to load ({C.STATUS_FILE} names no best checkpoint and "
            f"{C.CHECKPOINT_DIR}/{C.LAST_CHECKPOINT} is missing); is it a run folder that "
            "finished at least one epoch?"
        )

    def save_checkpoint(self, payload: Any, name: str = C.LAST_CHECKPOINT) -> None:
        """Write ``checkpoints/<name>`` atomically (see :func:`aline.runs.checkpoint.save_checkpoint`)."""
        from aline.runs.checkpoint import save_checkpoint

        save_checkpoint(payload, files.inside(self.path, self.checkpoints / name))

    def owns(self, path: str | os.PathLike[str]) -> bool:
        """Whether ``path`` names a file inside this run folder (its folders resolved)."""
        try:
            files.inside(self.path, Path(path).absolute())
        except RunFileError:
            return False
        return True

    def load_checkpoint(self, path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
        """A checkpoint of this run (``last.pt`` by default), read weights-only (CheckpointError)."""
        from aline.runs.checkpoint import load_checkpoint_dict

        return load_checkpoint_dict(self.last_checkpoint if path is None else path, root=self.path)

    def model_state(self, path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
        """The model weights of a checkpoint; one inside this folder is opened without following links."""
        from aline.runs.checkpoint import load_checkpoint, model_state

        root = self.path if self.owns(path) else None
        return model_state(load_checkpoint(path, root=root), path)

    # --- writing ------------------------------------------------------------------------------------------

    def open_append(self, name: str) -> io.TextIOWrapper:
        return files.open_for_append(self.path, self.file(name))

    def open_write(self, name: str) -> io.TextIOWrapper:
        return files.open_for_write(self.path, self.file(name))

    def truncate(self, name: str, size: int) -> None:
        files.truncate(self.path, self.file(name), size)

    def output_dir(self, name: str) -> Path:
        """The sub-folder ``name`` (created if absent) for a tool's outputs (``eval/``): refused when it, or
        anything in it, is a symbolic link, since files written there would land wherever the link leads."""
        path = files.inside(self.path, self.path / name)
        if files.is_link(path):
            raise RunFileError(f"{path}: is a symbolic link; refusing to write through it")
        path.mkdir(exist_ok=True)
        links = sorted(p for p in path.iterdir() if files.is_link(p))
        if links:
            raise RunFileError(
                f"{', '.join(map(str, links))}: a symbolic link in {path}; refusing to write through it"
            )
        return path

    # --- resume -------------------------------------------------------------------------------------------

    def links(self) -> list[Path]:
        """Run files (and ``checkpoints/`` or anything in it) that are symbolic links."""
        found = [self.file(n) for n in WRITTEN_FILES if files.is_link(self.file(n))]
        if files.is_link(self.checkpoints):
            found.append(self.checkpoints)
        elif self.checkpoints.is_dir():
            found += sorted(p for p in self.checkpoints.iterdir() if files.is_link(p))
        return found

    def not_files(self) -> list[Path]:
        """Run files that are there but are no regular file (a folder, a FIFO), links aside."""
        names = [self.file(n) for n in WRITTEN_FILES] + [self.last_checkpoint]
        found = []
        for path in names:
            try:
                mode = os.lstat(path).st_mode
            except OSError:
                continue
            if not stat.S_ISREG(mode) and not stat.S_ISLNK(mode):
                found.append(path)
        if self.checkpoints.exists() and not self.checkpoints.is_dir():
            found.append(self.checkpoints)
        return found

    def check_writable(self) -> None:
        """Refuse (RunFileError) a folder whose run files a resume would write through a link or cannot
        write at all (a folder in a file's place), or whose CSV logs have a header other than this
        version's (appending would misalign every column)."""
        links = self.links()
        if links:
            shown = ", ".join(str(p) for p in links)
            raise RunFileError(
                f"{shown}: a symbolic link where a run file should be; a resume writes only the run's own "
                "files, so replace the link with the file itself (or start a new run)"
            )
        odd = self.not_files()
        if odd:
            shown = ", ".join(str(p) for p in odd)
            raise RunFileError(f"{shown}: not a regular file where a run file should be; move it away")
        for name, header in CSV_HEADERS.items():
            self.check_header(name, header)

    def check_header(self, name: str, header: tuple[str, ...]) -> None:
        """The first line of the CSV log ``name`` (when there is one) is ``header``, else RunFileError."""
        path = self.file(name)
        try:
            with files.open_binary(self.path, path) as fh:
                first = fh.readline(1 << 16)
        except FileNotFoundError:
            return
        if not first.endswith(b"\n"):
            return  # an empty file or a header cut by a kill: the writer repairs it
        check_header_line(path, first, header)

    def never_started(self) -> bool:
        """Whether the run was stopped before its first checkpoint: no ``last.pt``, no step in status.json
        and no data row in metrics.csv. Such a run is started again from scratch by ``--resume``."""
        if self.last_checkpoint.exists() or files.is_link(self.last_checkpoint):
            return False
        status = self.status_or_empty()
        if status_int(status, "iteration") or status_int(status, "epoch"):
            return False
        try:
            with files.open_binary(self.path, self.file(C.METRICS_FILE)) as fh:
                fh.readline()
                return not fh.read(1)
        except FileNotFoundError:
            return True
        except (RunFileError, OSError):
            return False

    def remove_leftovers(self) -> list[Path]:
        """Delete the temporary files killed writers left (only the owner may: no writer is live)."""
        removed = []
        for sub, patterns in TMP_GLOBS.items():
            folder = self.path / sub if sub else self.path
            if files.is_link(folder) or not folder.is_dir():
                continue
            for pattern in patterns:
                for tmp in folder.glob(pattern):
                    with contextlib.suppress(OSError):
                        if not stat.S_ISREG(os.lstat(tmp).st_mode):
                            continue
                        tmp.unlink()
                        removed.append(tmp)
        return removed

    def owner(self) -> RunOwner:
        """The (not yet acquired) lock of this folder."""
        from aline.runs.ownership import RunOwner

        return RunOwner(self.path)
