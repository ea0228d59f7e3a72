"""Saving fails mid-run. A periodic save that fails warns, leaves the
previous checkpoint intact and no temp file, and training goes on; the final save failing ends the
run with exit 1 and a clear line (never a quiet 0: the state of the last steps is not on disk).
The run is then resumed from the checkpoint that survived, once the trouble is gone.

Three real ways to fail: a full disk (a 4 MiB tmpfs filled up; ENOSPC), a file size limit
(RLIMIT_FSIZE set on the running process; EFBIG; needs no privileges) and a directory that turns
read-only (a read-only bind mount; EROFS). The mount-based ones are skipped where mounting is not
allowed; the failures reach the same code either way.

A disk that fills up DURING torch.save's write (the usual way: the checkpoint is bigger
than what is left) reaches us as torch's RuntimeError ("[enforce fail at inline_container.cc:672]
. unexpected pos ..."), not an OSError; it must still read "disk full: N MiB free in DIR" and the
run must go on. `test_disk_fills_during_a_checkpoint_write` leaves less room than one checkpoint.
"""

from __future__ import annotations

import errno
import json
import os
import re
import resource
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.helpers.engine import run
from tests.helpers.runs import load_checkpoint, of_kind, read_events, write_preset
from tui_trainer.engine import checkpoint
from tui_trainer.engine.events import CheckpointSaved, Failed, Finished, RunWarning
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


def _trouble_run(fork_server, tmp_path, run_dir: Path, make_trouble, undo=lambda: None, says: str = ""
                 ) -> list[dict]:
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
    assert says in out, out[-4000:]
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
                 lambda: filler[0].unlink(),
                 says=f"final checkpoint NOT saved at step 14 (last.pt: disk full: 0.0 MiB free in {small_tmpfs}")


def test_disk_fills_during_a_checkpoint_write(fork_server, tmp_path, small_tmpfs):
    """After step K the disk keeps a quarter of a checkpoint free: the saves of steps K..K+3 open
    their temp file and run out of space inside torch.save. Each one warns "disk full", leaves no
    temp file and the last checkpoint (step K - 1) whole; training goes on; at step K+4 the space
    is back and the run saves and completes (exit 0)."""
    run_dir = small_tmpfs / "run"
    ck = run_dir / "checkpoints"
    back = K + 4
    # width 32: a 0.8 MiB checkpoint whose largest tensor (300 KiB, the last conv's weight) spans
    # its second eighth to its half. A quarter of it free: the space runs out inside that tensor's
    # write, which torch.save reports as a RuntimeError (what a real full disk gives). Where it runs out in
    # a write of small, buffered tensors the close fails again and a plain OSError surfaces instead.
    preset = write_preset(tmp_path / "p.toml", model={"kwargs": {"num_classes": 10, "width": 32}},
                          train={"epochs": 2, "log_every": 1},
                          checkpoint={"every_steps": 1, "every_epochs": 1},
                          callbacks=[{"target": "tests.helpers.callbacks:Script", "wait_at": K,
                                      "wait_again_at": back}])
    proc = fork_server.start([preset, "--no-ui", "--run-dir", run_dir], tmp_path)
    try:
        proc.wait_for_file(tmp_path / "ready")
        size = (ck / "last.pt").stat().st_size
        filler = _fill(small_tmpfs)
        os.truncate(filler, filler.stat().st_size - size // 4)
        st = os.statvfs(small_tmpfs)
        free = st.f_bavail * st.f_frsize
        assert 0 < free < size, (free, size)  # the temp file opens; the write runs out of room
        (tmp_path / "go").touch()

        deadline = time.monotonic() + 120  # held after step K+4's report, before its save
        while not [e for e in of_kind(read_events(run_dir), "StepReport") if e["step"] == back]:
            assert proc.poll() is None and time.monotonic() < deadline, proc.text[-4000:]
            time.sleep(0.02)
        assert not [p.name for p in ck.iterdir() if p.name.startswith(".")], "a failed save left a temp file"
        assert sorted(p.name for p in ck.iterdir()) == ["last.pt"]
        assert load_checkpoint(ck / "last.pt")["step"] == K - 1, "the previous checkpoint must be intact"
        filler.unlink()  # the space comes back
        (tmp_path / "go2").touch()
        assert proc.wait() == 0, proc.text[-4000:]
    finally:
        proc.close()
    out = proc.text
    assert "Traceback" not in out and "RuntimeError" not in out and "inline_container" not in out, out[-4000:]
    warned = [line for line in out.splitlines() if "checkpoint NOT saved" in line]
    assert len(warned) == 5, out[-4000:]  # steps 5, 6, 7 (and epoch-0001.pt), 8
    for line in warned:
        assert re.search(rf"disk full: 0\.\d MiB free in {re.escape(str(ck))}, the checkpoint needs about 0\.\d MiB;",
                         line), line
        assert line.endswith("; the previous checkpoint is intact; training goes on"), line

    events = read_events(run_dir)
    assert len(of_kind(events, "RunWarning")) == 5  # the events of those steps were written too
    assert sorted({e["step"] for e in of_kind(events, "CheckpointSaved")}) == [*range(1, K), *range(back, 15)]
    steps = [s for e in of_kind(events, "StepReport") for s in range(e["first_step"], e["step"] + 1)]
    assert steps == list(range(1, 15)), "training went on through the failed saves"
    assert of_kind(events, "Finished")[-1]["status"] == "completed"
    assert not [p.name for p in ck.iterdir() if p.name.startswith(".")]
    for path in ck.iterdir():  # every name loads; last.pt and best.pt are links to complete files
        assert checkpoint.load(path)["step"] >= back, path
    assert load_checkpoint(ck / "last.pt")["step"] == 14


# ------------------------------------------------------------------ telling a full disk from other failures


def _wrapped_enospc() -> RuntimeError:
    """What torch.save raises when the disk fills mid-write: the ENOSPC is only its __context__."""
    try:
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")  # noqa: B904
    except RuntimeError as exc:
        return exc


def test_enospc_inside_torchs_runtime_error_is_disk_full(tmp_path):
    why = checkpoint.describe_write_error(_wrapped_enospc(), tmp_path, need_bytes=1)
    assert why.startswith("disk full: ") and f" MiB free in {tmp_path}" in why, why


def test_a_runtime_error_with_room_to_spare_is_not_called_disk_full(tmp_path):
    exc = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    why = checkpoint.describe_write_error(exc, tmp_path, need_bytes=1)
    assert "disk full" not in why
    assert why.startswith("RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    assert f"MiB free in {tmp_path}" in why  # says there was room: look elsewhere
    # no errno to go by, and less room than the checkpoint needs: that is a full disk
    short = checkpoint.describe_write_error(exc, tmp_path, need_bytes=checkpoint.free_bytes(tmp_path) + 2**30)
    assert short.startswith("disk full: ")


def test_other_os_errors_keep_their_own_words(tmp_path):
    assert checkpoint.describe_write_error(OSError(errno.EROFS, "Read-only file system"), tmp_path) == \
        "Read-only file system"
    assert "File too large" in checkpoint.describe_write_error(OSError(errno.EFBIG, "File too large"), tmp_path)


def test_atomic_save_on_a_disk_that_fills_mid_write(small_tmpfs):
    """The real thing, without a run: a 4 MiB tmpfs, an 8 MiB checkpoint."""
    path = small_tmpfs / "last.pt"
    checkpoint.atomic_save({"format": checkpoint.FORMAT, "step": 1}, path)
    with pytest.raises(checkpoint.CheckpointWriteError) as info:
        checkpoint.atomic_save({"format": checkpoint.FORMAT, "step": 2, "w": torch.zeros(2 * 2**20)}, path)
    err = info.value
    assert err.disk_full and err.errno == errno.ENOSPC
    assert isinstance(err.__cause__, RuntimeError), "torch.save reports a short write as a RuntimeError"
    assert str(err).startswith("disk full: ") and f"MiB free in {small_tmpfs}, the checkpoint needs about 8.0 MiB" \
        in str(err), str(err)
    assert [p.name for p in small_tmpfs.iterdir()] == ["last.pt"], "the temp file must be gone"
    assert checkpoint.load(path)["step"] == 1


def test_atomic_save_with_a_writer_error_on_a_roomy_disk(tmp_path, monkeypatch):
    """torch's writer failing for another reason: a CheckpointWriteError with the real message."""
    path = tmp_path / "last.pt"
    checkpoint.atomic_save({"format": checkpoint.FORMAT, "step": 1}, path)

    def broken_save(obj, f):
        f.write(b"PK half a zip")
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(checkpoint.CheckpointWriteError) as info:
        checkpoint.atomic_save({"format": checkpoint.FORMAT, "step": 2}, path)
    assert not info.value.disk_full and "disk full" not in str(info.value)
    assert str(info.value).startswith("RuntimeError: PytorchStreamWriter failed writing file data/0")
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    monkeypatch.undo()
    assert checkpoint.load(path)["step"] == 1


@pytest.mark.usefixtures("one_torch_thread")
def test_a_failed_write_that_is_not_a_full_disk(tiny_preset, tmp_path, monkeypatch):
    """A periodic save whose write fails warns with the real error and the run goes on; when the
    final save fails too, the run ends Failed (exit 1) with that error, never "disk full"."""
    real_save = torch.save
    calls = []

    def flaky_save(obj, f):
        calls.append(obj["step"])
        if obj["step"] in (3, 4, 14):
            raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")
        real_save(obj, f)

    monkeypatch.setattr(torch, "save", flaky_save)
    out = run(tiny_preset(), "train.log_every=1", "checkpoint.every_steps=1", run_dir=tmp_path / "run")
    ck = tmp_path / "run" / "checkpoints"
    assert [e.step for e in out.of(RunWarning)] == [3, 4, 14, 14]  # step 14: its periodic and epoch saves
    for warning in out.of(RunWarning):
        assert warning.message.startswith("checkpoint NOT saved (") and "disk full" not in warning.message
        assert "): RuntimeError: PytorchStreamWriter failed writing file data/0: file write failed (" \
            in warning.message and f"MiB free in {ck})" in warning.message, warning.message
        assert warning.message.endswith("; the previous checkpoint is intact; training goes on")
    saved = sorted({e.step for e in out.of(CheckpointSaved)})
    assert saved == [1, 2, *range(5, 14)], "training went on and saved again"
    assert isinstance(out.final, Failed) and "disk full" not in out.final.error
    assert out.final.error.startswith("final checkpoint NOT saved at step 14 (last.pt: RuntimeError:"
                                      " PytorchStreamWriter failed writing file data/0"), out.final.error
    assert not out.of(Finished)
    assert not [p.name for p in ck.iterdir() if p.name.startswith(".")]
    monkeypatch.undo()
    assert checkpoint.load(ck / "last.pt")["step"] == 13


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
