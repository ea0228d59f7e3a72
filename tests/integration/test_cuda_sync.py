"""No host sync in the engine's step path on CUDA (benchmarks/sync_check.py). Needs a GPU: this is
the suite's one legitimate skip."""

import pytest
import torch

from benchmarks.sync_check import CASES, run_case


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: set_sync_debug_mode is a CUDA feature")
@pytest.mark.parametrize("case", [c for c in CASES if c[3]], ids=lambda c: c[0])
def test_step_path_never_syncs(case, tmp_path):
    name, overrides, layer_stats, required = case
    r = run_case(name, overrides, layer_stats, required, device="cuda", steps=120, log_every=40, scratch=tmp_path)
    assert r.strict_error is None, r.strict_error
    assert r.steps == 120
    assert r.syncs <= r.allowed, dict(r.where)
