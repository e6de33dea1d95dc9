"""Two gloo processes, each feeding its shard (with a sampler's padding duplicates), give the exact
single-process validation figures. Self-contained so that the spawned processes can import it."""

from __future__ import annotations

import math
import pickle
import socket
from pathlib import Path

import ignite.distributed as idist
import numpy as np
import pytest
import torch
from helpers import gloohelp
from ignite.engine import Engine
from sklearn.metrics import roc_auc_score
from torch.utils.data import DistributedSampler

from aline import contract
from aline.training.metrics import CALIBRATION_METRIC, TOPK_METRIC, attach_validation_metrics

N, K, HOURS, WORLD = 101, 3, 24, 2  # N odd: the sampler must pad one share


def make_windows(n: int = N, seed: int = 3) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    p = rng.beta(0.8, 2.5, n)
    cols = {name: rng.gamma(2.0, 0.5, n) for name in ("loss", "loss_post", "loss_policy", "loss_bce")}
    best = rng.gamma(3.0, 1.0, n)
    topk = np.sort(np.stack([rng.choice(HOURS, K, replace=False) for _ in range(n)]), axis=1)
    f32 = {
        "p": p,
        "y": (rng.random(n) < p).astype(float),
        **cols,
        "post_sq_err": rng.gamma(1.0, 0.3, n),
        "sigma_abs_err": rng.gamma(1.0, 0.1, n),
        "policy_qv": best * rng.random(n),
        "best_qv": best,
    }
    out = {key: torch.from_numpy(v.astype(np.float32)) for key, v in f32.items()}
    out["index"] = torch.arange(n, dtype=torch.int64)
    out["topk"] = torch.from_numpy(topk.astype(np.int64))
    asked = np.zeros((n, HOURS), dtype=np.float32)
    asked[np.arange(n)[:, None], topk] = 1.0
    pool = np.maximum(asked, (rng.random((n, HOURS)) < 0.4).astype(np.float32))
    pool[::9, topk[::9, 1]] = 0.0  # some asks outside the pool, so ask_outside_pool is not trivially 0
    out["asked"] = torch.from_numpy(asked)
    out["pool"] = torch.from_numpy(pool)
    out["p_asked"] = torch.from_numpy(rng.beta(0.8, 2.5, n).astype(np.float32))
    out["gain_rho"] = torch.from_numpy(
        np.where(rng.random(n) < 0.5, rng.uniform(-1, 1, n), np.nan).astype(np.float32)
    )
    return out


def evaluate(rows: list[int], size: int = 8) -> dict:
    w = make_windows()
    rows_t = torch.tensor(rows, dtype=torch.int64)
    outputs = [{k: v[rows_t[i : i + size]] for k, v in w.items()} for i in range(0, len(rows), size)]
    evaluator = Engine(lambda engine, batch: batch)
    attach_validation_metrics(evaluator, K)
    return dict(evaluator.run(outputs).metrics)


def _worker(local_rank: int, out_dir: str) -> None:
    rank, world = idist.get_rank(), idist.get_world_size()
    assert world == WORLD
    sampler = DistributedSampler(range(N), num_replicas=world, rank=rank, shuffle=True, seed=0)
    padded = evaluate(list(sampler))
    # Uneven shares with overlap (rank 0 holds the last 40 windows, rank 1 the first 70): gathering must
    # not assume equal counts even though the padding sampler guarantees them. Rank 0 is the short one
    # and lacks window 0, so any leftover of the zero padding used to gather would pose as window 0.
    uneven = evaluate(list(range(N - 40, N)) if rank == 0 else list(range(70)))
    with open(Path(out_dir) / f"rank{rank}.pkl", "wb") as fh:
        pickle.dump({"padded": padded, "uneven": uneven, "share": list(sampler)}, fh)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _same(a: object, b: object) -> bool:
    if hasattr(a, "frac_pos"):
        fields = ("lo", "hi", "count", "mean_pred", "frac_pos")
        return all(np.array_equal(getattr(a, f), getattr(b, f), equal_nan=True) for f in fields)
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b, equal_nan=True)
    return a == b or (math.isnan(a) and math.isnan(b))


@pytest.mark.slow
def test_two_gloo_processes_give_the_single_process_figures(tmp_path):
    idist.spawn(
        "gloo",
        _worker,
        args=(str(tmp_path),),
        nproc_per_node=WORLD,
        master_addr="127.0.0.1",
        master_port=_free_port(),
        start_method=gloohelp.start_method(),
    )
    single = evaluate(list(range(N)))
    w = make_windows()
    assert single["auc"] == pytest.approx(
        roc_auc_score(w["y"].double().numpy(), w["p"].double().numpy()), rel=1e-12
    )
    shares = []
    for rank in range(WORLD):
        with open(tmp_path / f"rank{rank}.pkl", "rb") as fh:
            got = pickle.load(fh)
        shares.append(got["share"])
        for case in ("padded", "uneven"):
            assert set(got[case]) == set(contract.VAL_METRICS) | {CALIBRATION_METRIC, TOPK_METRIC}
            for name, value in single.items():
                assert _same(got[case][name], value), (rank, case, name, got[case][name], value)
    # The test is only meaningful if the sampler really padded with a duplicate.
    all_rows = shares[0] + shares[1]
    assert len(all_rows) == N + 1 and len(set(all_rows)) == N
