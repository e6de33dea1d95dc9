"""What the browser sessions of one monitor server share: the parsed runs and the figures built from them.

A ``RunData`` per run and session would make every new page (and every open tab) parse the shown runs'
files from the start again and rebuild every figure. Here a run is parsed once per server and then
refreshed incrementally by whichever
session asks, and a figure is kept under its inputs (the runs' table versions and the chart controls), so
a new page gets the figures that another session has already built.

Sessions run in threads of their own: a run's tables are refreshed and read only under its
``RunData.lock``, and ``locked`` takes several runs' locks in folder order, so that two sessions never wait
for each other in a cycle. Both caches are bounded, least recently used out, since a long run's tables
are large.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, TypeVar

from aline.monitor.runview import RunData, resolve_run

T = TypeVar("T")
MAX_RUNS = 20
MAX_FIGURES = 64


class SharedRuns:
    """Parsed runs and built figures of one monitor server, for all its sessions."""

    def __init__(self, max_runs: int = MAX_RUNS, max_figures: int = MAX_FIGURES) -> None:
        self.max_runs = max_runs
        self.max_figures = max_figures
        # Held only to look up or store an entry, never while a file is parsed or a figure built.
        self._guard = threading.Lock()
        self._runs: OrderedDict[Path, RunData] = OrderedDict()
        self._figures: OrderedDict[Hashable, Any] = OrderedDict()

    def run(self, root: Path, name: str) -> RunData:
        """The shared ``RunData`` of run ``name`` in ``root``; refresh and read it under ``locked``."""
        path = resolve_run(root, name)
        with self._guard:
            run = self._runs.get(path)
            if run is None:
                run = self._runs[path] = RunData(root, name)
                while len(self._runs) > self.max_runs:
                    self._runs.popitem(last=False)
            else:
                self._runs.move_to_end(path)
        return run

    def figure(self, key: Hashable, build: Callable[[], T]) -> T:
        """The figure for ``key``, from the cache or built now by ``build`` (call it under the locks of
        the runs it reads). ``key`` must name every input: the chart, the runs' versions, the controls."""
        with self._guard:
            if key in self._figures:
                self._figures.move_to_end(key)
                return self._figures[key]
        fig = build()
        with self._guard:
            self._figures[key] = fig
            while len(self._figures) > self.max_figures:
                self._figures.popitem(last=False)
        return fig


@contextmanager
def locked(runs: Sequence[RunData]) -> Iterator[None]:
    """Hold the locks of ``runs`` (each once, in folder order) for the ``with`` block."""
    unique = {id(run): run for run in runs}.values()
    with ExitStack() as stack:
        for run in sorted(unique, key=lambda r: (str(r.dir), id(r))):
            stack.enter_context(run.lock)
        yield
