"""``python -m aline.train``: validate config and data, then train with the ignite engines.

``train(cfg) -> TrainResult`` is the plain function tests call; ``main()`` only parses arguments and maps
errors to exit codes (0 success, 2 invalid config or data, 1 failure during training).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import textwrap
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine
from torch.utils.data import DataLoader

from aline import contract
from aline.config import SPLITS, Config, ConfigError, load_config
from aline.config_doc import keys_help
from aline.contract import EXIT_FAILURE, EXIT_INVALID, EXIT_OK
from aline.data import DataError, RawSplit, feature_report, load_splits, return_freed_memory
from aline.data.dataset import Normalizer
from aline.data.shared import SharedSplit, open_splits
from aline.data.splits import reference_roles, without_references
from aline.model.asking import drop_unaskable_answers
from aline.model.network import build_model, unwrap
from aline.runs import RunFileError, RunFolder
from aline.runs.ownership import OwnershipError, RunOwner, check_runs_root, create_run_dir
from aline.runs.status import status_int
from aline.training.engine import make_loader, setup_averaging, setup_evaluator, setup_trainer
from aline.training.handlers import RunHandlers, install_sigterm_handler
from aline.training.init_from import InitFrom, load_init
from aline.training.launch import Launch, RankFailed, rank_data, run_ranks
from aline.training.run_data import (
    check_roles,
    exact_set_share,
    is_finite_number,
    oracle_references,
    resolve_config,
    window_dataset,
)


@dataclass
class TrainResult:
    run_dir: Path
    state: str
    epoch: int
    best: dict[str, Any] | None
    oracle: dict[str, Any] = field(default_factory=dict)


KALMAN_HINT = (
    "note: labels only with answers: the kalman encoder fits the readings' own likelihood and so learns how "
    "reliable each answer is; it asks and forecasts better here (--config configs/model/kalman.yaml; "
    "docs/results.md)"
)
KALMAN_INFO_GAIN_HINT = (
    "note: info_gain without the exact posterior in train: the kalman encoder's posterior variance comes "
    "from its filter, and it asks closer to the oracle, at a slightly weaker forecast "
    "(--config configs/model/kalman.yaml; docs/results.md)"
)


def encoder_hint(cfg: Config) -> str | None:
    """Advice for a run whose reward the kalman encoder serves better (measured in docs/results.md)."""
    if cfg.model.encoder == "kalman":
        return None
    if cfg.policy.reward == "label_gain":
        return KALMAN_HINT
    if cfg.policy.reward == "info_gain" and cfg.loss.posterior != "mse":
        return KALMAN_INFO_GAIN_HINT
    return None


# --- before any work: data ---------------------------------------------------------------------------


def prepare_data(cfg: Config, *, announce=print) -> dict[str, RawSplit]:
    """Read and validate all three splits (every problem of every file reported at once), simulating them
    first only into the default folder under the simulator's prefix; returns train and val."""
    data = cfg.data
    missing = [str(data.split_path(s)) for s in SPLITS if not data.split_path(s).is_file()]
    if missing and data.is_default_dir and data.is_simulator_prefix:
        from aline.simulate import simulate  # imported lazily: only a fresh checkout needs it

        announce(f"No training data in {data.dir}/: simulating it first (python -m aline.simulate).")
        simulate(out_dir=data.dir)
    elif missing:
        # Only files named like the simulator's can come from it; for a user's own prefix the hint misleads.
        hint = (
            f", or generate it: python -m aline.simulate --out {data.dir}" if data.is_simulator_prefix else ""
        )
        raise DataError(
            f"data.dir={data.dir!r}, data.prefix={data.prefix!r}: missing {', '.join(missing)}. Give the "
            f"folder that holds {data.prefix}_{{train,val,test}}.csv (or .parquet){hint}"
        )
    splits = load_splits(data, splits=SPLITS)
    for warning in feature_report(splits["train"])[1]:
        announce(f"warning: {warning}")
    if cfg.data.oracle_free is True:
        ignored = reference_roles(splits["train"])
        if ignored:
            splits["train"] = without_references(splits["train"])
            announce(f"data.oracle_free=true: training ignores the train split's {', '.join(ignored)}")
    for name in SPLITS:
        splits[name] = drop_unaskable_answers(splits[name], cfg.policy.unaskable_when, announce)
    check_roles(cfg, splits)
    return {s: splits[s] for s in ("train", "val")}


# --- the run folder ------------------------------------------------------------------------------------


def _record_fault(run_dir: Path, reason: str, what: str = "cannot resume") -> None:
    """A fault the trainer's handlers did not record (a bad checkpoint before training, a forked rank's own
    error): status.json failed with it, and a line in train.log."""
    from aline.training.handlers import RunStatus

    folder = RunFolder(run_dir)
    stamp = datetime.now().strftime("%Y-%m-%d %H:%M:%S")  # the format of the trainer's own log lines
    # Best effort: the fault itself may be that these files cannot be written (a link in their place).
    with contextlib.suppress(RunFileError, OSError), folder.open_append(contract.LOG_FILE) as log:
        log.write(f"{stamp} ERROR {what}: {reason}\n")  # the console gets it once, from main()
    with contextlib.suppress(RunFileError, OSError):
        RunStatus(folder.file(contract.STATUS_FILE)).failed(reason)


def _claim_for_resume(run_dir: Path, announce, fresh: bool = False) -> RunOwner:
    """Lock ``run_dir`` for this process; OwnershipError if its owner is alive, RunFileError if a run file
    is a symbolic link (nothing is written then) or a CSV log has another header, CheckpointError if its
    checkpoints are unusable (then status.json and train.log say so). ``fresh``: the run never started
    (:meth:`RunFolder.never_started`), so there is no checkpoint to check."""
    from aline.training.handlers import check_resumable

    folder = RunFolder(run_dir)
    if folder.links() or folder.not_files():
        folder.check_writable()  # raises, naming them: before anything is written
    status = folder.status_or_empty()
    shown = contract.display_state(status)
    if shown == contract.STATE_RUNNING:  # also covers a trainer too old to hold the lock file
        raise OwnershipError(
            f"--resume {run_dir}: the run is still being trained by pid {status.get('pid')} on host "
            f"{status.get('host', '?')} (last heartbeat {status.get('heartbeat') or status.get('updated')}); "
            "stop that process first"
        )
    owner = RunOwner(run_dir).acquire()
    try:
        if shown == contract.STATE_INTERRUPTED:
            announce(
                f"{run_dir} was interrupted: its owner (pid {status.get('pid')} on host "
                f"{status.get('host', '?')}) is gone; last heartbeat "
                f"{status.get('heartbeat') or status.get('updated')}. Resuming from its last checkpoint."
            )
        for tmp in folder.remove_leftovers():
            announce(f"removed {tmp}, a temporary file left by an interrupted write")
        try:
            folder.check_writable()
            if not fresh:
                check_resumable(run_dir)
        except RunFileError as err:  # CheckpointError included
            _record_fault(run_dir, str(err))
            raise
    except BaseException:
        owner.release()
        raise
    return owner


def load_run_config(run_dir: Path, overrides: list[str]) -> Config:
    """The config a run was started with, plus overrides (e.g. ``trainer.epochs=N`` to extend it)."""
    folder = RunFolder(run_dir)
    if not run_dir.is_dir() or not folder.file(contract.CONFIG_FILE).exists():
        raise ConfigError(f"--resume {run_dir}: no {contract.CONFIG_FILE} there; is it a run folder?")
    if not folder.last_checkpoint.exists() and not folder.never_started():
        raise ConfigError(
            f"--resume {run_dir}: no {contract.CHECKPOINT_DIR}/{contract.LAST_CHECKPOINT} to resume from"
        )
    cfg = folder.load_config(overrides)
    status = folder.status_or_empty()
    done = status_int(status, "epoch")
    if status.get("state") == contract.STATE_FINISHED and done >= cfg.trainer.epochs:
        raise ConfigError(
            f"--resume {run_dir}: the run already finished {done} epochs; "
            f"extend it with trainer.epochs=N (N > {done})"
        )
    return cfg


# --- the training process (one per rank) ----------------------------------------------------------------


def build_optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW; the prediction head gets its own group (lr × ``optim.head_lr_mult``, no weight decay)."""
    head = model.prediction_head_parameters()
    head_ids = {id(p) for p in head}
    body = [p for p in model.parameters() if id(p) not in head_ids]
    o = cfg.optim
    groups = [
        {"params": body, "lr": o.lr, "weight_decay": o.weight_decay, "lr_mult": 1.0},
        {"params": head, "lr": o.lr * o.head_lr_mult, "weight_decay": 0.0, "lr_mult": o.head_lr_mult},
    ]
    return torch.optim.AdamW(groups, lr=o.lr, betas=o.betas)


def _device(cfg: Config) -> torch.device:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda was asked for but torch sees no CUDA device")
    if cfg.device == "cpu":
        return torch.device("cpu")
    return idist.device()


@dataclass
class Run:
    """Everything one process needs to train: engines, loaders, model, optimiser, attached handlers."""

    path: Path
    trainer: Engine
    evaluator: Engine
    train_loader: DataLoader
    val_loader: DataLoader
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    handlers: RunHandlers


def setup_run(
    cfg: Config,
    run_path: Path,
    splits: dict[str, RawSplit],
    *,
    resume: bool,
    init: InitFrom | None = None,
) -> Run:
    """Build the engines with every metric and handler attached (and the run folder's first files)."""
    from aline.training import handlers, metrics

    cfg = resolve_config(cfg, splits)
    device = _device(cfg)
    torch.manual_seed(cfg.seed)
    folder = RunFolder(run_path)
    # A resumed run keeps the statistics it was trained with, even if the CSVs changed since.
    if resume:
        normalizer = folder.normalizer()
    elif init is not None:  # fine-tuning keeps the inputs on the scale the weights were trained on
        normalizer = init.normalizer
    else:
        normalizer = Normalizer.fit(splits["train"])
    train_set = window_dataset(cfg, splits["train"], normalizer)
    val_set = window_dataset(cfg, splits["val"], normalizer)
    return_freed_memory()  # the normaliser's and the question pool's temporaries
    train_loader = make_loader(train_set, cfg.trainer.batch_size, train=True, seed=cfg.seed)
    val_loader = make_loader(val_set, cfg.trainer.eval_batch_size, train=False, seed=cfg.seed)

    model = build_model(cfg, n_features=len(normalizer.feature_names))
    if init is not None and not resume:
        model.load_state_dict(init.state)
    else:
        model.init_prediction_bias(float(splits["train"].y.mean()))
    model = idist.auto_model(model.to(device))
    optimizer = idist.auto_optim(build_optimizer(cfg, unwrap(model)))

    trainer = setup_trainer(cfg, model, optimizer, device)
    scored = setup_averaging(cfg, trainer, unwrap(model))  # the weights validated and checkpointed
    evaluator = setup_evaluator(cfg, scored, device)
    metrics.attach_training_metrics(trainer)
    metrics.attach_validation_metrics(evaluator, cfg.policy.k, set_value=exact_set_share(cfg, splits["val"]))

    if idist.get_rank() == 0:
        run_path.mkdir(parents=True, exist_ok=True)
        # On resume too: the overrides (trainer.epochs=N) are part of what the run now is.
        folder.write_config(cfg)
        if not resume:
            folder.save_normalizer(normalizer)
    idist.barrier()

    attached = handlers.attach_all(
        cfg,
        run_path,
        trainer=trainer,
        evaluator=evaluator,
        val_loader=val_loader,
        model=unwrap(model),
        scored_model=scored,
        optimizer=optimizer,
        oracle=oracle_references(cfg, splits["val"]),
        resume=resume,
        epoch_length=len(train_loader),
    )
    return Run(run_path, trainer, evaluator, train_loader, val_loader, model, optimizer, attached)


def _training(
    local_rank: int,
    cfg: Config,
    run_dir: str,
    resume: bool,
    splits: dict[str, RawSplit | SharedSplit],
    resolved: list[str],
    init: InitFrom | None = None,
) -> None:
    # Under torchrun every process computed its own timestamp; rank 0's name wins.
    run_path = Path(idist.broadcast(run_dir, src=0))
    resolved.append(str(run_path))  # seen by the caller when this runs in its process (torchrun, 1 process)
    run = setup_run(cfg, run_path, open_splits(splits), resume=resume, init=init)
    run.trainer.run(run.train_loader, max_epochs=cfg.trainer.epochs)
    # Every rank reads status.json afterwards; wait until rank 0 has written the final state.
    idist.barrier()


def train(
    cfg: Config, *, resume: str | Path | None = None, announce=print, may_fork: bool = False
) -> TrainResult:
    """Train one run; raises ConfigError/DataError (nothing written) or the training failure.

    ``may_fork``: the caller vouches that this process has run no multi-threaded torch operation (the
    command line's case), so that ``dist.start_method=auto`` may fork the ranks (see :class:`Launch`)."""
    if cfg.logging.wandb:
        import importlib.util

        from aline.training.handlers import WANDB_MISSING

        if importlib.util.find_spec("wandb") is None:
            raise ConfigError(WANDB_MISSING)
    launch = Launch.plan(cfg, may_fork)
    with launch.no_thread_pool():
        if resume is None:
            check_runs_root(cfg.run.dir)  # before any work, and without creating anything
        # A run stopped before its first checkpoint starts again from scratch, in its own folder.
        fresh = resume is not None and RunFolder(resume).never_started()
        splits = prepare_data(cfg, announce=announce)
        cfg = resolve_config(cfg, splits)
        hint = encoder_hint(cfg)
        if hint and resume is None:
            announce(hint)
        # On resume the run's own last.pt and normaliser win; init_from only seeds a new run.
        init = None if resume is not None and not fresh else load_init(cfg)
        # Under torchrun every process runs this; rank 0 owns the folder and broadcasts its name.
        leader = int(os.environ.get("RANK", "0")) == 0
        owner: RunOwner | None = None
        if resume is not None:
            run_dir = Path(resume)
            owner = _claim_for_resume(run_dir, announce, fresh) if leader else None
            if fresh:
                announce(
                    f"{run_dir} never started (stopped before its first checkpoint): starting it again "
                    "from scratch with its config.yaml"
                )
        elif leader:
            run_dir = create_run_dir(cfg.run.dir, cfg.run.name)
            owner = RunOwner(run_dir).acquire()
            # At once, so that a run killed while it sets up is still a run folder that --resume restarts.
            RunFolder(run_dir).write_config(cfg)
        else:
            run_dir = Path(cfg.run.dir) / "(named by rank 0)"
        try:
            if launch.forks:
                announce(
                    f"training in {launch.nproc} processes: this one (rank 0) and {launch.nproc - 1} forked"
                )
            return _train_in(cfg, run_dir, resume is not None and not fresh, splits, init, launch)
        except RunFileError as err:  # CheckpointError included
            if leader:
                _record_fault(run_dir, str(err))
            raise
        except RankFailed as err:
            # Rank 0's handlers recorded only that its peer went away; the run folder says what happened.
            if leader and run_dir.is_dir():
                _record_fault(run_dir, str(err), what="training failed")
            raise
        finally:
            if owner is not None:
                owner.release()


def _train_in(
    cfg: Config,
    run_dir: Path,
    resume: bool,
    splits: dict[str, RawSplit],
    init: InitFrom | None,
    launch: Launch,
) -> TrainResult:
    resolved: list[str] = []
    if launch.nproc is None and launch.backend is None:
        # One plain process: the launcher's "Run ... in 1 processes" lines say nothing to the user.
        logging.getLogger("ignite.distributed.launcher.Parallel").setLevel(logging.WARNING)
    with rank_data(launch, splits) as handed:
        run_ranks(launch, _training, cfg, str(run_dir), resume, handed, resolved, init)
    # Started ranks broadcast this process's name; under torchrun rank 0's name replaces ours.
    run_dir = Path(resolved[0]) if resolved else run_dir
    status = RunFolder(run_dir).status_or_empty()
    return TrainResult(
        run_dir=run_dir,
        state=status.get("state", "unknown"),
        epoch=status_int(status, "epoch"),
        best=status.get("best"),
        oracle=status.get("oracle") or {},
    )


# --- command line --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m aline.train",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "Train the simplified ALINE model (posterior fit + query policy + next-day BCE) with "
            "pytorch-ignite. Writes runs/<UTC yyyymmdd-HHMMSS>-<run.name>/ (metrics.csv, status.json, "
            "checkpoints/, ...), which `streamlit run app/monitor.py` shows live. With no data in ./data, "
            "simulates it first.",
            110,
        ),
        epilog=textwrap.fill(
            "Overrides are KEY=VALUE pairs with dotted keys, parsed as YAML values, e.g. optim.lr=3e-4 "
            "trainer.epochs=5 policy.reward=query_value dist.nproc_per_node=2 dist.backend=gloo. Exit codes: "
            "0 success, 2 invalid config or data, 1 failure during training.",
            110,
        )
        + "\n\n"
        + keys_help(),
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        action="append",
        help="YAML config (default: the built-in defaults, as in configs/train.yaml); repeat it to layer "
        "files, a later one's keys over an earlier one's (a cohort config, then configs/model/kalman.yaml)",
    )
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its checkpoints/last.pt, with its saved config.yaml "
        "(plus overrides; trainer.epochs=N extends a finished run)",
    )
    parser.add_argument(
        "--init-from",
        metavar="RUN_DIR",
        help="start from the weights (best checkpoint) and normaliser of the run in RUN_DIR, e.g. to "
        "fine-tune a simulator-trained model on a cohort with the same features (= trainer.init_from)",
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # SIGTERM (a scheduler's stop) is handled like Ctrl-C: status "stopped" and a resumable last.pt.
    install_sigterm_handler()
    try:
        if args.resume:
            if args.init_from:
                raise ConfigError("--resume continues a run from its own last.pt; drop --init-from")
            if args.config:
                raise ConfigError(
                    "--resume uses the run's own config.yaml; drop --config (overrides still apply)"
                )
            cfg = load_run_config(Path(args.resume), args.overrides)
        else:
            cfg = load_config(args.config, args.overrides)
            if args.init_from:
                cfg.trainer.init_from = args.init_from
        # Nothing here has run a torch operation: the ranks may be forked (start_method).
        result = train(cfg, resume=args.resume, may_fork=True)
    except (ConfigError, DataError, OwnershipError, RunFileError) as err:  # CheckpointError included
        print(f"error: {err}", file=sys.stderr)
        return EXIT_INVALID
    except KeyboardInterrupt:
        print("stopped: the run can be continued with --resume", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as err:  # noqa: BLE001 - the run folder's train.log holds the traceback
        print(f"error: training failed: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_FAILURE
    if result.state != contract.STATE_FINISHED:
        print(f"run {result.run_dir} ended {result.state}", file=sys.stderr)
        return EXIT_FAILURE
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one summary rather than one per process
        print(summary_line(result))
    return EXIT_OK


def summary_line(result: TrainResult) -> str:
    """The console's last line for a finished run. The best value may be undefined (null in status.json:
    a validation metric that was NaN at every epoch)."""
    best = result.best if isinstance(result.best, dict) else {}
    value = best.get("value")
    shown = f"{value:.4f}" if is_finite_number(value) else "undefined"
    return (
        f"run {result.run_dir}: finished after {result.epoch} epochs; best {best.get('metric')} "
        f"{shown} at epoch {best.get('epoch')} ({best.get('checkpoint')})"
    )


def cli() -> None:
    """The console entry point: :func:`main`, then an immediate exit.

    When ``main`` returns, every file is written and closed. What the interpreter would still do is tear
    down torch, pandas and the rest, which takes seconds on a loaded machine, during which a finished or
    failed run still looks alive to a shell or scheduler waiting for it (tests/test_run_safety.py checks
    the exit is prompt). Hence ``os._exit`` after flushing the logs and the console.
    """
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    cli()
