"""The monitor in a real browser: time to the runs table and to the first chart, and the cost of a refresh.

    python benchmarks/bench_monitor.py                       # 10 runs x 2,000 metrics rows
    python benchmarks/bench_monitor.py --runs 50 --rows 200000
    python benchmarks/bench_monitor.py --repeat 5            # medians of 5 warm pages each

Writes synthetic run folders (the run-folder contract) under a temporary folder, starts
``streamlit run app/monitor.py`` on them and drives headless Chromium (/usr/bin/chromium, or
$ALINE_CHROMIUM). Reported:
- cold: the first page after the server started (it pays the imports of the page's libraries);
- warm: a new page (new session) on the running server, with the newest run selected (the default), and
  with every run selected (``?run=...``, at most 10); ``--repeat`` pages each, median (min–max) reported;
- for each page: time to the runs table, to the first chart and to all nine charts (the first page comes
  in stages, so the last two differ);
- refresh cost: CPU seconds the server spends per refresh (per 2 s interval, both live parts), over a quiet
  window and over a window in which a writer appends 4 rows/s to the shown run; and the delay from an
  append to the chart showing it;
- the floor: the same times for three minimal Streamlit pages served the same way (a title alone; a title
  and a 10-row ``st.dataframe``; a title and one plotly line of 2,000 points), i.e. what Streamlit and
  plotly alone take on this machine, and the monitor's times as multiples of them (``--no-floor`` skips it).
Figures depend on the machine's load: on a shared machine compare them within one run, not across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from aline import contract as C

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("ALINE_CHROMIUM", "/usr/bin/chromium")
EXTRA = ("ask_outside_pool", "brier_asked", "auc_asked", "gain_spearman")
HEADER = C.METRICS_HEADER + tuple(c for c in EXTRA if c not in C.METRICS_HEADER)
VAL_EVERY = 200  # one validation row per 200 train rows (an epoch)


def metrics_text(rng: np.random.Generator, rows: int, t0: float) -> str:
    """``rows`` metrics rows (train, with a val row closing each epoch) as CSV text, vectorised."""
    it = np.arange(1, rows + 1)
    epoch = (it - 1) // VAL_EVERY + 1
    is_val = it % VAL_EVERY == 0
    cols: dict[str, np.ndarray] = {
        "time": t0 + it * 0.05,
        "epoch": epoch,
        "iteration": it,
        "split": np.where(is_val, C.SPLIT_VAL, C.SPLIT_TRAIN),
    }
    base = 2.0 / (1 + 0.001 * it)
    for name in C.LOSS_COLUMNS:
        cols[name] = base * rng.uniform(0.2, 1.0, rows)
    for name in C.TRAIN_ONLY_COLUMNS:
        cols[name] = np.where(is_val, np.nan, rng.uniform(0.5, 3.0, rows) if name == "grad_norm" else 1e-3)
    for name in HEADER[len(C.INDEX_COLUMNS) + len(C.LOSS_COLUMNS) + len(C.TRAIN_ONLY_COLUMNS) :]:
        cols[name] = np.where(is_val, rng.uniform(0.1, 0.8, rows), np.nan)
    import pandas as pd

    frame = pd.DataFrame({name: cols[name] for name in HEADER})
    return frame.to_csv(index=False, header=False, float_format="%.6g", na_rep="")


def train_line(rng: np.random.Generator, iteration: int, epoch: int) -> str:
    row = {
        "time": f"{time.time():.3f}",
        "epoch": str(epoch),
        "iteration": str(iteration),
        "split": C.SPLIT_TRAIN,
    }
    for name in C.LOSS_COLUMNS:
        row[name] = f"{rng.uniform(0.2, 1.0):.6g}"
    row["grad_norm"], row["lr"] = f"{rng.uniform(0.5, 3):.6g}", "0.001"
    return ",".join(row.get(c, "") for c in HEADER) + "\n"


def write_runs(root: Path, n_runs: int, rows: int) -> list[str]:
    """``n_runs`` run folders; the metrics file is generated once and copied (writing is not measured)."""
    rng = np.random.default_rng(0)
    now = time.time()
    text = ",".join(HEADER) + "\n" + metrics_text(rng, rows, now - rows * 0.05)
    epochs = rows // VAL_EVERY
    cal = ["epoch,bin,lo,hi,count,mean_pred,frac_pos"]
    for e in range(1, epochs + 1):
        for b in range(15):
            cal.append(
                f"{e},{b},{b / 15:.6g},{(b + 1) / 15:.6g},{20 + b},{(b + 0.5) / 15:.6g},{(b + 0.4) / 15:.6g}"
            )
    topk = ["epoch,hour,frequency"] + [
        f"{e},{h},{(h % 5) / 5:.3g}" for e in range(1, epochs + 1) for h in range(24)
    ]
    names = []
    for i in range(n_runs):
        name = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now - 3600 * (i + 1))) + f"-bench{i:02d}"
        d = root / name
        d.mkdir(parents=True)
        if i == 0:
            (d / C.METRICS_FILE).write_text(text)
            first = d
        else:
            shutil.copyfile(first / C.METRICS_FILE, d / C.METRICS_FILE)
        (d / C.CALIBRATION_FILE).write_text("\n".join(cal) + "\n")
        (d / C.TOPK_FILE).write_text("\n".join(topk) + "\n")
        (d / C.CONFIG_FILE).write_text(f"seed: {i}\ntrainer:\n  epochs: {epochs + 10}\n")
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        status = {
            "state": C.STATE_RUNNING, "host": socket.gethostname(), "pid": os.getpid(), "heartbeat": stamp,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - rows * 0.05)), "updated": stamp,
            "epoch": epochs, "iteration": rows, "max_epochs": epochs + 10,
            "best": {"metric": "auc", "value": 0.7, "epoch": epochs, "checkpoint": "checkpoints/best.pt"},
            "oracle": {"auc": 0.78, "brier": 0.139, "ece": 0.016, "pr_auc": 0.5, "post_mse_floor": 0.106},
        }  # fmt: skip
        (d / C.STATUS_FILE).write_text(json.dumps(status))
        names.append(name)
    return names


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its children so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))
    return ticks / os.sysconf("SC_CLK_TCK")


TABLE_JS = "() => !!document.querySelector('[data-testid=\"stDataFrame\"] canvas')"
CHART_JS = (
    "() => Array.from(document.querySelectorAll('.js-plotly-plot')).some(el => el.data && el.data.length)"
)
ALL_CHARTS_JS = (
    "() => Array.from(document.querySelectorAll('.js-plotly-plot'))"
    ".filter(el => el._fullLayout && el.data && el.data.length).length >= 9"
)
LOSS_TIP_JS = """() => {
  for (const el of document.querySelectorAll('.js-plotly-plot')) {
    if (!el.layout || !el.layout.meta || el.layout.meta.chart !== 'loss') continue;
    for (const t of el.data) {
      const m = t.meta;
      if (m.kind === 'raw' && m.split === 'train' && m.column === 'loss') return t.x[t.x.length - 1];
    }
  }
  return null;
}"""
PAGE_JS = {
    "table": TABLE_JS,
    "chart": CHART_JS,
    "all": ALL_CHARTS_JS,
    "title": "() => !!document.querySelector('h1')",
}


def report(key: str, value: object) -> None:
    """Print one figure as soon as it is measured, so a later timeout still leaves the earlier ones."""
    if isinstance(value, dict):
        print(f"{key:34s} " + "   ".join(f"{k} {v}" for k, v in value.items()), flush=True)
    elif isinstance(value, float):
        print(f"{key:34s} {value:.3f}", flush=True)
    else:
        print(f"{key:34s} {value}", flush=True)


def time_page(ctx, url: str, keys=("table", "chart", "all"), timeout_s: float = 300) -> dict[str, float]:
    """Seconds from navigation to the runs table, the first chart and all charts (``keys`` of them); the
    page stays open under ``out["page"]``."""
    page = ctx.new_page()
    t0 = time.perf_counter()
    page.goto(url, wait_until="commit")
    out = {}
    for key in keys:
        page.wait_for_function(PAGE_JS[key], timeout=timeout_s * 1000, polling=50)
        out[key] = time.perf_counter() - t0
    out["page"] = page
    return out


def time_pages(
    ctx, url: str, repeat: int, keys=("table", "chart", "all")
) -> tuple[dict[str, str], dict[str, float], object]:
    """``repeat`` new pages on ``url``, one after the other: median (min–max) of each time as text, the
    medians as numbers, and the last page, left open."""
    times: dict[str, list[float]] = {k: [] for k in keys}
    page = None
    for _ in range(repeat):
        if page is not None:
            page.close()
            time.sleep(1.0)  # let the closed session's last refresh end
        got = time_page(ctx, url, keys)
        page = got.pop("page")
        for key, value in got.items():
            times[key].append(value)
    summary = {
        k: f"{np.median(v):.2f} s" + (f" ({min(v):.2f}–{max(v):.2f})" if len(v) > 1 else "")
        for k, v in times.items()
    }
    return summary, {k: float(np.median(v)) for k, v in times.items()}, page


FLOOR_TITLE_APP = """import streamlit as st
st.title("floor")
"""
FLOOR_TABLE_APP = """import streamlit as st
st.title("floor")
st.dataframe([{"run": f"run-{i:02d}", "state": "finished", "auc": 0.75} for i in range(10)], hide_index=True)
"""
FLOOR_CHART_APP = """import numpy as np
import plotly.graph_objects as go
import streamlit as st
st.title("floor")
x = np.arange(2000)
st.plotly_chart(go.Figure(go.Scatter(x=x, y=np.sin(x / 100.0), mode="lines")))
"""


def start_server(script: Path, script_args: list[str]) -> tuple[subprocess.Popen, str]:
    """``streamlit run script`` on a free local port, once it answers its health check."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable, "-m", "streamlit", "run", str(script), "--server.port", str(port),
        "--server.headless", "true", "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
        "--server.fileWatcherType", "none", "--", *script_args,
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as resp:
                if resp.read().strip() == b"ok":
                    return proc, url
        except OSError:
            time.sleep(0.2)


def stop_server(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=20)


def open_browser(pw) -> tuple[object, object]:
    """Headless Chromium and a desktop-sized context in it."""
    browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
    return browser, browser.new_context(viewport={"width": 1400, "height": 1000})


def floor(repeat: int, tmp: Path, monitor: dict[str, float], results: dict[str, object]) -> None:
    """Warm times of minimal Streamlit pages (a title; a table; a plotly chart), and the monitor's median
    times (``monitor``, newest run) as multiples of them."""
    from playwright.sync_api import sync_playwright

    floors = (
        ("title", FLOOR_TITLE_APP, "title"),  # any Streamlit page: its first paint
        ("table", FLOOR_TABLE_APP, "table"),
        ("chart", FLOOR_CHART_APP, "chart"),
    )
    for name, app, key in floors:
        script = tmp / f"floor_{name}.py"
        script.write_text(app)
        proc, url = start_server(script, [])
        try:
            with sync_playwright() as pw:
                browser, ctx = open_browser(pw)
                time_pages(ctx, url, 1, (key,))[2].close()  # the cold page pays the imports
                summary, medians, page = time_pages(ctx, url, repeat, (key,))
                page.close()
                browser.close()
        finally:
            stop_server(proc)
        report(f"floor_streamlit_{name}_warm", summary)
        if key in monitor:
            ratio = monitor[key] / medians[key]
            results[f"monitor_{key}_over_floor"] = ratio
            report(f"warm_newest_run {key} / floor", f"{ratio:.2f}x")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--rows", type=int, default=2000, help="metrics rows per run")
    ap.add_argument("--window", type=float, default=10.0, help="seconds per refresh-cost window")
    ap.add_argument("--repeat", type=int, default=1, help="warm pages per case (median reported)")
    ap.add_argument("--no-floor", action="store_true", help="skip the minimal Streamlit pages")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    tmp = Path(tempfile.mkdtemp(prefix="bench_monitor_"))
    root = tmp / "runs"
    t = time.perf_counter()
    names = write_runs(root, args.runs, args.rows)
    print(
        f"wrote {args.runs} runs x {args.rows} rows in {time.perf_counter() - t:.1f} s (not measured below)"
    )
    proc, url = start_server(REPO / "app" / "monitor.py", ["--runs", str(root)])
    results: dict[str, object] = {"runs": args.runs, "rows": args.rows}
    try:
        with sync_playwright() as pw:
            browser, ctx = open_browser(pw)
            cold, _, page = time_pages(ctx, url, 1)
            page.close()
            results["cold"] = cold
            report("cold", cold)
            shown = names[:10]
            many, _, page = time_pages(ctx, f"{url}/?run={','.join(shown)}", args.repeat)
            page.close()
            results[f"warm_{len(shown)}_runs_selected"] = many
            report(f"warm_{len(shown)}_runs_selected", many)
            # Last, so that its page is the one left open for the refresh cost below.
            warm, warm_medians, page = time_pages(ctx, url, args.repeat)
            results["warm_newest_run"] = warm
            report("warm_newest_run", warm)
            # Refresh cost: server CPU per refresh interval, quiet, then while rows are appended.
            page.wait_for_timeout(3000)
            c0 = cpu_seconds(proc.pid)
            time.sleep(args.window)
            quiet = (cpu_seconds(proc.pid) - c0) / (args.window / 2.0)
            metrics = root / names[0] / C.METRICS_FILE
            rng = np.random.default_rng(1)
            last_it = args.rows
            delays = []
            c0 = cpu_seconds(proc.pid)
            end = time.time() + args.window
            while time.time() < end:
                lines = [train_line(rng, last_it + k, args.rows // VAL_EVERY + 1) for k in (1, 2)]
                last_it += 2
                with open(metrics, "a") as fh:
                    fh.write("".join(lines))
                t_append = time.perf_counter()
                page.wait_for_function(f"() => ({LOSS_TIP_JS})() >= {last_it}", timeout=60_000, polling=50)
                delays.append(time.perf_counter() - t_append)
                time.sleep(0.5)
            busy = (cpu_seconds(proc.pid) - c0) / (args.window / 2.0)
            results["server_cpu_s_per_refresh_quiet"] = quiet
            results["server_cpu_s_per_refresh_new_rows"] = busy
            results["append_to_chart_s_median"] = float(np.median(delays))
            page.close()
            browser.close()
    finally:
        stop_server(proc)
    if not args.no_floor:
        floor(args.repeat, tmp, warm_medians, results)
    shutil.rmtree(tmp, ignore_errors=True)
    for key in (
        "server_cpu_s_per_refresh_quiet",
        "server_cpu_s_per_refresh_new_rows",
        "append_to_chart_s_median",
    ):
        if key in results:
            report(key, results[key])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
