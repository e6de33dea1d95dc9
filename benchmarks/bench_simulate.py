"""Simulator throughput, whole process: ``python benchmarks/bench_simulate.py [--repeats 3]``.

Runs ``python -m aline.simulate`` for 300 subjects x 60 days (432k hourly rows) as a subprocess, so that
interpreter start-up, imports and CSV writing are all counted, and prints the median hourly rows/s.
Target on the project's 2-core machine: >= 100k rows/s.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=300)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    rows = args.subjects * args.days * 24
    times = []
    for i in range(args.repeats):
        with tempfile.TemporaryDirectory() as out:
            cmd = [sys.executable, "-m", "aline.simulate", "--subjects", str(args.subjects)]
            cmd += ["--days", str(args.days), "--out", out, "--quiet"]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True)
            times.append(time.perf_counter() - t0)
        print(f"run {i + 1}: {times[-1]:.2f} s, {rows / times[-1]:,.0f} rows/s", flush=True)
    med = statistics.median(times)
    print(f"simulator, {args.subjects} subjects x {args.days} days = {rows:,} rows: median {med:.2f} s,")
    print(f"  {rows / med:,.0f} hourly rows/s end to end (target >= 100,000)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
