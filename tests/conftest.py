"""Shared fixtures: a tiny real preset (small CNN on a slice of the real digits data) that trains
in about a second on CPU, and helpers to run the real CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

TINY = """\
name = "tiny"
seed = 0

[model]
arch = "examples.models:small_cnn"
kwargs = {{ num_classes = 10, width = 4 }}

[data]
dataset = "digits"
image_size = 16
batch_size = 16
val_fraction = 0.25
limit = 160
num_workers = 0

[optimizer]
name = "SGD"
lr = 0.05
momentum = 0.9

[train]
epochs = 2
log_every = 2
log_min_interval_s = 0  # a report after exactly every log_every steps (test_report_pacing.py: the default)

[checkpoint]
every_epochs = 1
keep_last = 2
{extra}
"""


def tiny_preset_text(extra: str = "") -> str:
    return TINY.format(extra=textwrap.dedent(extra))


@pytest.fixture
def tiny_preset(tmp_path: Path):
    """Write the tiny preset (plus extra TOML appended) and return its path."""

    def make(extra: str = "", name: str = "tiny.toml") -> Path:
        path = tmp_path / name
        path.write_text(tiny_preset_text(extra), encoding="utf-8")
        return path

    return make


@pytest.fixture(autouse=True)
def _in_tmp_cwd(tmp_path: Path, monkeypatch):
    """Runs land in tmp_path/runs; `examples.models` stays importable from the repo root."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(ROOT))


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_cli(*args: str, cwd: Path, timeout: float = 240, env_extra: dict[str, str] | None = None,
            **kwargs) -> subprocess.CompletedProcess:
    """The real CLI, as a user runs it (no TTY). `env_extra`: variables to add or override."""
    env = {**cli_env(), **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "tui_trainer", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, **kwargs)


ONE_THREAD_ENV = {"OMP_NUM_THREADS": "1"}  # for run_cli(env_extra=...): see one_torch_thread


@pytest.fixture
def one_torch_thread():
    """Run torch on one thread for this test. The tiny models train ~5x faster so: with two
    threads on a shared 2-core machine the time goes to spin-waiting, not arithmetic."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def fork_server():
    """Start CLI runs in well under a second (see tests/helpers/forkserver.py)."""
    from tests.helpers.proc import ForkServer

    server = ForkServer()
    yield server
    server.close()


@pytest.fixture(scope="session")
def sshd():
    """A throw-away sshd on 127.0.0.1 that logs in root with a throw-away key, and an ssh client
    in tmux to drop (see tests/helpers/sshd.py). Skips, saying why, where it cannot run."""
    from tests.helpers.sshd import serve

    with serve() as server:
        yield server
