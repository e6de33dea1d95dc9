"""Model-ready data: the feature normaliser (fitted on train, saved with the run) and the window dataset.

:mod:`aline.data` reads and validates the files into un-normalised ``RawSplit`` arrays; this module turns
them into what the model reads: standardised features with a missing-mask channel, batch by batch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from aline.contract import write_json_atomic
from aline.data import DataError, RawSplit

__all__ = ["Normalizer", "WindowDataset", "answer_channel", "keep_batch"]

_NORMALIZER_KIND = "aline.normalizer"
_NORMALIZER_VERSION = 1


# --- normalisation ------------------------------------------------------------------------------------


@dataclass
class Normalizer:
    """Per-feature mean/std (fitted on train, missing values ignored); a constant column gets std 1."""

    feature_names: tuple[str, ...]
    mean: np.ndarray  # [F] float64
    std: np.ndarray  # [F] float64, > 0

    @classmethod
    def fit(cls, raw: RawSplit) -> Normalizer:
        n_features = raw.features.shape[-1]
        mean = np.zeros(n_features)
        std = np.zeros(n_features)
        for j in range(n_features):
            # One feature at a time (never a second copy of all features: the array may be a map shared
            # by every rank); one contiguous pass over its observed values, sums in float64.
            col = raw.features[:, :, j].reshape(-1)  # [N*24] float32
            v = col[~np.isnan(col)]
            if not len(v):
                continue
            mean[j] = v.mean(dtype=np.float64)
            d = v - np.float32(mean[j])
            std[j] = math.sqrt(np.square(d, out=d).sum(dtype=np.float64) / len(v))
        # Constant (or never observed) columns carry no scale; std 1 leaves them as plain offsets.
        flat_col = (std <= 1e-9 * np.abs(mean)) | (std == 0)
        std = np.where(flat_col, 1.0, std)
        return cls(tuple(raw.feature_names), mean, std)

    def transform(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``features`` [N, 24, F] → (x standardised with missing → 0, mask with 1 = observed), float32."""
        if features.shape[-1] != len(self.feature_names):
            raise DataError(
                f"normalizer has {len(self.feature_names)} features, the data has {features.shape[-1]}"
            )
        seen = ~np.isnan(features)
        mean = self.mean.astype(np.float32)
        std = self.std.astype(np.float32)
        x = np.where(seen, (features - mean) / std, np.float32(0)).astype(np.float32, copy=False)
        return x, seen.astype(np.float32)

    def check_features(self, names: Sequence[str], where: str = "the data") -> None:
        if tuple(names) != self.feature_names:
            extra = [n for n in names if n not in self.feature_names]
            lacking = [n for n in self.feature_names if n not in names]
            detail = (
                f"only in data: {extra}; only in normalizer: {lacking}"
                if extra or lacking
                else "order differs"
            )
            raise DataError(
                f"normalizer features {list(self.feature_names)} do not match {where} "
                f"{list(names)} ({detail})"
            )

    def save(self, path: str | Path) -> None:
        write_json_atomic(
            path,
            {
                "kind": _NORMALIZER_KIND,
                "version": _NORMALIZER_VERSION,
                "feature_names": list(self.feature_names),
                "mean": [float(v) for v in self.mean],
                "std": [float(v) for v in self.std],
            },
        )

    @classmethod
    def load(cls, path: str | Path) -> Normalizer:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise DataError(f"{path}: normalizer file not found") from None
        except (OSError, UnicodeDecodeError) as err:
            raise DataError(f"{path}: not a readable normalizer JSON file ({err})") from None
        return cls.from_text(text, path)

    @classmethod
    def from_text(cls, text: str, path: str | Path) -> Normalizer:
        """The normaliser that ``text`` (the JSON of ``path``) holds, or a DataError naming the file."""
        try:
            payload = json.loads(text)
        except (json.JSONDecodeError, RecursionError, ValueError) as err:
            why = "nested too deeply" if isinstance(err, RecursionError) else err
            raise DataError(f"{path}: not a readable normalizer JSON file ({why})") from None
        if not isinstance(payload, dict) or payload.get("kind") != _NORMALIZER_KIND:
            raise DataError(f'{path}: not a normalizer file (expected "kind": "{_NORMALIZER_KIND}")')
        if payload.get("version") != _NORMALIZER_VERSION:
            raise DataError(
                f"{path}: normalizer version {payload.get('version')!r}, expected {_NORMALIZER_VERSION}"
            )
        names, mean, std = payload.get("feature_names"), payload.get("mean"), payload.get("std")
        if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
            raise DataError(f'{path}: "feature_names" must be a non-empty list of column names')
        if len(set(names)) != len(names):
            raise DataError(f'{path}: "feature_names" lists a column twice')
        arrays = {}
        for key, value in (("mean", mean), ("std", std)):
            ok = isinstance(value, list) and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
            )
            if not ok or len(value) != len(names):
                raise DataError(f'{path}: "{key}" must be a list of {len(names)} numbers, one per feature')
            arrays[key] = np.asarray(value, dtype=np.float64)
        if (
            not np.isfinite(arrays["mean"]).all()
            or not (np.isfinite(arrays["std"]) & (arrays["std"] > 0)).all()
        ):
            raise DataError(f'{path}: "mean" must be finite and "std" finite and > 0')
        return cls(tuple(names), arrays["mean"], arrays["std"])


# --- tensors ------------------------------------------------------------------------------------------


def answer_channel(x: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normalised inputs ``[N, 24, F]`` with the empty answer channel appended, ``[N, 24, F + 1]``: the
    column that revealed answers go into (value and mask bit), so that an answer never overwrites what
    the day's own logging says (:mod:`aline.model.asking`)."""
    pad = np.zeros((*x.shape[:-1], 1), dtype=x.dtype)
    return np.concatenate([x, pad], axis=-1), np.concatenate([mask, pad.astype(mask.dtype)], axis=-1)


_BLOCK_WINDOWS = 1 << 14  # windows per block when a [N, 24] array is computed in pieces


class WindowDataset(torch.utils.data.Dataset):
    """All windows of one split; items and batches are dicts of tensors.

    Keys: ``index`` (dataset row), ``x`` and ``mask`` [.., 24, F], and when the split has them ``z``,
    ``sigma`` and ``post_mean`` [.., 24, Z], ``y``, ``query_value`` [.., 24]; with ``pool`` given, ``pool``
    [.., 24] (1 = askable) and ``answer`` [.., 24] (the normalised answer, 0 where there is none). With
    ``answer_channel``, ``x`` and ``mask`` carry one more, empty, column for revealed answers
    (:func:`aline.model.asking.answer_channel`). Use
    ``collate_fn=keep_batch`` in a DataLoader: it then fetches whole batches through ``__getitems__``.

    The split's arrays are indexed as they are, never copied: they may be read-only memory maps shared by
    every rank (aline.data.shared). Features are normalised per batch, with the same float32 arithmetic
    as :meth:`Normalizer.transform` on the whole array, so the values are identical either way.
    """

    def __init__(
        self,
        raw: RawSplit,
        normalizer: Normalizer,
        pool: np.ndarray | None = None,
        *,
        answer_channel: bool = False,
    ) -> None:
        normalizer.check_features(raw.feature_names, where=str(raw.path))
        self.window_id = raw.window_id  # [N] ids as written, for writing predictions back per window
        self._normalizer = normalizer
        self._answer_channel = answer_channel
        self._features = raw.features  # [N, 24, F] float32, NaN where missing
        self._arrays: dict[str, np.ndarray] = {}
        optional = {
            "z": raw.z,
            "y": raw.y,
            "sigma": raw.sigma,
            "post_mean": raw.post_mean,
            "query_value": raw.query_value,
        }
        for key, value in optional.items():
            if value is not None:
                self._arrays[key] = value if value.dtype == np.float32 else value.astype(np.float32)
        if pool is not None:
            self._arrays["pool"] = np.ascontiguousarray(pool, dtype=np.float32)  # [N, 24]
            answer = np.zeros(pool.shape, dtype=np.float32)  # [N, 24]
            if raw.answers is not None:
                j = normalizer.feature_names.index(raw.asked_feature)
                mean, std = normalizer.mean[j], normalizer.std[j]
                # In blocks of windows: the float64 arithmetic's temporaries stay small beside the shared
                # data, instead of one temporary the size of the whole array.
                for i in range(0, len(answer), _BLOCK_WINDOWS):
                    given = raw.answers[i : i + _BLOCK_WINDOWS]  # [b, 24] float32, NaN where none
                    answer[i : i + _BLOCK_WINDOWS] = np.where(np.isnan(given), 0.0, (given - mean) / std)
            self._arrays["answer"] = answer

    def __len__(self) -> int:
        return int(self._features.shape[0])

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {k: v[0] for k, v in self.__getitems__([i]).items()}

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Tensor]:
        idx = np.asarray(indices, dtype=np.int64)  # [B]
        x, mask = self._normalizer.transform(self._features[idx])  # [B, 24, F] each
        if self._answer_channel:
            x, mask = answer_channel(x, mask)  # [B, 24, F + 1]
        batch = {
            "index": torch.from_numpy(idx),
            "x": torch.from_numpy(x),
            "mask": torch.from_numpy(mask),
        }
        for key, value in self._arrays.items():
            # Fancy indexing copies, so the tensor owns writable memory even over a read-only map.
            batch[key] = torch.from_numpy(value[idx])
        return batch


def keep_batch(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """Collate function for :class:`WindowDataset`: ``__getitems__`` already built the batch."""
    return batch
