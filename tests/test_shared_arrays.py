"""aline.data.shared: one on-disk copy of the splits, mapped read-only by every rank."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from aline.config import DataConfig
from aline.data import load_splits
from aline.data.dataset import Normalizer, WindowDataset
from aline.data.shared import SharedSplit, open_splits, read_only_splits, shared_splits
from aline.simulate import simulate


@pytest.fixture(scope="module")
def splits(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("data")
    simulate(subjects=12, days=5, seed=1, out_dir=out, progress=False)
    return load_splits(DataConfig(dir=str(out)), splits=("train", "val"))


def test_handles_are_small_and_map_the_same_arrays(splits) -> None:
    with shared_splits(splits) as handles:
        folder = handles["train"].folder.parent
        # What a spawned rank receives: a few hundred bytes, not the data.
        payload = pickle.dumps(handles)
        assert len(payload) < 4000 < splits["train"].features.nbytes
        opened = open_splits(pickle.loads(payload))
        for name, raw in splits.items():
            mapped = opened[name]
            assert mapped.path == raw.path and mapped.feature_names == raw.feature_names
            # The asked feature's name travels in the handle as the str it was, not as a 0-d array.
            assert type(mapped.asked_feature) is str and mapped.asked_feature == raw.asked_feature
            for key in ("features", "z", "sigma", "post_mean", "y", "query_value", "p_bayes"):
                value = getattr(mapped, key)
                assert isinstance(value, np.memmap) and not value.flags.writeable, key
                np.testing.assert_array_equal(value, getattr(raw, key), err_msg=key)
            # Ids are text: mapped as fixed-width strings, handed back as Python str (one per window).
            assert list(mapped.window_id) == list(raw.window_id)
            assert all(type(w) is str for w in mapped.window_id)
        del opened, mapped, value
    assert not folder.exists()


def test_dataset_over_the_maps_serves_the_in_memory_batches(splits) -> None:
    norm = Normalizer.fit(splits["train"])
    with shared_splits(splits) as handles:
        mapped = open_splits(handles)
        assert Normalizer.fit(mapped["train"]).mean.tolist() == norm.mean.tolist()
        in_memory = WindowDataset(splits["val"], norm)
        shared = WindowDataset(mapped["val"], norm)
        idx = [5, 0, len(in_memory) - 1, 5]
        a, b = in_memory.__getitems__(idx), shared.__getitems__(idx)
        assert set(a) == set(b)
        for key in a:
            assert b[key].equal(a[key]), key
        # Independent reference: whole-array normalisation as the model saw it before batching.
        x, mask = norm.transform(splits["val"].features)
        np.testing.assert_array_equal(b["x"].numpy(), x[idx])
        np.testing.assert_array_equal(b["mask"].numpy(), mask[idx])
        b["x"] += 1  # a batch is the caller's own memory, even over a read-only map
        del mapped, shared, b


def test_folder_is_removed_when_the_run_fails(splits, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), shared_splits(splits, parent=tmp_path) as handles:
        assert all(isinstance(h, SharedSplit) for h in handles.values())
        raise RuntimeError("training failed")
    assert list(tmp_path.iterdir()) == []


def test_in_memory_splits_pass_through(splits) -> None:
    assert open_splits(splits)["train"] is splits["train"]


def test_sharing_keeps_no_reference_to_the_in_memory_arrays(splits) -> None:
    """The launcher drops its copy once shared; the context manager must not keep it alive."""
    import gc
    import weakref

    from aline.data import RawSplit

    copy = {k: RawSplit(**{f: getattr(v, f) for f in v.__dataclass_fields__}) for k, v in splits.items()}
    features = np.array(copy["train"].features)  # a private array only `copy` refers to
    copy["train"] = RawSplit(**{**vars(copy["train"]), "features": features})
    alive = weakref.ref(features)
    del features
    with shared_splits(copy) as handles:
        del copy
        gc.collect()
        assert alive() is None
        assert open_splits(handles)["train"].features.shape[0] == len(splits["train"])


def test_read_only_splits_refuse_writes_to_every_array(tmp_path_factory) -> None:
    """What forked ranks read in place: a write raises rather than copying a page into the writer."""
    out = tmp_path_factory.mktemp("ro")
    simulate(subjects=6, days=3, seed=2, out_dir=out, progress=False)
    splits = load_splits(DataConfig(dir=str(out)), splits=("train",))
    raw = splits["train"]
    before = raw.features.copy()
    read_only_splits(splits)
    arrays = {k: v for k, v in vars(raw).items() if isinstance(v, np.ndarray)}
    assert {"features", "z", "y", "answers", "window_id"} <= set(arrays)
    for key, value in arrays.items():
        with pytest.raises(ValueError, match="read-only"):
            value[0] = value[1]
        assert not value.flags.writeable, key
    np.testing.assert_array_equal(raw.features, before)
    assert raw.asked_feature == "symptom_score"  # not an array: left as it was
