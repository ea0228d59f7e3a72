"""The benchmark scripts run and report (a few steps each); their speed is not asserted here: the
numbers mean something only on a quiet machine, see benchmarks/README.md."""

from __future__ import annotations

import json

import torch

from benchmarks import footprint, run_all, step_costs, sync_check, throughput, ui_latency
from tests.conftest import tiny_preset_text


def test_throughput_reports_steps_per_s_and_ratios(tmp_path):
    out = tmp_path / "t.json"
    result = throughput.main(["--quick", "--workload", "tiny", "--reps", "1", "--json", str(out)])
    (tiny,) = result["workloads"]
    assert tiny["median"]["a"] > 0 and tiny["median"]["b"] > 0
    assert tiny["ratio"]["b"] > 0 and tiny["ratio"]["c"] > 0
    assert json.loads(out.read_text())["workloads"][0]["workload"] == "tiny"


def test_step_costs_reports_each_part():
    result = step_costs.main(["--quick", "--steps", "60"])
    assert result["steps"] == 60
    assert {"_step", "_report", "_between_steps", "sink: Recorder", "sink: LineReporter"} <= set(result["parts"])


def test_sync_check_plumbing(tmp_path, capsys):
    # without CUDA the script says so; the wrapping of the step path still runs on CPU
    sync_check.main([])
    if not torch.cuda.is_available():
        assert "no GPU: skipped" in capsys.readouterr().out
    r = sync_check.run_case(*sync_check.CASES[0], device="cpu", steps=20, log_every=10, scratch=tmp_path)
    assert r.steps == 20 and r.reports == 2 and r.strict_error is None and r.passed


def test_ui_latency_reports_the_blocked_loop_and_key_latency(tmp_path):
    result = ui_latency.main(["--quick", "--presses", "2", "--json", str(tmp_path / "u.json")])
    # a 0.5 s window may hold too few reports for a ratio on a loaded machine: it must report, not be fast
    assert {"before", "blocked", "after", "ratio"} <= set(result["blocked"]), result
    assert result["key_latency_s"]["n"] == 2 and result["key_latency_s"]["max"] > 0, result


def test_footprint_memory_help_and_first_step(tmp_path):
    preset = tmp_path / "tiny.toml"
    preset.write_text(tiny_preset_text(), encoding="utf-8")
    result = footprint.main(["--quick", "--steps", "100,200", "--runs", "1", "--preset", str(preset)])
    rows = result["memory"]["engine"]["rows"]
    assert [r["milestone"] for r in rows] == [100, 200] and all(r["rss"] > 0 for r in rows)
    assert result["help"]["help_s"] > 0 and result["help"]["cli_imports_torch"] is False
    first = result["first_step"]
    assert 0 < first["run_started_s"] <= first["first_step_s"]


def test_run_all_writes_the_summary(tmp_path):
    code = run_all.main(["--quick", "--only", "sync_check,step_costs", "--out", str(tmp_path)])
    assert code == 0
    summary = (tmp_path / "summary.md").read_text()
    assert "### sync_check" in summary and "### step_costs" in summary
    assert (tmp_path / "step_costs.json").is_file()
