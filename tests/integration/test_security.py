"""Security: the facts behind the README's security notes, checked.

- Checkpoints (and weight files) are loaded with torch.load(weights_only=True): no pickle code runs
  (the hostile corpus proves a malicious checkpoint is refused; here every call site is checked).
- A preset naming "package.module:object" imports and runs that code: a preset is as trusted as a
  script (shown, so nobody mistakes presets for inert data).
- Nothing listens on a network port: checked on a live run (main process and loader workers).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers.runs import write_preset

ROOT = Path(__file__).resolve().parents[2]


def test_every_torch_load_is_weights_only():
    calls = []
    for path in sorted((ROOT / "tui_trainer").rglob("*.py")):
        text = path.read_text()
        for match in re.finditer(r"torch\.load\((.*?)\)", text, flags=re.S):
            calls.append((path.name, match.group(1)))
    assert calls, "no torch.load found: has loading moved?"
    for name, args in calls:
        assert "weights_only=True" in args, f"{name}: torch.load({args})"
    assert not re.search(r"\bpickle\.loads?\(", "".join(p.read_text() for p in (ROOT / "tui_trainer").rglob("*.py")))


def test_a_preset_target_runs_its_code(fork_server, tmp_path):
    (tmp_path / "side_effect.py").write_text(
        "from pathlib import Path\nPath('imported').write_text('yes')\n"
        "from examples.models import small_cnn as factory\n")
    preset = write_preset(tmp_path / "p.toml", model={"arch": "side_effect:factory"})
    run = fork_server.start(["preview", preset], tmp_path)
    try:
        assert run.wait() == 0, run.text[-3000:]
    finally:
        run.close()
    assert (tmp_path / "imported").read_text() == "yes"


def test_nothing_listens_on_a_port(fork_server, tmp_path):
    psutil = pytest.importorskip("psutil")
    preset = write_preset(tmp_path / "p.toml", data={"num_workers": 2}, train={"epochs": 1, "log_every": 1},
                          callbacks=[{"target": "tests.helpers.callbacks:Script", "wait_at": 3}])
    run = fork_server.start([preset, "--no-ui", "--run-dir", "run"], tmp_path)
    try:
        run.wait_for_file(tmp_path / "ready")
        main = psutil.Process(run.pid)
        procs = [main, *main.children(recursive=True)]
        assert len(procs) >= 3  # the run and its two loader workers
        for proc in procs:
            inet = proc.net_connections(kind="inet")
            assert not inet, f"{proc.pid} has network sockets: {inet}"
        (tmp_path / "go").touch()
        assert run.wait() == 0, run.text[-3000:]
    finally:
        run.close()
