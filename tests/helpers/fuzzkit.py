"""The fuzz harness's parts: Hypothesis strategies for hostile files, a layout with an "outside" to
watch, and two ways to run a CLI (in this process, or as ``python -m`` in a fresh interpreter).

Used by tests/test_fuzz_hostile.py; see its docstring for the profiles.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from hypothesis import strategies as st

from aline import contract as C
from helpers.hostile import ROOT, env, snapshot

# --- running a CLI -----------------------------------------------------------------------------------------


@dataclass
class Outcome:
    code: int | None
    output: str  # stdout and stderr together


def in_process(module: str, argv: list[str]) -> Outcome:
    """``module.main(argv)`` in this process, its output captured; an exception that escapes ``main`` is
    what the console would show as a traceback, and is returned as one."""
    import torch

    mod = importlib.import_module(module)
    out = io.StringIO()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            try:
                code = mod.main([str(a) for a in argv])
            except SystemExit as exit_:  # argparse
                code = exit_.code if isinstance(exit_.code, int) else 1
            except BaseException:  # noqa: BLE001 - that is the finding
                return Outcome(1, out.getvalue() + traceback.format_exc())
    finally:
        torch.set_num_threads(threads)
        _drop_log_handlers()
    return Outcome(code, out.getvalue())


def _drop_log_handlers() -> None:
    import logging

    from aline.training.handlers import LOGGER_NAME

    logger = logging.getLogger(LOGGER_NAME)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()


def subprocess_cli(module: str, argv: list[str], timeout: float = 240) -> Outcome:
    """``python -m module argv`` in a fresh interpreter, as a user runs it."""
    try:
        proc = subprocess.run(
            [sys.executable, "-m", module, *map(str, argv)],
            env=env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
        )
    except subprocess.TimeoutExpired as err:
        return Outcome(None, f"timed out after {timeout} s: {err}")
    return Outcome(proc.returncode, proc.stdout + proc.stderr)


def check(outcome: Outcome, what: str) -> None:
    """Exit 0 or 2, and no traceback in what the user sees."""
    assert "Traceback" not in outcome.output, f"{what}: traceback\n{outcome.output[-4000:]}"
    assert outcome.code in (0, 2), f"{what}: exit {outcome.code}\n{outcome.output[-4000:]}"


def monitor_reads(root: Path) -> None:
    """Everything the monitor reads of each run folder in ``root``, as the page calls it."""
    from aline.monitor.heads import headlines
    from aline.monitor.runview import (
        RunData,
        config_diff,
        list_runs,
        progress,
        summarize,
        table_csv_bytes,
    )

    for name in list_runs(root):
        run = RunData(root, name)
        run.refresh(tables=False)
        summary = summarize(run)
        assert "\n" not in summary.note, summary.note
        run.refresh(tables=True)
        summarize(run)
        progress(run, time.time())
        cfg, _ = run.config()
        if cfg is not None:
            config_diff({name: cfg, "other": {}})
        run.max_epochs()
        run.newest_row(C.SPLIT_VAL)
        headlines(run)
        for which in ("metrics", "calibration", "topk"):
            table_csv_bytes([run], which)


# --- where an example runs ---------------------------------------------------------------------------------


@dataclass
class Example:
    """``base/runs/<run>`` (the run under attack), ``base/outside`` (another run and a victim file, what
    links lead to) and ``base/data`` (the run's data): the last two must never change."""

    base: Path
    run: Path
    outside: Path
    data: Path

    def watched(self) -> dict[str, dict[str, tuple[bytes, int]]]:
        return {"outside": snapshot(self.outside), "data": snapshot(self.data)}


def lay_out(base: Path, run: Path, data: Path) -> Example:
    runs = base / "runs"
    runs.mkdir(parents=True)
    mine = runs / run.name
    shutil.copytree(run, mine)
    outside = base / "outside"
    shutil.copytree(run, outside / "other_run")
    (outside / "victim.csv").write_text("".join(f"{i},{i * i}\n" for i in range(50)))
    new_data = base / "data"
    shutil.copytree(data, new_data)
    return Example(base, mine, outside, new_data)


def retarget_data(example: Example) -> None:
    """Point the copied run's config at the copied data (what evaluate reads)."""
    path = example.run / C.CONFIG_FILE
    cfg = path.read_text()
    old = next(line for line in cfg.splitlines() if line.strip().startswith("dir:") and "data" in line)
    path.write_text(cfg.replace(old, f"  dir: {example.data}", 1))


# --- hostile contents --------------------------------------------------------------------------------------

json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)


def _nested(inner: st.SearchStrategy) -> st.SearchStrategy:
    return st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)


json_values = st.recursive(json_leaves, _nested, max_leaves=12)
HOSTILE_PATHS = [
    "../outside/victim.csv",
    "../../outside/victim.csv",
    "checkpoints/../../../outside/victim.csv",
    "/etc/hostname",
    "checkpoints",
    "checkpoints/",
    "",
    ".",
    "..",
    "checkpoints/last.pt",
    "checkpoints/nope.pt",
    "config.yaml",
    "checkpoints/a\x00b",
]
paths = st.sampled_from(HOSTILE_PATHS) | st.text(max_size=30)


def _dumps(value: object) -> bytes:
    return json.dumps(value).encode()


def deep(opener: bytes) -> st.SearchStrategy[bytes]:
    return st.integers(min_value=200, max_value=200_000).map(lambda n: opener * n)


@st.composite
def mutated(draw: st.DrawFn, original: bytes, byte_level: bool = True) -> bytes:
    """``original`` after a few random edits: truncation, byte flips, insertions, deletions, line-end
    changes, a byte order mark, a non-UTF-8 byte."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(
            st.sampled_from(
                ["truncate", "insert", "delete", "cr", "crlf", "bom", "latin1", "blank", "dup"]
                + (["flip"] if byte_level else [])
            )
        )
        n = len(data)
        at = draw(st.integers(0, max(n - 1, 0)))
        if op == "truncate":
            del data[at:]
        elif op == "flip" and n:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        elif op == "cr":
            data = bytearray(bytes(data).replace(b"\n", b"\r"))
        elif op == "crlf":
            data = bytearray(bytes(data).replace(b"\n", b"\r\n"))
        elif op == "bom":
            data[0:0] = b"\xef\xbb\xbf"
        elif op == "latin1":
            data[at:at] = b"\xe9"
        elif op == "blank":
            cut = bytes(data).find(b"\n", at)
            if cut >= 0:
                data[cut + 1 : cut + 1] = b"\n"
        elif op == "dup":
            start = bytes(data).rfind(b"\n", 0, at) + 1
            end = bytes(data).find(b"\n", at)
            if end >= 0:
                data[end + 1 : end + 1] = data[start : end + 1]
    return bytes(data)


def status_payloads(original: bytes) -> st.SearchStrategy[bytes]:
    now = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    fields = st.fixed_dictionaries(
        {},
        optional={
            "state": st.sampled_from([*C.STATES, "interrupted", ""]) | st.text(max_size=8) | json_values,
            "pid": st.sampled_from([0, -1, 1, os.getpid(), 2**63, 10**30]) | json_values,
            "host": st.just(socket.gethostname()) | json_values,
            "heartbeat": st.just(now) | st.sampled_from(["0001-01-01T00:00:00+14:00", "nope"]) | json_values,
            "updated": st.just(now) | json_values,
            "started": json_values,
            "finished": json_values,
            "epoch": json_values,
            "iteration": json_values,
            "max_epochs": json_values,
            "reason": st.sampled_from(["![x](http://127.0.0.1:9/x.png)", "<img src=x>"]) | json_values,
            "best": st.fixed_dictionaries(
                {}, optional={"checkpoint": paths | json_values, "value": json_values, "metric": json_values}
            )
            | json_values,
            "oracle": json_values,
        },
    )
    return st.one_of(
        fields.map(_dumps),
        json_values.map(_dumps),
        st.binary(max_size=200),
        deep(b"["),
        deep(b'{"best": '),
        mutated(original),
    )


def normalizer_payloads(original: bytes) -> st.SearchStrategy[bytes]:
    good = json.loads(original)
    names = good["feature_names"]
    edited = st.fixed_dictionaries(
        {
            "kind": st.just(good["kind"]) | json_values,
            "version": st.just(good["version"]) | json_values,
            "feature_names": st.just(names) | st.lists(st.text(max_size=6), max_size=4) | json_values,
            "mean": st.lists(
                st.floats(allow_nan=True, allow_infinity=True), min_size=len(names), max_size=len(names)
            )
            | json_values,
            "std": st.lists(
                st.floats(allow_nan=True, allow_infinity=True), min_size=len(names), max_size=len(names)
            )
            | json_values,
        }
    )
    return st.one_of(edited.map(_dumps), st.binary(max_size=200), deep(b"["), mutated(original))


def config_payloads(original: bytes) -> st.SearchStrategy[bytes]:
    tags = st.sampled_from(
        [
            b"!!python/object/apply:os.system ['touch /tmp/aline-fuzz-pwned']\n",
            b"seed: !!python/name:os.system\n",
            b"a: &a [*a]\n",
            b"trainer: &t {epochs: 2, again: *t}\n",
            b"trainer: {epochs: 2, batch_size: 0}\n",
            b"trainer: {init_from: ../outside/other_run}\n",
            b"data: {dir: ../outside}\n",
            b"run: {dir: ../outside}\n",
        ]
    )
    return st.one_of(
        st.binary(max_size=200),
        deep(b"["),
        deep(b"- "),
        tags,
        tags.map(lambda t: original + t),
        mutated(original),
    )


@st.composite
def checkpoint_payloads(draw: st.DrawFn, original: bytes, byte_level: bool) -> bytes:
    """Random bytes, a cut or edited copy of a real checkpoint, a raw pickle naming code, or a weights-only
    file of the wrong structure. ``byte_level``: bit flips inside the archive too (a fresh process only:
    a damaged archive is read by torch's C++ code)."""
    import torch

    kind = draw(st.sampled_from(["bytes", "cut", "mutated", "pickle", "structure", "saved_names"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "cut":
        return original[: draw(st.integers(0, len(original) - 1))]
    if kind == "mutated":
        return draw(mutated(original, byte_level=byte_level)) if byte_level else original[:-1] + b"\0"
    if kind == "pickle":
        from fractions import Fraction

        return pickle.dumps({"model": {"w": Fraction(1, 3)}}, protocol=draw(st.integers(0, 5)))
    buf = io.BytesIO()
    if kind == "structure":
        value = draw(json_values.filter(lambda v: not isinstance(v, float) or np.isfinite(v)))
        payload = draw(
            st.sampled_from(
                [
                    value,
                    {"model": value},
                    {"model": {"w": torch.zeros(2)}},
                    {"model": {"encoder.weight": torch.zeros(3, 3)}, "meta": value},
                ]
            )
        )
    else:
        state = torch.load(io.BytesIO(original), weights_only=True)
        state["best_checkpoint"] = {"_saved": [(0.0, draw(paths))], "saved": value_or(draw, json_values)}
        payload = state
    torch.save(payload, buf)
    return buf.getvalue()


def value_or(draw: st.DrawFn, strategy: st.SearchStrategy) -> object:
    return draw(strategy)


@st.composite
def placement(draw: st.DrawFn, content: st.SearchStrategy[bytes]) -> tuple[str, bytes | None]:
    """How the hostile file sits in the run folder: as bytes, or as a link out, a folder, a FIFO, or gone."""
    how = draw(st.sampled_from(["bytes"] * 6 + ["link", "dir", "fifo", "missing"]))
    return (how, draw(content) if how == "bytes" else None)


def place(path: Path, how: str, content: bytes | None, outside: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
    if how == "bytes":
        path.write_bytes(content or b"")
    elif how == "link":
        path.symlink_to(outside / "victim.csv")
    elif how == "dir":
        path.mkdir()
    elif how == "fifo":  # a reader that opened it blindly would wait for a writer for ever
        os.mkfifo(path)
