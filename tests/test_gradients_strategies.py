"""The custom-loop API under MirroredStrategy on two logical CPUs records the applied (cross-replica summed) gradient exactly."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import gradients_support as support
import numpy as np
import pytest

from tb_gradhealth import metadata

SCRIPT = pathlib.Path(support.__file__)
# TensorFlow import plus one traced replica step, on a busy 2-core machine.
SUBPROCESS_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def subprocess_cases(tmp_path_factory) -> dict:
    """Runs gradients_support.py in a fresh interpreter (logical devices need one): {case: result}."""
    out = tmp_path_factory.mktemp("strategies")
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), str(out)], capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return json.loads(completed.stdout)


@pytest.mark.slow
def test_custom_loop_under_mirrored_strategy_records_the_summed_gradient(subprocess_cases):
    case = subprocess_cases["mirrored_custom_loop"]
    assert "error" not in case, case.get("error")
    assert case["replicas"] == support.LOGICAL_CPUS
    weights = dict(np.load(case["weights"]))
    # Each replica sees half the batch; only the sum of both replicas'
    # gradients is what SGD applied, so a per-replica value fails here.
    expected = support.expected_stats(weights, support.LAYERS)
    layers, stats = support.read_stats(case["logdir"])
    assert layers == support.LAYERS
    support.assert_matches_reference(
        "custom loop, MirroredStrategy x2", stats, expected, np.arange(support.STEPS_PER_EPOCH)
    )
    np.testing.assert_array_equal(stats[metadata.NONFINITE][1], 0)
