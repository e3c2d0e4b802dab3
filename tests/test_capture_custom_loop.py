"""GradientHealthRecorder in tf.GradientTape loops (eager, tf.function, XLA) against numpy references."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from support import events, sgd

from tb_gradhealth import GradientHealthRecorder, metadata

N_STEPS = 7


def _batches():
    x, y = sgd.make_data(N_STEPS * sgd.BATCH)
    return [(x[i : i + sgd.BATCH], y[i : i + sgd.BATCH]) for i in range(0, len(x), sgd.BATCH)]


def _train(logdir, wrap=lambda fn: fn, after_step=None, update_freq=1, **recorder_args):
    """Trains the support MLP with plain SGD; returns (model, weight snapshots before each step and at the end)."""
    model = sgd.make_mlp()
    optimizer = keras.optimizers.SGD(sgd.LEARNING_RATE)
    loss_fn = keras.losses.MeanSquaredError()
    writer = GradientHealthRecorder(logdir, model, update_freq=update_freq, **recorder_args)

    def train_step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        writer.apply_gradients(optimizer, grads, model.trainable_variables, loss=loss)
        return loss

    step_fn = wrap(train_step)
    snapshots = []
    for x, y in _batches():
        snapshots.append([np.array(v.numpy(), np.float64) for v in model.trainable_variables])
        step_fn(tf.constant(x), tf.constant(y))
        if after_step is not None:
            after_step(writer)
    snapshots.append([np.array(v.numpy(), np.float64) for v in model.trainable_variables])
    writer.close()
    return model, snapshots


def _check(logdir, model, snapshots, expected_steps):
    run = events.read_run(logdir)
    assert run.layers == sgd.EXPECTED_LAYERS
    reference = sgd.reference_stats(snapshots, sgd.group_sizes(model))
    sgd.assert_matches_reference(run, reference)
    np.testing.assert_array_equal(run.steps[metadata.GRAD_NORM], expected_steps)
    # The loss handed to apply_gradients, at every logged step.
    x, y = sgd.make_data(N_STEPS * sgd.BATCH)
    np.testing.assert_array_equal(run.steps[metadata.LOSS], run.steps[metadata.GRAD_MAX_ABS])
    expected_loss = sgd.mlp_losses(snapshots, x, y)[run.steps[metadata.LOSS]]
    np.testing.assert_allclose(run.values[metadata.LOSS][:, 0], expected_loss, rtol=sgd.REL_TOL)


def test_eager_loop_matches_numpy(tmp_path):
    model, snapshots = _train(str(tmp_path))
    _check(str(tmp_path), model, snapshots, np.arange(N_STEPS))


@pytest.mark.slow
def test_tf_function_loop_flushes_a_full_buffer_from_the_graph(tmp_path):
    # Two logged steps fit in the buffer; the graph writes them when full.
    model, snapshots = _train(str(tmp_path), wrap=tf.function, buffer_steps=2, update_freq=2)
    # Logged: 0, 2, 4, 6 (6 is also the last step).
    _check(str(tmp_path), model, snapshots, [0, 2, 4, 6])


@pytest.mark.slow
def test_xla_step_needs_host_flushes(tmp_path):
    with pytest.warns(UserWarning, match="call its flush"):
        model, snapshots = _train(
            str(tmp_path),
            wrap=lambda fn: tf.function(fn, jit_compile=True),
            after_step=lambda writer: writer.flush(),
            buffer_steps=1,
        )
    _check(str(tmp_path), model, snapshots, np.arange(N_STEPS))


@pytest.mark.slow
def test_xla_step_without_flushes_warns_about_dropped_rows(tmp_path):
    with pytest.warns(UserWarning) as warned:
        _train(str(tmp_path), wrap=lambda fn: tf.function(fn, jit_compile=True), buffer_steps=2)
    assert any("dropped %d logged steps" % (N_STEPS - 2) in str(w.message) for w in warned)
    run = events.read_run(str(tmp_path))
    # The two buffered steps and the last step survive.
    np.testing.assert_array_equal(run.steps[metadata.GRAD_NORM], [0, 1, N_STEPS - 1])


def test_explicit_layer_groups(tmp_path):
    model = sgd.make_mlp()
    variables = model.trainable_variables
    writer = GradientHealthRecorder(str(tmp_path), layers=[("all", variables)], update_freq=1)
    optimizer = keras.optimizers.SGD(sgd.LEARNING_RATE)
    x, y = _batches()[0]
    with tf.GradientTape() as tape:
        loss = keras.losses.MeanSquaredError()(y, model(x))
    before = np.concatenate([v.numpy().ravel() for v in variables])
    writer.apply_gradients(optimizer, tape.gradient(loss, variables), variables)
    after = np.concatenate([v.numpy().ravel() for v in variables])
    writer.close()
    run = events.read_run(str(tmp_path))
    assert run.layers == ("all",)
    np.testing.assert_allclose(
        run.values[metadata.GRAD_NORM][0, 0], np.linalg.norm((before - after) / sgd.LEARNING_RATE), rtol=1e-4
    )


def test_constructor_needs_exactly_one_of_model_and_layers(tmp_path):
    with pytest.raises(ValueError):
        GradientHealthRecorder(str(tmp_path))
    with pytest.raises(ValueError):
        GradientHealthRecorder(str(tmp_path), sgd.make_mlp(), layers=[("a", [])])


def test_the_first_name_still_works():
    from tb_gradhealth import GradientHealthWriter

    assert GradientHealthWriter is GradientHealthRecorder


# -------------------------------------------------- update_freq > 1 and NaN steps

# Logged steps 0, 3, 6 of steps 0..7; close() adds step 7, the last one.
SPARSE_UPDATE_FREQ = 3
SPARSE_STEPS = 8
SPARSE_LOGGED_STEPS = [0, 3, 6]
# Statistics only logged steps compute (the others need the weights before the update).
LOGGED_ONLY_STATS = (metadata.GRAD_MAX_ABS, metadata.WEIGHT_NORM, metadata.UPDATE_RATIO)


def _sparse_train(run_dir, update_freq, compile_step, x=None, y=None, n_steps=SPARSE_STEPS):
    model = sgd.make_mlp()
    optimizer = keras.optimizers.SGD(sgd.LEARNING_RATE)
    if x is None:
        x, y = sgd.make_data(n_steps * sgd.BATCH)
    with GradientHealthRecorder(str(run_dir), model, update_freq=update_freq) as recorder:
        snapshots = sgd.train_custom_loop(recorder, model, optimizer, x, y, n_steps, compile_step=compile_step)
        assert recorder.layer_names == sgd.EXPECTED_LAYERS
    return events.read_run(run_dir), sgd.reference_stats(snapshots, sgd.group_sizes(model))


@pytest.fixture(scope="module")
def sparse_run(tmp_path_factory):
    """A tf.function loop logging every 3rd step: (run read back, numpy reference of every step)."""
    return _sparse_train(tmp_path_factory.mktemp("sparse"), SPARSE_UPDATE_FREQ, compile_step=True)


@pytest.mark.slow
def test_update_freq_logs_every_nth_step_and_keeps_the_max_between(sparse_run):
    run, reference = sparse_run
    last = SPARSE_STEPS - 1
    np.testing.assert_array_equal(run.steps[metadata.GRAD_NORM], SPARSE_LOGGED_STEPS + [last])
    for stat in LOGGED_ONLY_STATS:
        np.testing.assert_array_equal(run.steps[stat], SPARSE_LOGGED_STEPS)
        np.testing.assert_allclose(run.values[stat], reference[stat][SPARSE_LOGGED_STEPS], rtol=sgd.REL_TOL)
    norms = reference[metadata.GRAD_NORM]
    np.testing.assert_allclose(run.values[metadata.GRAD_NORM], norms[SPARSE_LOGGED_STEPS + [last]], rtol=sgd.REL_TOL)
    # grad_norm_max of a written step covers every step since the previous one.
    windows = [[0], [1, 2, 3], [4, 5, 6], [7]]
    want = np.stack([norms[window].max(axis=0) for window in windows])
    np.testing.assert_allclose(run.values[metadata.GRAD_NORM_MAX], want, rtol=sgd.REL_TOL)


@pytest.mark.slow
def test_a_nan_step_is_reported_not_hidden(tmp_path):
    nan_step = 1
    x, y = sgd.make_data(2 * sgd.BATCH)
    x[nan_step * sgd.BATCH, 0] = np.nan
    run, _ = _sparse_train(tmp_path, 1, compile_step=False, x=x, y=y, n_steps=nan_step + 1)
    nonfinite = run.values[metadata.NONFINITE]
    np.testing.assert_array_equal(nonfinite[0], 0)
    # One NaN input makes that sample's activations NaN in every unit, and
    # each gradient element sums over all samples: all of them are NaN.
    model = sgd.make_mlp()
    n_parameters = [
        sum(int(np.prod(v.shape)) for v in model.get_layer(name).trainable_weights)
        for name in ("first", "block", "last")
    ]
    np.testing.assert_array_equal(nonfinite[nan_step], n_parameters)
    assert np.isnan(run.values[metadata.GRAD_NORM][nan_step]).all()
    # ||w_after - w_before|| is NaN once the update is: a 0 would say "did not move".
    assert np.isnan(run.values[metadata.UPDATE_RATIO][nan_step]).all()
