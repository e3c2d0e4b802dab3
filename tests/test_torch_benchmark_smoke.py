"""Smoke run of the PyTorch overhead benchmark with tiny sizes: it runs end to end without wandb (no timing assertions)."""

from __future__ import annotations

import json
import math
import pathlib
import sys

import pytest

pytest.importorskip("torch")

REPO = pathlib.Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import torch_overhead

WITHOUT_WANDB = [config for config in torch_overhead.CONFIGS if config != torch_overhead.WANDB_WATCH]


@pytest.mark.slow
def test_torch_overhead_smoke(tmp_path):
    results = torch_overhead.main(
        [
            "--rounds",
            "2",
            "--block",
            "1",
            "--threads",
            "1",
            "--configs",
            ",".join(WITHOUT_WANDB),
            "--out-dir",
            str(tmp_path),
        ]
    )
    assert [measured["workload"] for measured in results["workloads"]] == list(torch_overhead.WORKLOADS)
    for measured in results["workloads"]:
        assert set(measured["summary"]) == set(WITHOUT_WANDB)
        for config, entry in measured["summary"].items():
            assert entry["step_ms_median"] > 0 and math.isfinite(entry["wall_ratio_mean"]), config
            # Only the configurations that monitor have time of their own.
            assert (entry["own_share_cpu"] > 0) == (config not in (torch_overhead.NONE, torch_overhead.NONE_AGAIN)), (
                config
            )
    assert results["torch_threads"] == 1
    (written,) = tmp_path.glob("torch_overhead-*.json")
    assert json.loads(written.read_text())["args"]["rounds"] == 2
