"""`tui-trainer preview PRESET`: the resolved preset, the layer table with output shapes from a dry
forward pass, the planned LR as a text plot; no training, nothing written."""

from __future__ import annotations

import re

import pytest

from tui_trainer import config
from tui_trainer.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_preview(tiny_preset, tmp_path, capsys):
    path = tiny_preset()
    code = main(["preview", str(path), "--set", 'model.freeze=["0"]', "--set", 'scheduler.name="OneCycleLR"',
                 "--set", 'scheduler.interval="step"'])
    out, err = capsys.readouterr()
    assert code == 0 and err == ""
    assert not re.search(r"\x1b\[", out), "plain text when stdout is not a terminal"
    assert not (tmp_path / "runs").exists()

    # The resolved preset, as TOML that loads back (between the first two rules).
    toml_text = out.split("─ layers")[0].split("\n", 1)[1]
    toml_path = tmp_path / "resolved.toml"
    toml_path.write_text(toml_text.rsplit("\n", 1)[0])
    resolved = config.load(toml_path)
    assert resolved.scheduler.name == "OneCycleLR" and resolved.model.freeze == ["0"]

    # The layer table: one row per module with parameters, its output shape, params, trainable.
    rows = {tuple(line.split()[:5]) for line in out.splitlines()}
    assert ("0", "Sequential", "4x8x8", "116", "off") in rows
    assert ("0", "Conv2d", "4x16x16", "108", "off") in rows
    assert ("1", "BatchNorm2d", "8x8x8", "16", "on") in rows
    assert ("6", "Linear", "10", "170", "on") in rows
    assert "params: 1,774 total, 1,658 trainable" in out

    # The plan: a braille plot of 14 steps that rises and falls (OneCycleLR), with the LR on its axis.
    plot = out.split("planned LR: 14 steps (2 epochs x 7)")[1]
    assert re.search(r"[\u2801-\u28ff]", plot)
    assert "step" in plot
    ticks = [float(t) for t in re.findall(r"^ *([\d.]+) ┤", plot, flags=re.M)]
    assert 0.05 <= max(ticks) <= 0.0525, ticks  # the y axis tops out just above max_lr = 0.05
    # a log file has no colours to tell groups apart: each group's start, peak and end in numbers
    start, peak, peak_step, end = re.search(r"^default +([\d.e-]+) +([\d.e-]+) \(step (\d+)\) +([\d.e-]+)$", plot,
                                            flags=re.M).groups()
    assert float(start) == 0.002 and 0.045 <= float(peak) <= 0.05 and 1 <= int(peak_step) <= 5
    assert float(end) < 1e-4
    width = max(len(line) for line in plot.splitlines())
    assert width <= 100, "the plot is not wrapped or widened past the console"
