"""The engine and the builders know no screen; the CLI's --help does not pay for torch.
Each check runs in a fresh interpreter: this test process has imported everything already."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, cli_env

SCREEN = ("textual", "rich")


def python(code: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=cli_env(), capture_output=True, text=True,
                          timeout=120)


def loaded(code: str) -> list[str]:
    """Run `code`, then list the top-level packages it left in sys.modules."""
    proc = python(code + "\nimport sys, json; print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def test_engine_and_builders_import_no_screen_library():
    code = """
import pkgutil, importlib, tui_trainer
assert tui_trainer.__file__.startswith(%r), tui_trainer.__file__  # this checkout, not another install
for pkg in ("tui_trainer.engine", "tui_trainer.parts"):
    mod = importlib.import_module(pkg)
    for info in pkgutil.walk_packages(mod.__path__, pkg + "."):
        importlib.import_module(info.name)
import tui_trainer.config
""" % str(ROOT)
    modules = loaded(code)
    assert "torch" in modules, "the check imported the real engine"
    assert not [m for m in modules if m in SCREEN]


def test_import_linter_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Contracts: 3 kept, 0 broken." in proc.stdout


def test_help_and_version_do_not_import_torch():
    code = """
from tui_trainer.cli import main
for args in (["--help"], ["--version"], ["preview", "--help"]):
    try:
        main(args)
    except SystemExit as exit:
        assert exit.code == 0, (args, exit.code)
"""
    modules = loaded(code)
    assert not {"torch", "torchvision", "numpy", "textual", "rich"} & set(modules)


def test_a_schema_error_is_reported_without_importing_torch(tmp_path):
    bad = ROOT / "tests/fixtures/bad_presets/unknown_key_typo.toml"
    code = f"""
import contextlib, io
from tui_trainer.cli import main
err = io.StringIO()
with contextlib.redirect_stderr(err):
    assert main([{str(bad)!r}, "--no-ui"]) == 2
assert "did you mean" in err.getvalue()
"""
    assert "torch" not in loaded(code)


def test_the_real_console_script_help(tmp_path):
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "tui_trainer", "--help"], cwd=tmp_path,
                          env=cli_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert "exit codes:" in proc.stdout and "preview PRESET.toml" in proc.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert not {m for m in imported if m.split(".")[0] in ("torch", "textual", "rich")}
