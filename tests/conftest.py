"""Shared pytest fixtures."""

from __future__ import annotations

import logging
import os

import pytest

# torch is imported where a test process needs it: pytest-xdist's controller, which only hands out tests,
# would otherwise spend seconds on it before it starts the workers.


def pytest_configure(config: pytest.Config) -> None:
    # Under pytest-xdist there is one worker per core already: a second torch thread per worker, and per
    # process a test spawns (they inherit OMP_NUM_THREADS), only oversubscribes the cores and slows the
    # two-process tests down.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


# Modules whose tests share one pytest-xdist worker: the browser tests' module fixture starts a Streamlit
# server, Chromium and a real training run, once on every worker the module's tests land on.
ONE_WORKER = ("tests/test_monitor_browser.py",)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """``--dist load`` (tests handed out one at a time), except that each ``ONE_WORKER`` module is one unit.

    (``--dist loadgroup`` with an ``xdist_group`` mark would say the same, but pytest-xdist 3.8 under
    pytest 9.2 silently ignores the groups: pytest-dev/pytest-xdist#1386.)
    """
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class OneWorkerModules(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return path if path in ONE_WORKER else nodeid

    return OneWorkerModules(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The long fuzz profile runs only when asked for (-m fuzz_long, or ALINE_FUZZ_LONG=1): otherwise it is
    # deselected, not skipped, since nothing is missing.
    chosen = config.getoption("markexpr") or ""
    if not (os.environ.get("ALINE_FUZZ_LONG") or ("fuzz_long" in chosen and "not fuzz_long" not in chosen)):
        long = [item for item in items if item.get_closest_marker("fuzz_long")]
        if long:
            config.hook.pytest_deselected(items=long)
            items[:] = [item for item in items if not item.get_closest_marker("fuzz_long")]
    # pytest-xdist hands tests out in this order, one at a time: the slow ones go first so that none of
    # them starts near the end and runs on alone while the other worker has nothing left to do.
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: file order otherwise


@pytest.fixture
def one_torch_thread():
    """Tiny tensors: a second OpenMP thread only adds spin-waiting on shared, busy CI cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def restore_aline_logger():
    """setup_logging() reconfigures the process-wide 'aline' logger; give other test files a clean one."""
    yield
    logger = logging.getLogger("aline")
    for handler in [h for h in logger.handlers if getattr(h, "_aline", False)]:
        logger.removeHandler(handler)
        handler.close()
    logger.propagate = True
    logger.setLevel(logging.NOTSET)
