"""GradientHealthRecorder in tf.GradientTape loops (eager, tf.function, XLA) against numpy references."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
import test_capture_support as support

from tb_gradhealth import GradientHealthRecorder, metadata

N_STEPS = 7


def _batches():
    x, y = support.make_data(N_STEPS * support.BATCH)
    return [(x[i : i + support.BATCH], y[i : i + support.BATCH]) for i in range(0, len(x), support.BATCH)]


def _train(logdir, wrap=lambda fn: fn, after_step=None, **recorder_args):
    """Trains the support MLP with plain SGD; returns (model, weight snapshots before each step and at the end)."""
    model = support.make_mlp()
    optimizer = keras.optimizers.SGD(support.LEARNING_RATE)
    loss_fn = keras.losses.MeanSquaredError()
    writer = GradientHealthRecorder(logdir, model, **recorder_args)

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
    run = support.read_run(logdir)
    assert run.layers == support.EXPECTED_LAYERS
    reference = support.reference_stats(snapshots, support.group_sizes(model))
    support.assert_matches_reference(run, reference)
    np.testing.assert_array_equal(run.steps[metadata.GRAD_NORM], expected_steps)
    # The loss handed to apply_gradients, at every logged step.
    x, y = support.make_data(N_STEPS * support.BATCH)
    np.testing.assert_array_equal(run.steps[metadata.LOSS], run.steps[metadata.GRAD_MAX_ABS])
    expected_loss = support.mlp_losses(snapshots, x, y)[run.steps[metadata.LOSS]]
    np.testing.assert_allclose(run.values[metadata.LOSS][:, 0], expected_loss, rtol=support.REL_TOL)


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
    run = support.read_run(str(tmp_path))
    # The two buffered steps and the last step survive.
    np.testing.assert_array_equal(run.steps[metadata.GRAD_NORM], [0, 1, N_STEPS - 1])


def test_explicit_layer_groups(tmp_path):
    model = support.make_mlp()
    variables = model.trainable_variables
    writer = GradientHealthRecorder(str(tmp_path), layers=[("all", variables)])
    optimizer = keras.optimizers.SGD(support.LEARNING_RATE)
    x, y = _batches()[0]
    with tf.GradientTape() as tape:
        loss = keras.losses.MeanSquaredError()(y, model(x))
    before = np.concatenate([v.numpy().ravel() for v in variables])
    writer.apply_gradients(optimizer, tape.gradient(loss, variables), variables)
    after = np.concatenate([v.numpy().ravel() for v in variables])
    writer.close()
    run = support.read_run(str(tmp_path))
    assert run.layers == ("all",)
    np.testing.assert_allclose(
        run.values[metadata.GRAD_NORM][0, 0], np.linalg.norm((before - after) / support.LEARNING_RATE), rtol=1e-4
    )


def test_constructor_needs_exactly_one_of_model_and_layers(tmp_path):
    with pytest.raises(ValueError):
        GradientHealthRecorder(str(tmp_path))
    with pytest.raises(ValueError):
        GradientHealthRecorder(str(tmp_path), support.make_mlp(), layers=[("a", [])])


def test_the_first_name_still_works():
    from tb_gradhealth import GradientHealthWriter

    assert GradientHealthWriter is GradientHealthRecorder
