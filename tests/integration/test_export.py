"""`tui-trainer export`: a real tiny run's checkpoint becomes a plain state_dict that a freshly built
model loads strictly (`model.load_state_dict(torch.load(out))`, as tutorials do it) and computes
exactly what the checkpoint's weights compute; bad input is one line and exit 2."""

from __future__ import annotations

import os
from collections import OrderedDict

import pytest
import torch

from tests.conftest import ROOT, tiny_preset_text
from tests.helpers.engine import run
from tui_trainer import cli, config
from tui_trainer.engine import checkpoint
from tui_trainer.parts.model import build_model
from tui_trainer.run.export import strip_prefixes
from tui_trainer.text.format import metric_text

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny run (2 epochs, a save per epoch, best.pt) shared by the tests: (preset, run dir)."""
    base = tmp_path_factory.mktemp("export")
    preset = base / "tiny.toml"
    preset.write_text(tiny_preset_text(), encoding="utf-8")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.syspath_prepend(str(ROOT))
            mp.chdir(base)
            out = run(preset, run_dir=base / "run")
    finally:
        torch.set_num_threads(threads)
    assert out.final.status == "completed"
    assert (base / "run" / "checkpoints" / "best.pt").is_file()
    return preset, base / "run"


def fresh_model(preset):
    """The model as the preset builds it, with its own random init."""
    return build_model(config.load(preset).model).model


def same_outputs(preset, exported: dict, ckpt_weights: dict) -> None:
    tutorial, reference = fresh_model(preset), fresh_model(preset)
    result = tutorial.load_state_dict(exported)  # strict
    assert not result.missing_keys and not result.unexpected_keys
    reference.load_state_dict(ckpt_weights)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(tutorial.eval()(x), reference.eval()(x))


def export(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(["export", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_run_dir_exports_best_and_a_fresh_model_loads_it(trained, tmp_path, capsys):
    preset, run_dir = trained
    out = tmp_path / "model.pt"
    code, stdout, stderr = export(capsys, run_dir, "--out", out)
    assert (code, stderr) == (0, "")
    state = checkpoint.load(run_dir / "checkpoints" / "best.pt")
    best = state["best"]
    assert best["epoch"] == state["epoch"]
    first = stdout.splitlines()[0]
    assert first == (f"exported {run_dir}/checkpoints/best.pt (epoch {state['epoch']}, step {state['step']},"
                     f" val_loss {metric_text(best['value'])})")
    assert f"to {out}: {len(state['model'])} tensors" in stdout
    plain = torch.load(out)  # the tutorial way: weights_only by default, no tui-trainer objects inside
    assert isinstance(plain, dict) and list(plain) == list(state["model"])
    assert all(torch.is_tensor(v) for v in plain.values())
    assert plain._metadata == state["model"]._metadata, "module versions (BatchNorm) kept, as state_dict() has them"
    same_outputs(preset, plain, state["model"])
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"], "no temp file left"


def test_last_pt_when_there_is_no_best_and_the_default_name(trained, tmp_path, capsys):
    preset, run_dir = trained
    bare = tmp_path / "bare"
    (bare / "checkpoints").mkdir(parents=True)
    os.link(run_dir / "checkpoints" / "last.pt", bare / "checkpoints" / "last.pt")
    os.chdir(tmp_path)  # (the autouse fixture restores the directory)
    code, stdout, _ = export(capsys, bare)
    assert code == 0
    state = checkpoint.load(bare / "checkpoints" / "last.pt")
    assert stdout.startswith(f"exported {bare}/checkpoints/last.pt (epoch 2, step {state['step']}")
    assert (tmp_path / "tiny-last.pt").is_file(), "default: <run name>-<checkpoint name>.pt here"
    same_outputs(preset, torch.load(tmp_path / "tiny-last.pt"), state["model"])
    # an existing file is kept unless --force
    before = (tmp_path / "tiny-last.pt").stat().st_mtime_ns
    code, stdout, stderr = export(capsys, bare)
    assert (code, stdout) == (2, "")
    assert stderr == "tui-trainer: error: export: --out tiny-last.pt exists; add --force to overwrite it\n"
    assert (tmp_path / "tiny-last.pt").stat().st_mtime_ns == before
    assert export(capsys, bare, "--force")[0] == 0


def test_a_checkpoint_file_is_exported_as_given(trained, tmp_path, capsys):
    preset, run_dir = trained
    ckpt = run_dir / "checkpoints" / "epoch-0001.pt"
    os.chdir(tmp_path)
    code, stdout, _ = export(capsys, ckpt)
    assert code == 0 and stdout.startswith(f"exported {ckpt} (epoch 1, ")
    same_outputs(preset, torch.load(tmp_path / "tiny-epoch-0001.pt"), checkpoint.load(ckpt)["model"])


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
def test_ddp_and_compile_prefixes_are_removed(prefix, trained, tmp_path, capsys):
    preset, run_dir = trained
    state = checkpoint.load(run_dir / "checkpoints" / "last.pt")
    weights = state["model"]
    wrapped = OrderedDict((prefix + k, v) for k, v in weights.items())  # as the wrapped model's state_dict()
    wrapped._metadata = OrderedDict([("", {"version": 1})] + [  # the wrapper's own entry, then its model's
        (prefix[:-1] if not k else prefix + k, v) for k, v in weights._metadata.items()])
    state["model"] = wrapped
    checkpoint.atomic_save(state, tmp_path / "wrapped.pt")
    code, stdout, _ = export(capsys, tmp_path / "wrapped.pt", "--out", tmp_path / "m.pt")
    assert code == 0 and f"key prefix {prefix!r} removed" in stdout
    plain = torch.load(tmp_path / "m.pt")
    assert list(plain) == list(weights) and plain._metadata == weights._metadata
    same_outputs(preset, plain, weights)


def test_a_prefix_not_on_every_key_stays():
    weights = {"module.a": torch.zeros(1), "b": torch.zeros(1)}
    assert strip_prefixes(weights) == (weights, "")
    assert strip_prefixes({"_orig_mod.module.x": 1}) == ({"x": 1}, "_orig_mod.module.")


@pytest.mark.parametrize("case", ["missing", "not-a-checkpoint", "plain-state-dict", "no-checkpoints", "out-folder-missing",
                                  "out-is-a-folder", "out-is-the-checkpoint"])
def test_bad_input_is_one_line_exit_2(case, trained, tmp_path, capsys):
    _, run_dir = trained
    best = run_dir / "checkpoints" / "best.pt"
    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(b"not a checkpoint")
    plain = tmp_path / "plain.pt"
    torch.save({"weight": torch.zeros(2)}, plain)
    (tmp_path / "empty_run").mkdir()
    args, want = {
        "missing": ([tmp_path / "nowhere"], f"no run directory or checkpoint file {tmp_path}/nowhere"),
        "not-a-checkpoint": ([bogus], f"cannot load {bogus}: it is damaged or not a checkpoint (UnpicklingError: "),
        "plain-state-dict": ([plain], f"{plain} is not a tui-trainer checkpoint (no 'tui-trainer/1' marker)"),
        "no-checkpoints": ([tmp_path / "empty_run"], f"{tmp_path}/empty_run has no checkpoints/best.pt or"
                                                     " checkpoints/last.pt (give a checkpoint file instead)"),
        "out-folder-missing": ([run_dir, "--out", tmp_path / "no" / "m.pt"],
                               f"--out {tmp_path}/no/m.pt: no folder {tmp_path}/no (make it first)"),
        "out-is-a-folder": ([run_dir, "--out", tmp_path], f"--out {tmp_path} is a folder; give a file name,"
                                                           f" e.g. {tmp_path}/model.pt"),
        "out-is-the-checkpoint": ([run_dir, "--out", best, "--force"],
                                  f"--out {best} is the checkpoint being exported; give another file"),
    }[case]
    before = sorted(p.name for p in tmp_path.iterdir())
    code, stdout, stderr = export(capsys, *args)
    assert (code, stdout) == (2, "")
    assert stderr.count("\n") == 1 and stderr.startswith(f"tui-trainer: error: export: {want}"), stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "nothing written"
    assert checkpoint.load(best)["format"] == checkpoint.FORMAT


def test_export_usage_errors_and_help(capsys):
    with pytest.raises(SystemExit) as info:  # argparse's own errors exit from the parser (one line, 2)
        cli.main(["export"])
    assert info.value.code == 2
    assert "the following arguments are required: RUN_DIR|CHECKPOINT" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["export", "--help"])
    help_text = capsys.readouterr().out
    assert "--force" in help_text and "<run name>-<checkpoint name>.pt" in help_text
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "tui-trainer export RUN_DIR|CKPT" in capsys.readouterr().out
