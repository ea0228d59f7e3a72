"""Hostile and broken input. Every case gives one line on stderr and exit 2 (bad input;
1 where it is a failure at run time), never a traceback, and changes nothing on disk: no run
directory, no rewritten config, no code run from a checkpoint.

Bad presets are data: tests/fixtures/hostile/*.toml (first line "# expect: N"). Bad command lines,
checkpoints and data trees are the table below. Exact wording is not asserted here (that is the
validation-message table's job); breadth is. Each case runs as its own process (fork server).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from tests.helpers.runs import write_preset

FIXTURES = Path(__file__).parents[1] / "fixtures" / "hostile"
PRESETS = sorted(FIXTURES.glob("*.toml"))


def _expected(path: Path) -> int:
    first = path.read_text(encoding="utf-8").lstrip("\ufeff").splitlines()[0]
    assert first.startswith("# expect: "), path
    return int(first.split(":")[1])


def _tree(root: Path) -> dict[str, tuple]:
    """Every path under root with size and mtime (logs of the run under test excluded)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if rel in ("out.txt", "err.txt"):
                continue
            st = p.lstat()
            out[rel] = (st.st_size, st.st_mtime_ns)
    return out


def _check(fork_server, cwd: Path, args: list, expect: int) -> str:
    before = _tree(cwd)
    run = fork_server.start(args, cwd, log="out.txt", err_log="err.txt")
    try:
        code = run.wait(timeout=120)
    finally:
        run.close()
    out = (cwd / "out.txt").read_text(errors="replace") if (cwd / "out.txt").exists() else ""
    err = (cwd / "err.txt").read_text(errors="replace") if (cwd / "err.txt").exists() else ""
    assert "Traceback" not in out + err, out + err
    assert code == expect, f"exit {code}\nstdout: {out[-2000:]}\nstderr: {err[-2000:]}"
    if expect == 2:
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("tui-trainer: error: "), err
        assert _tree(cwd) == before, "bad input must leave no trace on disk"
        return lines[0]
    failed = [ln for ln in out.splitlines() if "FAILED" in ln or "nonfinite" in ln]
    assert len(failed) == 1, out
    return failed[0]


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_bad_preset(fork_server, tmp_path, preset):
    local = tmp_path / preset.name
    local.write_bytes(preset.read_bytes())
    message = _check(fork_server, tmp_path, [local, "--no-ui"], _expected(preset))
    assert str(local) in message or "--set" in message  # names the file it is about


# ------------------------------------------------------------------ command lines and files


@pytest.fixture(scope="module")
def real_run(fork_server, tmp_path_factory):
    """One real tiny run: its checkpoint and run directory feed the --resume cases."""
    base = tmp_path_factory.mktemp("real")
    preset = write_preset(base / "tiny.toml", train={"epochs": 1})
    run = fork_server.start([preset, "--no-ui", "--run-dir", "run"], base)
    assert run.wait(timeout=120) == 0, run.text
    return base / "run"


class Evil:
    """Unpickling this runs a shell command (it must never be unpickled)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _copy_run(real_run: Path, cwd: Path) -> Path:
    import shutil

    shutil.copytree(real_run, cwd / "run")
    return cwd / "run" / "checkpoints" / "last.pt"


def _tiny(cwd: Path, **sections) -> Path:
    return write_preset(cwd / "tiny.toml", **sections)


def _ckpt_variant(change):
    """A case resuming from a modified copy of the real checkpoint."""

    def setup(cwd, real_run):
        import torch

        path = _copy_run(real_run, cwd)
        state = torch.load(path, weights_only=True)
        change(state)
        target = cwd / "variant.pt"
        torch.save(state, target)
        return [_tiny(cwd), "--no-ui", "--resume", target]

    return setup


def _other_model(state):
    from tests.helpers.models import another_cnn

    state["model"] = another_cnn().state_dict()


def _image_tree(cwd: Path, spec: dict[str, int], corrupt: str | None = None) -> Path:
    from PIL import Image

    root = cwd / "images"
    for rel, n in spec.items():
        (root / rel).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (i * 20 % 256, 0, 0)).save(root / rel / f"{i}.png")
    if corrupt:
        (root / corrupt).write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return root


def _imagefolder_preset(cwd: Path, root: Path) -> Path:
    return _tiny(cwd, model={"kwargs": {"num_classes": 2, "width": 4}},
                 data={"dataset": "imagefolder", "root": str(root), "limit": 0})


def _evil_checkpoint(cwd, real_run, *, zip_format: bool):
    import torch

    from tui_trainer.engine.checkpoint import FORMAT

    marker = cwd / "pwned"
    payload = {"format": FORMAT, "model": Evil(marker)}
    path = cwd / "evil.pt"
    if zip_format:
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    return [_tiny(cwd), "--no-ui", "--resume", path]


CASES = {
    # command line
    "no arguments": (lambda cwd, r: [], 2),
    "unknown flag": (lambda cwd, r: [_tiny(cwd), "--frobnicate"], 2),
    "empty preset argument": (lambda cwd, r: ["", "--no-ui"], 2),
    "preset missing": (lambda cwd, r: ["missing.toml", "--no-ui"], 2),
    "preset is a directory": (lambda cwd, r: [(cwd / "adir").mkdir() or cwd / "adir", "--no-ui"], 2),
    "preset is binary": (lambda cwd, r: [(cwd / "b.toml").write_bytes(bytes(range(256)) * 4) and cwd / "b.toml",
                                         "--no-ui"], 2),
    "preset is a fifo": (lambda cwd, r: [os.mkfifo(cwd / "f.toml") or cwd / "f.toml", "--no-ui"], 2),
    "preset is /dev/zero": (lambda cwd, r: ["/dev/zero", "--no-ui"], 2),
    "--set without =": (lambda cwd, r: [_tiny(cwd), "--no-ui", "--set", "optimizer.lr"], 2),
    "--set without key": (lambda cwd, r: [_tiny(cwd), "--no-ui", "--set", "=3"], 2),
    "--set bad key": (lambda cwd, r: [_tiny(cwd), "--no-ui", "--set", "optimizer..lr=1"], 2),
    "--set unknown key": (lambda cwd, r: [_tiny(cwd), "--no-ui", "--set", "nope.key=1"], 2),
    "--set into a value": (lambda cwd, r: [_tiny(cwd), "--no-ui", "--set", "name.x=1"], 2),
    "--set list index": (lambda cwd, r: [_tiny(cwd), "--no-ui", "--set", "callbacks.3.target=x"], 2),
    "--set wrong type": (lambda cwd, r: [_tiny(cwd), "--no-ui", "--set", "train.epochs=[1, 2]"], 2),
    "--set empty value": (lambda cwd, r: [_tiny(cwd), "--no-ui", "--set", "optimizer.lr="], 2),
    "--set negative size": (lambda cwd, r: [_tiny(cwd), "--no-ui", "--set", "data.batch_size=-3"], 2),
    "--set unknown optimizer": (lambda cwd, r: [_tiny(cwd), "--no-ui", "--set", "optimizer.name=Sgd"], 2),
    "--run-dir is a file": (lambda cwd, r: [_tiny(cwd), "--no-ui", "--run-dir",
                                            (cwd / "afile").write_text("x") and cwd / "afile"], 2),
    "--run-dir cannot exist": (lambda cwd, r: [_tiny(cwd), "--no-ui", "--run-dir", "/proc/no/such/run"], 2),
    "preview without preset": (lambda cwd, r: ["preview"], 2),
    "preview missing preset": (lambda cwd, r: ["preview", "missing.toml"], 2),
    "preview bad preset": (lambda cwd, r: ["preview", _tiny(cwd, optimizer={"name": "Adamm"})], 2),
    # checkpoints
    "--resume missing file": (lambda cwd, r: [_tiny(cwd), "--no-ui", "--resume", "nope.pt"], 2),
    "--resume a directory": (lambda cwd, r: [_tiny(cwd), "--no-ui", "--resume", cwd], 2),
    "--resume auto, no runs": (lambda cwd, r: [_tiny(cwd), "--no-ui", "--resume", "auto"], 2),
    "--resume empty file": (lambda cwd, r: [_tiny(cwd), "--no-ui", "--resume",
                                            (cwd / "e.pt").write_bytes(b"") or cwd / "e.pt"], 2),
    "--resume text file": (lambda cwd, r: [_tiny(cwd), "--no-ui", "--resume",
                                           (cwd / "t.pt").write_text("hello") and cwd / "t.pt"], 2),
    "--resume truncated": (lambda cwd, r: [_tiny(cwd), "--no-ui", "--resume", _truncated(cwd, r)], 2),
    "--resume a torch file not ours": (_ckpt_variant(lambda s: [s.clear(), s.update(a=1)]), 2),
    "--resume marker but nothing else": (_ckpt_variant(lambda s: [s.clear(), s.update(format="tui-trainer/1")]), 2),
    "--resume other model": (_ckpt_variant(_other_model), 2),
    "--resume garbage schedule": (_ckpt_variant(lambda s: s.update(schedule={"manual_factor": "x"})), 2),
    "--resume garbage rng": (_ckpt_variant(lambda s: s.update(rng={"python": 3})), 2),
    "--resume other optimizer": (lambda cwd, r: [
        _tiny(cwd, optimizer={"name": "Adam", "lr": 0.01}, replace=("optimizer",)), "--no-ui", "--resume",
        _copy_run(r, cwd)], 2),
    "--resume pickle that runs code (zip)": (lambda cwd, r: _evil_checkpoint(cwd, r, zip_format=True), 2,
                                             "refusing (weights_only=True)"),
    "--resume pickle that runs code (legacy)": (lambda cwd, r: _evil_checkpoint(cwd, r, zip_format=False), 2),
    "weights file is a pickle that runs code": (lambda cwd, r: [
        _tiny(cwd, model={"weights": str(_evil_checkpoint(cwd, r, zip_format=True)[-1])}), "--no-ui"], 2,
                                                "refusing (weights_only=True)"),
    "weights file is garbage": (lambda cwd, r: [
        _tiny(cwd, model={"weights": str((cwd / "w.pth").write_text("x") and cwd / "w.pth")}), "--no-ui"], 2),
    # data
    "imagefolder with empty class dirs": (lambda cwd, r: [
        _imagefolder_preset(cwd, _image_tree(cwd, {"train/a": 0, "train/b": 0})), "--no-ui"], 2),
    "imagefolder with no class dirs": (lambda cwd, r: [
        _imagefolder_preset(cwd, _image_tree(cwd, {})), "--no-ui"], 2),
    "imagefolder, first sample corrupt": (lambda cwd, r: [
        _imagefolder_preset(cwd, _image_tree(cwd, {"a": 4, "b": 4}, corrupt="a/0.png")),
        "--no-ui", "--set", "data.val_fraction=0.0"], 2),
    "classes mismatch with imagefolder": (lambda cwd, r: [
        _tiny(cwd, data={"dataset": "imagefolder", "root": str(_image_tree(cwd, {"a": 4, "b": 4})), "limit": 0},
              model={"arch": "resnet18", "num_classes": 3}), "--no-ui"], 2),
    "torchvision dataset files missing": (lambda cwd, r: [
        _tiny(cwd, data={"dataset": "torchvision:CIFAR10", "root": str(cwd)}), "--no-ui"], 2),
    "training set empty after the split": (lambda cwd, r: [
        _tiny(cwd, data={"limit": 1, "val_fraction": 0.9}), "--no-ui"], 2),
}


def _truncated(cwd: Path, real_run: Path) -> Path:
    data = _copy_run(real_run, cwd).read_bytes()
    path = cwd / "half.pt"
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("name", list(CASES))
def test_bad_call(fork_server, tmp_path, real_run, name):
    setup, expect, *must_say = CASES[name]
    args = setup(tmp_path, real_run)
    message = _check(fork_server, tmp_path, args, expect)
    for words in must_say:
        assert words in message, message
    assert not (tmp_path / "pwned").exists(), "a checkpoint ran code when loaded"


def test_corpus_is_big_enough():
    assert len(PRESETS) + len(CASES) >= 40
