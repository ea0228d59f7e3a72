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
    ],
)
def test_bad_values_name_the_set(item, message, tiny_preset):
    with pytest.raises(UserError) as info:
        config.load(tiny_preset(GROUPS), [item])
    assert str(info.value) == message
