"""One copy of the loaded splits for all processes of a multi-process run.

``dist.nproc_per_node=N`` starts N training processes from the one that loaded and validated the data.
Forked ranks (``dist.start_method``) inherit its arrays: the pages stay shared as long as nobody writes
them, which :func:`read_only_splits` makes sure of. Spawned ranks are fresh interpreters; handing them the
arrays would pickle a private copy into every process. Instead the loading process writes
each array once as a ``.npy`` file in a temporary folder and passes small picklable handles
(:class:`SharedSplit`); every rank maps the files read-only (``np.load(mmap_mode="r")``), so the pages sit
once in the page cache and are shared by all ranks. :class:`aline.data.dataset.WindowDataset` indexes the maps
directly and copies only the batch it serves.

The folder is under the system temp folder (``$TMPDIR``, else ``/tmp``) and removed when the run ends.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aline.data import RawSplit

__all__ = ["SharedSplit", "open_splits", "read_only_splits", "share_splits", "shared_splits"]

# The RawSplit fields that hold arrays (every field but these three, which travel in the handle), so a field
# added to RawSplit is shared without a change here. Ids are text: they are mapped as fixed-width strings.
_HANDLE_FIELDS = ("path", "feature_names", "asked_feature")
_ARRAY_FIELDS = tuple(f.name for f in dataclasses.fields(RawSplit) if f.name not in _HANDLE_FIELDS)
_TEXT_FIELDS = frozenset({"window_id", "subject_id"})


@dataclass(frozen=True)
class SharedSplit:
    """Where one split's arrays lie; cheap to pickle. :meth:`open` maps them without reading them."""

    path: Path  # the data file the arrays came from, for messages
    folder: Path
    feature_names: tuple[str, ...]
    present: tuple[str, ...]  # array fields that were written (the split's optional ones may be absent)
    asked_feature: str | None = None

    def open(self) -> RawSplit:
        arrays = {k: np.load(self.folder / f"{k}.npy", mmap_mode="r") for k in self.present}
        for key in _TEXT_FIELDS & set(self.present):
            arrays[key] = arrays[key].astype(object)  # ids as Python str again (one per window: small)
        return RawSplit(
            path=self.path,
            feature_names=self.feature_names,
            asked_feature=self.asked_feature,
            **{k: arrays.get(k) for k in _ARRAY_FIELDS},
        )


def share_splits(splits: Mapping[str, RawSplit], folder: Path) -> dict[str, SharedSplit]:
    """Write every split's arrays under ``folder/<split>/`` and return the handles."""
    out = {}
    for name, raw in splits.items():
        where = folder / name
        where.mkdir(parents=True)
        present = []
        for key in _ARRAY_FIELDS:
            value = getattr(raw, key)
            if value is not None:
                if key in _TEXT_FIELDS:
                    value = value.astype(str)  # object arrays cannot be mapped; fixed-width text can
                np.save(where / f"{key}.npy", np.ascontiguousarray(value), allow_pickle=False)
                present.append(key)
        out[name] = SharedSplit(raw.path, where, tuple(raw.feature_names), tuple(present), raw.asked_feature)
    return out


@contextmanager
def shared_splits(
    splits: Mapping[str, RawSplit], parent: str | Path | None = None
) -> Iterator[dict[str, SharedSplit]]:
    """:func:`share_splits` into a fresh temporary folder that is removed on exit, however it exits."""
    folder = Path(tempfile.mkdtemp(prefix="aline-shared-", dir=parent))
    try:
        handles = share_splits(splits, folder)
        # This generator's frame lives as long as the with-block: holding the arrays here would keep the
        # launching process's copy alive next to the ranks' maps.
        del splits
        yield handles
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def open_splits(splits: Mapping[str, RawSplit | SharedSplit]) -> dict[str, RawSplit]:
    """Map the shared splits; in-memory ones pass through (a one-process run shares nothing)."""
    return {k: v.open() if isinstance(v, SharedSplit) else v for k, v in splits.items()}


def read_only_splits(splits: Mapping[str, RawSplit]) -> None:
    """Mark every array of the splits read-only, in place: a write (which would copy the page into the
    writing rank, and is a bug anyway) raises instead."""
    for raw in splits.values():
        for key in _ARRAY_FIELDS:
            value = getattr(raw, key)
            if value is not None:
                value.flags.writeable = False
