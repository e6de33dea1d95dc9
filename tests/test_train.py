"""End to end: ``train(cfg)`` and ``python -m aline.train`` on tiny simulated data, real files on disk."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from ignite.engine import Events
from sklearn.metrics import roc_auc_score

import aline.train as train_mod
from aline import contract
from aline.config import load_config
from aline.data import read_split
from aline.data.dataset import Normalizer, WindowDataset
from aline.model.network import build_model
from aline.simulate import simulate

TINY_MODEL = [
    "model.d_model=16",
    "model.heads=2",
    "model.layers=1",
    "model.ff_dim=32",
    "trainer.batch_size=32",
    "trainer.eval_batch_size=64",
    "trainer.log_every=2",
    "logging.progress=false",
]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data")
    simulate(subjects=24, days=8, seed=3, out_dir=out, progress=False)
    return out


def tiny_config(data: Path, runs: Path, *extra: str):
    return load_config(None, [f"data.dir={data}", f"run.dir={runs}", *TINY_MODEL, *extra])


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def val_rows(run_dir: Path) -> list[dict[str, str]]:
    return [r for r in read_rows(run_dir / contract.METRICS_FILE) if r["split"] == "val"]


def predict_val(run_dir: Path, checkpoint: Path, data: Path) -> tuple[np.ndarray, np.ndarray]:
    """Next-day probabilities of the val split from a checkpoint, outside the engine."""
    cfg = load_config(run_dir / contract.CONFIG_FILE)
    norm = Normalizer.load(run_dir / contract.NORMALIZER_FILE)
    raw = read_split(data / "synthetic_migraine_val.csv", cfg.data.columns)
    batch = WindowDataset(raw, norm, answer_channel=True).__getitems__(list(range(len(raw))))
    model = build_model(cfg, len(norm.feature_names))
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True)["model"])
    model.eval()
    with torch.no_grad():
        p = model(batch["x"], batch["mask"]).p_next.double().numpy()
    return p, raw.y


def test_two_epochs_write_the_whole_run_folder(tiny_data: Path, tmp_path: Path) -> None:
    cfg = tiny_config(tiny_data, tmp_path / "runs", "trainer.epochs=2", "run.name=e2e")
    result = train_mod.train(cfg, announce=lambda _: None)
    run = result.run_dir
    assert result.state == contract.STATE_FINISHED and result.epoch == 2
    assert run.parent == tmp_path / "runs" and run.name.endswith("-e2e")

    saved = load_config(run / contract.CONFIG_FILE)
    # config.yaml records the data-dependent choices: this data has sigma targets, latents and a
    # query_value column (policy.reward=auto resolves to it).
    assert saved.loss.posterior == "mse" and saved.loss.bce_into_encoder is False
    assert saved.policy.reward == "query_value"
    assert saved.data.oracle_free is False  # this data has reference columns, and training read them
    assert saved.model_copy(update={"loss": cfg.loss, "policy": cfg.policy, "data": cfg.data}) == cfg
    status = json.loads((run / contract.STATUS_FILE).read_text())
    assert status["state"] == "finished" and status["epoch"] == 2
    meta = json.loads((tiny_data / "synthetic_migraine_meta.json").read_text())
    assert status["oracle"]["auc"] == pytest.approx(meta["splits"]["val"]["oracle"]["auc"])

    with (run / contract.METRICS_FILE).open() as fh:
        assert tuple(next(csv.reader(fh))) == contract.METRICS_HEADER
    rows = read_rows(run / contract.METRICS_FILE)
    train_rows = [r for r in rows if r["split"] == "train"]
    assert train_rows and all(r["lr"] and r["loss"] and not r["auc"] for r in train_rows)
    vals = val_rows(run)
    assert [int(r["epoch"]) for r in vals] == [1, 2]
    assert all(r["auc"] and r["post_mse"] and not r["lr"] for r in vals)

    # The logged validation AUC/Brier of epoch 2 are those of last.pt's model, recomputed independently.
    p, y = predict_val(run, run / "checkpoints" / "last.pt", tiny_data)
    assert float(vals[-1]["auc"]) == pytest.approx(roc_auc_score(y, p), abs=1e-6)
    assert float(vals[-1]["brier"]) == pytest.approx(np.mean((p - y) ** 2), abs=1e-6)

    best = run / status["best"]["checkpoint"]
    # The default selection metric is the val total loss (lower is better).
    assert best.is_file() and status["best"]["metric"] == "loss"
    assert "model" in torch.load(best, map_location="cpu", weights_only=True)
    best_loss = min(float(r["loss"]) for r in vals)
    assert status["best"]["value"] == pytest.approx(best_loss)

    cal = read_rows(run / contract.CALIBRATION_FILE)
    for epoch in (1, 2):
        bins = [r for r in cal if int(r["epoch"]) == epoch]
        assert len(bins) == contract.ECE_BINS
        assert sum(int(r["count"]) for r in bins) == len(y)
    topk = read_rows(run / contract.TOPK_FILE)
    last = [float(r["frequency"]) for r in topk if int(r["epoch"]) == 2]
    assert len(last) == 24 and sum(last) == pytest.approx(cfg.policy.k)

    assert Normalizer.load(run / contract.NORMALIZER_FILE).feature_names == tuple(cfg.data.columns.features)
    log = (run / contract.LOG_FILE).read_text()
    assert "epoch 1/2" in log and "epoch 2/2" in log


def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra = ("trainer.epochs=3", "sched.name=cosine", "sched.warmup_epochs=0.5")
    full = train_mod.train(tiny_config(tiny_data, tmp_path / "a", *extra), announce=lambda _: None)

    original = train_mod.setup_trainer

    def interrupted(*args, **kwargs):
        trainer = original(*args, **kwargs)

        @trainer.on(Events.ITERATION_COMPLETED)
        def _ctrl_c(engine):
            # Half-way through epoch 2: the resume must repeat that epoch exactly.
            if engine.state.epoch == 2 and engine.state.iteration % engine.state.epoch_length == 2:
                raise KeyboardInterrupt

        return trainer

    monkeypatch.setattr(train_mod, "setup_trainer", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_mod.train(tiny_config(tiny_data, tmp_path / "b", *extra), announce=lambda _: None)
    (run_b,) = (tmp_path / "b").iterdir()
    assert json.loads((run_b / contract.STATUS_FILE).read_text())["state"] == "stopped"
    monkeypatch.setattr(train_mod, "setup_trainer", original)

    resumed = train_mod.train(train_mod.load_run_config(run_b, []), resume=run_b, announce=lambda _: None)
    assert resumed.state == "finished" and resumed.epoch == 3

    cols = ("loss", "loss_post", "loss_bce", "auc", "brier", "ece", "post_mse", "policy_value")
    want = {(r["epoch"], c): float(r[c]) for r in val_rows(full.run_dir) for c in cols}
    got = {(r["epoch"], c): float(r[c]) for r in val_rows(run_b) for c in cols}  # later rows win
    assert got == want
    a = torch.load(full.run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(run_b / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_input_exits_2_without_traceback_or_run_folder(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    cases = [
        [f"data.dir={tmp_path / 'nowhere'}", f"run.dir={runs}"],
        [f"data.dir={tiny_data}", f"run.dir={runs}", "optim.lr=-1", "policy.k=25"],
        [f"data.dir={tiny_data}", f"run.dir={runs}", "trainer.batch_sise=8"],
        [
            f"data.dir={tiny_data}",
            f"run.dir={runs}",
            "data.columns.query_value=null",
            "policy.reward=query_value",
        ],
    ]
    expected = ["nowhere", "optim.lr", "did you mean 'trainer.batch_size'", "policy.reward=query_value"]
    try:
        import wandb  # noqa: F401
    except ImportError:  # the W&B extra is not installed here: asking for it must fail before any work
        cases.append([f"data.dir={tiny_data}", f"run.dir={runs}", "logging.wandb=true"])
        expected.append("pip install 'aline[wandb]'")
    for argv, needle in zip(cases, expected, strict=True):
        assert train_mod.main(argv) == train_mod.EXIT_INVALID
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err
    assert not runs.exists()


def test_nan_loss_marks_the_run_failed(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import aline.training.engine as engine_mod

    real = engine_mod.loop_loss

    def poisoned(*args, **kwargs):
        parts = real(*args, **kwargs)
        parts.total = parts.total * float("nan")
        return parts

    monkeypatch.setattr(engine_mod, "loop_loss", poisoned)
    runs = tmp_path / "runs"
    code = train_mod.main([f"data.dir={tiny_data}", f"run.dir={runs}", *TINY_MODEL])
    assert code == train_mod.EXIT_FAILURE
    (run,) = runs.iterdir()
    status = json.loads((run / contract.STATUS_FILE).read_text())
    assert status["state"] == "failed" and "non-finite loss" in status["reason"]
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["trainer"]["iteration"] == 0


def test_default_data_folder_is_simulated_explicit_one_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import aline.simulate as sim_mod

    calls = []

    def small(out_dir, **kwargs):
        calls.append(out_dir)
        return simulate(subjects=12, days=6, seed=1, out_dir=out_dir, progress=False)

    monkeypatch.setattr(sim_mod, "simulate", small)
    monkeypatch.chdir(tmp_path)
    said: list[str] = []
    result = train_mod.train(load_config(None, ["trainer.epochs=1", *TINY_MODEL]), announce=said.append)
    assert calls == ["data"] and "simulating" in said[0]
    assert result.state == "finished" and (tmp_path / "data" / "synthetic_migraine_train.csv").is_file()
    assert result.run_dir.parent == Path("runs")


@pytest.mark.slow
def test_two_processes_log_the_metrics_one_process_computes(tiny_data: Path, tmp_path: Path) -> None:
    """A 2-process gloo run's validation figures equal a 1-process evaluation of the same checkpoint."""
    from aline.training.engine import make_loader, setup_evaluator
    from aline.training.metrics import attach_validation_metrics

    cfg = tiny_config(
        tiny_data, tmp_path / "runs", "trainer.epochs=1", "dist.nproc_per_node=2", "dist.backend=gloo"
    )
    result = train_mod.train(cfg, announce=lambda _: None)
    assert result.state == "finished"
    logged = val_rows(result.run_dir)[-1]

    norm = Normalizer.load(result.run_dir / contract.NORMALIZER_FILE)
    cfg = load_config(result.run_dir / contract.CONFIG_FILE)  # as trained: policy.reward resolved
    raw = read_split(tiny_data / "synthetic_migraine_val.csv", cfg.data.columns)
    val = train_mod.window_dataset(cfg, raw, norm)
    model = build_model(cfg, len(norm.feature_names))
    state = torch.load(result.run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
    model.load_state_dict(state)
    evaluator = setup_evaluator(cfg, model, torch.device("cpu"))
    attach_validation_metrics(evaluator, cfg.policy.k)
    evaluator.run(make_loader(val, 7, train=False, seed=cfg.seed))  # odd batch size: other batching
    loop = ("policy_value", "ask_outside_pool", "brier_asked", "auc_asked")
    for name in ("auc", "brier", "ece", "pr_auc", "post_mse", *loop):
        assert float(logged[name]) == pytest.approx(evaluator.state.metrics[name], rel=1e-6, abs=1e-9), name
    # Only rank 0 wrote: one val row per epoch.
    assert len(val_rows(result.run_dir)) == 1


@pytest.mark.slow
def test_the_command_line_forks_its_ranks_and_they_train_as_spawned_ones_do(
    tiny_data: Path, tmp_path: Path
) -> None:
    """``python -m aline.train`` forks its ranks (dist.start_method=auto); train() from Python spawns them.
    Same seed, same data: the two runs must log the same figures, and the forked one must finish (a rank
    forked with torch's OpenMP pool started would hang in its first parallel op)."""
    extra = ["trainer.epochs=1", "dist.nproc_per_node=2", "dist.backend=gloo"]
    spawned = train_mod.train(tiny_config(tiny_data, tmp_path / "spawned", *extra), announce=lambda _: None)
    runs = tmp_path / "forked"
    cmd = [sys.executable, "-m", "aline.train", f"data.dir={tiny_data}", f"run.dir={runs}", *TINY_MODEL]
    cmd += extra
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "training in 2 processes: this one (rank 0) and 1 forked" in proc.stdout
    (forked,) = runs.iterdir()
    assert json.loads((forked / contract.STATUS_FILE).read_text())["state"] == "finished"
    (a,), (b,) = val_rows(spawned.run_dir), val_rows(forked)
    for name in ("loss", "auc", "brier", "post_mse", "policy_value"):
        assert float(a[name]) == pytest.approx(float(b[name]), rel=1e-6), name


@pytest.mark.slow
def test_a_forked_rank_failing_alone_fails_the_run_with_its_own_error(
    tiny_data: Path, tmp_path: Path
) -> None:
    """Rank 1 of a forked launch raises mid-epoch; rank 0 only sees its peer go away. The exit code, the
    console, status.json and train.log must all carry rank 1's error (in a fresh interpreter: forking from
    this test process, which has run OpenMP threads, could hang)."""
    runs = tmp_path / "runs"
    argv = [
        f"data.dir={tiny_data}",
        f"run.dir={runs}",
        *TINY_MODEL,
        "trainer.epochs=1",
        "trainer.batch_size=8",
    ]
    argv += ["dist.nproc_per_node=2", "dist.backend=gloo", "dist.start_method=fork"]
    script = textwrap.dedent(
        f"""
        import sys
        import ignite.distributed as idist
        import aline.training.engine as engine
        from aline.train import main
        real, steps = engine.loop_loss, [0]
        def breaking(*args, **kwargs):
            steps[0] += 1
            if idist.get_rank() == 1 and steps[0] > 2:  # a few steps in
                raise ValueError("rank one broke")
            return real(*args, **kwargs)
        engine.loop_loss = breaking
        sys.exit(main({argv!r}))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == contract.EXIT_FAILURE, proc.stderr[-3000:]
    assert "RankFailed: rank 1: ValueError: rank one broke" in proc.stderr
    (run,) = runs.iterdir()
    status = json.loads((run / contract.STATUS_FILE).read_text())
    assert status["state"] == "failed" and status["reason"] == "rank 1: ValueError: rank one broke"
    assert (
        "ERROR training failed: rank 1: ValueError: rank one broke" in (run / contract.LOG_FILE).read_text()
    )


@pytest.mark.slow
def test_cli_under_torchrun(tiny_data: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "aline.train", f"data.dir={tiny_data}", f"run.dir={runs}", "trainer.epochs=1",
        "dist.backend=gloo", *TINY_MODEL,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run,) = runs.iterdir()  # both ranks agreed on one run folder
    status = json.loads((run / contract.STATUS_FILE).read_text())
    assert status["state"] == "finished"
    assert len(val_rows(run)) == 1
    assert yaml.safe_load((run / contract.CONFIG_FILE).read_text())["dist"]["backend"] == "gloo"


def test_resume_extends_a_finished_run_and_refuses_to_redo_it(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = train_mod.train(
        tiny_config(tiny_data, tmp_path / "runs", "trainer.epochs=1"), announce=lambda _: None
    )
    run = first.run_dir
    assert train_mod.main(["--resume", str(run)]) == train_mod.EXIT_INVALID  # nothing left to do
    assert "extend it with trainer.epochs=N" in capsys.readouterr().err
    assert train_mod.main(["--resume", str(run), "trainer.epochs=2"]) == train_mod.EXIT_OK
    status = json.loads((run / contract.STATUS_FILE).read_text())
    assert status["state"] == "finished" and status["epoch"] == 2
    assert [int(r["epoch"]) for r in val_rows(run)] == [1, 2]
    assert load_config(run / contract.CONFIG_FILE).trainer.epochs == 2  # config.yaml says what the run did


def test_kalman_encoder_trains_and_its_posterior_beats_the_prior(tiny_data: Path, tmp_path: Path) -> None:
    # The state-space encoder through the whole trainer (closed loop, validation, checkpoints): after three
    # epochs its posterior mean must be closer to the truth than the best constant guess (the latents'
    # own spread), which an encoder that ignores the data cannot be.
    cfg = tiny_config(
        tiny_data,
        tmp_path / "runs",
        "trainer.epochs=3",
        "trainer.batch_size=16",
        "model.encoder=kalman",
        "optim.lr=1e-2",
    )
    result = train_mod.train(cfg, announce=lambda _: None)
    assert result.state == contract.STATE_FINISHED
    rows = val_rows(result.run_dir)
    assert len(rows) == 3 and all(np.isfinite(float(r["post_mse"])) for r in rows)
    val = read_split(tiny_data / "synthetic_migraine_val.csv", cfg.data.columns)
    spread = float(np.var(val.z, axis=0).mean())  # MSE of the per-hour, per-latent mean as the guess
    assert float(rows[-1]["post_mse"]) < spread
