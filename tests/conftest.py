"""Shared pytest fixtures."""

from __future__ import annotations

import os

import pytest
import torch


def pytest_configure(config: pytest.Config) -> None:
    # Under pytest-xdist there is one worker per core already: a second torch thread per worker, and per
    # process a test spawns (they inherit OMP_NUM_THREADS), only oversubscribes the cores. Seen on 2 cores:
    # the two-process tests took 38-46 s each with two threads per process, against 9-22 s alone.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


@pytest.fixture
def one_torch_thread():
    """Tiny tensors: a second OpenMP thread only adds spin-waiting on shared, busy CI cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
