"""engine/distributed.py with real processes: 2 ranks on gloo, started by torch's elastic launcher."""

from __future__ import annotations

import pytest

from tests.helpers import ranks

pytestmark = pytest.mark.timeout(120)


def test_commands_of_rank_0_reach_every_rank_at_the_same_step():
    result = ranks.launch(ranks.share_commands, 6, 3)
    (r0, w0, seen0), (r1, w1, seen1) = result[0], result[1]
    assert (r0, r1, w0, w1) == (0, 1, 2, 2)
    assert seen0 == seen1
    assert [step for step, _ in seen0] == [3, 3, 3]
    assert [c["kind"] for _, c in seen0] == ["ScaleLr", "SetTrainable", "Stop"]


def test_sums_are_exact_over_the_ranks():
    result = ranks.launch(ranks.sum_exact)
    assert result[0] == result[1] == [[3.0, 2.0], [30]]


def test_freezing_under_ddp_rebuilds_the_wrapper_and_keeps_the_ranks_identical():
    result = ranks.launch(ranks.freeze_under_ddp)
    assert result[0]["frozen_kept"] and result[1]["frozen_kept"]
    assert result[0]["moved_after_unfreeze"]
    assert result[0]["weights"] == result[1]["weights"]  # every rank the same parameters, bit for bit


def test_two_ranks_of_16_train_as_one_process_of_32(tmp_path):
    import torch

    from tests.helpers.engine import run
    from tests.helpers.user_code import write_preset

    overrides = ["train.epochs=1", "checkpoint.every_epochs=0", "checkpoint.save_best=false"]
    preset = write_preset(tmp_path / "p.toml")
    result = ranks.launch(ranks.train_run, str(preset), str(tmp_path / "ddp"), [*overrides, "data.batch_size=16"])
    assert result[0]["finished"] and result[1]["finished"], result[0]["error"] or result[1]["error"]
    assert result[0]["step"] == result[1]["step"] > 0
    for name, value in result[0]["state"].items():  # every rank the same weights
        assert torch.equal(value, result[1]["state"][name])
    single = run(preset, *overrides, "data.batch_size=32", run_dir=tmp_path / "one")
    assert single.final.step == result[0]["step"]
    for name, p in single.model.named_parameters():
        assert torch.allclose(p.detach(), result[0]["state"][name], atol=1e-6), name
    # rank 0 reports every step's loss of the global batch: the mean of the two ranks' means, summed in
    # syncs started before their step's backward (Trainer._start_sync) and read after it
    from tui_trainer.engine.events import StepReport

    losses = [loss for report in single.of(StepReport) for loss in report.losses]
    assert len(result[0]["losses"]) == len(losses) == single.final.step
    assert result[0]["losses"] == pytest.approx(losses, rel=1e-5)
    assert result[0]["early_syncs"] == result[1]["early_syncs"] >= 2
    assert (tmp_path / "ddp" / "events.jsonl").is_file()  # rank 0 wrote the run directory


def test_commands_from_rank_0_act_on_every_rank_at_the_same_step(tmp_path):
    import torch

    from tests.helpers.user_code import write_preset

    preset = write_preset(tmp_path / "p.toml", callbacks=[{"target": "tests.helpers.ranks:SteerAt", "at": 3}],
                          train={"epochs": 10})
    result = ranks.launch(ranks.steered_run, str(preset), str(tmp_path / "run"))
    r0, r1 = result[0], result[1]
    assert r0["status"] == r1["status"] == "completed", (r0["error"], r1["error"])
    assert r0["seen"] == r1["seen"]  # the same LR at every report, the freeze at the same step
    (frozen_at,) = [s for kind, s, _ in r0["seen"] if kind == "trainable"]
    assert frozen_at >= 3  # sent at step 3, applied at rank 0's next share (about every 50 ms)
    assert r0["frozen"] == r1["frozen"] == ["0.weight", "0.bias"]
    for name, value in r0["state"].items():
        assert torch.equal(value, r1["state"][name]), name  # DDP rebuilt after the freeze: ranks identical


def test_socket_commands_reach_both_ranks_at_the_same_step(tmp_path):
    """Pause, freeze, LR scale, save, resume, unfreeze and stop sent through rank 0's control socket
    (what `attach` and the monitor of many ranks send): both ranks apply each at the same step."""
    import json
    import socket
    import threading
    import time

    import torch

    from tests.helpers.user_code import write_preset

    run_dir = tmp_path / "run"
    preset = write_preset(tmp_path / "p.toml", callbacks=[{"target": "tests.helpers.ranks:Seen"}],
                          data={"kwargs": {"n": 3200}},  # 100 steps an epoch: a stop does not wait for its end
                          train={"epochs": 10000}, checkpoint={"every_epochs": 0, "save_best": False})
    out: dict = {}
    runner = threading.Thread(target=lambda: out.update(ranks.launch(ranks.seen_run, str(preset), str(run_dir))))
    runner.start()
    deadline = time.monotonic() + 90  # a hang guard
    while not (run_dir / "control.sock").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(run_dir / "control.sock"))
        stream = s.makefile("rb")

        def send(kind: str, **fields) -> None:
            s.sendall((json.dumps({"kind": kind, **fields}) + "\n").encode())

        def wait_for(test) -> dict:
            for line in stream:
                event = json.loads(line)
                if test(event):
                    return event
            raise AssertionError("the socket closed")

        wait_for(lambda e: e["kind"] == "StepReport" and e["step"] >= 3)
        send("Pause")
        paused = wait_for(lambda e: e["kind"] == "StateChanged" and e["state"] == "paused")
        send("SetTrainable", prefixes=["0"], trainable=False)
        send("ScaleLr", factor=0.5)
        send("SaveCheckpoint", tag="manual")
        wait_for(lambda e: e["kind"] == "CheckpointSaved")
        send("Resume")
        wait_for(lambda e: e["kind"] == "StepReport" and e["step"] >= paused["step"] + 3)
        send("SetTrainable", prefixes=["0"], trainable=True)
        send("Stop", reason="user")
        wait_for(lambda e: e["kind"] == "Finished")
    runner.join(60)
    r0, r1 = out[0], out[1]
    assert r0["status"] == r1["status"] == "stopped", (r0["error"], r1["error"])
    assert r0["step"] == r1["step"]
    assert r0["seen"] == r1["seen"]  # every report's LR, each freeze and state change: the same step on both
    changes = [(kind, step, *rest) for kind, step, *rest in r0["seen"] if kind in ("trainable", "state")]
    p = paused["step"]
    assert ("state", p, "paused") in changes and ("trainable", p, ("0",), False) in changes
    assert ("state", p, "running") in changes
    stopping = next(step for kind, step, *rest in changes if kind == "state" and rest == ["stopping"])
    assert r0["step"] == stopping and stopping % 100, "the ranks stop at the step the stop was applied"
    assert r0["lr"] == r1["lr"] == pytest.approx(0.05)
    for name, value in r0["state"].items():
        assert torch.equal(value, r1["state"][name]), name
    assert (run_dir / "checkpoints" / f"manual-step-{p:08d}.pt").is_file()
