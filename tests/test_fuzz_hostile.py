"""Fuzz harness (issue 30): random malformed run files, data files and configs against every entry point.

Each example lays out a copy of a real run beside an "outside" folder (another run, a victim file) and
the data, damages one file (random bytes, edits of the real file, hostile values, a link out of the
folder, a folder in its place, nothing), then runs ``evaluate``, ``predict``, ``train --resume``,
``train`` and the monitor's readers. Every one must exit 0 or 2 with no traceback, and nothing in the
outside folder or the data may change.

Two profiles:

* fast, in the default test run: each CLI's ``main()`` in this process (what ``python -m`` runs, less
  the interpreter's start), a few examples per target, the same ones on every run (derandomized);
* long, opt-in: ``pytest -m fuzz_long tests/test_fuzz_hostile.py`` (or ``ALINE_FUZZ_LONG=1``; add
  ``-s`` to see the counts, or ``ALINE_FUZZ_REPORT=FILE`` to have them appended to FILE as JSON lines;
  ``ALINE_FUZZ_EXAMPLES=N`` sets examples per target, 100 by default). Random
  examples, N per target in this process, and a sample (N/30, at least 2) per target with every CLI run as
  ``python -m`` in a fresh interpreter; those also damage checkpoint archives byte by byte (read by torch's
  C++ code, so never in the test process itself).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers.fuzzkit import (
    Example,
    Outcome,
    check,
    checkpoint_payloads,
    config_payloads,
    in_process,
    lay_out,
    monitor_reads,
    mutated,
    normalizer_payloads,
    place,
    placement,
    retarget_data,
    status_payloads,
    subprocess_cli,
)
from helpers.hostile import Made, make_run, train_args
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from aline import contract as C

LONG_EXAMPLES = int(os.environ.get("ALINE_FUZZ_EXAMPLES", "100"))
COMMON = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    "database": None,
}
FAST = settings(max_examples=6, derandomize=True, **COMMON)
# No shrinking in the long profile: a damaged Parquet file or checkpoint shrinks for many minutes, and the
# failing example is printed as found (the fast profile's derandomized examples shrink as usual).
SLOW = settings(max_examples=LONG_EXAMPLES, phases=[Phase.explicit, Phase.reuse, Phase.generate], **COMMON)
COUNTS: dict[str, int] = {}


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Made:
    return make_run(tmp_path_factory.mktemp("fuzz"))


def _example(made: Made) -> tuple[tempfile.TemporaryDirectory, Example]:
    tmp = tempfile.TemporaryDirectory(prefix="aline-fuzz-")
    example = lay_out(Path(tmp.name), made.run, made.data)
    retarget_data(example)
    return tmp, example


def _count(target: str) -> None:
    COUNTS[target] = COUNTS.get(target, 0) + 1


RunCLI = Callable[[str, list[str]], Outcome]


def _attack_run(made: Made, run_cli: RunCLI, file: str, how: str, content: bytes | None) -> None:
    """One damaged run file, then every reader of a run folder."""
    tmp, ex = _example(made)
    with tmp:
        before = ex.watched()
        path = ex.run / file
        place(path, how, content, ex.outside)
        monitor_reads(ex.run.parent)
        val = ex.data / "synthetic_migraine_val.csv"
        check(run_cli("aline.predict", [ex.run, val]), f"predict with {file} {how}")
        check(run_cli("aline.evaluate", [ex.run, "--quiet", "--no-figures"]), f"evaluate with {file} {how}")
        check(run_cli("aline.train", ["--resume", ex.run, "trainer.epochs=2"]), f"resume with {file} {how}")
        monitor_reads(ex.run.parent)
        assert ex.watched() == before, f"{file} {how}: something outside the run folder changed"
        assert not Path("/tmp/aline-fuzz-pwned").exists()
    _count(f"run file {file}")


def _attack_data(made: Made, run_cli: RunCLI, split: str, fmt: str, content: bytes) -> None:
    """One damaged data file, as a new run's training data, as predict's input and as evaluate's data."""
    tmp, ex = _example(made)
    with tmp:
        name = f"synthetic_migraine_{split}.{fmt}"
        for other in ex.data.glob(f"synthetic_migraine_{split}.*"):
            other.unlink()
        (ex.data / name).write_bytes(content)
        runs = ex.base / "new_runs"
        before = ex.watched()
        target = ex.data / name
        check(run_cli("aline.predict", [ex.run, target]), f"predict on a damaged {name}")
        check(
            run_cli("aline.evaluate", [ex.run, "--split", split, "--quiet", "--no-figures"]),
            f"evaluate on a damaged {name}",
        )
        check(run_cli("aline.train", train_args(ex.data, runs, "trainer.epochs=1")), f"train on {name}")
        assert ex.watched() == before, f"{name}: the data or something outside a run folder changed"
    _count(f"data {fmt}")


# --- strategies per target -------------------------------------------------------------------------------


def _run_file_strategy(made: Made, file: str, byte_level: bool) -> st.SearchStrategy:
    if file == "last":
        last = (made.run / C.CHECKPOINT_DIR / C.LAST_CHECKPOINT).read_bytes()
        return placement(checkpoint_payloads(last, byte_level))
    if file == C.LOCK_FILE:  # a finished run holds none: what a live or killed owner would have written
        original = b'{"host": "elsewhere", "pid": 12345, "token": "0123456789abcdef"}'
    else:
        original = (made.run / file).read_bytes()
    if file == C.STATUS_FILE:
        return placement(status_payloads(original))
    if file == C.NORMALIZER_FILE:
        return placement(normalizer_payloads(original))
    if file == C.CONFIG_FILE:
        return placement(config_payloads(original))
    return placement(mutated(original) | st.binary(max_size=200))  # the CSV logs, train.log, owner.lock


def _strategy_key(file: str) -> str:
    return "last" if file in ("last", "best") else file


def _file_path(made: Made, file: str) -> str:
    if file == "last":
        return f"{C.CHECKPOINT_DIR}/{C.LAST_CHECKPOINT}"
    if file == "best":
        return json.loads((made.run / C.STATUS_FILE).read_text())["best"]["checkpoint"]
    return file


def _csv_strategy(made: Made, split: str) -> st.SearchStrategy[bytes]:
    original = (made.data / f"synthetic_migraine_{split}.csv").read_bytes()
    cells = st.sampled_from(["", "nan", "inf", "-inf", "1e39", "NA", '"', "x", "0.5", "25", "-1", " 3"])
    return mutated(original) | _cell_edits(original, cells)


@st.composite
def _cell_edits(draw: st.DrawFn, original: bytes, cells: st.SearchStrategy[str]) -> bytes:
    lines = original.decode().split("\n")
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(lines) - 2))
        parts = lines[i].split(",")
        parts[draw(st.integers(0, len(parts) - 1))] = draw(cells | st.text(max_size=5))
        lines[i] = ",".join(parts)
    return "\n".join(lines).encode("utf-8", "surrogatepass")


@st.composite
def _parquet_bytes(draw: st.DrawFn, made: Made, split: str) -> bytes:
    import io

    frame = pd.read_csv(made.data / f"synthetic_migraine_{split}.csv")
    column = draw(st.sampled_from(list(frame.columns)))
    edit = draw(st.sampled_from(["float_special", "text", "drop", "nulls", "half", "bytes", "cut"]))
    table = pa.Table.from_pandas(frame, preserve_index=False)
    if edit in ("float_special", "half"):
        values = frame[column].to_numpy(dtype="float64").copy()
        rows = draw(st.lists(st.integers(0, len(values) - 1), min_size=1, max_size=30))
        special = draw(st.sampled_from([float("nan"), float("inf"), 9.3e18, -1e19, 1e39, 0.5]))
        values[rows] = special if edit == "float_special" else values[rows] + 0.5
        table = table.set_column(table.column_names.index(column), column, pa.array(values))
    elif edit == "text":
        texts = frame[column].astype(str).tolist()
        texts[draw(st.integers(0, len(texts) - 1))] = draw(st.text(max_size=5))
        table = table.set_column(table.column_names.index(column), column, pa.array(texts, pa.string()))
    elif edit == "drop":
        table = table.drop([column])
    elif edit == "nulls":
        mask = [draw(st.booleans()) for _ in range(8)] * (len(frame) // 8 + 1)
        table = table.set_column(
            table.column_names.index(column),
            column,
            pa.array(
                frame[column].tolist(), mask=pa.array(mask[: len(frame)]).to_numpy(zero_copy_only=False)
            ),
        )
    buf = io.BytesIO()
    pq.write_table(table, buf)
    data = buf.getvalue()
    if edit == "bytes":
        return draw(st.binary(max_size=300))
    if edit == "cut":
        return data[: draw(st.integers(0, len(data) - 1))]
    return data


# --- the fast profile (default run) ---------------------------------------------------------------------


RUN_FILES = [
    C.STATUS_FILE,
    C.NORMALIZER_FILE,
    C.CONFIG_FILE,
    "last",
    "best",
    C.METRICS_FILE,
    C.CALIBRATION_FILE,
    C.LOCK_FILE,
]


@pytest.mark.slow
def test_fuzz_run_files(made: Made) -> None:
    # One example damages one file, drawn from all of them: a few seconds per example in all.
    per_file = {file: _run_file_strategy(made, _strategy_key(file), byte_level=False) for file in RUN_FILES}
    damaged = st.sampled_from(RUN_FILES).flatmap(lambda f: st.tuples(st.just(f), per_file[f]))

    @settings(FAST, max_examples=3 * len(RUN_FILES))
    @given(damaged)
    def attack(drawn: tuple[str, tuple[str, bytes | None]]) -> None:
        file, placed = drawn
        _attack_run(made, in_process, _file_path(made, file), *placed)

    attack()


@pytest.mark.slow
def test_fuzz_data_files(made: Made) -> None:
    content = st.one_of(
        st.tuples(st.just("csv"), _csv_strategy(made, "val")),
        st.tuples(st.just("parquet"), _parquet_bytes(made, "val")),
    )

    @settings(FAST, max_examples=10)
    @given(content)
    def attack(drawn: tuple[str, bytes]) -> None:
        _attack_data(made, in_process, "val", *drawn)

    attack()


@pytest.mark.slow
def test_fuzz_config_file(made: Made, tmp_path: Path) -> None:
    original = (made.run / C.CONFIG_FILE).read_bytes()

    @settings(FAST, max_examples=5)
    @given(config_payloads(original))
    def attack(content: bytes) -> None:
        path = tmp_path / "fuzz.yaml"
        path.write_bytes(content)
        argv = ["--config", path, *train_args(made.data, tmp_path / "r", "trainer.epochs=1")]
        check(in_process("aline.train", argv), "train --config")

    attack()


# --- the long profile (opt-in) ---------------------------------------------------------------------------


def _long_targets(made: Made, tmp_path: Path, runner: str) -> dict[str, Callable[[], None]]:
    """Each target of the long profile as a function that runs its examples (and raises on a failure)."""
    run_cli = {"in_process": in_process, "python_m": subprocess_cli}[runner]
    # A fresh interpreter per CLI call costs seconds: it gets a sample; the in-process runs get the volume.
    n = LONG_EXAMPLES if runner == "in_process" else max(2, LONG_EXAMPLES // 30)
    profile = settings(SLOW, max_examples=n)
    # Byte-level damage inside a checkpoint archive is read by torch's C++ code: a fresh process only.
    byte_level = runner == "python_m"
    targets: dict[str, Callable[[], None]] = {}

    def run_file_target(file: str) -> Callable[[], None]:
        @profile
        @given(_run_file_strategy(made, _strategy_key(file), byte_level=byte_level))
        def attack(placed: tuple[str, bytes | None]) -> None:
            _attack_run(made, run_cli, _file_path(made, file), *placed)

        return attack

    def data_target(split: str, fmt: str) -> Callable[[], None]:
        content = _csv_strategy(made, split) if fmt == "csv" else _parquet_bytes(made, split)

        @profile
        @given(content)
        def attack(data: bytes) -> None:
            _attack_data(made, run_cli, split, fmt, data)

        return attack

    for file in [*RUN_FILES, C.TOPK_FILE, C.LOG_FILE]:
        targets[f"run file {file}"] = run_file_target(file)
    for split in ("train", "val"):
        for fmt in ("csv", "parquet"):
            targets[f"data {split} {fmt}"] = data_target(split, fmt)

    original = (made.run / C.CONFIG_FILE).read_bytes()

    @profile
    @given(config_payloads(original))
    def attack_config(content: bytes) -> None:
        path = tmp_path / "fuzz.yaml"
        path.write_bytes(content)
        argv = ["--config", path, *train_args(made.data, tmp_path / "r", "trainer.epochs=1")]
        check(run_cli("aline.train", argv), "train --config")
        _count("config")

    targets["config --config"] = attack_config
    return targets


@pytest.mark.fuzz_long
def test_fuzz_long_profile(made: Made, tmp_path: Path) -> None:
    """Every target with both runners; all failures are collected and reported together, with how many
    examples each target ran (also appended to ``$ALINE_FUZZ_REPORT`` as JSON lines)."""
    # Collected only when asked for (tests/conftest.py deselects it otherwise).
    report = os.environ.get("ALINE_FUZZ_REPORT")
    failures = []
    for runner in ("in_process", "python_m"):
        for name, attack in _long_targets(made, tmp_path, runner).items():
            COUNTS.clear()
            started = time.monotonic()
            try:
                attack()
                failed = None
            except Exception as err:  # noqa: BLE001 - collected, reported below
                failed = f"{type(err).__name__}: {err}"[:3000]
                failures.append(f"[{runner}] {name}: {failed}")
            line = {
                "runner": runner,
                "target": name,
                "examples": sum(COUNTS.values()),
                "seconds": round(time.monotonic() - started),
                "failed": failed is not None,
            }
            print("fuzz long profile:", line, flush=True)
            if report:
                with open(report, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(line) + "\n")
    assert not failures, "\n\n".join(failures)
