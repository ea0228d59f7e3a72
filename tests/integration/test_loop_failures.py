"""Failures inside the training loop. An exception in the model's forward, CUDA out of
memory (simulated on CPU: the model raises torch.OutOfMemoryError), a corrupt image in an
ImageFolder, a DataLoader worker killed. Each ends with exit 1 within the test's timeout, one clear
line on the console (no traceback there), the traceback in events.jsonl (Failed), the losses of
every completed step recorded, and an emergency checkpoint of the last completed step that is
sound: it equals the same run's state at that step."""

from __future__ import annotations

import signal

import pytest

from tests.helpers.runs import (
    assert_exactly_equal,
    load_checkpoint,
    losses_by_step,
    of_kind,
    read_events,
    tensors_finite,
    write_preset,
)


def _run(fork_server, tmp_path, args, expect=1, before_go=None):
    run = fork_server.start([*args, "--no-ui"], tmp_path)
    try:
        if before_go is not None:
            run.wait_for_file(tmp_path / "ready")
            before_go(run)
            (tmp_path / "go").touch()
        code = run.wait(timeout=120)
    finally:
        run.close()
    assert code == expect, run.text[-4000:]
    return run.text


def _check_failure(run_dir, out: str, *, step: int, error_has: str, tb_has: str) -> dict:
    assert "Traceback" not in out, "the console gets one line; the traceback goes to events.jsonl"
    lines = [ln for ln in out.splitlines() if "FAILED" in ln]
    assert len(lines) == 1 and error_has in lines[0] and "events.jsonl" in lines[0], out[-3000:]
    events = read_events(run_dir)
    failed = of_kind(events, "Failed")[-1]
    assert failed["step"] == step and error_has in failed["error"] and failed["exit_code"] == 1
    assert "\n" not in failed["error"]
    assert "Traceback" in failed["traceback"] and tb_has in failed["traceback"]
    assert sorted(losses_by_step(events)) == list(range(1, step + 1)), "a completed step's loss was lost"
    emergency = load_checkpoint(failed["emergency_path"])
    assert emergency["step"] == step and tensors_finite(emergency["model"])
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == step
    return emergency


def _misbehaving(plan: dict) -> dict:
    return {"arch": "tests.helpers.models:misbehaving_cnn", "kwargs": {"plan": plan}}


@pytest.mark.parametrize("what,error_has", [
    ("raise", "RuntimeError: deliberate failure in forward at call 7"),
    ("oom", "out of memory at batch_size 16: try a smaller data.batch_size"),
])
def test_exception_in_forward(fork_server, tmp_path, what, error_has):
    preset = write_preset(tmp_path / "p.toml", model=_misbehaving({"7": what}), train={"log_every": 4})
    out = _run(fork_server, tmp_path, [preset, "--run-dir", "run"])
    emergency = _check_failure(tmp_path / "run", out, step=6, error_has=error_has, tb_has="models.py")
    # sound: the very state the same run has after step 6
    _run(fork_server, tmp_path, [preset, "--run-dir", "ref", "--set", "model.kwargs.plan={}",
                                 "--set", "train.max_steps=6"], expect=0)
    reference = load_checkpoint(tmp_path / "ref" / "checkpoints" / "last.pt")
    for key in ("model", "optimizer", "step"):
        assert_exactly_equal(emergency[key], reference[key], key)
    assert (emergency["epoch"], emergency["batch_in_epoch"]) == (0, 6)  # resumes with the batch that failed


@pytest.fixture
def image_folder(tmp_path):
    """A tiny real ImageFolder (PNG files via PIL) with one truncated file in train/."""
    from PIL import Image

    root = tmp_path / "images"
    for split, n in (("train", 12), ("val", 4)):
        for c, colour in (("cats", (200, 30, 30)), ("dogs", (30, 30, 200))):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (10, 10), tuple((v + 7 * i) % 256 for v in colour)).save(d / f"{i:02d}.png")
    bad = root / "train" / "dogs" / "05.png"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    return root, bad


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_image_names_its_file(fork_server, tmp_path, image_folder, workers):
    root, bad = image_folder
    preset = write_preset(tmp_path / "p.toml", model={"kwargs": {"num_classes": 2, "width": 4}},
                          data={"dataset": "imagefolder", "root": str(root), "batch_size": 4, "image_size": 12,
                                "num_workers": workers, "limit": 0},
                          train={"epochs": 1, "log_every": 1})
    out = _run(fork_server, tmp_path, [preset, "--run-dir", "run"])
    failed = of_kind(read_events(tmp_path / "run"), "Failed")[-1]
    _check_failure(tmp_path / "run", out, step=failed["step"], error_has=f"cannot read {bad}",
                   tb_has="DataError" if workers == 0 else "DataLoader worker")
    assert 0 <= failed["step"] < 6


def test_dataloader_worker_killed(fork_server, tmp_path):
    psutil = pytest.importorskip("psutil")
    preset = write_preset(tmp_path / "p.toml", data={"num_workers": 2}, train={"epochs": 2, "log_every": 1},
                          callbacks=[{"target": "tests.helpers.callbacks:Script", "wait_at": 4}])

    def kill_a_worker(run):
        workers = psutil.Process(run.pid).children()
        assert len(workers) == 2, workers
        workers[0].send_signal(signal.SIGKILL)
        workers[0].wait(30)

    out = _run(fork_server, tmp_path, [preset, "--run-dir", "run"], before_go=kill_a_worker)
    failed = of_kind(read_events(tmp_path / "run"), "Failed")[-1]
    assert failed["step"] >= 4
    _check_failure(tmp_path / "run", out, step=failed["step"], error_has="DataLoader worker",
                   tb_has="dataloader.py")
    assert "num_workers" in failed["error"]  # says what to try
