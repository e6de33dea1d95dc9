"""A real Streamlit server in headless Chromium: the loss chart grows while a writer appends, without reload.

Needs Debian's ``chromium`` at /usr/bin/chromium (Playwright cannot download its own browser here); the
test is skipped with a clear reason when it is absent.
"""

from __future__ import annotations

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
from monitor_fixtures import HEADER, append_lines, csv_line, train_row, write_run

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
RUN = "20261125-200000-live"

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


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    if not shutil.which(CHROMIUM):
        # CI installs the browser, so there its absence is a failure rather than a quiet skip.
        message = f"no Chromium at {CHROMIUM} (apt-get install chromium, or set ALINE_CHROMIUM)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    root = tmp_path / "runs"
    write_run(root, RUN, epochs=2, iters_per_epoch=5, seed=3)
    port = free_port()
    log = open(tmp_path / "streamlit.log", "wb")  # noqa: SIM115  (closed in the finally below)
    cmd = [
        sys.executable, "-m", "streamlit", "run", "app/monitor.py",
        "--server.port", str(port), "--server.headless", "true", "--server.address", "127.0.0.1",
        "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
        "--", "--runs", str(root),
    ]  # fmt: skip
    # A session of its own, so that the whole process group can be stopped however the test ends.
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"streamlit exited with {proc.returncode}:\n{(tmp_path / 'streamlit.log').read_text()}"
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
        yield url, root
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        log.close()


# The loss chart's raw train "loss" trace, found by the meta that aline.charts puts on every trace.
TRAIN_LOSS_JS = """() => {
  for (const el of document.querySelectorAll('.js-plotly-plot')) {
    for (const t of (el.data || [])) {
      const m = t.meta || {};
      if (m.split === 'train' && m.column === 'loss' && m.kind === 'raw') {
        return {x: Array.from(t.x), y: Array.from(t.y)};
      }
    }
  }
  return null;
}"""


def test_loss_chart_updates_live_without_reload(server, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    url, root = server
    metrics = root / RUN / C.METRICS_FILE
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        writer = Writer(metrics, first_iteration=10)
        try:
            page = ctx.new_page()
            page.goto(url, wait_until="domcontentloaded")
            page.wait_for_function(f"({TRAIN_LOSS_JS})() !== null", timeout=60_000)
            first = page.evaluate(TRAIN_LOSS_JS)
            page.evaluate("window.__sameDocument = 'yes'")
            writer.start()
            want = len(first["x"]) + 4
            grown = f"(() => {{ const d = ({TRAIN_LOSS_JS})(); return d && d.x.length >= {want}; }})()"
            page.wait_for_function(grown, timeout=60_000)
            later = page.evaluate(TRAIN_LOSS_JS)
            assert page.evaluate("window.__sameDocument") == "yes"  # updated in place, not reloaded
            assert page.locator('[data-testid="stException"]').count() == 0
            assert "Traceback" not in page.inner_text("body")

            # Pausing stops the updates while the writer keeps going.
            page.get_by_text("Pause live updates").click()
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
            ctx.close()
    # What the browser shows is exactly the file's train rows, in order, up to the moment it refreshed.
    import csv

    with open(metrics, newline="") as fh:
        train = [r for r in csv.DictReader(fh) if r["split"] == C.SPLIT_TRAIN]
    shown = len(later["y"])
    assert shown > len(first["y"])
    assert later["x"] == [float(r["iteration"]) for r in train[:shown]]
    assert later["y"] == [float(r["loss"]) for r in train[:shown]]
