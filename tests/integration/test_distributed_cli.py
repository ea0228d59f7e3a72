"""`train.devices = 2` through the real CLI: ranks started by torch's elastic launcher, DDP over gloo
on CPU. One run directory written by rank 0; a killed rank and SIGTERM to the launcher end cleanly."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ONE_THREAD_ENV, cli_env, run_cli
from tests.helpers.user_code import write_preset

pytestmark = pytest.mark.timeout(180)


def test_two_ranks_train_one_run_with_one_voice(tmp_path):
    import os

    preset = write_preset(tmp_path / "p.toml", train={"devices": 2, "epochs": 2})
    env = cli_env()
    env.pop("OMP_NUM_THREADS", None)  # said nothing: the launcher shares the cores out between the ranks
    proc = subprocess.run([sys.executable, "-m", "tui_trainer", str(preset), "--no-ui", "--run-dir",
                           str(tmp_path / "run")], cwd=tmp_path, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=150)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("completed:") == 1  # rank 1 prints nothing
    threads = max(1, len(os.sched_getaffinity(0)) // 2)
    assert f"| cpu, {threads} thread{'' if threads == 1 else 's'} | 2 ranks |" in proc.stdout, proc.stdout[:600]
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    assert [e["kind"] for e in events].count("RunStarted") == 1
    assert events[-1]["kind"] == "Finished" and events[-1]["status"] == "completed"
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()


def _long_run(tmp_path: Path, new_session: bool = False) -> tuple[subprocess.Popen, Path]:
    preset = write_preset(tmp_path / "p.toml", train={"devices": 2, "epochs": 500},
                          checkpoint={"every_epochs": 1, "keep_last": 1})
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "tui_trainer", str(preset), "--no-ui", "--run-dir", str(run_dir)],
                            cwd=tmp_path, env={**cli_env(), **ONE_THREAD_ENV}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL, start_new_session=new_session)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:  # training: a StepReport is in the log
        log = run_dir / "events.jsonl"
        if log.is_file() and '"kind":"EpochEnd"' in log.read_text():
            return proc, run_dir
        time.sleep(0.2)
    proc.kill()
    pytest.fail("the 2-rank run did not start training")


def _ranks(launcher: int) -> list:
    import psutil

    return [c for c in psutil.Process(launcher).children(recursive=True) if "spawn_main" in " ".join(c.cmdline())]


def _left(procs: list, within_s: float = 5.0) -> list:
    import psutil

    deadline = time.monotonic() + within_s
    while True:
        alive = [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def _rank_1_pid(launcher: int, run_dir: Path) -> int:
    """Rank 1: the launcher's spawned rank that is not rank 0 (control.json names rank 0, which serves)."""
    import psutil

    rank0 = json.loads((run_dir / "control.json").read_text())["pid"]
    ranks = [c.pid for c in psutil.Process(launcher).children(recursive=True)
             if "multiprocessing.spawn" in " ".join(c.cmdline()) and "spawn_main" in " ".join(c.cmdline())]
    assert rank0 in ranks and len(ranks) == 2, (rank0, ranks)
    return next(pid for pid in ranks if pid != rank0)


def test_a_killed_rank_ends_the_run_in_seconds_naming_it(tmp_path):
    import psutil

    proc, run_dir = _long_run(tmp_path)
    victim = _rank_1_pid(proc.pid, run_dir)
    started = _ranks(proc.pid)
    psutil.Process(victim).kill()
    t0 = time.monotonic()
    out, err = proc.communicate(timeout=60)
    assert time.monotonic() - t0 < 20
    assert proc.returncode == 1
    # the killed rank is named when the launcher saw it die first; rank 0 may fail on the dead peer
    # before (its gloo connection closes) and is then named, saying that it lost another rank
    assert re.search(r"rank (1 of 2 failed \(killed by SIGKILL\)|0 of 2 failed \(lost its connection to another"
                     r" rank, which ended first: )", err.splitlines()[-1]), err[-500:]
    assert not _left(started)  # no rank left behind


def test_sigusr1_then_sigterm_to_the_launcher_save_and_go_on_then_save_once_and_exit_143(tmp_path):
    """SIGUSR1 left to its default killed the launcher, and the ranks hung on without it."""
    import torch

    proc, run_dir = _long_run(tmp_path)
    started = _ranks(proc.pid)
    proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 30
    while not list((run_dir / "checkpoints").glob("manual-step-*.pt")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert list((run_dir / "checkpoints").glob("manual-step-*.pt")), "SIGUSR1 saved a checkpoint"
    assert proc.poll() is None, "and the run goes on"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-2000:]
    assert out.count("stopped by signal 15") == 1
    assert "Traceback" not in err and "resource_tracker" not in err, err[-2000:]
    assert not _left(started)
    assert "| cpu, 1 thread | 2 ranks |" in out  # the user's OMP_NUM_THREADS=1 is kept (a big box shares more)
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] > 0


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_stops_every_rank_after_one_save_and_twice_aborts(tmp_path, presses):
    """Once: `kill -INT` to the launcher alone (it did nothing while the ranks shared its process
    group). Twice: what a terminal's quick double Ctrl+C does (rank 0 exited 0 and the others' lost
    connection was reported as the failure, exit 1)."""
    import os

    proc, run_dir = _long_run(tmp_path, new_session=True)
    started = _ranks(proc.pid)
    if presses == 1:
        proc.send_signal(signal.SIGINT)
    else:
        os.killpg(proc.pid, signal.SIGINT)  # the terminal's foreground group: the launcher (the ranks have their own)
        time.sleep(0.3)  # a person's second press (two within one Python signal check are one, in any process)
        os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    if presses == 1:
        assert proc.returncode == 0, err[-2000:]
        assert out.count("stopped by the user after a clean save") == 1
        assert (run_dir / "checkpoints" / "last.pt").is_file()
    else:
        assert proc.returncode == 130, err[-2000:]
        assert "failed" not in err and "error" not in err, err[-2000:]
    assert not _left(started)  # no rank left behind


def test_sigterm_while_the_ranks_build_is_a_stop_not_a_failure(tmp_path):
    preset = write_preset(tmp_path / "p.toml", model={"arch": "tests.helpers.user_code:slow_mlp"},
                          train={"devices": 2})
    proc = subprocess.Popen([sys.executable, "-m", "tui_trainer", str(preset), "--no-ui", "--run-dir",
                             str(tmp_path / "run")], cwd=tmp_path, env={**cli_env(), **ONE_THREAD_ENV},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(_ranks(proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    started = _ranks(proc.pid)
    assert len(started) == 2
    time.sleep(2)  # importing torch, building: no handlers of ours yet
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-2000:]
    assert err.strip() == "tui-trainer: stopped by signal 15 while the ranks started; nothing was trained", err
    assert not _left(started)


@pytest.mark.parametrize("devices, expect", [
    ("[0, 1]", "train.devices: [0, 1] names CUDA devices, and this machine has none"),
    ('"all"', 'train.devices: "all" means every CUDA device, and there is none here'),
    ("9999", "train.devices: is 9999 CPU processes and this machine has"),
])
def test_devices_that_cannot_run_here_are_one_line_and_exit_2(tmp_path, devices, expect):
    preset = write_preset(tmp_path / "p.toml")
    proc = run_cli(str(preset), "--no-ui", "--set", f"train.devices={devices}", cwd=tmp_path,
                   env_extra={"CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and expect in proc.stderr, proc.stderr
    assert not (tmp_path / "runs").exists()


def test_a_model_module_that_is_not_there_is_one_line_before_any_rank_starts(tmp_path):
    # run from another folder than the one that holds the module: the commonest start-up mistake
    preset = write_preset(tmp_path / "p.toml", model={"arch": "no_such_pkg.models:mlp"}, train={"devices": 2})
    proc = run_cli(str(preset), "--no-ui", cwd=tmp_path, env_extra=ONE_THREAD_ENV)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f'tui-trainer: error: {preset}: model.arch: cannot import "no_such_pkg.models"'
                                   " (No module named 'no_such_pkg'); check the name, or run from the folder that"
                                   " holds it")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("factory", ["raising_factory", "raising_factory_slow_on_rank_1"])
def test_bad_input_the_ranks_find_while_building_is_said_once(tmp_path, factory):
    # only a call finds it (the factory raises): every rank does, and the person reads it once. With
    # rank 1 slower, the launcher ends it while it builds, and says so in its own log line (a race
    # that once reached CI): that line is not the person's to read either
    preset = write_preset(tmp_path / "p.toml", data={"dataset": f"tests.helpers.user_code:{factory}",
                                                     "kwargs": {"n": 5}}, train={"devices": 2})
    proc = run_cli(str(preset), "--no-ui", cwd=tmp_path, env_extra=ONE_THREAD_ENV)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"tui-trainer: error: {preset}: data.dataset:"
                                   f" tests.helpers.user_code:{factory}(...) raised FileNotFoundError: no such"
                                   " file: data/train-5.csv")
    assert proc.stdout.strip() == ""
    assert not (tmp_path / "runs").exists()


def test_bad_input_under_torchrun_names_each_rank_and_reaches_torchruns_summary(tmp_path):
    # started by torchrun (as on SLURM), each rank is the CLI: each says it on one whole line, and
    # torchrun's failure summary shows the message where it would show a traceback
    preset = write_preset(tmp_path / "p.toml", data={"dataset": "tests.helpers.user_code:raising_factory",
                                                     "kwargs": {"n": 5}})
    message = (f"{preset}: data.dataset: tests.helpers.user_code:raising_factory(...) raised FileNotFoundError:"
               " no such file: data/train-5.csv")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "-m", "tui_trainer",
                           str(preset), "--no-ui"], cwd=tmp_path, env=cli_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0
    lines = proc.stderr.splitlines()
    assert lines.count(f"tui-trainer: error: {message}") == 1, proc.stderr[-3000:]
    assert lines.count(f"tui-trainer: error: rank 1: {message}") == 1, proc.stderr[-3000:]
    assert f"traceback : bad input (exit 2), no traceback: {message}" in proc.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.skipif(__import__("shutil").which("tmux") is None, reason="tmux is not installed")
def test_the_monitor_of_two_ranks_in_tmux_steers_both(tmp_path):
    import torch

    from tests.integration.test_e2e_tmux import Tmux

    preset = write_preset(tmp_path / "p.toml", train={"devices": 2, "epochs": 5000},
                          checkpoint={"every_epochs": 0})
    run_dir = tmp_path / "run"
    tty = Tmux("tui-trainer-ddp", f"OMP_NUM_THREADS=1 {sys.executable} -m tui_trainer {preset} --run-dir {run_dir}",
               cwd=tmp_path)
    try:
        tty.wait_for("RUNNING", limit_s=90)
        tty.keys("l")
        tty.wait_for("LR ×0.5 by hand")
        tty.keys("Space")  # freeze the first layer: both ranks rebuild DDP at the same step, or the next step fails
        tty.wait_for("○ off")  # confirmed by rank 0's TrainableChanged (the log pane scrolls too fast to read)
        tty.keys("q")
        screen = tty.wait_for("q or Enter to leave")
        assert "STOPPED" in screen
        tty.keys("q")
        tty.wait_for("EXIT=0")
    finally:
        tty.close()
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert state["trainable"]["0.weight"] is False
    assert state["schedule"]["manual_factor"] == 0.5
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert events[-1]["kind"] == "Finished" and events[-1]["status"] == "stopped"


@pytest.mark.parametrize("on_hangup", ["stop", "detach"])
def test_the_terminal_going_away_does_what_on_hangup_says_to_every_rank(tmp_path, on_hangup):
    """The monitor of 2 ranks in tmux; the terminal closes (SIGHUP to the monitor and, through the
    process group, to the ranks). stop: rank 0 saves once and every rank ends (129). detach: the ranks
    go on and stay attachable; a stop through the control socket later ends them with a save."""
    import torch

    from tests.integration.test_e2e_tmux import Tmux
    from tui_trainer.run.server import live_socket

    preset = write_preset(tmp_path / "p.toml", train={"devices": 2, "epochs": 5000}, checkpoint={"every_epochs": 0})
    run_dir = tmp_path / "run"
    tty = Tmux(f"tui-trainer-ddp-hup-{on_hangup}", f"OMP_NUM_THREADS=1 {sys.executable} -m tui_trainer {preset}"
               f" --run-dir {run_dir} --on-hangup {on_hangup}", cwd=tmp_path)
    try:
        tty.wait_for("RUNNING", limit_s=90)
        launcher = json.loads((run_dir / "control.json").read_text())["pid"]  # rank 0
        started = _ranks_of_rank0(launcher)
    finally:
        tty.close()  # the terminal goes away
    if on_hangup == "detach":
        time.sleep(2.0)
        assert live_socket(run_dir) is not None  # still training, still attachable
        assert _final(run_dir)["kind"] != "Finished"
        import socket

        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:  # what `attach` then `q` sends
            s.connect(str(live_socket(run_dir)))
            s.sendall(b'{"kind": "Stop", "reason": "user"}\n')
            time.sleep(0.5)
        expect = ("stopped", 0)
    else:
        expect = ("signal", 129)
    assert not _left(started, within_s=60)  # every rank ended, none left behind
    final = _final(run_dir)
    assert (final["kind"], final["status"], final["exit_code"]) == ("Finished", *expect)
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["step"] == final["step"]


def _final(run_dir: Path) -> dict:
    return json.loads((run_dir / "events.jsonl").read_text().splitlines()[-1])


def _ranks_of_rank0(rank0: int) -> list:
    """Rank 0 and its sibling ranks (children of the same launcher)."""
    import psutil

    parent = psutil.Process(rank0).parent()
    return [p for p in parent.children() if "spawn_main" in " ".join(p.cmdline())]
