"""GradientHealthCallback against numpy: every logged step's statistics equal what plain SGD's weight trajectory implies."""

from __future__ import annotations

import inspect
import logging
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from support import events, sgd

from tb_gradhealth import GradientHealthCallback, metadata

N_SAMPLES = 48  # 6 steps per epoch at batch 8
# float16 has 11 significant bits.
FLOAT16_REL_TOL = 1e-2


def _fit(model, callbacks, epochs=2, x=None, y=None, lr=sgd.LEARNING_RATE, compile=True, **compile_args):
    if x is None:
        x, y = sgd.make_data(N_SAMPLES)
    if compile:
        model.compile(optimizer=keras.optimizers.SGD(lr), loss="mse", **compile_args)
    model.fit(x, y, batch_size=sgd.BATCH, epochs=epochs, shuffle=False, verbose=0, callbacks=callbacks)


def _fit_overflowing_loss_scale(callback, x, y):
    """One epoch under mixed_float16 from a loss scale of 2**20; returns (model, weight recorder).

    2**20 overflows float16 in the backward pass: Keras skips steps and
    halves the scale until the gradients fit (routine, not a finding).
    """
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = sgd.make_mlp()
        recorder = sgd.weight_recorder()
        optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(sgd.LEARNING_RATE), initial_scale=2.0**20)
        model.compile(optimizer=optimizer, loss="mse")
        model.fit(x, y, batch_size=sgd.BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[callback, recorder])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return model, recorder


def _check_run(tmp_path, model, recorder, steps_offset=0):
    run = events.read_run(os.path.join(str(tmp_path), "train"))
    assert run.layers == sgd.EXPECTED_LAYERS
    reference = sgd.reference_stats(recorder.snapshots, sgd.group_sizes(model))
    sgd.assert_matches_reference(run, reference, steps_offset)
    np.testing.assert_array_equal(run.values[metadata.GRAD_NORM_MAX], run.values[metadata.GRAD_NORM])
    return run


def test_plain_sgd_matches_numpy_every_step(tmp_path):
    model = sgd.make_mlp()
    recorder = sgd.weight_recorder()
    callback = GradientHealthCallback(str(tmp_path), update_freq=1)
    x, y = sgd.make_data(N_SAMPLES)
    _fit(model, [callback, recorder], x=x, y=y)
    run = _check_run(tmp_path, model, recorder)
    np.testing.assert_array_equal(run.steps[metadata.GRAD_NORM], np.arange(2 * N_SAMPLES // sgd.BATCH))
    # The loss of each step is its batch's loss under the weights before the
    # update (not Keras's running mean over the epoch).
    np.testing.assert_array_equal(run.steps[metadata.LOSS], run.steps[metadata.GRAD_NORM])
    expected_loss = sgd.mlp_losses(recorder.snapshots, np.concatenate([x, x]), np.concatenate([y, y]))
    np.testing.assert_allclose(run.values[metadata.LOSS][:, 0], expected_loss, rtol=sgd.REL_TOL)
    # The weights before each update were read, not copied into variables:
    # no persistent copy of the model.
    assert callback._recorder._reduce._snapshots is None


@pytest.mark.slow
def test_jit_compile_matches_numpy(tmp_path):
    model = sgd.make_mlp()
    recorder = sgd.weight_recorder()
    _fit(model, [GradientHealthCallback(str(tmp_path), update_freq=1), recorder], jit_compile=True)
    _check_run(tmp_path, model, recorder)


@pytest.mark.slow
def test_steps_per_execution_matches_a_step_by_step_reference(tmp_path):
    # Callbacks see only every 4th step here, so the weight trajectory comes
    # from an identical model trained one step per execution.
    reference_model = sgd.make_mlp()
    recorder = sgd.weight_recorder()
    _fit(reference_model, [recorder])
    model = sgd.make_mlp()
    callback = GradientHealthCallback(str(tmp_path), update_freq=1)
    _fit(model, [callback], steps_per_execution=4)
    run = events.read_run(os.path.join(str(tmp_path), "train"))
    reference = sgd.reference_stats(recorder.snapshots, sgd.group_sizes(model))
    sgd.assert_matches_reference(run, reference)
    # 12 steps in executions of 4, 6 per epoch: every step is still there.
    np.testing.assert_array_equal(run.steps[metadata.GRAD_NORM], np.arange(12))
    assert callback._recorder._reduce._snapshots is None  # every step is logged: nothing copied


@pytest.mark.slow
def test_mixed_float16_records_unscaled_gradients(tmp_path):
    x, y = sgd.make_data(N_SAMPLES)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = sgd.make_mlp()
        recorder = sgd.weight_recorder()
        _fit(model, [GradientHealthCallback(str(tmp_path), update_freq=1), recorder], x=x, y=y)
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    run = events.read_run(os.path.join(str(tmp_path), "train"))
    reference = sgd.reference_stats(recorder.snapshots, sgd.group_sizes(model))
    # Steps the loss-scale optimizer skipped left the weights unchanged and
    # must leave no row; every other step is recorded, unscaled.
    applied = np.flatnonzero(reference["update_ratio"].max(axis=1) > 0)
    np.testing.assert_array_equal(run.steps[metadata.GRAD_NORM], applied)
    # fp16 forward passes: gradients carry float16 rounding of the
    # activations, but the comparison is still exact to the applied update.
    sgd.assert_matches_reference(run, reference)
    # The loss is the unscaled one (the scale starts at 2**15), to float16's
    # precision of the forward pass.
    expected_loss = sgd.mlp_losses(recorder.snapshots, np.concatenate([x, x]), np.concatenate([y, y]))
    np.testing.assert_array_equal(run.steps[metadata.LOSS], applied)
    np.testing.assert_allclose(run.values[metadata.LOSS][:, 0], expected_loss[applied], rtol=FLOAT16_REL_TOL)


@pytest.mark.slow
def test_loss_scale_overflows_are_no_step_until_the_scale_reaches_one(tmp_path):
    # Enough NaN steps for the scale (about 2**13 by then) to halve below 1.
    x, y = sgd.make_data(30 * sgd.BATCH)
    persistent_nan_from = 8
    x[persistent_nan_from * sgd.BATCH :, 0] = np.nan
    model, recorder = _fit_overflowing_loss_scale(GradientHealthCallback(str(tmp_path), update_freq=1), x, y)
    run = events.read_run(os.path.join(str(tmp_path), "train"))
    reference = sgd.reference_stats(recorder.snapshots, sgd.group_sizes(model))
    applied = np.flatnonzero(reference["update_ratio"].max(axis=1) > 0)
    assert 0 < applied[0] and applied[-1] < persistent_nan_from  # some skipped, then some applied
    # A step is an update: the applied batches are steps 0, 1, ... (like
    # optimizer.iterations); the skipped ones are no step.
    steps = run.steps[metadata.GRAD_NORM]
    finite_rows = steps < len(applied)
    np.testing.assert_array_equal(steps[finite_rows], np.arange(len(applied)))
    np.testing.assert_array_equal(run.values[metadata.NONFINITE][finite_rows], 0)
    np.testing.assert_allclose(
        run.values[metadata.GRAD_NORM][finite_rows], reference["grad_norm"][applied], rtol=sgd.REL_TOL
    )
    # From batch 8 every gradient is NaN: skipped while the scale halves, and
    # recorded as non-finite once the scale is down to 1 or less, each under
    # a number of its own though the optimizer's count no longer moves.
    nan_rows = ~finite_rows
    assert nan_rows.sum() >= 2
    np.testing.assert_array_equal(steps[nan_rows], len(applied) + np.arange(nan_rows.sum()))
    assert (run.values[metadata.NONFINITE][nan_rows] > 0).all()
    assert np.isnan(run.values[metadata.GRAD_NORM][nan_rows]).all()
    assert int(model.optimizer.iterations.numpy()) == len(applied)


def test_update_freq_keeps_spikes_and_nans_between_logged_steps(tmp_path):
    x, y = sgd.make_data(25 * sgd.BATCH)
    spike_step, nan_step = 3, 15
    y[spike_step * sgd.BATCH : (spike_step + 1) * sgd.BATCH] *= 100.0
    x[nan_step * sgd.BATCH, 0] = np.nan
    model = sgd.make_mlp()
    recorder = sgd.weight_recorder()
    lr = 0.01  # small enough that the spike does not saturate the network
    _fit(model, [GradientHealthCallback(str(tmp_path), update_freq=10), recorder], epochs=1, x=x, y=y, lr=lr)
    run = events.read_run(os.path.join(str(tmp_path), "train"))
    # Logged: 0, 10, 20, and the last step (24) because training ended after it.
    np.testing.assert_array_equal(run.steps[metadata.GRAD_NORM], [0, 10, 20, 24])
    reference = sgd.reference_stats(recorder.snapshots, sgd.group_sizes(model), lr=lr)
    norms = reference["grad_norm"]
    assert (norms[1:11].argmax(axis=0) == spike_step - 1).all()
    grad_norm_max = run.values[metadata.GRAD_NORM_MAX]
    nonfinite = run.values[metadata.NONFINITE]
    np.testing.assert_allclose(grad_norm_max[0], norms[0], rtol=sgd.REL_TOL)
    # Steps 1..10 hold the spike; the logged step itself is ordinary.
    np.testing.assert_allclose(grad_norm_max[1], norms[1:11].max(axis=0), rtol=sgd.REL_TOL)
    assert (grad_norm_max[1] > 10 * run.values[metadata.GRAD_NORM][1]).all()
    np.testing.assert_allclose(run.values[metadata.GRAD_NORM][1], norms[10], rtol=sgd.REL_TOL)
    # The NaN batch poisons step 15 and, through the weights, every later one.
    np.testing.assert_array_equal(nonfinite[:2], 0)
    n_parameters = [sum(w.size for w in group) for group in _rows_of(recorder.snapshots[0], model)]
    assert (nonfinite[2] >= n_parameters).all() and (nonfinite[2] <= 6 * np.array(n_parameters)).all()
    assert np.isnan(grad_norm_max[2]).all()
    # The loss is kept at logged steps only (the last step's row carries the
    # per-step statistics alone).
    np.testing.assert_array_equal(run.steps[metadata.LOSS], [0, 10, 20])
    expected_loss = sgd.mlp_losses(recorder.snapshots, x, y)
    np.testing.assert_allclose(run.values[metadata.LOSS][:2, 0], expected_loss[[0, 10]], rtol=sgd.REL_TOL)
    assert np.isnan(run.values[metadata.LOSS][2, 0])


def test_the_defaults_skip_steps_and_still_catch_a_spike_and_a_nan_between_them(tmp_path):
    update_freq = inspect.signature(GradientHealthCallback).parameters["update_freq"].default
    assert update_freq > 1  # the defaults write some steps only; the point is what the others leave
    n_steps = 2 * update_freq + 5
    spike_step, nan_step = update_freq // 2, update_freq + update_freq // 2
    x, y = sgd.make_data(n_steps * sgd.BATCH)
    y[spike_step * sgd.BATCH : (spike_step + 1) * sgd.BATCH] *= 100.0
    x[nan_step * sgd.BATCH, 0] = np.nan
    model = sgd.make_mlp()
    recorder = sgd.weight_recorder()
    lr = 0.01  # small enough that the spike does not saturate the network
    _fit(model, [GradientHealthCallback(str(tmp_path)), recorder], epochs=1, x=x, y=y, lr=lr)
    run = events.read_run(os.path.join(str(tmp_path), "train"))
    np.testing.assert_array_equal(run.steps[metadata.GRAD_NORM], [0, update_freq, 2 * update_freq, n_steps - 1])
    norms = sgd.reference_stats(recorder.snapshots, sgd.group_sizes(model), lr=lr)["grad_norm"]
    grad_norm_max = run.values[metadata.GRAD_NORM_MAX]
    nonfinite = run.values[metadata.NONFINITE]
    # The spike is at an unwritten step; the next written row carries it.
    np.testing.assert_allclose(grad_norm_max[1], norms[1 : update_freq + 1].max(axis=0), rtol=sgd.REL_TOL)
    assert (grad_norm_max[1] > 10 * run.values[metadata.GRAD_NORM][1]).all()
    # So is the NaN: counted at the next written step, not lost between.
    np.testing.assert_array_equal(nonfinite[:2], 0)
    assert (nonfinite[2] > 0).all() and np.isnan(grad_norm_max[2]).all()


def _rows_of(weights, model):
    rows, start = [], 0
    for size in sgd.group_sizes(model):
        rows.append(weights[start : start + size])
        start += size
    return rows


class _CountingTraces(GradientHealthCallback):
    """Counts the traced steps it records (record_step runs while a step is traced, never per step)."""

    traces = 0

    def record_step(self, *args, **kwargs):
        self.traces += 1
        return super().record_step(*args, **kwargs)


@pytest.mark.slow
def test_fit_twice_continues_steps_in_one_file_without_retracing(tmp_path):
    model = sgd.make_mlp()
    recorder = sgd.weight_recorder()
    callback = _CountingTraces(str(tmp_path), update_freq=4)
    _fit(model, [callback, recorder], epochs=1)
    keras_function = model.train_function
    # One step per execution and update_freq > 1: one function for logged
    # steps and one without their work for the others.
    assert callback.traces == 2
    _fit(model, [callback, recorder], epochs=1, compile=False)
    # Keras's own train function is back after each fit; the recording ones
    # (already traced) served both.
    assert model.train_function is keras_function
    assert callback.traces == 2
    run = events.read_run(os.path.join(str(tmp_path), "train"))
    # 6 steps per fit: 0, 4 and the last (5); then 8 and the last (11).
    np.testing.assert_array_equal(run.steps[metadata.GRAD_NORM], [0, 4, 5, 8, 11])
    assert len(events.event_files(os.path.join(str(tmp_path), "train"))) == 1
    reference = sgd.reference_stats(recorder.snapshots, sgd.group_sizes(model))
    np.testing.assert_allclose(
        run.values[metadata.GRAD_NORM], reference["grad_norm"][[0, 4, 5, 8, 11]], rtol=sgd.REL_TOL
    )
    # After training the optimizer and the model are Keras's own again.
    assert not {"apply", "scale_loss"} & set(vars(model.optimizer))
    assert "compute_loss" not in vars(model)


class _WithUnusedWeight(keras.layers.Layer):
    """A Dense-like layer with one more weight that the loss never reaches (its gradient is None)."""

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], 4), initializer="glorot_uniform", name="kernel")
        self.unused = self.add_weight(shape=(3,), initializer="ones", name="unused")

    def call(self, inputs):
        return inputs @ self.kernel


@pytest.mark.slow
def test_frozen_layers_are_left_out_and_missing_gradients_count_as_zero(tmp_path):
    keras.utils.set_random_seed(2)
    inputs = keras.Input((sgd.N_FEATURES,))
    frozen = keras.layers.Dense(5, name="frozen")
    frozen.trainable = False
    hidden = _WithUnusedWeight(name="partial")(frozen(inputs))
    dead = _WithUnusedWeight(name="dead")
    dead(hidden)  # built, but its output is not used
    outputs = keras.layers.Dense(sgd.N_OUTPUTS, name="last")(hidden)
    model = keras.Model(inputs, outputs)
    model.dead = dead  # tracked: its variables are trainable but get no gradient
    recorder = sgd.weight_recorder()
    with pytest.warns(UserWarning, match="Gradients do not exist"):
        _fit(model, [GradientHealthCallback(str(tmp_path), update_freq=1), recorder], epochs=1)
    run = events.read_run(os.path.join(str(tmp_path), "train"))
    assert "frozen" not in run.layers
    dead_row = run.layers.index("dead")
    np.testing.assert_array_equal(run.values[metadata.GRAD_NORM][:, dead_row], 0)
    np.testing.assert_array_equal(run.values[metadata.UPDATE_RATIO][:, dead_row], 0)
    assert (run.values[metadata.WEIGHT_NORM][:, dead_row] > 0).all()
    reference = sgd.reference_stats(recorder.snapshots, sgd.group_sizes(model))
    sgd.assert_matches_reference(run, reference)


@pytest.mark.slow
def test_shares_log_dir_with_keras_tensorboard(tmp_path):
    model = sgd.make_mlp()
    _fit(
        model,
        [
            GradientHealthCallback(str(tmp_path), update_freq=1),
            keras.callbacks.TensorBoard(str(tmp_path), update_freq=1),
        ],
        epochs=1,
    )
    run_dir = os.path.join(str(tmp_path), "train")
    files = events.event_files(run_dir)
    assert any(name.endswith(".gradient_health") for name in files)
    assert any(not name.endswith(".gradient_health") for name in files)
    run = events.read_run(run_dir)
    np.testing.assert_array_equal(run.steps[metadata.GRAD_NORM], np.arange(N_SAMPLES // sgd.BATCH))


class _Interrupt(Exception):
    pass


@pytest.mark.slow
def test_a_fit_that_raised_leaves_nothing_recorded_twice(tmp_path):
    model = sgd.make_mlp()
    recorder = sgd.weight_recorder()
    callback = GradientHealthCallback(str(tmp_path), update_freq=1)

    class StopAtThirdBatch(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 2:
                raise _Interrupt()

    with pytest.raises(_Interrupt):
        _fit(model, [callback, recorder, StopAtThirdBatch()], epochs=1)
    # Keras skipped on_train_end: the optimizer is still wrapped.
    assert "apply" in vars(model.optimizer)
    _fit(model, [callback, recorder], epochs=1, compile=False)
    run = events.read_run(os.path.join(str(tmp_path), "train"))
    np.testing.assert_array_equal(run.steps[metadata.GRAD_NORM], np.arange(3 + 6))
    reference = sgd.reference_stats(recorder.snapshots, sgd.group_sizes(model))
    sgd.assert_matches_reference(run, reference)
    assert "apply" not in vars(model.optimizer)


def test_rejects_bad_arguments():
    for bad in (0, -1, 1.5, "epoch", True):
        with pytest.raises(ValueError):
            GradientHealthCallback("logs", update_freq=bad)
    with pytest.raises(ValueError):
        GradientHealthCallback("logs", buffer_steps=0)


def test_small_buffer_is_flushed_in_time(tmp_path):
    model = sgd.make_mlp()
    recorder = sgd.weight_recorder()
    # Two logged steps fit in the buffer: the host must flush every 2 steps.
    _fit(model, [GradientHealthCallback(str(tmp_path), buffer_steps=2, update_freq=1), recorder])
    run = _check_run(tmp_path, model, recorder)
    np.testing.assert_array_equal(run.steps[metadata.GRAD_NORM], np.arange(12))


@pytest.mark.slow
def test_update_freq_with_loss_scale_skips_keeps_the_max_of_applied_steps_only(tmp_path):
    # update_freq > 1 and the loss-scale optimizer skips the first steps
    # (scale 2**20 overflows): which steps are logged is decided in the graph.
    n_batches, update_freq = 21, 3
    x, y = sgd.make_data(n_batches * sgd.BATCH)
    model, recorder = _fit_overflowing_loss_scale(GradientHealthCallback(str(tmp_path), update_freq=update_freq), x, y)
    run = events.read_run(os.path.join(str(tmp_path), "train"))
    reference = sgd.reference_stats(recorder.snapshots, sgd.group_sizes(model))
    applied = np.flatnonzero(reference["update_ratio"].max(axis=1) > 0)
    assert 0 < applied[0] < n_batches - 1 - update_freq  # some skipped, then applied
    assert applied[-1] == n_batches - 1 and (len(applied) - 1) % update_freq != 0
    # Step k is the k-th applied batch; rows at the multiples of 3 and at the
    # last step (not a multiple here).
    logged = [step for step in range(len(applied)) if step % update_freq == 0]
    steps = run.steps[metadata.GRAD_NORM]
    np.testing.assert_array_equal(steps, logged + [len(applied) - 1])
    np.testing.assert_array_equal(run.steps[metadata.GRAD_MAX_ABS], logged)
    np.testing.assert_allclose(run.values[metadata.GRAD_NORM], reference["grad_norm"][applied[steps]], rtol=sgd.REL_TOL)
    # grad_norm_max covers the batches since the previous row: skipped ones
    # (zero in the reference: no update) add nothing.
    previous = -1
    for row, step in enumerate(steps):
        window = reference["grad_norm"][previous + 1 : applied[step] + 1]
        np.testing.assert_allclose(run.values[metadata.GRAD_NORM_MAX][row], window.max(axis=0), rtol=sgd.REL_TOL)
        previous = applied[step]
    np.testing.assert_array_equal(run.values[metadata.NONFINITE], 0)


@pytest.mark.slow
def test_a_sweep_of_callbacks_does_not_trip_tensorflows_retracing_warning(tmp_path):
    # A hyperparameter sweep creates a model and a callback per trial in one
    # process; each callback's flush is its own tf.function, traced once.
    # TensorFlow warns of "retracing" when functions made from one code
    # object are traced more than 5 times in a short span.
    class Collect(logging.Handler):
        def __init__(self):
            super().__init__(logging.WARNING)
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    collect = Collect()
    tf.get_logger().addHandler(collect)
    try:
        for trial in range(4):
            _fit(sgd.make_mlp(), [GradientHealthCallback(str(tmp_path / str(trial)), update_freq=1)], epochs=1)
    finally:
        tf.get_logger().removeHandler(collect)
    assert not [message for message in collect.messages if "retracing" in message]
    for trial in range(4):
        assert events.read_run(str(tmp_path / str(trial) / "train")).layers == sgd.EXPECTED_LAYERS


class _GuideTrainStep(keras.Model):
    """The custom train step of Keras's guide: `compute_loss`, then `optimizer.apply`; no loss scaling."""

    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as tape:
            loss = self.compute_loss(y=y, y_pred=self(x, training=True))
        self.optimizer.apply(tape.gradient(loss, self.trainable_variables), self.trainable_variables)
        return {"loss": loss}


class _OwnLossTrainStep(keras.Model):
    """A custom train step that computes its loss itself: nothing tells the callback what it is."""

    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(self(x, training=True) - y))
        self.optimizer.apply(tape.gradient(loss, self.trainable_variables), self.trainable_variables)
        return {"loss": loss}


@pytest.mark.parametrize("model_class", [_GuideTrainStep, _OwnLossTrainStep])
def test_custom_train_step_loss_comes_from_compute_loss_or_is_absent(tmp_path, model_class):
    template = sgd.make_mlp()
    model = model_class(template.inputs, template.outputs, name="custom_step")
    recorder = sgd.weight_recorder()
    x, y = sgd.make_data(N_SAMPLES)
    _fit(model, [GradientHealthCallback(str(tmp_path), update_freq=1), recorder], epochs=1, x=x, y=y)
    run = _check_run(tmp_path, model, recorder)
    if model_class is _OwnLossTrainStep:
        assert metadata.LOSS not in run.values
        return
    np.testing.assert_allclose(
        run.values[metadata.LOSS][:, 0], sgd.mlp_losses(recorder.snapshots, x, y), rtol=sgd.REL_TOL
    )
