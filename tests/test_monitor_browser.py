"""A real Streamlit server in headless Chromium: live updates, liveness, bad runs, calm refreshes, a real run.

One server and one browser for the whole module; each test opens its own page (its own session) on the
runs it needs (``?run=a,b``). Needs Debian's ``chromium`` at /usr/bin/chromium (Playwright cannot download
its own browser here); without it the tests are skipped with a clear reason, and fail under CI.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers.monitor_fixtures import HEADER, append_lines, csv_line, tiny_real_run, train_row, write_run

from aline import contract as C

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("ALINE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
LIVE = "20261125-200000-live"
CALM = "20261125-190000-calm"
WILD = "20261125-180000-diverged"
KILLED = "20261125-170000-killed"

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Writer(threading.Thread):
    """Appends one train row to metrics.csv every ``period`` seconds, as a training run would."""

    def __init__(self, path: Path, first_iteration: int, period: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.iteration = first_iteration
        self.period = period
        self.stop = threading.Event()
        self.rng = np.random.default_rng(5)

    def run(self) -> None:
        while not self.stop.is_set():
            self.iteration += 1
            row = train_row(self.rng, 1 + self.iteration // 5, self.iteration)
            append_lines(self.path, [csv_line(HEADER, row)])
            self.stop.wait(self.period)


# A stand-in for a training process: it keeps status.json's heartbeat fresh under its own pid, as the
# trainer does, until it is killed (kill -9 leaves status.json saying "running" for ever).
OWNER = """
import sys, time
sys.path[:0] = [{tests!r}]
from pathlib import Path
from helpers.monitor_fixtures import write_status
for i in range(300):
    write_status(Path({run!r}), epoch=3, max_epochs=10)
    if i == 0:
        print("ready", flush=True)
    time.sleep(2)
"""


def diverge(run_dir: Path) -> None:
    """Rewrite a fixture run's losses so that they blow up to about 4e7 after iteration 5."""
    path = run_dir / C.METRICS_FILE
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        it = float(r["iteration"])
        if it > 5:
            for col in C.LOSS_COLUMNS:
                r[col] = repr(float(r[col]) * 4e7 ** ((it - 5) / 10))
    path.write_text(",".join(HEADER) + "\n" + "".join(",".join(r[c] for c in HEADER) + "\n" for r in rows))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    if not shutil.which(CHROMIUM):
        # CI installs the browser, so there its absence is a failure rather than a quiet skip.
        message = f"no Chromium at {CHROMIUM} (apt-get install chromium, or set ALINE_CHROMIUM)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    tmp = tmp_path_factory.mktemp("browser")
    real = tiny_real_run(tmp)
    root = real.parent
    write_run(root, LIVE, epochs=2, iters_per_epoch=5, seed=3)
    write_run(root, CALM, epochs=3, iters_per_epoch=5, seed=1)
    diverge(write_run(root, WILD, epochs=3, iters_per_epoch=5, seed=9).dir)
    write_run(root, KILLED, epochs=3, iters_per_epoch=5, seed=4)
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER.format(tests=str(REPO / "tests"), run=str(root / KILLED))],
        cwd=REPO, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert owner.stdout.readline().strip() == "ready"
    port = free_port()
    log = open(tmp / "streamlit.log", "wb")  # noqa: SIM115  (closed in the finally below)
    cmd = [
        sys.executable, "-m", "streamlit", "run", "app/monitor.py",
        "--server.port", str(port), "--server.headless", "true", "--server.address", "127.0.0.1",
        "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
        "--", "--runs", str(root),
    ]  # fmt: skip
    # A session of its own, so that the whole process group can be stopped however the tests end.
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    pw = ctx = None
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"streamlit exited with {proc.returncode}:\n{(tmp / 'streamlit.log').read_text()}"
                )
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as resp:
                    if resp.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("streamlit did not answer /_stcore/health within 60 s")
            time.sleep(0.3)
        pw = sync_playwright().start()
        ctx = pw.chromium.launch_persistent_context(
            str(tmp / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000}, accept_downloads=True,
        )  # fmt: skip
        yield {
            "url": url,
            "root": root,
            "real": real.name,
            "ctx": ctx,
            "owner": owner,
            "log": tmp / "streamlit.log",
        }
    finally:
        if ctx is not None:
            ctx.close()
        if pw is not None:
            pw.stop()
        if owner.poll() is None:
            owner.kill()
        owner.wait(timeout=10)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        log.close()


def open_page(site: dict, runs: list[str]):
    page = site["ctx"].new_page()
    page.goto(f"{site['url']}/?run={','.join(runs)}", wait_until="domcontentloaded")
    return page


# Plotly charts on the page, found by the chart name that aline.monitor.charts puts in layout.meta.
CHARTS_JS = """() => {
  const out = {};
  for (const el of document.querySelectorAll('.js-plotly-plot')) {
    const m = (el.layout || {}).meta || {};
    if (m.chart) out[m.chart] = el;
  }
  return out;
}"""
TRAIN_LOSS_JS = f"""() => {{
  const el = ({CHARTS_JS})()['loss'];
  for (const t of ((el && el.data) || [])) {{
    const m = t.meta || {{}};
    if (m.split === 'train' && m.column === 'loss' && m.kind === 'raw')
      return {{x: Array.from(t.x), y: Array.from(t.y)}};
  }}
  return null;
}}"""


def wait_charts(page, names: list[str], timeout_ms: int = 180_000) -> None:
    want = repr(names)
    ready = f"(() => {{ const c = ({CHARTS_JS})(); return {want}.every(n => c[n] && c[n].data.length); }})()"
    page.wait_for_function(ready, timeout=timeout_ms)


def no_errors(page) -> None:
    assert page.locator('[data-testid="stException"]').count() == 0
    assert "Traceback" not in page.inner_text("body")


def test_loss_chart_updates_live_without_reload(site) -> None:
    metrics = site["root"] / LIVE / C.METRICS_FILE
    writer = Writer(metrics, first_iteration=10)
    page = open_page(site, [LIVE])
    try:
        page.wait_for_function(f"({TRAIN_LOSS_JS})() !== null", timeout=60_000)
        first = page.evaluate(TRAIN_LOSS_JS)
        page.evaluate("window.__sameDocument = 'yes'")
        writer.start()
        want = len(first["x"]) + 4
        grown = f"(() => {{ const d = ({TRAIN_LOSS_JS})(); return d && d.x.length >= {want}; }})()"
        page.wait_for_function(grown, timeout=60_000)
        later = page.evaluate(TRAIN_LOSS_JS)
        assert page.evaluate("window.__sameDocument") == "yes"  # updated in place, not reloaded
        no_errors(page)

        # Pausing stops the updates while the writer keeps going.
        page.get_by_text("Pause live updates").click()
        pause_box = "document.querySelector('[data-testid=\"stSidebar\"] input[type=checkbox]').checked"
        page.wait_for_function(pause_box, timeout=10_000)
        # Wait out the full rerun that the toggle triggers: the count must hold still for 2.5 s.
        frozen, deadline = -1, time.monotonic() + 30
        while time.monotonic() < deadline:
            before = len(page.evaluate(TRAIN_LOSS_JS)["x"])
            page.wait_for_timeout(2500)
            frozen = len(page.evaluate(TRAIN_LOSS_JS)["x"])
            if frozen == before:
                break
        rows_then = writer.iteration
        page.wait_for_timeout(5000)  # more than two refresh intervals
        assert writer.iteration > rows_then + 5
        assert len(page.evaluate(TRAIN_LOSS_JS)["x"]) == frozen
    finally:
        writer.stop.set()
        writer.join(timeout=5)
        page.close()
    # What the browser shows is exactly the file's train rows, in order, up to the moment it refreshed.
    with open(metrics, newline="") as fh:
        train = [r for r in csv.DictReader(fh) if r["split"] == C.SPLIT_TRAIN]
    shown = len(later["y"])
    assert shown > len(first["y"])
    assert later["x"] == [float(r["iteration"]) for r in train[:shown]]
    assert later["y"] == [float(r["loss"]) for r in train[:shown]]


def test_killed_run_shows_interrupted(site) -> None:
    page = open_page(site, [KILLED])
    try:
        wait_charts(page, ["loss"])
        assert "is interrupted" not in page.inner_text("body")
        site["owner"].send_signal(signal.SIGKILL)  # as kill -9: status.json still says running
        site["owner"].wait(timeout=10)
        page.get_by_text(f"{KILLED} is interrupted").wait_for(timeout=30_000)  # no reload: a live refresh
        no_errors(page)
    finally:
        page.close()


Y_RANGES_JS = f"""() => {{
  const el = ({CHARTS_JS})()['loss'];
  const L = el._fullLayout;
  return ['yaxis', 'yaxis2', 'yaxis3', 'yaxis4'].map(a => L[a].range.slice());
}}"""


def test_diverged_run_leaves_the_other_runs_y_range_unchanged(site) -> None:
    ranges = {}
    for runs in ([CALM], [CALM, WILD]):
        page = open_page(site, runs)
        try:
            wait_charts(page, ["loss"])
            if len(runs) == 2:
                page.get_by_text(f"{WILD} diverged", exact=False).first.wait_for(timeout=60_000)
            ranges[len(runs)] = page.evaluate(Y_RANGES_JS)
        finally:
            page.close()
    np.testing.assert_allclose(ranges[2], ranges[1])
    assert max(hi for _, hi in ranges[1]) < 1e3  # the 4e7 losses did not set the scale


# Samples every 50 ms: the lowest opacity of any element on the page (a dimmed, stale element reads 0.33),
# and how often each chart was redrawn (plotly_afterplot) or replaced by a new DOM node.
WATCH_JS = f"""(ms) => new Promise(resolve => {{
  const charts = ({CHARTS_JS})();
  const redraws = {{}};
  for (const [name, el] of Object.entries(charts)) {{
    el.__watched = true; redraws[name] = 0;
    el.on('plotly_afterplot', () => {{ redraws[name] += 1; }});
  }}
  let lowest = 1, samples = 0;
  const timer = setInterval(() => {{
    samples += 1;
    const sel = '[data-testid="stElementContainer"], [data-testid="stVerticalBlock"]';
    for (const el of document.querySelectorAll(sel)) {{
      if (!el.offsetParent) continue;  // hidden, e.g. inside a collapsed expander
      const o = parseFloat(getComputedStyle(el).opacity);
      if (o < lowest) lowest = o;
    }}
  }}, 50);
  setTimeout(() => {{
    clearInterval(timer);
    const now = ({CHARTS_JS})();
    const replaced = Object.keys(charts).filter(n => !(now[n] && now[n].__watched));
    resolve({{lowest, samples, redraws, replaced}});
  }}, ms);
}})"""


TABLE_WATCH_JS = """el => {
  window.__tableLowest = 1;
  const box = el.closest('[data-testid=stElementContainer]');
  window.__t = setInterval(() => {
    const o = parseFloat(getComputedStyle(box).opacity);
    if (o < window.__tableLowest) window.__tableLowest = o;
  }, 50);
}"""


def test_refresh_without_new_data_redraws_nothing_and_dims_nothing(site) -> None:
    page = open_page(site, [CALM])
    try:
        wait_charts(page, ["loss", "forecast", "posterior", "policy", "optimisation", "reliability"])
        page.wait_for_timeout(2500)  # let the first refresh after load settle
        seen = page.evaluate(WATCH_JS, 7000)  # three refresh intervals of 2 s
        assert seen["samples"] > 10  # fewer than 140 on a starved machine, but the watch did run
        assert seen["lowest"] == 1, seen
        assert seen["replaced"] == [] and not any(seen["redraws"].values()), seen
        # Changing a chart control reruns the charts only: the runs table above never dims.
        table = page.locator('[data-testid="stDataFrame"]').first
        table.evaluate(TABLE_WATCH_JS)
        page.get_by_text("relative", exact=True).click()
        # The charts rerun: while the loss chart is redrawn it may be briefly absent, which must read as
        # "not yet" (a predicate that throws ends the wait at once), not as a failure.
        page.wait_for_function(f"({CHARTS_JS})()['loss']?.layout?.xaxis?.title?.text === 'hours since start'")
        page.wait_for_timeout(1000)
        assert page.evaluate("clearInterval(window.__t) || window.__tableLowest") == 1
        no_errors(page)
    finally:
        page.close()


def test_every_chart_has_data_from_a_real_training_run(site) -> None:
    page = open_page(site, [site["real"]])
    names = ["loss", "forecast", "posterior", "policy", "optimisation", "reliability", "calibration_epochs",
             "topk_heatmap", "topk_bars"]  # fmt: skip
    try:
        wait_charts(page, names)
        counts = page.evaluate(
            f"""() => {{
              const c = ({CHARTS_JS})(); const out = {{}};
              for (const [n, el] of Object.entries(c)) {{
                out[n] = {{}};
                for (const t of el.data) {{
                  const col = (t.meta || {{}}).column, k = (t.meta || {{}}).kind;
                  const pts = (t.y || t.z || []).filter(v => v !== null).length;
                  out[n][col + ':' + k] = Math.max(out[n][col + ':' + k] || 0, pts);
                }}
              }}
              return out;
            }}"""
        )
        for column in ("auc", "brier", "ece", "pr_auc"):
            assert counts["forecast"][f"{column}:value"] == 2 and counts["forecast"][f"{column}:oracle"] == 2
        assert counts["posterior"]["post_mse:value"] == 2 and counts["posterior"]["post_mse:oracle"] == 2
        assert counts["posterior"]["sigma_mae:value"] == 2
        assert counts["policy"]["policy_value:value"] == 2 and counts["policy"]["policy_value:oracle"] == 2
        assert counts["optimisation"]["lr:value"] >= 2 and counts["optimisation"]["grad_norm:value"] >= 2
        assert counts["loss"]["loss:raw"] >= 2
        assert counts["topk_heatmap"]["frequency:heatmap"] == 2
        # The PNG button exports at a fixed size that holds the legend (the in-page legend fits the figure).
        fits = page.evaluate(
            f"""() => {{
              const el = ({CHARTS_JS})()['forecast'];
              const box = el.querySelector('.legend').getBoundingClientRect();
              const fig = el.querySelector('.main-svg').getBoundingClientRect();
              return {{inside: box.right <= fig.right + 1 && box.bottom <= fig.bottom + 1,
                      opts: el._context.toImageButtonOptions}};
            }}"""
        )
        assert fits["inside"] and fits["opts"]["width"] == 1400 and fits["opts"]["format"] == "png"
        no_errors(page)
    finally:
        page.close()
