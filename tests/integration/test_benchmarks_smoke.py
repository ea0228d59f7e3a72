"""The benchmark scripts run and report (a few steps each); their speed is not asserted here: the
numbers mean something only on a quiet machine, see benchmarks/README.md."""

from __future__ import annotations

import json

import torch

import pytest

from benchmarks import (ddp, footprint, gpu_check, loop_overhead, run_all, step_costs, step_forms, sync_check,
                        throughput, ui_latency)
from tests.conftest import tiny_preset_text


def test_throughput_reports_wall_and_cpu_ratios_and_a_noise_verdict(tmp_path, capsys):
    out = tmp_path / "t.json"
    result = throughput.main(["--quick", "--workload", "tiny", "--windows", "2", "--json", str(out)])
    (tiny,) = result["workloads"]
    assert tiny["load"] == "quiet" and tiny["windows"] == 2
    assert all(len(tiny["steps_per_s"][v]) == 2 and tiny["median"][v] > 0 for v in "abc")
    for v in "bc":  # both ratios, each with its spread over the adjacent windows
        assert tiny["ratio"][v] > 0 and tiny["cpu_ratio"][v] > 0, tiny
        assert len(tiny["cpu_ratios_per_window"][v]) == 2 and tiny["cpu_ratio_spread"][v] >= 0
    cpu = tiny["cpu_ms_per_step"]
    assert all(cpu[v]["process"] > 0 and cpu[v]["engine"] > 0 for v in "abc")
    assert cpu["a"]["ui"] is None and cpu["b"]["ui"] is None  # both train on the main thread
    assert cpu["c"]["ui"] > 0 and cpu["c"]["engine"] < cpu["c"]["process"]  # the app: training thread + UI thread
    assert 0 < tiny["ui_core_share"]["c"] <= 1.05 and tiny["ui_core_share"]["a"] is None
    noise = tiny["noise"]
    assert noise["bare_spread"] >= 0 and isinstance(noise["noisy"], bool) and noise["verdict"]
    text = capsys.readouterr().out
    assert "b/a  wall" in text and "CPU" in text and "noise: the bare loop's windows spread" in text
    saved = json.loads(out.read_text())
    assert saved["workloads"][0]["workload"] == "tiny" and "cpu_ratio" in saved["workloads"][0]
    assert saved["noisy"] == noise["noisy"]


def test_noise_verdict_marks_a_spread_above_ten_percent():
    assert not throughput.noise([1000, 1010, 990, 1005])["noisy"]
    loud = throughput.noise([563, 700, 933, 650, 800])  # a shared machine's bare loop (from the issue)
    assert loud["noisy"] and loud["verdict"].startswith("NOISY: wall-clock ratios are not meaningful here")
    assert throughput.spread([1.0]) == 0.0


def test_hog_starts_one_busy_process_per_cpu_and_stops_them():
    with throughput.Hog(2) as hog:
        assert hog.alive() == 2
        procs = list(hog.procs)
    assert all(p.poll() is not None for p in procs)


def test_step_forms_reports_cost_ratios_with_spreads(tmp_path, capsys):
    out = tmp_path / "f.json"
    result = step_forms.main(["--quick", "--windows", "2", "--json", str(out)])
    assert result["forms"] == ["default", "dict", "dict_loss"] and result["windows"] == 2
    for f in ("dict", "dict_loss"):  # CPU-time and wall ratios to the default step, each with its spread
        cost = result["cost"][f]
        assert cost["cpu"] > 0 and cost["wall"] > 0 and cost["cpu_spread"] >= 0 and cost["wall_spread"] >= 0, cost
        assert len(result["cost_per_window"][f]) == 2 and cost["same_work"]
        assert cost["verdict"].startswith("too few windows")  # two windows never give a verdict
        # same model, seed, optimizer and data: the dict forms train exactly like the default step
        assert result["same_losses"][f] is True
    text = capsys.readouterr().out
    assert "dict/default per step: CPU" in text and "goal <= 1.01" in text and "load average" in text
    assert json.loads(out.read_text())["cost"]["dict"]["cpu"] == result["cost"]["dict"]["cpu"]


def test_step_forms_accumulation_is_reported_apart(capsys):
    result = step_forms.main(["--quick", "--windows", "1", "--forms", "default,acc2"])
    acc = result["cost"]["acc2"]
    assert acc["cpu"] > 0 and not acc["same_work"] and acc["verdict"].startswith("not the same work")
    assert result["accumulate"] == {"default": 1, "acc2": 2} and result["batch_size"]["acc2"] == 16


def test_ddp_reports_ratios_and_the_broadcast(tmp_path, capsys):
    # 2 real gloo ranks per run (elastic launch, spawn): the bare DDP loop, the engine, the engine without share()
    out = tmp_path / "d.json"
    result = ddp.main(["--quick", "--pairs", "3", "--collective", "20", "--json", str(out)])
    (tiny,) = result["workloads"]
    assert tiny["workload"] == "tiny" and tiny["windows"] == 1 and tiny["world"] == 2
    assert all(tiny["median"][v] > 0 and tiny["cpu_ms_per_step"][v] > 0 for v in "abc")
    assert all(len(tiny["cpu_ms_per_step_ranks"][v]) == 2 for v in "abc")
    assert tiny["ratio"]["b"] > 0 and tiny["cpu_ratio"]["b"] > 0 and tiny["ratio"]["c"] > 0
    assert tiny["share_in_place"]["us_per_step"] is not None and tiny["noise"]["verdict"]
    share = result["share"]["ranks"]
    assert len(share) == 2 and all(r["median_us"] > 0 and r["p90_us"] >= r["median_us"] for r in share)
    text = capsys.readouterr().out
    assert "b/a  wall" in text and "goal >= 0.98" in text and "Dist.share([])" in text
    collective = result["collective"]["ranks"]  # what one sync-sized collective costs each thread of a rank
    assert len(collective) == 2 and all(r["calls"] == 3 * 20 for r in collective)  # 3 interleaved rounds
    assert all(r[k]["issue_median_us"] > 0 for r in collective for k in ("all_gather", "all_reduce"))
    assert "one sync-sized all_gather" in text and "one sync-sized all_reduce" in text
    assert json.loads(out.read_text())["workloads"][0]["ratio"]["b"] == tiny["ratio"]["b"]
    paired = tiny["paired"]  # bare blocks run inside the engine's run, both ranks at the same steps
    assert paired["pairs"] == 2 and paired["block_steps"] > 0  # 3 engine blocks; the last has no bare after it
    assert all(r > 0 for r in paired["wall_per_pair"] + paired["cpu_per_pair"])
    assert "paired in one engine run" in text
    pooled = ddp.main(["--pool", str(out), str(out)])["paired"]  # saved rounds pooled again, nothing measured
    assert pooled["pairs"] == 4 and len(pooled["rounds"]) == 2
    assert sorted(pooled["wall_per_pair"]) == sorted(paired["wall_per_pair"] * 2)
    assert "2 runs pooled" in capsys.readouterr().out


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


@pytest.mark.parametrize("name", ["custom step + dict batches, DataLoader (pinned)",
                                  "custom step + dict batches, preloaded, bf16",
                                  "accumulate = 2 (batch 16), bf16 + grad clipping"])
def test_sync_check_new_cases_are_required_and_run_on_cpu(name, tmp_path):
    # on CPU the plumbing only (no sync mode): the presets load, train and report; a GPU session checks the syncs
    case = next(c for c in sync_check.CASES if c[0] == name)
    assert case[3], "required to pass"
    r = sync_check.run_case(*case, device="cpu", steps=20, log_every=10, scratch=tmp_path)
    assert r.steps == 20 and r.reports == 2 and r.strict_error is None and r.passed


def test_loop_overhead_reports_the_windows_and_the_pairs_in_one_run(tmp_path):
    result = loop_overhead.main(["--quick", "--json", str(tmp_path / "l.json")])
    assert result["same_losses"] is True
    assert len(result["cost_per_window"]) == 2 and all(r > 0 for r in result["wall_per_window"])
    pairs = result["paired"]
    assert pairs["pairs"] == 4 and pairs["steps_per_block"][0] == pairs["steps_per_block"][1] > 0
    assert len(pairs["wall_per_pair"]) == 4 and all(r > 0 for r in pairs["cpu_per_pair"])
    assert pairs["other_threads_us_per_b_step"] >= 0  # the writer threads' CPU, charged to b
    assert "run.log" in result["breakdown"]["parts"]
    assert 0 < pairs["reports_per_b_second"]  # the reports' pace in b's own time (a's is taken off it)


def test_loop_overhead_pools_rounds(tmp_path, capsys):
    result = loop_overhead.main(["--quick", "--windows", "0", "--rounds", "2", "--json", str(tmp_path / "l.json")])
    pairs = result["paired"]
    assert len(pairs["rounds"]) == 2 and pairs["pairs"] == 8  # 4 pairs a round, pooled
    lo, hi = pairs["wall_ci95"]
    assert lo <= pairs["wall"] <= hi
    assert "round 2/2" in capsys.readouterr().out


def test_pooled_interval_holds_the_rounds_disagreement():
    # three runs centred 1% apart, each with a wide spread of its own: taken as one sample their
    # median looks sharp; resampling the runs too gives the wider interval their disagreement means
    rounds = [[c + 0.05 * ((i * 7919) % 101 - 50) / 50 for i in range(300)] for c in (1.00, 1.01, 1.02)]
    naive = step_forms.bootstrap_median([v for r in rounds for v in r])
    pooled = step_forms.bootstrap_pooled(rounds)
    assert pooled[0] <= naive[0] and pooled[1] >= naive[1]
    assert pooled[1] - pooled[0] > 1.5 * (naive[1] - naive[0]), (naive, pooled)


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


def test_the_gpu_check_runs_its_plumbing_on_cpu(tmp_path, capsys):
    """benchmarks/gpu_check.py, the one command for a lent GPU machine, kept working here: on CPU the
    memory, bf16 and no-sync checks pass and every CUDA-only check says SKIP; its verdicts and the
    runs' events come back in --out."""
    assert gpu_check.main(["--device", "cpu", "--out", str(tmp_path)]) == 0
    verdicts = {r["check"]: r["verdict"] for r in json.loads((tmp_path / "gpu_check.json").read_text())}
    assert verdicts["memory: the pane draws them"] == verdicts["no host sync in the step path"] == "PASS"
    assert verdicts["amp bf16"] == "PASS" and "amp fp16" not in verdicts, verdicts  # CPU autocast: bf16 only
    assert verdicts["CUDA-only tests"] == verdicts["NCCL, 2 ranks"] == "SKIP", verdicts
    assert (tmp_path / "events-memory.jsonl").is_file()
    assert "gpu check: 0 FAIL" in capsys.readouterr().out
