"""``python -m aline.train``: validate config and data, then train with the ignite engines.

``train(cfg) -> TrainResult`` is the plain function tests call; ``main()`` only parses arguments and maps
errors to exit codes (0 success, 2 invalid config or data, 1 failure during training).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
import yaml
from ignite.engine import Engine
from torch.utils.data import DataLoader

from aline import contract
from aline.asking import pool_mask
from aline.config import SPLITS, Config, ConfigError, load_config
from aline.contract import EXIT_FAILURE, EXIT_INVALID, EXIT_OK
from aline.data import DataError, Normalizer, RawSplit, WindowDataset, load_splits
from aline.engine import make_loader, setup_evaluator, setup_trainer, unwrap
from aline.handlers import RunHandlers, install_sigterm_handler
from aline.loop import resolve_reward
from aline.model import build_model
from aline.scoring import binary_scores


@dataclass
class TrainResult:
    run_dir: Path
    state: str
    epoch: int
    best: dict[str, Any] | None
    oracle: dict[str, Any] = field(default_factory=dict)


# --- before any work: data ---------------------------------------------------------------------------


def prepare_data(cfg: Config, *, announce=print) -> dict[str, RawSplit]:
    """Read and validate the train and val splits, simulating them first only into the default folder."""
    missing = [str(cfg.data.split_path(s)) for s in SPLITS if not cfg.data.split_path(s).is_file()]
    if missing and cfg.data.is_default_dir:
        from aline.simulate import simulate  # imported lazily: only a fresh checkout needs it

        announce(f"No training data in {cfg.data.dir}/: simulating it first (python -m aline.simulate).")
        simulate(out_dir=cfg.data.dir)
    elif missing:
        raise DataError(
            f"data.dir={cfg.data.dir!r}: missing {', '.join(missing)}. Give the folder that holds "
            f"{cfg.data.prefix}_{{train,val,test}}.csv, or generate it: "
            f"python -m aline.simulate --out {cfg.data.dir}"
        )
    splits = load_splits(cfg.data, splits=("train", "val"))
    _check_roles(cfg, splits)
    return splits


def resolve_config(cfg: Config, splits: dict[str, RawSplit]) -> Config:
    """``policy.reward=auto`` made concrete for this data (so config.yaml says what was trained)."""
    train = splits["train"]
    reward = resolve_reward(
        cfg.policy.reward,
        has_query_value=train.query_value is not None,
        has_answers=train.answers is not None,
    )
    return cfg.model_copy(update={"policy": cfg.policy.model_copy(update={"reward": reward})})


def pool_for(cfg: Config, raw: RawSplit) -> np.ndarray:
    """The question pool of one split under this config. ``[N, 24]`` bool"""
    return pool_mask(raw, cfg.data.columns.asked_feature, cfg.policy.unaskable_when)


def _check_roles(cfg: Config, splits: dict[str, RawSplit]) -> None:
    """Columns that the chosen options need, checked before any run folder exists (exit 2, not a crash)."""
    cols = cfg.data.columns
    for raw in splits.values():
        if cfg.loss.sigma_target == "posterior" and raw.sigma is None:
            raise DataError(
                f"{raw.path}: loss.sigma_target=posterior needs the posterior std columns "
                f"{cols.sigma_columns()} (data.columns.sigma_prefix); set loss.sigma_target=constant instead"
            )
        if cfg.policy.reward == "query_value" and raw.query_value is None:
            raise DataError(
                f"{raw.path}: policy.reward=query_value needs the column {cols.query_value!r} "
                "(data.columns.query_value); use policy.reward=uncertainty instead"
            )
        if cfg.policy.reward == "info_gain" and raw.answers is None:
            raise DataError(
                f"{raw.path}: policy.reward=info_gain needs an answer column (data.columns.answers = "
                f"{cols.answers}); use policy.reward=uncertainty instead"
            )


def oracle_references(cfg: Config, val: RawSplit) -> dict[str, float]:
    """Best-achievable figures on the validation split, shown by the monitor as dashed lines."""
    refs: dict[str, float] = {}
    if val.p_bayes is not None and val.y is not None:
        refs.update(binary_scores(val.p_bayes, val.y))
    if val.sigma is not None:
        refs["post_mse_floor"] = float((val.sigma.astype("float64") ** 2).mean())
    meta_path = cfg.data.meta_path
    if meta_path.is_file():
        split = json.loads(meta_path.read_text()).get("splits", {}).get("val", {})
        for key in ("logreg_auc", "best_fixed_share", "random_share"):
            if isinstance(split.get(key), (int, float)):
                refs[key] = float(split[key])
        # The exact-Bayes forecast after the oracle's k answers (simulator meta: asked.oracle.{auc,brier}).
        oracle_asked = (split.get("asked") or {}).get("oracle") or {}
        for key in ("auc", "brier"):
            if isinstance(oracle_asked.get(key), (int, float)):
                refs[f"{key}_asked"] = float(oracle_asked[key])
    return refs


# --- the run folder ------------------------------------------------------------------------------------


def new_run_dir(cfg: Config) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path(cfg.run.dir) / f"{stamp}-{cfg.run.name}"


def load_run_config(run_dir: Path, overrides: list[str]) -> Config:
    """The config a run was started with, plus overrides (e.g. ``trainer.epochs=N`` to extend it)."""
    path = run_dir / contract.CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"--resume {run_dir}: no {contract.CONFIG_FILE} there; is it a run folder?")
    if not (run_dir / contract.CHECKPOINT_DIR / contract.LAST_CHECKPOINT).is_file():
        raise ConfigError(
            f"--resume {run_dir}: no {contract.CHECKPOINT_DIR}/{contract.LAST_CHECKPOINT} to resume from"
        )
    cfg = load_config(path, overrides)
    status = _read_status(run_dir)
    done = int(status.get("epoch") or 0)
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


def setup_run(cfg: Config, run_path: Path, splits: dict[str, RawSplit], *, resume: bool) -> Run:
    """Build the engines with every metric and handler attached (and the run folder's first files)."""
    from aline import handlers, metrics

    cfg = resolve_config(cfg, splits)
    device = _device(cfg)
    torch.manual_seed(cfg.seed)
    norm_path = run_path / contract.NORMALIZER_FILE
    # A resumed run keeps the statistics it was trained with, even if the CSVs changed since.
    normalizer = Normalizer.load(norm_path) if resume else Normalizer.fit(splits["train"])
    train_set = WindowDataset(splits["train"], normalizer, pool=pool_for(cfg, splits["train"]))
    val_set = WindowDataset(splits["val"], normalizer, pool=pool_for(cfg, splits["val"]))
    train_loader = make_loader(train_set, cfg.trainer.batch_size, train=True, seed=cfg.seed)
    val_loader = make_loader(val_set, cfg.trainer.eval_batch_size, train=False, seed=cfg.seed)

    model = build_model(cfg, n_features=len(normalizer.feature_names))
    model.init_prediction_bias(float(splits["train"].y.mean()))
    model = idist.auto_model(model.to(device))
    optimizer = idist.auto_optim(build_optimizer(cfg, unwrap(model)))

    trainer = setup_trainer(cfg, model, optimizer, device)
    evaluator = setup_evaluator(cfg, model, device)
    metrics.attach_training_metrics(trainer)
    metrics.attach_validation_metrics(evaluator, cfg.policy.k)

    if idist.get_rank() == 0:
        run_path.mkdir(parents=True, exist_ok=True)
        # On resume too: the overrides (trainer.epochs=N) are part of what the run now is.
        contract.write_text_atomic(
            run_path / contract.CONFIG_FILE, yaml.safe_dump(cfg.to_dict(), sort_keys=False)
        )
        if not resume:
            normalizer.save(norm_path)
    idist.barrier()

    attached = handlers.attach_all(
        cfg,
        run_path,
        trainer=trainer,
        evaluator=evaluator,
        val_loader=val_loader,
        model=unwrap(model),
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
    splits: dict[str, RawSplit],
    resolved: list[str],
) -> None:
    # Under torchrun every process computed its own timestamp; rank 0's name wins.
    run_path = Path(idist.broadcast(run_dir, src=0))
    resolved.append(str(run_path))  # seen by the caller when this runs in its process (torchrun, 1 process)
    run = setup_run(cfg, run_path, splits, resume=resume)
    run.trainer.run(run.train_loader, max_epochs=cfg.trainer.epochs)
    # Every rank reads status.json afterwards; wait until rank 0 has written the final state.
    idist.barrier()


def train(cfg: Config, *, resume: str | Path | None = None, announce=print) -> TrainResult:
    """Train one run; raises ConfigError/DataError (nothing written) or the training failure."""
    if cfg.logging.wandb:
        import importlib.util

        from aline.handlers import WANDB_MISSING

        if importlib.util.find_spec("wandb") is None:
            raise ConfigError(WANDB_MISSING)
    splits = prepare_data(cfg, announce=announce)
    cfg = resolve_config(cfg, splits)
    run_dir = Path(resume) if resume is not None else new_run_dir(cfg)
    backend = cfg.dist.backend
    if backend is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    spawn = cfg.dist.nproc_per_node if cfg.dist.nproc_per_node > 1 else None
    if spawn and backend is None:
        raise ConfigError("dist.nproc_per_node > 1 needs dist.backend (gloo on CPU, nccl on GPU)")
    resolved: list[str] = []
    if spawn is None and backend is None:
        # One plain process: the launcher's "Run ... in 1 processes" lines say nothing to the user.
        logging.getLogger("ignite.distributed.launcher.Parallel").setLevel(logging.WARNING)
    with idist.Parallel(backend=backend, nproc_per_node=spawn) as parallel:
        parallel.run(_training, cfg, str(run_dir), resume is not None, splits, resolved)
    # Spawned children broadcast this process's name; under torchrun rank 0's name replaces ours.
    run_dir = Path(resolved[0]) if resolved else run_dir
    status = _read_status(run_dir)
    return TrainResult(
        run_dir=run_dir,
        state=status.get("state", "unknown"),
        epoch=int(status.get("epoch") or 0),
        best=status.get("best"),
        oracle=status.get("oracle") or {},
    )


def _read_status(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / contract.STATUS_FILE).read_text())
    except (OSError, ValueError):
        return {}


# --- command line --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m aline.train",
        description=(
            "Train the simplified ALINE model (posterior fit + query policy + next-day BCE) with "
            "pytorch-ignite. Writes runs/<UTC yyyymmdd-HHMMSS>-<run.name>/ (metrics.csv, status.json, "
            "checkpoints/, ...), which `streamlit run app/monitor.py` shows live. With no data in ./data, "
            "simulates it first."
        ),
        epilog=(
            "Overrides are KEY=VALUE pairs with dotted keys, parsed as YAML values, e.g. optim.lr=3e-4 "
            "trainer.epochs=5 policy.reward=query_value dist.nproc_per_node=2 dist.backend=gloo. Every key "
            "is documented in configs/train.yaml. Exit codes: 0 success, 2 invalid config or data, "
            "1 failure during training."
        ),
    )
    parser.add_argument(
        "--config", metavar="FILE", help="YAML config (default: built-in defaults = configs/train.yaml)"
    )
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its checkpoints/last.pt, with its saved config.yaml "
        "(plus overrides; trainer.epochs=N extends a finished run)",
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # SIGTERM (a scheduler's stop) is handled like Ctrl-C: status "stopped" and a resumable last.pt.
    install_sigterm_handler()
    try:
        if args.resume:
            if args.config:
                raise ConfigError(
                    "--resume uses the run's own config.yaml; drop --config (overrides still apply)"
                )
            cfg = load_run_config(Path(args.resume), args.overrides)
        else:
            cfg = load_config(args.config, args.overrides)
        result = train(cfg, resume=args.resume)
    except (ConfigError, DataError) as err:
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
        best = result.best or {}
        print(
            f"run {result.run_dir}: finished after {result.epoch} epochs; best {best.get('metric')} "
            f"{best.get('value', float('nan')):.4f} at epoch {best.get('epoch')} ({best.get('checkpoint')})"
        )
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
