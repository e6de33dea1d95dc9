"""Run-folder safety (issue 9): one writer per run, exactly-once logs after any crash, named faults,
truthful divergence reports, exit codes known before the first step, a monitor that stays local.

Real training processes on tiny simulated data; faults are injected by tests/helpers/run_safety_driver.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from helpers.hostile import ROOT, env, make_data
from ignite.engine import Engine

import aline.train as train_mod
from aline import contract

DRIVER = ROOT / "tests" / "helpers" / "run_safety_driver.py"
TINY = [
    "model.d_model=16",
    "model.heads=2",
    "model.layers=1",
    "model.ff_dim=32",
    "trainer.batch_size=8",
    "trainer.eval_batch_size=64",
    "trainer.log_every=1",
    "logging.progress=false",
    "sched.warmup_epochs=0.5",
]
CSVS = (contract.METRICS_FILE, contract.CALIBRATION_FILE, contract.TOPK_FILE)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_data(tmp_path_factory.mktemp("data"))


def args(data: Path, runs: Path, *extra: str) -> list[str]:
    return [f"data.dir={data}", f"run.dir={runs}", *TINY, *extra]


def driver(hook: str, argv: list[str], **kw) -> subprocess.Popen:
    cmd = [sys.executable, str(DRIVER), hook, *argv]
    return subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def status_of(run: Path) -> dict:
    return json.loads((run / contract.STATUS_FILE).read_text())


def only_run(runs: Path) -> Path:
    (run,) = [p for p in runs.iterdir() if p.is_dir()]
    return run


def without_time(path: Path) -> bytes:
    """metrics.csv minus its first column (unix time); the other files as they are."""
    data = path.read_bytes()
    if path.name != contract.METRICS_FILE:
        return data
    return b"".join(line.split(b",", 1)[1] for line in data.splitlines(keepends=True))


def wait_for(predicate, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


# --- finding 1: same name, same second -> two folders ----------------------------------------------------


def test_same_name_same_second_gets_two_folders(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_torch_thread
) -> None:
    import datetime as dt

    class Frozen(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=tz)

    for module in ("aline.train", "aline.runs.ownership"):  # wherever this version names the folder
        if module in sys.modules:
            monkeypatch.setattr(sys.modules[module], "datetime", Frozen, raising=False)
    runs = tmp_path / "runs"
    for seed in (1, 2):
        assert train_mod.main(args(data, runs, "trainer.epochs=1", "run.name=same", f"seed={seed}")) == 0
    folders = sorted(p.name for p in runs.iterdir())
    assert folders == ["20260102-030405-same", "20260102-030405-same-2"]
    for name, seed in zip(folders, (1, 2), strict=True):
        run = runs / name
        assert status_of(run)["run"] == name  # each folder says which it is
        assert f"seed: {seed}" in (run / contract.CONFIG_FILE).read_text()
        vals = [line for line in (run / contract.METRICS_FILE).read_text().splitlines() if ",val," in line]
        assert len(vals) == 1


def test_run_folders_are_created_exclusively_under_contention(tmp_path: Path) -> None:
    from aline.runs.ownership import create_run_dir

    made: list[Path] = []
    threads = [
        threading.Thread(target=lambda: made.append(create_run_dir(tmp_path, "x", stamp="20260101-000000")))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 8 and len(set(made)) == 8 and all(p.is_dir() for p in made)


# --- findings 2, 3, 5: one writer, SIGKILL anywhere, exactly-once logs ---------------------------------


@pytest.mark.slow
def test_sigkill_anywhere_then_resume_equals_an_uninterrupted_run(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], one_torch_thread
) -> None:
    train_args = ["trainer.epochs=4", "run.name=k"]
    assert train_mod.main(args(data, tmp_path / "ref", *train_args)) == 0
    ref = only_run(tmp_path / "ref")
    epoch_length = status_of(ref)["iteration"] // 4
    assert epoch_length >= 3, "the tiny data must give a few steps per epoch"
    runs = tmp_path / "runs"

    # 1. Paused mid epoch 2 (its train rows are on disk): a second writer is refused, naming pid and host.
    marker = tmp_path / "paused"
    first = driver(f"pause-after-train-row:{epoch_length + 2}:{marker}", args(data, runs, *train_args))
    try:
        wait_for(marker.exists, 300, "the first process to reach epoch 2")
        run = only_run(runs)
        capsys.readouterr()
        assert train_mod.main(["--resume", str(run)]) == contract.EXIT_INVALID
        err = capsys.readouterr().err
        assert f"pid {first.pid}" in err and socket.gethostname() in err and "Traceback" not in err
        assert contract.display_state(status_of(run)) == contract.STATE_RUNNING
    finally:
        first.kill()  # SIGKILL: no handler runs
        first.wait()
    # kill -9 leaves "running" on disk; its owner is gone, so it shows as interrupted.
    assert status_of(run)["state"] == contract.STATE_RUNNING
    assert contract.display_state(status_of(run)) == contract.STATE_INTERRUPTED

    # 2. Resumed, then killed in the middle of writing last.pt at the end of epoch 2.
    second = driver("kill-in-checkpoint-write:1", ["--resume", str(run)])
    out, err = second.communicate(timeout=300)
    assert second.returncode == -signal.SIGKILL, err[-2000:]
    assert "was interrupted" in out and "last heartbeat" in out
    leftovers = list((run / contract.CHECKPOINT_DIR).glob(".last.pt.*.tmp"))
    assert leftovers, "the killed write should have left its temporary file"

    # 3. Resumed, then killed between two CSV appends of epoch 3 (calibration written, topk not).
    third = driver("kill-after-calibration:3", ["--resume", str(run)])
    out, err = third.communicate(timeout=300)
    assert third.returncode == -signal.SIGKILL, err[-2000:]
    assert "removed" in out and not any(p.exists() for p in leftovers)

    # 4. The last resume finishes the run.
    assert train_mod.main(["--resume", str(run)]) == 0
    assert status_of(run)["state"] == contract.STATE_FINISHED

    for name in CSVS:
        assert without_time(run / name) == without_time(ref / name), name
    a = torch.load(ref / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not list(run.rglob("*.tmp")) and not (run / "owner.lock").exists()


def _ranks(pid: int) -> list[int]:
    """The launcher's child processes, less multiprocessing's resource tracker (spawn starts one, and it
    leaves on its own once its parent is gone)."""
    kids = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return [k for k in kids if b"resource_tracker" not in Path(f"/proc/{k}/cmdline").read_bytes()]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_sigterm_to_the_launcher_alone_stops_every_rank_resumably(
    data: Path, tmp_path: Path, method: str
) -> None:
    """A scheduler may signal only the process it started. Its ranks must stop with it, as one process
    does (status stopped, a last.pt to resume from), not go on training unwatched (they did)."""
    runs = tmp_path / "runs"
    dist = ["dist.nproc_per_node=2", "dist.backend=gloo", f"dist.start_method={method}"]
    cmd = [sys.executable, "-m", "aline.train", *args(data, runs, "trainer.epochs=500", *dist)]
    cmd.append("early_stop.patience=null")
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: runs.exists() and any(runs.glob("*/checkpoints/last.pt")), 300, "a first epoch")
        ranks = _ranks(proc.pid)
        assert len(ranks) == (1 if method == "fork" else 2)  # a fork launch is rank 0 itself
        proc.send_signal(signal.SIGTERM)  # the launcher only
        out, err = proc.communicate(timeout=180)
    finally:
        proc.kill()
    assert proc.returncode == contract.EXIT_FAILURE and "can be continued with --resume" in err, err[-2000:]
    assert not [r for r in ranks if Path(f"/proc/{r}").exists()], "a rank outlived its launcher"
    run = only_run(runs)
    status = status_of(run)
    assert status["state"] == contract.STATE_STOPPED and "SIGTERM" in status["reason"]
    stopped_at = status["epoch"]
    assert stopped_at < 500
    # The run continues from there, here in one process (the checkpoint does not depend on the rank count).
    assert train_mod.main(["--resume", str(run), f"trainer.epochs={stopped_at + 1}"]) == 0
    assert status_of(run)["state"] == contract.STATE_FINISHED


def test_resume_cuts_rows_logged_after_the_checkpoint(data: Path, tmp_path: Path, one_torch_thread) -> None:
    """The fast version of the test above: rows past last.pt (a crash before the checkpoint) are dropped."""
    # A constant lr: a 1-epoch run is then the first epoch of a 2-epoch one (cosine depends on the length).
    assert train_mod.main(args(data, tmp_path / "ref", "trainer.epochs=2", "sched.name=none")) == 0
    ref = only_run(tmp_path / "ref")
    assert train_mod.main(args(data, tmp_path / "runs", "trainer.epochs=1", "sched.name=none")) == 0
    run = only_run(tmp_path / "runs")
    # As if epoch 2 had been logged (partly, a half line last) and the process killed before last.pt.
    for name in CSVS:
        extra = (ref / name).read_bytes()[len((run / name).read_bytes()) :]
        with (run / name).open("ab") as fh:
            fh.write(extra[: len(extra) // 2])
    assert train_mod.main(["--resume", str(run), "trainer.epochs=2"]) == 0
    for name in CSVS:
        assert without_time(run / name) == without_time(ref / name), name


# --- ownership across hosts: heartbeat age decides where the pid cannot be asked --------------------------


def test_owner_liveness_on_this_and_other_hosts() -> None:
    from aline.runs.ownership import Holder

    now = 1_000_000.0
    fresh, stale = now - 1.0, now - contract.HEARTBEAT_STALE_S - 1.0
    me = socket.gethostname()
    dead_pid = _dead_pid()
    assert Holder(me, os.getpid(), "t", fresh).alive(now)
    assert not Holder(me, dead_pid, "t", fresh).alive(now)  # same host: the pid is asked
    assert not Holder(me, os.getpid(), "t", stale).alive(now)  # a pid reused by another process
    assert Holder("elsewhere", dead_pid, "t", fresh).alive(now)  # another host: heartbeat only
    assert not Holder("elsewhere", os.getpid(), "t", stale).alive(now)

    beat = lambda t: time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(t))  # noqa: E731
    running = {"state": "running", "host": "elsewhere", "pid": dead_pid}
    assert contract.display_state({**running, "heartbeat": beat(now - 2)}, now=now) == "running"
    assert contract.display_state({**running, "heartbeat": beat(now - 60)}, now=now) == "interrupted"
    mine = {**running, "host": me, "heartbeat": beat(now - 2)}
    assert contract.display_state(mine, now=now, this_host=me) == "interrupted"
    assert contract.display_state({**mine, "state": "finished"}, now=now) == "finished"


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_lock_is_exclusive_and_a_dead_holders_lock_is_taken_over(tmp_path: Path) -> None:
    from aline.runs.ownership import LOCK_FILE, OwnershipError, RunOwner, run_holder

    owner = RunOwner(tmp_path).acquire()
    with pytest.raises(OwnershipError, match=rf"pid {os.getpid()} on host {re.escape(socket.gethostname())}"):
        RunOwner(tmp_path).acquire()
    owner.release()
    assert run_holder(tmp_path) is None
    # A holder killed with -9: its lock stays, names a dead pid, and is broken by the next owner.
    (tmp_path / LOCK_FILE).write_text(
        json.dumps({"host": socket.gethostname(), "pid": _dead_pid(), "token": "x"})
    )
    with RunOwner(tmp_path).acquire() as again:
        assert again.previous is not None and again.previous.token == "x"
        assert run_holder(tmp_path).token == again.token
    # Another host's lock with a fresh heartbeat is respected even though its pid means nothing here.
    (tmp_path / LOCK_FILE).write_text(json.dumps({"host": "elsewhere", "pid": 1, "token": "y"}))
    with pytest.raises(OwnershipError, match="host elsewhere"):
        RunOwner(tmp_path).acquire()
    old = time.time() - contract.HEARTBEAT_STALE_S - 5
    os.utime(tmp_path / LOCK_FILE, (old, old))
    RunOwner(tmp_path).acquire().release()


def test_status_heartbeat_is_refreshed_while_running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import aline.training.handlers.status as status_mod

    monkeypatch.setattr(status_mod, "HEARTBEAT_INTERVAL_S", 0.05)
    monkeypatch.setattr(status_mod, "utc_now", lambda: f"{time.time():.6f}")  # finer than seconds
    status = status_mod.RunStatus(tmp_path / "status.json")
    status.running()
    first = status_of(tmp_path)["heartbeat"]
    wait_for(lambda: status_of(tmp_path)["heartbeat"] != first, 5, "a heartbeat")
    st = status_of(tmp_path)
    assert st["host"] == socket.gethostname() and st["pid"] == os.getpid() and st["run"] == tmp_path.name
    beat = status._beat_thread
    assert beat is not None and beat.daemon  # never keeps the process alive
    status.finished()
    assert not beat.is_alive()
    assert status_of(tmp_path)["state"] == "finished"


# --- finding 4: a corrupt checkpoint is named, recorded, and exits 2 --------------------------------------


@pytest.mark.parametrize("damage", ["truncated last.pt", "garbage last.pt", "garbage best"])
def test_corrupt_checkpoint_exits_2_naming_the_file(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str, one_torch_thread
) -> None:
    runs = tmp_path / "runs"
    assert train_mod.main(args(data, runs, "trainer.epochs=1")) == 0
    run = only_run(runs)
    last = run / "checkpoints" / "last.pt"
    target = last if "last" in damage else run / status_of(run)["best"]["checkpoint"]
    raw = target.read_bytes()
    target.write_bytes(raw[: len(raw) // 2] if damage.startswith("truncated") else b"\x80\x02garbage" * 10)
    capsys.readouterr()
    assert train_mod.main(["--resume", str(run), "trainer.epochs=2"]) == contract.EXIT_INVALID
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and str(target) in lines[0], err
    assert "weights_only" not in err and "Traceback" not in err
    st = status_of(run)
    assert st["state"] == contract.STATE_FAILED and str(target) in st["reason"]
    assert str(target) in (run / contract.LOG_FILE).read_text()


# --- finding 7 and 10: divergence named truthfully, logged, and a prompt exit ----------------------------


@pytest.mark.slow
def test_divergence_names_the_gradient_logs_the_row_and_exits_promptly(data: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    # log_every=20: iteration 3 gets a row only because it failed
    proc = driver("nan-gradient-at:3", args(data, runs, "trainer.epochs=3", "trainer.log_every=20"))
    reported = None
    for line in proc.stderr:  # the console's last word, then the process must be gone within seconds
        if "ended failed" in line:
            reported = time.monotonic()
    proc.wait(timeout=300)
    assert reported is not None and proc.returncode == contract.EXIT_FAILURE
    assert time.monotonic() - reported < 3.0
    run = only_run(runs)
    st = status_of(run)
    assert st["state"] == "failed"
    assert st["reason"].startswith("non-finite gradient norm at iteration 3 (loss ")
    assert float(re.search(r"\(loss ([^)]+)\)", st["reason"]).group(1)) > 1e9  # the loss itself was finite
    assert "non-finite gradient norm at iteration 3" in (run / contract.LOG_FILE).read_text()
    rows = (run / contract.METRICS_FILE).read_text().splitlines()
    assert any(row.split(",")[2:4] == ["3", "train"] for row in rows[1:])  # the failing iteration's row


def test_divergence_in_a_parameter_is_named(tmp_path: Path) -> None:
    from aline.training.handlers import RunStatus, attach_status, attach_terminate_on_nan

    model = torch.nn.Linear(2, 1)

    def step(engine: Engine, batch: int) -> dict[str, float]:
        if engine.state.iteration == 2:
            with torch.no_grad():
                model.bias.fill_(float("inf"))
        return {"loss": 0.5, "grad_norm": 1.0}

    trainer = Engine(step)
    rows: list[int] = []
    attach_terminate_on_nan(trainer, model, on_diverge=lambda e: rows.append(e.state.iteration))
    attach_status(trainer, RunStatus(tmp_path / "status.json"))
    trainer.run(range(5), max_epochs=1)
    assert trainer.state.iteration == 2 and rows == [2]
    assert status_of(tmp_path)["reason"] == "non-finite parameter bias at iteration 2 (loss 0.5)"


def test_divergence_of_the_loss_keeps_its_name(tmp_path: Path) -> None:
    from aline.training.handlers import RunStatus, attach_status, attach_terminate_on_nan

    trainer = Engine(lambda e, b: {"loss": float("nan") if e.state.iteration == 3 else 1.0, "grad_norm": 1.0})
    attach_terminate_on_nan(trainer)
    attach_status(trainer, RunStatus(tmp_path / "status.json"))
    trainer.run(range(4), max_epochs=2)
    assert status_of(tmp_path)["reason"] == "non-finite loss at iteration 3"


# --- finding 8: everything knowable before the first step exits 2 ----------------------------------------


def test_problems_known_before_the_first_step_exit_2(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a_file = tmp_path / "runs_is_a_file"
    a_file.write_text("x")
    cases = [
        ("optim.betas", args(data, tmp_path / "r1", "optim.betas=[1.5,0.9]")),
        ("run.dir=", args(data, a_file)),  # a file, not a folder
        ("run.dir=", args(data, a_file / "sub")),  # under a file
    ]
    for needle, argv in cases:
        assert train_mod.main(argv) == contract.EXIT_INVALID, needle
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err, err
    assert not (tmp_path / "r1").exists() and a_file.read_text() == "x"


# --- finding 9: the monitor listens on 127.0.0.1 however it is started -----------------------------------


def _listening(port: int) -> list[str]:
    """Local addresses (hex, as /proc/net/tcp{,6} writes them) of sockets listening on ``port``."""
    found = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(name) as fh:
            for line in list(fh)[1:]:
                local, state = line.split()[1], line.split()[3]
                addr, hexport = local.rsplit(":", 1)
                if state == "0A" and int(hexport, 16) == port:
                    found.append(addr)
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux /proc/net/tcp")
def test_monitor_started_from_another_folder_listens_on_loopback_only(tmp_path: Path) -> None:
    port = _free_port()
    clean = {k: v for k, v in env().items() if not k.startswith("STREAMLIT_")}
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(ROOT / "app" / "monitor.py"),
        f"--server.port={port}",
    ]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=clean, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: _listening(port) or proc.poll() is not None, 120, "the monitor to listen")
        addrs = _listening(port)
        assert addrs and all(a == "0100007F" for a in addrs), addrs  # 127.0.0.1, nothing on 0.0.0.0 / ::
    finally:
        proc.kill()
        proc.wait()

    # Usage statistics: the options that `streamlit run <script>` resolves from here, as its CLI does.
    probe = (
        "import sys; from streamlit import config; config._main_script_path = sys.argv[1]; "
        "config.get_config_options(force_reparse=True); "
        "print(config.get_option('browser.gatherUsageStats'), config.get_option('server.address'))"
    )
    got = subprocess.run(
        [sys.executable, "-c", probe, str(ROOT / "app" / "monitor.py")],
        cwd=tmp_path, env=clean, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert got.stdout.split() == ["False", "127.0.0.1"], got.stderr[-1000:]


def test_aline_monitor_launcher_forces_local_defaults_unless_asked() -> None:
    from aline.monitor.cli import build_command

    cmd = build_command(["--runs", "myruns", "--server.port=9999"])
    assert cmd[1:4] == ["-m", "streamlit", "run"] and Path(cmd[4]) == (ROOT / "app" / "monitor.py").resolve()
    assert "--server.address=127.0.0.1" in cmd and "--browser.gatherUsageStats=false" in cmd
    assert cmd[-3:] == ["--", "--runs", "myruns"] and "--server.port=9999" in cmd
    explicit = build_command(["--server.address=0.0.0.0"])
    assert "--server.address=0.0.0.0" in explicit and "--server.address=127.0.0.1" not in explicit
