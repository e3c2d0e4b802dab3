"""The callback and the custom-loop recorder under MirroredStrategy on two logical CPUs: the recorded gradient is the cross-replica sum."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from support import events, sgd, two_cpus

from tb_gradhealth import metadata

TESTS_DIR = pathlib.Path(__file__).resolve().parent
# TensorFlow's import plus two traced trainings, on a busy 2-core machine.
SUBPROCESS_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def mirrored_runs(tmp_path_factory) -> dict:
    """Runs support.two_cpus in a fresh interpreter (logical devices need one): {case: result}."""
    out = tmp_path_factory.mktemp("mirrored")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]))
    completed = subprocess.run(
        [sys.executable, "-m", "support.two_cpus", str(out)],
        cwd=str(TESTS_DIR),
        env=env,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return json.loads(completed.stdout)


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(two_cpus.CASES))
def test_the_summed_gradient_and_loss_of_both_replicas_are_recorded(mirrored_runs, case):
    result = mirrored_runs[case]
    assert "error" not in result, result.get("error")
    assert result["replicas"] == two_cpus.LOGICAL_CPUS
    snapshots, sizes = two_cpus.load_snapshots(result["weights"])
    run = events.read_run(result["run_dir"])
    assert run.layers == sgd.EXPECTED_LAYERS
    # Each replica sees half the batch: only the sum of both replicas'
    # gradients is what SGD applied, so a per-replica value fails here.
    sgd.assert_matches_reference(run, sgd.reference_stats(snapshots, sizes))
    n_steps = len(snapshots) - 1
    np.testing.assert_array_equal(run.steps[metadata.GRAD_NORM], np.arange(n_steps))
    # Likewise the loss: each replica's is its share of the batch's.
    x, y = sgd.make_data(two_cpus.N_SAMPLES)
    repeats = n_steps * sgd.BATCH // len(x)
    expected_loss = sgd.mlp_losses(snapshots, np.concatenate([x] * repeats), np.concatenate([y] * repeats))
    np.testing.assert_allclose(run.values[metadata.LOSS][:, 0], expected_loss, rtol=sgd.REL_TOL)
