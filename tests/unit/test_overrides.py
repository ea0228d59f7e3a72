"""`--set KEY=VALUE`: the value is read as TOML (else a bare word is a string), any key of the
preset can be set, lists by index, and the result is validated like the file."""

from __future__ import annotations

import pytest

from tui_trainer import config
from tui_trainer.errors import UserError

GROUPS = """
[[optimizer.groups]]
params = ["6"]
lr = 0.1
"""


@pytest.mark.parametrize(
    "item, path, value",
    [
        ("optimizer.lr=0.005", "optimizer.lr", 0.005),
        ("optimizer.lr=1e-3", "optimizer.lr", 0.001),
        ("optimizer.lr=1", "optimizer.lr", 1),  # an int where a float is expected is fine
        ("train.epochs=3", "train.epochs", 3),
        ("data.augment=true", "data.augment", True),
        ('train.amp="bf16"', "train.amp", "bf16"),
        ("train.amp=bf16", "train.amp", "bf16"),  # a bare word is a string
        ("model.arch=resnet50", "model.arch", "resnet50"),
        ("model.arch=examples.models:small_cnn", "model.arch", "examples.models:small_cnn"),
        ('model.freeze=["0", "1.0"]', "model.freeze", ["0", "1.0"]),
        ("model.kwargs.width=8", "model.kwargs", {"num_classes": 10, "width": 8}),  # one key of an inline table
        ("optimizer.groups.0.lr=0.5", "optimizer.groups", [{"params": ["6"], "lr": 0.5}]),
        ("optimizer.groups.0.params=[\"5\", \"6\"]", "optimizer.groups", [{"params": ["5", "6"], "lr": 0.1}]),
        ("optimizer.nesterov=true", "optimizer.nesterov", True),  # a kwarg of the optimizer class
        ("scheduler.T_max=5", "scheduler.T_max", 5),
        ("ui.refresh_hz=4", "ui.refresh_hz", 4),
        ("name=tiny-2", "name", "tiny-2"),
        (" train.epochs = 4 ", "train.epochs", 4),
    ],
)
def test_set_values(item, path, value, tiny_preset):
    preset = config.load(tiny_preset(GROUPS), [item])
    node = preset.to_dict()
    for part in path.split("."):
        node = node[part]
    assert node == value
    assert preset.key_source(path).startswith("--set ") and preset.source.endswith("tiny.toml")


def test_the_last_set_of_a_key_wins_and_the_file_is_unchanged(tiny_preset):
    path = tiny_preset()
    before = path.read_text()
    preset = config.load(path, ["train.epochs=3", "train.epochs=5"])
    assert preset.train.epochs == 5
    assert path.read_text() == before
    assert config.load(path).train.epochs == 2


def test_keys_not_overridden_come_from_the_file(tiny_preset):
    preset = config.load(tiny_preset(), ["optimizer.lr=0.1"])
    assert preset.key_source("optimizer.lr") == "--set optimizer.lr"
    assert preset.key_source("optimizer.momentum").endswith("tiny.toml")
    assert preset.key_source("optimizer") == "--set optimizer.lr"  # the table that holds it


@pytest.mark.parametrize(
    "item, message",
    [
        ("optimizer.lr=-1", "--set optimizer.lr: got -1; must be greater than 0.0"),
        ("train.epochs=2.5", "--set train.epochs: expected a whole number, got 2.5"),
        ("data.augment=yes", '--set data.augment: expected true or false, got "yes"'),
        ("model.freeze=layer1", '--set model.freeze: expected a list, e.g. ["a", "b"], got "layer1"'),
        ("optimizer.groups.3.lr=0.5", "--set optimizer.groups.3.lr: optimizer.groups has entries 0 to 0;"
                                      " there is no entry 3"),
        ("train.epochs.x=1", "--set train.epochs.x: train.epochs is a value, not a table"),
        ("train..epochs=1", "--set train..epochs=1: expected KEY=VALUE with a dotted key, e.g. --set optimizer.lr=0.05"),
        ("train.devices=true", '--set train.devices: is a number of ranks (2), a list of CUDA devices ([0, 2]) or'
                               ' "all"; got true'),  # it said "train.devices.int: expected a whole number, got True"
        ('train.devices="2"', '--set train.devices: is a number of ranks (2), a list of CUDA devices ([0, 2]) or'
                              ' "all"; got "2"'),
    ],
)
def test_bad_values_name_the_set(item, message, tiny_preset):
    with pytest.raises(UserError) as info:
        config.load(tiny_preset(GROUPS), [item])
    assert str(info.value) == message


# --------------------------------------------------------------------------- --unset KEY


def test_unset_and_set_share_one_list_in_command_line_order():
    from tui_trainer import cli

    argv = ["--set", "optimizer.name=Adam", "--unset", "optimizer.momentum", "--set", "train.epochs=3",
            "--unset", " data.augment "]
    want = ["optimizer.name=Adam", "-optimizer.momentum", "train.epochs=3", "-data.augment"]
    assert cli._run_parser().parse_args(["p.toml", *argv]).overrides == want
    assert cli._preview_parser().parse_args(["p.toml", *argv]).overrides == want
    only_unset = cli._run_parser().parse_args(["p.toml", "--unset", "optimizer.momentum"])
    assert only_unset.overrides == ["-optimizer.momentum"]
    assert cli._run_parser().parse_args(["p.toml"]).overrides == [], "the default list is not shared"


def test_the_adam_example_trains_with_adam(tiny_preset):
    """The tiny preset is SGD with momentum; Adam does not take momentum, so it must go."""
    import torch
    from torch import nn

    from tui_trainer import cli
    from tui_trainer.parts.optim import build_optimizer

    opts = cli._run_parser().parse_args([str(tiny_preset()), "--set", "optimizer.name=Adam",
                                         "--unset", "optimizer.momentum"])
    preset = config.load(opts.preset, opts.overrides)
    assert preset.optimizer.name == "Adam" and "momentum" not in preset.to_dict()["optimizer"]
    assert preset.key_source("optimizer.momentum") == "--set optimizer.momentum"
    optimizer = build_optimizer(preset.optimizer, nn.Linear(2, 2))
    assert type(optimizer) is torch.optim.Adam and optimizer.param_groups[0]["lr"] == 0.05


def test_order_decides_between_set_and_unset(tiny_preset):
    path = tiny_preset()
    assert config.load(path, ["-optimizer.momentum", "optimizer.momentum=0.5"]).to_dict()["optimizer"]["momentum"] == 0.5
    assert "momentum" not in config.load(path, ["optimizer.momentum=0.5", "-optimizer.momentum"]).to_dict()["optimizer"]
    assert config.load(path, ["train.epochs=7", "-train.epochs"]).train.epochs == 10, "the default, not the file's 2"


@pytest.mark.parametrize("command", [[], ["preview"]])
def test_unset_of_a_missing_key_is_one_line_exit_2(command, tiny_preset, capsys, tmp_path):
    from tui_trainer import cli

    code = cli.main([*command, str(tiny_preset()), *(["--no-ui"] if not command else []),
                     "--unset", "optimizer.nesterov"])
    err = capsys.readouterr().err
    assert code == 2
    assert err == ("tui-trainer: error: --unset optimizer.nesterov: optimizer.nesterov is not set in the preset"
                   " (nor by an earlier --set); nothing to unset\n")
    assert not (tmp_path / "runs").exists()


def test_unset_of_a_bad_key_is_one_line_exit_2(tiny_preset, capsys):
    from tui_trainer import cli

    assert cli.main([str(tiny_preset()), "--no-ui", "--unset", "optimizer..lr"]) == 2
    assert capsys.readouterr().err == ("tui-trainer: error: --unset optimizer..lr: expected a dotted key,"
                                       " e.g. --unset optimizer.momentum\n")


def test_detach_passes_set_and_unset_to_the_child_in_order(tiny_preset, tmp_path, monkeypatch, capsys):
    """The background run's argv says --unset for "-KEY" items and parses back to the same list."""
    from tui_trainer import cli
    from tui_trainer.run import detach as detach_mod

    seen = []

    class Done:  # a child that has already finished: detach reports it and returns 0
        pid, returncode = 12345, 0

        def __init__(self, cmd, **_kwargs):
            seen.append(cmd)

        def poll(self):
            return 0

    monkeypatch.setattr(detach_mod.subprocess, "Popen", Done)
    overrides = ["optimizer.name=Adam", "-optimizer.momentum", "train.epochs=1"]
    assert detach_mod.detach(str(tiny_preset()), overrides, resume=None, run_dir=str(tmp_path / "run")) == 0
    (cmd,) = seen
    assert cmd[cmd.index("--run-dir") + 2:] == ["--set", "optimizer.name=Adam", "--unset", "optimizer.momentum",
                                                "--set", "train.epochs=1"]
    assert cli._run_parser().parse_args(cmd[3:]).overrides == overrides
    assert "already finished" in capsys.readouterr().out
