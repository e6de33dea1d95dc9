"""Simulator throughput, whole process: ``python benchmarks/bench_simulate.py [--repeats 3] [--against DIR]``.

Runs ``python -m aline.simulate`` for 300 subjects x 60 days (432k hourly rows) as a subprocess, so that
interpreter start-up, imports and CSV writing are all counted, and prints the median hourly rows/s, by wall
clock and by CPU time of the child (user + system; less sensitive to other load on a shared machine).
Target on the project's 2-core machine: >= 100k rows/s.

``--against DIR`` also runs the simulator of another checkout (DIR holds its ``aline`` package, e.g. from
``git archive <commit> aline | tar -x -C DIR``), interleaving the two run by run, and prints the ratio.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _one_run(pythonpath: str, subjects: int, days: int) -> tuple[float, float]:
    """(wall seconds, child CPU seconds) of one whole simulator process."""
    env = {**os.environ, "PYTHONPATH": pythonpath}
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "aline.simulate", "--subjects", str(subjects)]
        cmd += ["--days", str(days), "--out", out, "--quiet"]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env=env)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=300)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--against", default=None, help="folder with another checkout's aline package")
    args = parser.parse_args(argv)
    rows = args.subjects * args.days * 24
    here = str(Path(__file__).resolve().parents[1])
    variants = {"this checkout": here}
    if args.against:
        variants = {"baseline": str(Path(args.against).resolve()), **variants}
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
    for i in range(args.repeats):
        for name, path in variants.items():
            times[name].append(_one_run(path, args.subjects, args.days))
            wall, cpu = times[name][-1]
            print(
                f"run {i + 1} {name}: {wall:.2f} s wall, {cpu:.2f} s CPU, {rows / wall:,.0f} rows/s",
                flush=True,
            )
    med = {
        k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in times.items()
    }
    for name, (wall, cpu) in med.items():
        print(
            f"{name}: {args.subjects} subjects x {args.days} days = {rows:,} rows: median {wall:.2f} s wall, "
        )
        print(f"  {rows / wall:,.0f} hourly rows/s end to end (target >= 100,000); median CPU {cpu:.2f} s")
    if args.against:
        (bw, bc), (tw, tc) = med["baseline"], med["this checkout"]
        print(f"this checkout / baseline time: wall {tw / bw:.2f}x, CPU {tc / bc:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
