"""The app driven by Pilot on the real engine and a tiny real model: every key does what it says,
and the panes show the engine's confirmed state."""

from __future__ import annotations

import asyncio

import torch

from tests.helpers.pilot import until
from tui_trainer.engine import events as ev
from tui_trainer.ui.app import TrainerApp
from tui_trainer.ui.launch import make_app
from tui_trainer.ui.widgets.layers import LayerTable

LONG = ["train.epochs=5000", "train.log_every=1"]  # never ends by itself within a test


def params_of(app: TrainerApp, prefix: str) -> dict[str, torch.Tensor]:
    model = app.link.session.trainer.model
    return {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith(prefix + ".")}


def run(coro):
    return asyncio.run(coro)


def test_toggle_freezes_layer_in_the_model(tiny_preset, tmp_path):
    app = make_app(tiny_preset(), LONG, run_dir=tmp_path / "run", paused=True)

    async def scenario():
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: app.view.state == "paused", "paused before the first step")
            table = app.query_one(LayerTable)
            assert table.current_name() == "0"  # first block of the small CNN
            await pilot.press("space")
            await until(pilot, lambda: app.view.trainable[0] is False, "engine confirmed the freeze")
            model = app.link.session.trainer.model
            assert all(not p.requires_grad for n, p in model.named_parameters() if n.startswith("0."))
            frozen_before = params_of(app, "0")
            head_before = params_of(app, "6")
            step0 = app.view.step
            await pilot.press("p")  # resume
            await until(pilot, lambda: app.view.step >= step0 + 5, "five more steps")
            await pilot.press("p")
            await until(pilot, lambda: app.view.state == "paused", "paused again")
            for name, before in frozen_before.items():
                assert torch.equal(before, params_of(app, "0")[name]), f"{name} changed while frozen"
            assert any(not torch.equal(b, params_of(app, "6")[n]) for n, b in head_before.items())
            # unfreeze: it trains again
            await pilot.press("space")
            await until(pilot, lambda: app.view.trainable[0] is True, "engine confirmed the unfreeze")
            step1 = app.view.step
            await pilot.press("p")
            await until(pilot, lambda: app.view.step >= step1 + 3, "three more steps")
            await pilot.press("p")
            await until(pilot, lambda: app.view.state == "paused", "paused")
            after = params_of(app, "0")
            assert any(not torch.equal(b, after[n]) for n, b in frozen_before.items())
            await pilot.press("q")
            await until(pilot, lambda: app.view.final is not None, "run stopped")

    run(scenario())


def test_freeze_to_and_unfreeze_all(tiny_preset, tmp_path):
    app = make_app(tiny_preset(), LONG, run_dir=tmp_path / "run", paused=True)

    async def scenario():
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: app.view.started is not None, "started")
            table = app.query_one(LayerTable)
            target = table.shown.index("1")  # the second conv block
            table.move_cursor(row=target)
            await pilot.press("f")
            names = [r.name for r in app.view.started.layers]
            await until(pilot, lambda: app.view.trainable[names.index("1")] is False, "freeze-to applied")
            state = dict(zip(names, app.view.trainable))
            assert state["0"] is False and state["1"] is False and state["1.0"] is False
            assert state["2"] is True and state["6"] is True
            await pilot.press("u")
            await until(pilot, lambda: all(app.view.trainable), "all trainable")
            await pilot.press("q")
            await until(pilot, lambda: app.view.final is not None, "stopped")

    run(scenario())


def test_lr_reduce_and_undo_scale_the_optimizer(tiny_preset, tmp_path):
    app = make_app(tiny_preset(), LONG, run_dir=tmp_path / "run", paused=True)
    optimizer = app.link.session.trainer.optimizer

    async def scenario():
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: app.view.state == "paused", "paused")
            base = [g["lr"] for g in optimizer.param_groups]
            await pilot.press("l")
            await until(pilot, lambda: app.view.manual_factor == 0.5, "LR change confirmed")
            assert [g["lr"] for g in optimizer.param_groups] == [b * 0.5 for b in base]
            await pilot.press("l")
            await until(pilot, lambda: app.view.manual_factor == 0.25, "second change")
            await pilot.press("L")
            await until(pilot, lambda: app.view.manual_factor == 0.5, "undo confirmed")
            assert [g["lr"] for g in optimizer.param_groups] == [b * 0.5 for b in base]
            # the re-planned remainder is the plan scaled by the manual factor
            xs, ys = app.view.replanned(0)
            plan = app.view.started.plan
            assert ys[0] == plan.lrs[0][plan.steps.index(xs[0])] * 0.5
            await pilot.press("q")
            await until(pilot, lambda: app.view.final is not None, "stopped")

    run(scenario())


def test_save_key_writes_a_loadable_checkpoint(tiny_preset, tmp_path):
    app = make_app(tiny_preset(), LONG, run_dir=tmp_path / "run")

    async def scenario():
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: app.view.step >= 3, "a few steps")
            await pilot.press("s")
            ckpts = tmp_path / "run" / "checkpoints"
            await until(pilot, lambda: any(ckpts.glob("manual-step-*.pt"))
                        and any("manual" in text for _, text, _ in app.view.log), "manual checkpoint saved")
            state = torch.load(next(ckpts.glob("manual-step-*.pt")), weights_only=True)
            assert state["step"] >= 3
            assert set(state["model"]) == set(app.link.session.trainer.model.state_dict())
            assert any(f"manual-step-{state['step']:08d}.pt" in text for _, text, _ in app.view.log)
            await pilot.press("q")
            await until(pilot, lambda: app.view.final is not None, "stopped")

    run(scenario())


def test_pause_stops_steps_and_the_ui_stays_live(tiny_preset, tmp_path):
    app = make_app(tiny_preset(), LONG, run_dir=tmp_path / "run")
    trainer = app.link.session.trainer

    async def scenario():
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: app.view.step >= 2, "running")
            await pilot.press("p")
            await until(pilot, lambda: app.view.state == "paused", "paused")
            held = trainer.step
            for _ in range(10):  # the UI keeps ticking while the engine waits
                await pilot.pause(0.05)
            assert trainer.step == held
            await pilot.press("question_mark")  # keys still work while paused
            await pilot.press("escape")
            await pilot.press("p")
            await until(pilot, lambda: trainer.step > held, "steps again after resume")
            await pilot.press("q")
            await until(pilot, lambda: app.view.final is not None, "stopped")

    run(scenario())


def test_q_stops_with_a_final_checkpoint_and_summary(tiny_preset, tmp_path):
    app = make_app(tiny_preset(), LONG, run_dir=tmp_path / "run")

    async def scenario():
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: app.view.step >= 3, "running")
            await pilot.press("q")
            await until(pilot, lambda: isinstance(app.view.final, ev.Finished), "finished")
            final = app.view.final
            assert final.status == "stopped" and final.exit_code == 0
            state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
            assert state["step"] == final.step
            await until(pilot, lambda: type(app.screen).__name__ == "SummaryScreen", "summary shown")
            await pilot.press("enter")
        assert app.return_code == 0

    run(scenario())
    assert app.exit_code == 0


def test_engine_failure_shows_in_the_app(tiny_preset, tmp_path):
    app = make_app(tiny_preset('[loss]\nname = "tests.helpers.failing_loss:explode_at_step_3"\n'), run_dir=tmp_path / "run")

    async def scenario():
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: app.view.final is not None, "the failure arrived")
            assert isinstance(app.view.final, ev.Failed)
            assert app.view.state == "failed"
            assert any("boom at step 3" in text for _, text, _ in app.view.log)
            assert any("Traceback" in text for _, text, _ in app.view.log)
            await until(pilot, lambda: type(app.screen).__name__ == "SummaryScreen", "summary shown")
            await pilot.press("q")
        assert app.exit_code == 1

    run(scenario())


def test_the_panes_keep_updating_behind_help_and_summary_screens(tiny_preset, tmp_path):
    """The tick keeps drawing the main screen while a modal screen is on top (a query on the
    active screen used to raise NoMatches and kill the app)."""
    app = make_app(tiny_preset(), LONG, run_dir=tmp_path / "run")

    async def scenario():
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: app.view.step >= 2, "running")
            await pilot.press("question_mark")
            before = app.view.step
            await until(pilot, lambda: app.view.step >= before + 10, "steps go on behind the help screen")
            for _ in range(10):  # ticks with help open: header, layers, plots drawn behind it
                await pilot.pause(0.1)
            await pilot.press("escape")
            await pilot.press("q")
            await until(pilot, lambda: type(app.screen).__name__ == "SummaryScreen", "summary")
            for _ in range(10):  # and ticks behind the summary
                await pilot.pause(0.1)
            assert app.is_running
            await pilot.press("enter")
        assert app.return_code == 0

    run(scenario())
