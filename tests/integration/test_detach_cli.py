"""`--detach` fails in the foreground like `--no-ui` does (one line, exit 2), never leaves a
background run to die unseen, and continues `--resume auto` in the checkpoint's run directory;
`ls` and `attach` say when a folder does not exist. Real CLI runs of the tiny preset."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import ONE_THREAD_ENV, ROOT, run_cli
from tests.helpers.runs import wait_until
from tui_trainer.run.headless import LINES_WITHIN_S

HELD = """
[[callbacks]]
target = "tests.helpers.callbacks:Script"
wait_at = 2
"""


def settled(path: Path, timeout: float = 30.0) -> bytes:
    """The file once it stops growing: a held run's last report lines come from the headless
    lines' writer thread within LINES_WITHIN_S of the report, after the hold has begun."""
    deadline = time.monotonic() + timeout
    before = path.read_bytes()
    while time.monotonic() < deadline:
        time.sleep(3 * LINES_WITHIN_S)
        now = path.read_bytes()
        if now == before:
            return now
        before = now
    raise AssertionError(f"{path} still growing after {timeout} s")


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("tui-trainer: error:"), stderr
    assert "Traceback" not in stderr
    return lines[0]


def events_of(run: Path) -> list[dict]:
    path = run / "events.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line being written
    return out



def run_dirs(tmp_path: Path) -> list[str]:
    runs = tmp_path / "runs"
    return sorted(p.name for p in runs.iterdir()) if runs.is_dir() else []


# ----------------------------------------------------------------------------- unwritable run dir


def test_detach_into_a_path_under_a_file_is_one_line_exit_2_like_no_ui(tmp_path, tiny_preset):
    preset = tiny_preset()
    (tmp_path / "somefile").write_text("")
    detached = run_cli(str(preset), "--detach", "--run-dir", "somefile/run", cwd=tmp_path, env_extra=ONE_THREAD_ENV)
    headless = run_cli(str(preset), "--no-ui", "--run-dir", "somefile/run", cwd=tmp_path, env_extra=ONE_THREAD_ENV)
    assert (detached.returncode, headless.returncode) == (2, 2)
    line = one_error_line(detached.stderr)
    assert line == one_error_line(headless.stderr)
    assert line.startswith("tui-trainer: error: --run-dir: cannot write the run directory somefile/run: ")
    assert "training in the background" not in detached.stdout


@pytest.fixture
def read_only_dir(tmp_path: Path):
    """A read-only tmpfs: chmod stops nobody when the tests run as root, a read-only mount does."""
    path = tmp_path / "ro"
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here ({mounted.stderr.strip() or mounted.returncode})")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


def test_detach_into_a_read_only_run_dir_or_cwd_is_one_line_exit_2(tmp_path, tiny_preset, read_only_dir):
    preset = tiny_preset()
    given = run_cli(str(preset), "--detach", "--run-dir", "ro/run", cwd=tmp_path, env_extra=ONE_THREAD_ENV)
    assert given.returncode == 2
    assert one_error_line(given.stderr) == ("tui-trainer: error: --run-dir: cannot write the run directory ro/run:"
                                            " Read-only file system; choose another --run-dir or free some space")
    # no --run-dir: runs/ cannot be made in a read-only current directory
    cwd = run_cli(str(preset), "--detach", cwd=read_only_dir, env_extra=ONE_THREAD_ENV)
    assert cwd.returncode == 2
    line = one_error_line(cwd.stderr)
    assert line.startswith("tui-trainer: error: --run-dir: cannot write the run directory runs/tiny-")
    assert "Read-only file system" in line


# ----------------------------------------------------------------------------- a run dir in use


def test_detach_into_a_run_dir_in_use_fails_in_the_foreground_and_leaves_its_log_alone(
        tmp_path, tiny_preset, monkeypatch, capsys):
    held = tiny_preset(HELD, name="held.toml")
    run = tmp_path / "run"
    first = run_cli(str(held), "--detach", "--run-dir", "run", cwd=tmp_path, env_extra=ONE_THREAD_ENV)
    try:
        assert first.returncode == 0, first.stderr
        assert "training in the background" in first.stdout
        wait_until(lambda: (tmp_path / "ready").exists(), "the first run held at step 2")
        log_before = settled(run / "output.log")

        second = run_cli(str(tiny_preset()), "--detach", "--run-dir", "run", cwd=tmp_path, env_extra=ONE_THREAD_ENV)
        assert second.returncode == 2
        assert one_error_line(second.stderr) == ("tui-trainer: error: --run-dir: run is in use by a running"
                                                 " tui-trainer; `tui-trainer attach run` steers it")
        assert "training in the background" not in second.stdout
        assert (run / "output.log").read_bytes() == log_before  # nothing of the refused run in the other's log

        # Should a run take the directory between that check and the fork, the child is refused: its
        # error and exit code come to the foreground; the other run's socket is not taken for its own.
        from tui_trainer.run import detach as detach_module

        monkeypatch.setattr(detach_module, "refuse_if_live", lambda rd, source: None)
        monkeypatch.setattr("tui_trainer.run.rundir.refuse_if_taken", lambda rd, arg=None: None)
        monkeypatch.setenv("PYTHONPATH", str(ROOT))
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        code = detach_module.detach(str(tiny_preset()), [], resume=None, run_dir="run")
        err = capsys.readouterr().err
        assert code == 2
        assert one_error_line(err) == ("tui-trainer: error: --run-dir: run is in use by a running tui-trainer;"
                                       " `tui-trainer attach run` steers it")
    finally:
        (tmp_path / "go").write_text("")
    wait_until(lambda: any(e["kind"] == "Finished" for e in events_of(run)), "the first run finished")
    assert [e["status"] for e in events_of(run) if e["kind"] == "Finished"] == ["completed"]


def test_a_background_run_that_dies_while_starting_reports_its_own_error_and_exit_code(tmp_path, tiny_preset):
    """A checkpoint that loads but does not fit the model is only found when the child builds it.
    A checkpoint outside a run directory starts a new one; the refused start leaves it not behind."""
    preset = tiny_preset()
    done = run_cli(str(preset), "--no-ui", "--run-dir", "first", cwd=tmp_path, env_extra=ONE_THREAD_ENV)
    assert done.returncode == 0, done.stderr
    (tmp_path / "loose.pt").write_bytes((tmp_path / "first" / "checkpoints" / "last.pt").read_bytes())
    wider = run_cli(str(preset), "--detach", "--resume", "loose.pt", "--set", "model.kwargs.width=8",
                    cwd=tmp_path, env_extra=ONE_THREAD_ENV)
    assert wider.returncode == 2
    line = one_error_line(wider.stderr)
    assert line.startswith("tui-trainer: error: --resume: loose.pt ")  # the background run's own line
    assert "background run ended" not in line
    assert "training in the background" not in wider.stdout
    assert run_dirs(tmp_path) == []  # its new run directory held only the log of the refused start


def test_detach_with_a_missing_resume_checkpoint_fails_before_the_fork(tmp_path, tiny_preset):
    missing = run_cli(str(tiny_preset()), "--detach", "--resume", "nothere.pt", cwd=tmp_path,
                      env_extra=ONE_THREAD_ENV)
    assert missing.returncode == 2
    assert one_error_line(missing.stderr).startswith("tui-trainer: error: --resume: no checkpoint at nothere.pt")
    assert run_dirs(tmp_path) == []


# ----------------------------------------------------------------------------- --resume auto


def test_detach_resume_auto_continues_in_the_checkpoints_run_dir(tmp_path, tiny_preset):
    preset = tiny_preset()
    first = run_cli(str(preset), "--no-ui", cwd=tmp_path, env_extra=ONE_THREAD_ENV)
    assert first.returncode == 0, first.stderr
    [name] = run_dirs(tmp_path)
    run = tmp_path / "runs" / name

    more = run_cli(str(preset), "--detach", "--resume", "auto", "--set", "train.epochs=3", cwd=tmp_path,
                   env_extra=ONE_THREAD_ENV)
    assert more.returncode == 0, more.stderr
    assert str(run) in more.stdout or f"runs/{name}" in more.stdout

    def finished() -> list[dict]:
        return [e for e in events_of(run) if e["kind"] == "Finished"]

    wait_until(lambda: len(finished()) == 2 and not (run / "control.sock").exists(), "the resumed run finished")
    assert [(e["status"], e["step"], e["epoch"]) for e in finished()] == [("completed", 14, 2), ("completed", 21, 3)]
    assert run_dirs(tmp_path) == [name]  # no new runs/tiny-* directory
    assert "completed" in (run / "output.log").read_text()


# ----------------------------------------------------------------------------- ls and attach


def test_ls_a_missing_folder_says_it_does_not_exist(tmp_path, capsys):
    from tui_trainer.cli import main

    assert main(["ls", str(tmp_path / "nonexistent")]) == 2
    out = capsys.readouterr()
    assert one_error_line(out.err) == f"tui-trainer: error: ls: {tmp_path / 'nonexistent'} does not exist; give a" \
                                      " folder of runs (default: runs)"
    (tmp_path / "afile").write_text("")
    assert main(["ls", "afile"]) == 2
    assert "afile is not a folder" in one_error_line(capsys.readouterr().err)
    (tmp_path / "empty").mkdir()
    assert main(["ls", "empty"]) == 0
    assert capsys.readouterr().out.startswith("no runs yet (nothing in empty/)")
    assert main(["ls"]) == 0  # no runs/ yet, by default: nothing to list, not an error
    assert capsys.readouterr().out.startswith("no runs yet (no runs/ folder here)")


def test_attach_a_missing_folder_says_it_does_not_exist(tmp_path, capsys):
    from tui_trainer.cli import main

    assert main(["attach", "/missing/dir"]) == 2
    assert one_error_line(capsys.readouterr().err) == ("tui-trainer: error: attach: /missing/dir does not exist;"
                                                       " `tui-trainer ls` lists runs")
    (tmp_path / "notarun").mkdir()
    assert main(["attach", "notarun"]) == 2
    assert "notarun is not a run directory (no events.jsonl)" in one_error_line(capsys.readouterr().err)


def test_a_resume_that_cannot_continue_is_refused_in_the_foreground_before_any_log(tmp_path, tiny_preset):
    """Another global batch was found by the background child, whose error went into the resumed
    run's output.log."""
    preset = tiny_preset()
    first = run_cli(str(preset), "--no-ui", "--run-dir", "r", cwd=tmp_path, env_extra=ONE_THREAD_ENV)
    assert first.returncode == 0, first.stderr[-1000:]
    again = run_cli(str(preset), "--detach", "--resume", "r/checkpoints/last.pt", "--set", "data.batch_size=8",
                    cwd=tmp_path, env_extra=ONE_THREAD_ENV)
    assert again.returncode == 2
    assert one_error_line(again.stderr).startswith("tui-trainer: error: --resume: r/checkpoints/last.pt was saved"
                                                   " by 1 rank with 16 samples per step"), again.stderr
    assert "training in the background" not in again.stdout
    assert not (tmp_path / "r" / "output.log").exists()
