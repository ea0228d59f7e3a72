"""Exact resume with 2 ranks (DDP on gloo, started by torch's elastic launcher): a run cut
mid-epoch by `train.max_steps` and resumed from its last.pt ends bit-identical to the same run
done in one go, on every rank."""

from __future__ import annotations

import pytest

from tests.helpers import ranks

pytestmark = pytest.mark.timeout(120)

EPOCHS = 3
STEPS_PER_EPOCH = 3  # 96 samples / (2 ranks x 16)
TOTAL = EPOCHS * STEPS_PER_EPOCH
CUT = 4  # mid-epoch 2: one step into it


def resumed_run(preset: str, run_dir: str, overrides: list, resume: str | None) -> dict:
    """One rank of a real run through `prepare(resume=...)`: where it started, its final state."""
    import torch

    torch.set_num_threads(1)
    from tui_trainer.engine.events import Finished, StepReport
    from tui_trainer.run.launch import prepare

    events = []
    session = prepare(preset, list(overrides), resume=resume, run_dir=run_dir, sinks=[events.append])
    trainer = session.trainer
    start = (trainer.step, trainer.epoch, trainer.batch_in_epoch)
    try:
        final = trainer.run()
    finally:
        session.close()
    reports = [e for e in events if isinstance(e, StepReport)]  # rank 0 only: the writer has the sinks
    momentum = [trainer.optimizer.state[p]["momentum_buffer"].clone() for p in trainer.model.parameters()]
    return {"rank": trainer.dist.rank, "status": getattr(final, "status", None), "step": final.step,
            "error": getattr(final, "error", None), "finished": isinstance(final, Finished), "start": start,
            "first_step": reports[0].first_step if reports else None,
            "losses": {r.first_step + i: loss for r in reports for i, loss in enumerate(r.losses)},
            "state": {n: p.detach().clone() for n, p in trainer.model.named_parameters()}, "momentum": momentum}


def _ok(result: dict) -> None:
    for r in (0, 1):
        assert result[r]["finished"] and result[r]["status"] == "completed", result[r]["error"]


def test_two_ranks_cut_mid_epoch_and_resumed_end_bit_identical_to_one_go(tmp_path):
    import torch

    from tests.helpers.user_code import write_preset

    preset = str(write_preset(tmp_path / "p.toml", train={"epochs": EPOCHS},
                              checkpoint={"every_epochs": 1, "save_best": False}))
    straight = ranks.launch(resumed_run, preset, str(tmp_path / "straight"), [], None)
    _ok(straight)
    assert straight[0]["step"] == straight[1]["step"] == TOTAL

    cut = ranks.launch(resumed_run, preset, str(tmp_path / "cut"), [f"train.max_steps={CUT}"], None)
    _ok(cut)
    assert cut[0]["step"] == cut[1]["step"] == CUT
    last = tmp_path / "cut" / "checkpoints" / "last.pt"
    assert last.is_file()

    resumed = ranks.launch(resumed_run, preset, str(tmp_path / "cut"), [], str(last))
    _ok(resumed)
    # both ranks continue from step CUT: epoch 1 (0-based), one batch of it done
    assert resumed[0]["start"] == resumed[1]["start"] == (CUT, CUT // STEPS_PER_EPOCH, CUT % STEPS_PER_EPOCH)
    assert resumed[0]["first_step"] == CUT + 1
    assert resumed[0]["step"] == resumed[1]["step"] == TOTAL

    # the loss of every step, exact floats: the cut run's steps, then the resumed run's
    assert {**cut[0]["losses"], **resumed[0]["losses"]} == straight[0]["losses"]
    assert sorted(straight[0]["losses"]) == list(range(1, TOTAL + 1))
    for r in (0, 1):
        for name, value in straight[r]["state"].items():
            assert torch.equal(resumed[r]["state"][name], value), (r, name)
        for a, b in zip(straight[r]["momentum"], resumed[r]["momentum"]):
            assert torch.equal(a, b), r
    for name, value in resumed[0]["state"].items():  # the ranks identical
        assert torch.equal(value, resumed[1]["state"][name]), name


def test_a_checkpoint_resumed_on_another_number_of_ranks_keeps_its_global_batch_or_is_refused(tmp_path):
    import json

    from tests.conftest import ONE_THREAD_ENV, run_cli
    from tests.helpers.user_code import write_preset

    preset = str(write_preset(tmp_path / "p.toml", data={"batch_size": 32}, train={"epochs": 2},
                              checkpoint={"every_epochs": 1, "save_best": False}))
    one = run_cli(preset, "--no-ui", "--run-dir", str(tmp_path / "run"), "--set", "train.max_steps=2", cwd=tmp_path,
                  env_extra=ONE_THREAD_ENV)
    assert one.returncode == 0, one.stderr[-1500:]
    last = str(tmp_path / "run" / "checkpoints" / "last.pt")

    # 2 ranks x 32 = 64 per step, the checkpoint's 32: one line, exit 2, before any rank starts
    refused = run_cli(preset, "--no-ui", "--resume", last, "--set", "train.devices=2", cwd=tmp_path,
                      env_extra=ONE_THREAD_ENV)
    assert refused.returncode == 2
    (line,) = refused.stderr.strip().splitlines()
    assert "was saved by 1 rank with 32 samples per step, and this run takes 64 (2 ranks x 32)" in line
    assert "set data.batch_size = 16 (keeps 32 per step on 2 ranks)" in line

    # 2 ranks x 16: the same 32 samples per step; it continues, and says so
    went_on = run_cli(preset, "--no-ui", "--resume", last, "--set", "train.devices=2", "--set", "data.batch_size=16",
                      cwd=tmp_path, env_extra=ONE_THREAD_ENV)
    assert went_on.returncode == 0, went_on.stderr[-1500:]
    events = [json.loads(x) for x in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    started = [i for i, e in enumerate(events) if e["kind"] == "RunStarted"]
    resumed = events[started[-1]:]
    assert resumed[0]["start_step"] == 2
    assert any(e["kind"] == "RunWarning" and "resumed on 2 ranks from a checkpoint of 1 rank" in e["message"]
               for e in resumed)
    assert resumed[-1]["kind"] == "Finished" and resumed[-1]["status"] == "completed"
