"""tui_trainer/config.py directly: parse_override, from_dict with --set, errors that name the key
and suggest the fix, key_source, load() of TOML text. (tests/unit/test_overrides.py and
tests/integration/test_preset_errors.py cover the same through preset files and the CLI.)"""

from __future__ import annotations

import copy
import datetime
import math
import tomllib

import pytest

from tui_trainer import config
from tui_trainer.errors import UserError


@pytest.mark.parametrize(
    "item, key, value",
    [
        ("optimizer.lr=0.05", "optimizer.lr", 0.05),
        ("train.epochs=1_000", "train.epochs", 1000),  # TOML number syntax
        ("seed=0x10", "seed", 16),
        ("data.augment=false", "data.augment", False),
        ("name='lit'", "name", "lit"),  # a TOML literal string
        ('model.freeze=["0", "layer1"]', "model.freeze", ["0", "layer1"]),
        ("model.kwargs={width = 8}", "model.kwargs", {"width": 8}),
        ("data.root=/data/my images", "data.root", "/data/my images"),  # not TOML: the text as it is
        ('train.amp="bf16', "train.amp", '"bf16'),  # unbalanced quote: also taken as it is
        ("data.root=", "data.root", ""),
        ("  train.epochs  =  3  ", "train.epochs", 3),
        ("a.b_2.c=x=y", "a.b_2.c", "x=y"),  # only the first "=" splits
    ],
)
def test_parse_override(item, key, value):
    assert config.parse_override(item) == (key, value)


def test_parse_override_reads_toml_dates_and_special_floats_as_toml():
    assert config.parse_override("name=2024-01-01") == ("name", datetime.date(2024, 1, 1))
    key, value = config.parse_override("optimizer.lr=nan")
    assert key == "optimizer.lr" and math.isnan(value)


@pytest.mark.parametrize("item", ["train.epochs", "=3", "1train=3", "train-x=3", "train.=3", ".train=3", "a b=1"])
def test_parse_override_rejects_bad_keys(item):
    with pytest.raises(UserError) as info:
        config.parse_override(item)
    assert str(info.value) == (f"--set {item}: expected KEY=VALUE with a dotted key, e.g. --set optimizer.lr=0.05")


# --------------------------------------------------------------------------- from_dict


def test_defaults_and_source():
    preset = config.from_dict({})
    assert (preset.name, preset.optimizer.name, preset.optimizer.lr, preset.train.epochs) == ("run", "SGD", 0.01, 10)
    assert preset.source == "<preset>" and preset.key_source("train.epochs") == "<preset>"
    assert config.from_dict({}, source="x.toml").key_source("optimizer.lr") == "x.toml"


def test_overrides_create_missing_tables_and_keep_kwargs():
    preset = config.from_dict({}, source="p.toml", overrides=["scheduler.T_max=5", "optimizer.nesterov=true"])
    assert preset.scheduler.kwargs == {"T_max": 5} and preset.optimizer.kwargs == {"nesterov": True}
    assert preset.key_source("scheduler.T_max") == "--set scheduler.T_max"


def test_overrides_index_into_lists_and_never_change_the_input():
    raw = {"optimizer": {"lr": 0.1, "groups": [{"params": ["head"], "lr": 0.2}, {"params": ["body"]}]},
           "callbacks": [{"target": "examples.callbacks:UnfreezeAt", "epoch": 2}]}
    before = copy.deepcopy(raw)
    preset = config.from_dict(raw, overrides=["optimizer.groups.1.lr=0.5", "optimizer.groups.0.params=[\"fc\"]",
                                              "callbacks.0.epoch=3"])
    assert [(g.params, g.kwargs) for g in preset.optimizer.groups] == [(["fc"], {"lr": 0.2}), (["body"], {"lr": 0.5})]
    assert preset.callbacks[0].kwargs == {"epoch": 3}
    assert raw == before, "from_dict copies what it overrides"


def test_a_set_can_replace_a_whole_list():
    preset = config.from_dict({}, overrides=['optimizer.groups=[{params = ["a"], lr = 1.0}]'])
    assert preset.optimizer.groups[0].params == ["a"] and preset.optimizer.groups[0].kwargs == {"lr": 1.0}


@pytest.mark.parametrize(
    "raw, item, message",
    [
        ({}, "optimizer.groups.0.lr=1", "--set optimizer.groups.0.lr: optimizer.groups has no entries; add them to the"
                                        " preset, or set the whole list: --set 'optimizer.groups=[...]'"),
        ({"optimizer": {"groups": [{"params": ["a"]}]}}, "optimizer.groups.x=1",
         "--set optimizer.groups.x: optimizer.groups has entries 0 to 0; there is no entry x"),
        ({"model": {"freeze": []}}, "model.freeze.0=a", "--set model.freeze.0: model.freeze has no entries;"
                                                        " add them to the preset, or set the whole list:"
                                                        " --set 'model.freeze=[...]'"),
        ({"seed": 1}, "seed.x=1", "--set seed.x: seed is a value, not a table"),
        # seed not in the file: the set makes a table there, which then fails as a type
        ({}, "seed.x=1", "--set seed.x: seed: expected a whole number, got a table"),
    ],
)
def test_override_paths_that_do_not_exist(raw, item, message):
    with pytest.raises(UserError) as info:
        config.from_dict(raw, overrides=[item])
    assert str(info.value) == message


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "raw, key, message",
    [
        ({"early_stopping": {"patiense": 2}}, "early_stopping.patiense",
         'unknown key in [early_stopping]; did you mean "patience"?'),
        ({"Train": {}}, "Train", 'unknown key in the top level; did you mean "train"?'),  # case only
        ({"train": {"zzzqqq": 1}}, "train.zzzqqq", "unknown key in [train]; known keys: accumulate, amp, deterministic,"
                                                   " device, devices, epochs, freeze_bn_stats, grad_clip_norm,"
                                                   " grad_clip_norm_type, grad_clip_value, log_every, log_min_interval_s, max_steps,"
                                                   " nonfinite, sync_bn"),
        ({"data": {"image_size": 0}}, "data.image_size", "got 0; must be greater than 0"),
        ({"ui": {"refresh_hz": 61}}, "ui.refresh_hz", "got 61; must be at most 60.0"),
        ({"data": {"val_fraction": -0.1}}, "data.val_fraction", "got -0.1; must be at least 0.0"),
        ({"optimizer": {"lr": math.inf}}, "optimizer.lr", "expected a finite number, got inf"),
        ({"train": {"deterministic": 1}}, "train.deterministic", "expected true or false, got 1"),
        ({"model": {"arch": 18}}, "model.arch", "expected a string (in quotes), got 18"),
        ({"train": "fast"}, "train", 'expected a table, got "fast"'),
        ({"optimizer": {"groups": [{"lr": 0.1}]}}, "optimizer.groups.0.params", "is required; add it"),
        ({"optimizer": {"groups": [{"params": []}]}}, "optimizer.groups.0.params", "must not be empty"),
        ({"callbacks": [{}]}, "callbacks.0.target", "is required; add it"),
        ({"data": {"preload": True, "augment": True}}, "data.preload",
         "a preloaded sample is transformed once, so random augmentation would be frozen; set augment = false"
         " or preload = false"),
    ],
)
def test_errors_name_the_key_and_say_what_to_do(raw, key, message):
    with pytest.raises(UserError) as info:
        config.from_dict(raw, source="p.toml")
    err = info.value
    assert (err.key, err.source, err.message) == (key, "p.toml", message)
    assert str(err) == f"p.toml: {key}: {message}" and err.exit_code == 2


def test_an_error_from_a_set_names_the_set_once():
    with pytest.raises(UserError) as info:
        config.from_dict({}, source="p.toml", overrides=["train.epochs=0"])
    assert (info.value.key, info.value.source) == ("train.epochs", "--set train.epochs")
    assert str(info.value) == "--set train.epochs: got 0; must be greater than 0"


def test_an_error_inside_a_table_set_names_that_set():
    with pytest.raises(UserError) as info:
        config.from_dict({}, source="p.toml", overrides=["train={epochs = 0}"])
    assert str(info.value) == "--set train: train.epochs: got 0; must be greater than 0"


def test_an_error_in_a_key_not_set_names_the_file():
    with pytest.raises(UserError) as info:
        config.from_dict({"train": {"epochs": 0}}, source="p.toml", overrides=["optimizer.lr=0.5"])
    assert str(info.value) == "p.toml: train.epochs: got 0; must be greater than 0"


def test_modes_follow_the_monitor():
    assert config.from_dict({"checkpoint": {"monitor": "val_acc", "mode": "max"}}).checkpoint.mode == "max"
    with pytest.raises(UserError) as info:
        config.from_dict({"early_stopping": {"monitor": "val_acc", "mode": "min"}}, source="p.toml")
    assert info.value.key == "early_stopping.mode"
    assert "would keep the worst epochs" in str(info.value)


# --------------------------------------------------------------------------- key_source


def test_key_source_names_the_last_set_of_a_key_its_tables_and_its_children():
    preset = config.from_dict({}, source="p.toml",
                              overrides=["optimizer.lr=0.1", "train={epochs = 3}", "optimizer.lr=0.2"])
    assert preset.optimizer.lr == 0.2
    assert preset.key_source("optimizer.lr") == "--set optimizer.lr"
    assert preset.key_source("optimizer") == "--set optimizer.lr"  # a table that holds a set key
    assert preset.key_source("train.epochs") == "--set train"  # a key inside a set table
    assert preset.key_source("optimizer.lr_x") == "p.toml", "a dotted boundary, not a string prefix"
    assert preset.key_source("data.batch_size") == "p.toml"


def test_preset_error_helper_names_where_the_key_came_from():
    preset = config.from_dict({}, source="p.toml", overrides=["model.arch=resnet99"])
    err = preset.error("model.arch", "unknown architecture")
    assert isinstance(err, UserError) and str(err) == "--set model.arch: unknown architecture"
    assert str(preset.error("data.root", "missing")) == "p.toml: data.root: missing"


# --------------------------------------------------------------------------- load and dump


def test_load_names_the_preset_after_its_file(tmp_path):
    path = tmp_path / "my-run.toml"
    path.write_text('[optimizer]\nname = "AdamW"\nlr = 3e-4\nbetas = [0.9, 0.95]\n', encoding="utf-8")
    preset = config.load(path, ["train.epochs=2"])
    assert (preset.name, preset.optimizer.name, preset.optimizer.kwargs) == ("my-run", "AdamW", {"betas": [0.9, 0.95]})
    assert preset.source == str(path) and preset.key_source("optimizer.lr") == str(path)
    assert preset.train.epochs == 2 and preset.key_source("train.epochs") == "--set train.epochs"
    (tmp_path / "named.toml").write_text('name = "other"\n', encoding="utf-8")
    assert config.load(tmp_path / "named.toml").name == "other"


def test_load_refuses_a_file_that_is_not_utf8_text(tmp_path):
    path = tmp_path / "p.toml"
    path.write_bytes(b"name = \"\xff\xfe\"\n")
    with pytest.raises(UserError) as info:
        config.load(path)
    assert str(info.value) == f"{path}: not a UTF-8 text file; a preset is a TOML file"


def test_load_of_a_directory_is_no_preset(tmp_path):
    with pytest.raises(UserError) as info:
        config.load(tmp_path)
    assert str(info.value) == f"{tmp_path}: no such preset file (a preset is a .toml file); see presets/ for examples"


def test_dump_toml_round_trips():
    preset = config.from_dict({"name": "x", "optimizer": {"name": "AdamW", "lr": 0.001, "weight_decay": 0.05,
                                                         "groups": [{"params": ["head"], "lr": 0.01}]},
                               "scheduler": {"name": "StepLR", "step_size": 2}},
                              overrides=["model.num_classes=7"])
    again = config.from_dict(tomllib.loads(config.dump_toml(preset)))
    assert again.to_dict() == preset.to_dict()
    assert again.optimizer.groups[0].kwargs == {"lr": 0.01} and again.model.num_classes == 7
    assert "root" not in again.to_dict()["data"], "None values are left out"
