"""The monitor's cross-session cache (aline.monitor.sharedruns): one RunData per run, figures by key."""

from __future__ import annotations

import threading

from helpers.monitor_fixtures import write_run

from aline.monitor.sharedruns import SharedRuns, locked


def test_one_rundata_per_run_and_least_recently_used_out(tmp_path) -> None:
    root = tmp_path / "runs"
    for name in ("a", "b", "c"):
        write_run(root, f"20261125-20000{ord(name) - 96}-{name}")
    a, b, c = sorted(p.name for p in root.iterdir())
    shared = SharedRuns(max_runs=2)
    first = shared.run(root, a)
    assert shared.run(root, a) is first
    old_b = shared.run(root, b)
    shared.run(root, a)  # a is now the most recently used
    shared.run(root, c)  # b goes
    assert shared.run(root, a) is first
    new_b = shared.run(root, b)
    # A new RunData of the same run never shares a version with the old one (figure keys stay apart).
    assert new_b is not old_b and new_b.name == b and new_b.version != old_b.version


def test_figure_built_once_per_key(tmp_path) -> None:
    shared = SharedRuns(max_figures=2)
    built = []

    def build(tag: str):
        built.append(tag)
        return object()

    one = shared.figure(("loss", 1), lambda: build("one"))
    assert shared.figure(("loss", 1), lambda: build("again")) is one
    shared.figure(("loss", 2), lambda: build("two"))
    shared.figure(("loss", 3), lambda: build("three"))  # ("loss", 1) is the oldest: out
    shared.figure(("loss", 1), lambda: build("four"))
    assert built == ["one", "two", "three", "four"]


def test_locked_takes_runs_in_one_order(tmp_path) -> None:
    root = tmp_path / "runs"
    write_run(root, "20261125-200001-a")
    write_run(root, "20261125-200002-b")
    shared = SharedRuns()
    a, b = (shared.run(root, n) for n in sorted(p.name for p in root.iterdir()))
    done = []

    def worker(order) -> None:
        for _ in range(200):
            with locked(order):
                assert a.lock.locked() and b.lock.locked()
        done.append(True)

    threads = [threading.Thread(target=worker, args=(o,)) for o in ([a, b], [b, a], [a, b, a])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(done) == 3 and not a.lock.locked() and not b.lock.locked()
