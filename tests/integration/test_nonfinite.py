"""Non-finite losses. "stop" (default) ends the run at the first non-finite loss or
weight with exit 1 and the step, and never writes a non-finite checkpoint over last.pt or best.pt;
"skip" drops the update of that step and goes on."""

from __future__ import annotations

import math

import pytest

from tests.helpers.runs import load_checkpoint, losses_by_step, of_kind, read_events, tensors_finite, write_preset


def _run(fork_server, tmp_path, preset, *extra, expect: int):
    run = fork_server.start([preset, "--no-ui", "--run-dir", "run", *extra], tmp_path)
    try:
        code = run.wait(timeout=300)
    finally:
        run.close()
    assert code == expect, run.text[-4000:]
    assert "Traceback" not in run.text, run.text[-4000:]
    return read_events(tmp_path / "run"), run.text


def _all_checkpoints_finite(run_dir) -> dict[str, int]:
    steps = {}
    for path in sorted((run_dir / "checkpoints").glob("*.pt")):
        state = load_checkpoint(path)
        assert tensors_finite(state["model"]) and tensors_finite(state["optimizer"]), path.name
        steps[path.name] = state["step"]
    return steps


def _misbehaving(plan: dict) -> dict:
    return {"arch": "tests.helpers.models:misbehaving_cnn", "kwargs": {"plan": plan}}


def test_huge_lr_stops_at_the_first_bad_step_and_keeps_the_last_finite_checkpoint(fork_server, tmp_path):
    preset = write_preset(tmp_path / "p.toml", optimizer={"lr": 1e12}, train={"log_every": 1},
                          checkpoint={"every_steps": 1})
    events, out = _run(fork_server, tmp_path, preset, expect=1)
    end = of_kind(events, "Finished")[-1]
    assert end["status"] == "nonfinite" and end["exit_code"] == 1
    assert f"at step {end['step']}" in end["message"] and f"at step {end['step']}" in out
    steps = _all_checkpoints_finite(tmp_path / "run")
    assert steps["last.pt"] == end["step"] - 1, "resume point: the last step before it went bad"
    assert end["last_path"].endswith("last.pt") and "resume from" in end["message"]


def test_blow_up_in_epoch_2_leaves_best_and_last_of_epoch_1_untouched(fork_server, tmp_path):
    """A manual LR change x1e13 at step 8 (as a user's callback could send): epoch 1's best.pt and
    last.pt are the only checkpoints, byte for byte, and finite."""
    script = {"target": "tests.helpers.callbacks:Script", "scale_at": 8, "factor": 1e13}
    preset = write_preset(tmp_path / "p.toml", train={"epochs": 3, "log_every": 1},
                          checkpoint={"every_epochs": 1, "save_best": True}, callbacks=[script])
    events, _ = _run(fork_server, tmp_path, preset, expect=1)
    end = of_kind(events, "Finished")[-1]
    assert end["status"] == "nonfinite" and 8 < end["step"] <= 14
    ck = tmp_path / "run" / "checkpoints"
    assert _all_checkpoints_finite(tmp_path / "run") == {"best.pt": 7, "epoch-0001.pt": 7, "last.pt": 7}
    assert (ck / "best.pt").read_bytes() == (ck / "epoch-0001.pt").read_bytes() == (ck / "last.pt").read_bytes()


def test_nan_found_only_by_the_final_report_still_ends_cleanly(fork_server, tmp_path):
    """NaN at step 9, SIGTERM at step 10, no report or save in between: the stop's own last report
    finds it. This used to escape as a traceback (the ending ran outside the engine's guard)."""
    preset = write_preset(tmp_path / "p.toml", model=_misbehaving({"9": "nan", "10": "SIGTERM"}),
                          train={"log_every": 1000}, checkpoint={"every_epochs": 0, "save_best": False})
    events, out = _run(fork_server, tmp_path, preset, expect=1)
    end = of_kind(events, "Finished")[-1]
    assert end["status"] == "nonfinite" and end["step"] == 9 and "at step 9" in out
    assert not list((tmp_path / "run" / "checkpoints").glob("*.pt")), "nothing finite after step 0 was saved"


def test_losses_before_the_bad_step_are_reported_not_dropped(fork_server, tmp_path):
    preset = write_preset(tmp_path / "p.toml", model=_misbehaving({"5": "nan"}), train={"log_every": 4})
    events, _ = _run(fork_server, tmp_path, preset, expect=1)
    losses = losses_by_step(events)
    assert sorted(losses) == [1, 2, 3, 4, 5]
    assert all(math.isfinite(losses[s]) for s in (1, 2, 3, 4)) and math.isnan(losses[5])
    assert of_kind(events, "Finished")[-1]["step"] == 5


def test_skip_mode_drops_exactly_the_bad_updates(fork_server, tmp_path):
    """Adam counts its updates per parameter: two skipped steps of 14 leave it at 12."""
    preset = write_preset(tmp_path / "p.toml", model=_misbehaving({"3": "nan", "5": "inf", "9": "nangrad"}),
                          optimizer={"name": "Adam", "lr": 0.01}, replace=("optimizer",), train={"log_every": 2, "nonfinite": "skip"})
    events, _ = _run(fork_server, tmp_path, preset, expect=0)
    assert of_kind(events, "Finished")[-1]["status"] == "completed"
    warned = {e["step"]: e["message"] for e in of_kind(events, "RunWarning")}
    assert sorted(warned) == [3, 5, 9], warned
    assert "non-finite gradients" in warned[9] and all("update skipped" in m for m in warned.values())
    final = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert tensors_finite(final["model"]) and tensors_finite(final["optimizer"])
    assert {float(s["step"]) for s in final["optimizer"]["state"].values()} == {14.0 - 3}
    losses = losses_by_step(events)
    assert not math.isfinite(losses[3]) and not math.isfinite(losses[5]) and math.isfinite(losses[9])


@pytest.mark.skipif("not __import__('torch').cuda.is_available()", reason="needs CUDA")
def test_stop_mode_adds_no_host_sync_per_step_on_cuda(tmp_path, monkeypatch):
    """torch.cuda.set_sync_debug_mode("error") raises on any host sync inside a training step."""
    import torch

    from tui_trainer import config
    from tui_trainer.parts import build
    from tui_trainer.engine.trainer import Trainer
    from tui_trainer.parts.step import to_device

    preset = config.load(write_preset(tmp_path / "p.toml", train={"device": "cuda", "log_every": 5, "amp": "bf16"},
                                      checkpoint={"every_epochs": 0}))
    parts = build(preset)
    real_step = Trainer._step

    def strict_step(self, batch):
        batch = to_device(batch, self.device)  # the copy from pageable memory syncs; not ours
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            return real_step(self, batch)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    monkeypatch.setattr(Trainer, "_step", strict_step)
    final = Trainer(parts, lambda e: None, checkpoint_dir=tmp_path / "ck").run()
    assert final.exit_code == 0, getattr(final, "traceback", final)
