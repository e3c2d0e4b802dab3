"""GradientHealthRecorder at update_freq > 1 and at a NaN step, against a numpy reference from the weights around each step.

Every-step exactness of the custom loop (eager, tf.function, XLA) is in
test_capture_custom_loop.py; this module adds what it does not check: the
max between logged steps, the last step written by close(), and NaN steps.
"""

from __future__ import annotations

import gradients_support as support
import keras
import numpy as np
import pytest

from tb_gradhealth import GradientHealthRecorder, metadata

RUN = "custom_loop"
N_STEPS = support.STEPS_PER_EPOCH
# Logged steps 0, 3, 6 of steps 0..7; close() adds step 7, the last one.
SPARSE_UPDATE_FREQ = 3
SPARSE_LOGGED_STEPS = (0, 3, 6)
LAST_STEP = N_STEPS - 1
# Statistics only logged steps compute (the others need the weights before
# the update).
LOGGED_ONLY_STATS = (metadata.GRAD_MAX_ABS, metadata.WEIGHT_NORM, metadata.UPDATE_RATIO)


def _train(logdir, update_freq: int, compile_step: bool, x=None, y=None, n_steps: int = N_STEPS):
    model = support.build_mlp()
    optimizer = keras.optimizers.SGD(support.LEARNING_RATE)
    if x is None:
        x, y = support.make_data()
    with GradientHealthRecorder(str(logdir / RUN), model, update_freq=update_freq) as writer:
        weights = support.train_custom_loop(writer, model, optimizer, x, y, n_steps, compile_step=compile_step)
        assert writer.layer_names == support.LAYERS
    return support.expected_stats(weights, support.LAYERS)


@pytest.fixture(scope="module")
def sparse_run(tmp_path_factory):
    """A tf.function loop logging every 3rd step: (stats read back, numpy reference of every step)."""
    logdir = tmp_path_factory.mktemp("sparse")
    expected = _train(logdir, update_freq=SPARSE_UPDATE_FREQ, compile_step=True)
    return support.read_stats(logdir, RUN)[1], expected


@pytest.mark.slow
def test_update_freq_logs_every_nth_step_and_keeps_the_max_between(sparse_run):
    stats, expected = sparse_run
    logged = np.array(SPARSE_LOGGED_STEPS)
    reference = {stat: values[logged] for stat, values in expected.items()}
    written = stats[metadata.GRAD_NORM][0]
    np.testing.assert_array_equal(written, SPARSE_LOGGED_STEPS + (LAST_STEP,))
    logged_stats = {stat: (steps[: len(logged)], values[: len(logged)]) for stat, (steps, values) in stats.items()}
    support.assert_matches_reference("custom loop update_freq=3", logged_stats, reference, logged)
    # grad_norm_max of a written step covers every step since the previous one.
    norms = expected[metadata.GRAD_NORM]
    windows = [[0], [1, 2, 3], [4, 5, 6], [7]]
    want = np.stack([norms[window].max(axis=0) for window in windows])
    error = support.relative_error(stats[metadata.GRAD_NORM_MAX][1], want)
    assert error < support.REL_TOL, error
    np.testing.assert_allclose(stats[metadata.GRAD_NORM][1][-1], norms[LAST_STEP], rtol=support.REL_TOL)


@pytest.mark.slow
def test_last_unlogged_step_written_at_close_carries_no_made_up_values(sparse_run):
    """The last step is written by close() though not a logged step: what it says must be true.

    The statistics only logged steps compute may be left out at that step,
    or be the true ones; a 0 would read as "the weights are zero / did not
    move" in the charts and the diagnosis.
    """
    stats, expected = sparse_run
    for stat in LOGGED_ONLY_STATS:
        steps, values = stats[stat]
        if steps[-1] != LAST_STEP:
            continue
        error = support.relative_error(values[-1], expected[stat][LAST_STEP])
        assert error < support.REL_TOL, "%s at the last step %d is %s, the step's value is %s" % (
            stat,
            LAST_STEP,
            values[-1],
            expected[stat][LAST_STEP],
        )


@pytest.mark.slow
def test_a_nan_step_is_reported_not_hidden(tmp_path):
    nan_step = 1
    x, y = support.make_data()
    x[nan_step * support.BATCH_SIZE, 0] = np.nan
    _train(tmp_path, update_freq=1, compile_step=False, x=x, y=y, n_steps=nan_step + 1)
    stats = support.read_stats(tmp_path, RUN)[1]
    nonfinite = stats[metadata.NONFINITE][1]
    np.testing.assert_array_equal(nonfinite[0], 0)
    # One NaN input makes that sample's activations NaN in every unit, and
    # each gradient element sums over all samples: all of them are NaN.
    n_parameters = [support.layer_size(name) for name in support.LAYERS]
    np.testing.assert_array_equal(nonfinite[nan_step], n_parameters)
    assert np.isnan(stats[metadata.GRAD_NORM][1][nan_step]).all()
    # ||w_after - w_before|| is NaN once the update is: a 0 would say "did not move".
    update_ratio = stats[metadata.UPDATE_RATIO][1][nan_step]
    assert np.isnan(update_ratio).all(), "update_ratio of a NaN update is %s" % update_ratio
