"""Issue 5.1 (second half): saving fails mid-run. A periodic save that fails warns, leaves the
previous checkpoint intact and no temp file, and training goes on; the final save failing ends the
run with exit 1 and a clear line (never a quiet 0: the state of the last steps is not on disk).
The run is then resumed from the checkpoint that survived, once the trouble is gone.

Three real ways to fail: a full disk (a 4 MiB tmpfs filled up; ENOSPC), a file size limit
(RLIMIT_FSIZE set on the running process; EFBIG; needs no privileges) and a directory that turns
read-only (a read-only bind mount; EROFS). The mount-based ones are skipped where mounting is not
allowed; the failures reach the same code either way.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers.runs import load_checkpoint, of_kind, read_events, write_preset
from tui_trainer.engine.events import RunWarning
from tui_trainer.run.rundir import Recorder, RunDir

K = 5  # the trouble starts after step K is trained, before its checkpoint: step K - 1 is on disk


def _mount(*args: str) -> bool:
    try:
        return subprocess.run(["mount", *args], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


@pytest.fixture
def small_tmpfs(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if not _mount("-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)):
        pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)")
    yield disk
    _umount(disk)


def _fill(disk: Path) -> Path:
    filler = disk / "filler"
    chunk = b"\0" * 65536
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(chunk)
                f.flush()
        except OSError:
            pass
    return filler


def _trouble_run(fork_server, tmp_path, run_dir: Path, make_trouble, undo=lambda: None) -> list[dict]:
    preset = write_preset(tmp_path / "p.toml", train={"epochs": 2, "log_every": 1},
                          checkpoint={"every_steps": 1, "every_epochs": 1},
                          callbacks=[{"target": "tests.helpers.callbacks:Script", "wait_at": K}])
    run = fork_server.start([preset, "--no-ui", "--run-dir", run_dir], tmp_path)
    try:
        run.wait_for_file(tmp_path / "ready")
        make_trouble(run)
        (tmp_path / "go").touch()
        assert run.wait() == 1, run.text[-4000:]
    finally:
        run.close()
    out = run.text
    assert "Traceback" not in out, out[-4000:]
    assert "WARNING checkpoint NOT saved" in out
    assert "final checkpoint NOT saved at step 14" in out  # one line, with what to do
    ck = run_dir / "checkpoints"
    assert not [p.name for p in ck.iterdir() if p.name.startswith(".")], "a failed save left a temp file"
    assert load_checkpoint(ck / "last.pt")["step"] == K - 1, "the previous checkpoint must be intact"
    undo()
    (tmp_path / "ready").unlink()
    again = fork_server.start([preset, "--no-ui", "--resume", ck / "last.pt", "--set", "callbacks=[]"], tmp_path)
    try:
        assert again.wait() == 0, again.text[-4000:]
    finally:
        again.close()
    events = read_events(run_dir)
    for line in (run_dir / "events.jsonl").read_text().splitlines():
        json.loads(line)  # dropped lines are dropped whole: no torn line survives a resume
    assert of_kind(events, "RunStarted")[-1]["start_step"] == K - 1
    assert of_kind(events, "Finished")[-1]["step"] == 14
    return events


def test_full_disk(fork_server, tmp_path, small_tmpfs):
    filler = []
    _trouble_run(fork_server, tmp_path, small_tmpfs / "run", lambda run: filler.append(_fill(small_tmpfs)),
                 lambda: filler[0].unlink())


def test_file_size_limit(fork_server, tmp_path):
    psutil = pytest.importorskip("psutil")
    run_dir = tmp_path / "run"

    def limit(run):
        events_size = (run_dir / "events.jsonl").stat().st_size
        cap = events_size + 16384  # room for the log lines, none for a checkpoint
        assert cap < (run_dir / "checkpoints" / "last.pt").stat().st_size
        psutil.Process(run.pid).rlimit(resource.RLIMIT_FSIZE, (cap, cap))

    events = _trouble_run(fork_server, tmp_path, run_dir, limit)
    failed = of_kind(events, "Failed")[0]  # the log still had room: the failure is in it
    assert failed["step"] == 14 and "File too large" in failed["error"]


def test_checkpoint_directory_turns_read_only(fork_server, tmp_path):
    ck = tmp_path / "run" / "checkpoints"
    mounted = []

    def read_only(run):
        if not (_mount("--bind", str(ck), str(ck)) and _mount("-o", "remount,ro,bind", str(ck))):
            _umount(ck)
            run.kill()
            pytest.skip("cannot bind-mount here (needs root with CAP_SYS_ADMIN)")
        mounted.append(ck)

    try:
        _trouble_run(fork_server, tmp_path, tmp_path / "run", read_only, lambda: _umount(ck))
    finally:
        if mounted:
            _umount(ck)


# ------------------------------------------------------------------ the recorder alone


def test_recorder_closes_a_torn_line_before_appending(tmp_path):
    rd = RunDir(tmp_path)
    rd.events_path.write_text('{"kind":"RunWarning","step":1,"message":"ok","time":1}\n{"kind":"StepRe')
    rec = Recorder(rd)
    rec(RunWarning(2, "after the resume"))
    rec.close()
    lines = rd.events_path.read_text().splitlines()
    assert json.loads(lines[-1])["message"] == "after the resume"
    assert len(lines) == 3 and lines[1] == '{"kind":"StepRe'


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_recorder_on_a_full_disk_drops_lines_and_never_raises(tmp_path, capsys):
    rd = RunDir(tmp_path)
    rd.events_path.symlink_to("/dev/full")  # every write: ENOSPC
    rec = Recorder(rd)
    for step in range(3):
        rec(RunWarning(step, "lost"))
    rec.close()
    assert rec.dropped == 3
    assert capsys.readouterr().err.count("dropping lines") == 1  # said once, not per line
