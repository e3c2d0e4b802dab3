"""GradientHealthCallback in the workflows around the model: lazy builds, transfer learning, interrupted fits, step numbers, several callbacks, stopping on NaN."""

from __future__ import annotations

import gc
import os
import re
import weakref

import keras
import numpy as np
import pytest
import tensorflow as tf
from support import events, sgd

from tb_gradhealth import GradientHealthCallback, GradientHealthRecorder, metadata

N_SAMPLES = 48  # 6 steps per epoch at batch 8
LR = sgd.LEARNING_RATE


def _fit(model, callbacks, x, y, epochs=1, compile=True, steps_per_execution=1, **optimizer_args):
    if compile:
        model.compile(
            optimizer=keras.optimizers.SGD(LR, **optimizer_args), loss="mse", steps_per_execution=steps_per_execution
        )
    model.fit(x, y, batch_size=sgd.BATCH, epochs=epochs, shuffle=False, verbose=0, callbacks=callbacks)


# ------------------------------------------------------------------ lazy build


class _NotYetCalled(keras.Model):
    def __init__(self):
        super().__init__(name="not_yet_called")
        self.hidden = keras.layers.Dense(4, activation="tanh", name="hidden")
        self.out = keras.layers.Dense(sgd.N_OUTPUTS, name="out")

    def call(self, inputs):
        return self.out(self.hidden(inputs))


@pytest.mark.parametrize("kind", ["sequential_without_input", "subclassed_not_called"])
def test_a_model_built_by_its_first_step_is_recorded(tmp_path, kind):
    keras.utils.set_random_seed(3)
    if kind == "sequential_without_input":
        model = keras.Sequential(
            [keras.layers.Dense(4, activation="tanh", name="hidden"), keras.layers.Dense(3, name="out")]
        )
    else:
        model = _NotYetCalled()
    assert not model.built
    after = sgd.weight_recorder(after_each_batch_only=True)
    x, y = sgd.make_data(N_SAMPLES)
    callback = GradientHealthCallback(str(tmp_path), update_freq=1)
    _fit(model, [callback, after], x, y)
    assert callback.layer_names == ("hidden", "out")
    run = events.read_run(os.path.join(str(tmp_path), "train"))
    assert run.layers == ("hidden", "out")
    np.testing.assert_array_equal(run.steps[metadata.GRAD_NORM], np.arange(N_SAMPLES // sgd.BATCH))
    # The weights before step 0 existed only inside that step: steps 1.. are
    # checked against the weights after each batch.
    reference = sgd.reference_stats(after.snapshots, [2, 2])
    for stat, expected in reference.items():
        np.testing.assert_allclose(run.values[stat][1:], expected, rtol=sgd.REL_TOL, err_msg=stat)


# ------------------------------------------------------------ transfer learning


@pytest.mark.slow
def test_transfer_learning_records_the_layers_trainable_at_each_fit_under_their_own_tags(tmp_path):
    model, base, head = sgd.base_and_head()
    x, y = sgd.make_data(N_SAMPLES)
    callback = GradientHealthCallback(str(tmp_path), update_freq=1)
    recorder = sgd.weight_recorder()
    base.trainable = False
    _fit(model, [callback, recorder], x, y)
    head_snapshots = recorder.snapshots
    # Fine-tune the base with the head frozen: recompile, same callback.
    base.trainable, head.trainable = True, False
    recorder = sgd.weight_recorder()
    _fit(model, [callback, recorder], x, y)
    run_dir = os.path.join(str(tmp_path), "train")
    tags = events.read_tags(run_dir)
    base_set = metadata.layer_set_id(["base/b1", "base/b2"])
    assert set(tags) == {metadata.tag_for_stat(stat) for stat in metadata.BUILTIN_STATS + (metadata.LOSS,)} | {
        metadata.tag_for_stat(stat, base_set) for stat in metadata.BUILTIN_STATS
    }
    assert tags[metadata.tag_for_stat(metadata.GRAD_NORM, base_set)][0]["layer_set"] == base_set
    # The first set keeps its plain tags and its steps; the frozen head gets
    # no value (not a zero) once it is frozen.
    head_run = events.read_run(run_dir)
    assert head_run.layers == ("head",)
    np.testing.assert_array_equal(head_run.steps[metadata.GRAD_NORM], np.arange(6))
    base_run = events.read_run(run_dir, layer_set=base_set)
    assert base_run.layers == ("base/b1", "base/b2")
    np.testing.assert_array_equal(base_run.steps[metadata.GRAD_NORM], np.arange(6, 12))
    np.testing.assert_array_equal(base_run.steps[metadata.LOSS], np.arange(12))
    # Both sets exact against their weight trajectories.
    sgd.assert_matches_reference(head_run, sgd.reference_stats(head_snapshots, [2]))
    sgd.assert_matches_reference(base_run, sgd.reference_stats(recorder.snapshots, [2, 2]), steps_offset=6)


# ------------------------------------------------------------- interrupted fit


class _Interrupt(Exception):
    pass


class _StopAtBatch(keras.callbacks.Callback):
    def __init__(self, batch):
        super().__init__()
        self.batch = batch

    def on_train_batch_end(self, batch, logs=None):
        if batch == self.batch:
            raise _Interrupt()


def test_a_fit_that_raised_leaves_no_later_fit_instrumented(tmp_path):
    model = sgd.make_mlp()
    x, y = sgd.make_data(N_SAMPLES)
    model.compile(optimizer=keras.optimizers.SGD(LR), loss="mse")
    model.fit(x[: sgd.BATCH], y[: sgd.BATCH], batch_size=sgd.BATCH, verbose=0)  # Keras's own function
    keras_function = model.train_function
    first = GradientHealthCallback(str(tmp_path / "first"), update_freq=1)
    with pytest.raises(_Interrupt):
        _fit(model, [first, _StopAtBatch(2)], x, y, compile=False)
    # A plain fit: Keras's own step, nothing recorded or counted.
    _fit(model, [], x, y, compile=False)
    assert model.train_function is keras_function
    assert not {"apply", "scale_loss"} & set(vars(model.optimizer)) and "compute_loss" not in vars(model)
    first_run = events.read_run(os.path.join(str(tmp_path / "first"), "train"))
    # The 3 steps of the interrupted fit (after the one of the first plain fit) are on disk.
    np.testing.assert_array_equal(first_run.steps[metadata.GRAD_NORM], [1, 2, 3])
    # A new callback records from the optimizer's count, and leaves Keras's function.
    second = GradientHealthCallback(str(tmp_path / "second"), update_freq=1)
    _fit(model, [second], x, y, compile=False)
    assert model.train_function is keras_function
    second_run = events.read_run(os.path.join(str(tmp_path / "second"), "train"))
    np.testing.assert_array_equal(second_run.steps[metadata.GRAD_NORM], np.arange(10, 16))
    # The first callback, used again, continues at the optimizer's count.
    _fit(model, [first], x[: 2 * sgd.BATCH], y[: 2 * sgd.BATCH], compile=False)
    first_run = events.read_run(os.path.join(str(tmp_path / "first"), "train"))
    np.testing.assert_array_equal(first_run.steps[metadata.GRAD_NORM], [1, 2, 3, 16, 17])


# ---------------------------------------------------------------- step numbers


def test_steps_are_optimizer_updates_under_gradient_accumulation_across_fits_and_callbacks(tmp_path):
    model = sgd.make_mlp()
    x, y = sgd.make_data(8 * sgd.BATCH)
    recorder = sgd.weight_recorder()
    _fit(
        model,
        [GradientHealthCallback(str(tmp_path), update_freq=1), recorder],
        x[:32],
        y[:32],
        gradient_accumulation_steps=2,
    )
    # A second callback in the same log_dir, another fit: no step reused.
    _fit(model, [GradientHealthCallback(str(tmp_path), update_freq=1), recorder], x[32:], y[32:], compile=False)
    run = events.read_run(os.path.join(str(tmp_path), "train"))
    # 8 micro-batches, 4 updates.
    np.testing.assert_array_equal(run.steps[metadata.GRAD_NORM], [0, 1, 2, 3])
    assert int(model.optimizer.iterations.numpy()) == 4
    # The statistics are those of the gradient applied (the mean of the two
    # micro-batches'), from the weights around each update.
    updates = recorder.snapshots[::2]
    reference = sgd.reference_stats(updates, sgd.group_sizes(model))
    for stat, expected in reference.items():
        np.testing.assert_allclose(run.values[stat], expected, rtol=sgd.REL_TOL, err_msg=stat)
    # Its loss is the mean of its micro-batches' losses (both under the
    # weights before the update: nothing is applied in between).
    losses = sgd.mlp_losses(recorder.snapshots, x, y)
    np.testing.assert_allclose(run.values[metadata.LOSS][:, 0], (losses[::2] + losses[1::2]) / 2, rtol=sgd.REL_TOL)


def test_steps_follow_the_optimizer_across_a_plain_fit(tmp_path):
    model = sgd.make_mlp()
    x, y = sgd.make_data(N_SAMPLES)
    callback = GradientHealthCallback(str(tmp_path), update_freq=1)
    _fit(model, [callback], x, y)
    _fit(model, [], x, y, compile=False)
    _fit(model, [callback], x, y, compile=False)
    run = events.read_run(os.path.join(str(tmp_path), "train"))
    np.testing.assert_array_equal(run.steps[metadata.GRAD_NORM], list(range(6)) + list(range(12, 18)))


def test_a_new_model_in_a_used_run_directory_continues_its_step_numbers(tmp_path):
    x, y = sgd.make_data(N_SAMPLES)
    for _ in range(2):
        _fit(sgd.make_mlp(), [GradientHealthCallback(str(tmp_path), update_freq=1)], x, y)
    run = events.read_run(os.path.join(str(tmp_path), "train"))
    np.testing.assert_array_equal(run.steps[metadata.GRAD_NORM], np.arange(12))


# ------------------------------------------------------- rows of subclassed models


class _HeadFirst(keras.Model):
    """Creates its output layer first: attribute order is not the forward order."""

    def __init__(self):
        super().__init__(name="head_first")
        self.head = keras.layers.Dense(sgd.N_OUTPUTS, name="head")
        self.middle = keras.layers.Dense(5, activation="tanh", name="middle")
        self.entry = keras.layers.Dense(8, activation="tanh", name="entry")

    def call(self, inputs):
        return self.head(self.middle(self.entry(inputs)))


def test_subclassed_model_rows_follow_the_forward_pass(tmp_path):
    keras.utils.set_random_seed(5)
    model = _HeadFirst()
    model(np.zeros((1, sgd.N_FEATURES), np.float32))
    recorder = sgd.weight_recorder()
    x, y = sgd.make_data(N_SAMPLES)
    callback = GradientHealthCallback(str(tmp_path), update_freq=1)
    _fit(model, [callback, recorder], x, y)
    run = events.read_run(os.path.join(str(tmp_path), "train"))
    assert run.layers == ("entry", "middle", "head")
    # model.trainable_variables is in attribute order (head first).
    by_name = {v.path.split("/")[-2]: i for i, v in enumerate(model.trainable_variables) if v.path.endswith("kernel")}
    order = sorted(range(3), key=lambda row: by_name[run.layers[row]])
    reference = sgd.reference_stats(recorder.snapshots, [2, 2, 2])
    for stat, expected in reference.items():
        np.testing.assert_allclose(run.values[stat][:, order], expected, rtol=sgd.REL_TOL, err_msg=stat)


# ----------------------------------------------------------- loss_scale_factor


def test_loss_scale_factor_is_unscaled(tmp_path):
    model = sgd.make_mlp()
    recorder = sgd.weight_recorder()
    x, y = sgd.make_data(N_SAMPLES)
    _fit(model, [GradientHealthCallback(str(tmp_path), update_freq=1), recorder], x, y, loss_scale_factor=128.0)
    run = events.read_run(os.path.join(str(tmp_path), "train"))
    reference = sgd.reference_stats(recorder.snapshots, sgd.group_sizes(model))
    sgd.assert_matches_reference(run, reference)
    np.testing.assert_allclose(run.values[metadata.LOSS][:, 0], sgd.mlp_losses(recorder.snapshots, x, y), rtol=1e-4)


# ------------------------------------------------------- two callbacks, one fit


def test_two_callbacks_in_one_fit_both_record(tmp_path):
    model = sgd.make_mlp()
    recorder = sgd.weight_recorder()
    x, y = sgd.make_data(N_SAMPLES)
    callbacks = [
        GradientHealthCallback(str(tmp_path / "every_step"), update_freq=1),
        GradientHealthCallback(str(tmp_path / "every_2nd"), update_freq=2),
    ]
    _fit(model, callbacks + [recorder], x, y)
    reference = sgd.reference_stats(recorder.snapshots, sgd.group_sizes(model))
    every = events.read_run(os.path.join(str(tmp_path / "every_step"), "train"))
    sgd.assert_matches_reference(every, reference)
    np.testing.assert_array_equal(every.steps[metadata.GRAD_NORM], np.arange(6))
    second = events.read_run(os.path.join(str(tmp_path / "every_2nd"), "train"))
    np.testing.assert_array_equal(second.steps[metadata.GRAD_MAX_ABS], [0, 2, 4])
    np.testing.assert_allclose(second.values[metadata.GRAD_MAX_ABS], reference["grad_max_abs"][[0, 2, 4]], rtol=1e-4)


def test_two_callbacks_writing_one_log_dir_are_refused_at_the_start_of_fit(tmp_path):
    model = sgd.make_mlp()
    x, y = sgd.make_data(N_SAMPLES)
    with pytest.raises(ValueError, match="two GradientHealthCallbacks of one fit write into"):
        _fit(model, [GradientHealthCallback(str(tmp_path)), GradientHealthCallback(str(tmp_path))], x, y)
    assert int(model.optimizer.iterations.numpy()) == 0
    assert not {"apply", "scale_loss"} & set(vars(model.optimizer)) and "compute_loss" not in vars(model)


# -------------------------------------------------------- nothing to record


def test_a_built_model_without_trainable_weights_gets_the_reason(tmp_path):
    model = keras.Sequential([keras.Input((sgd.N_FEATURES,)), keras.layers.Dense(3)])
    model.trainable = False
    x, y = sgd.make_data(N_SAMPLES)
    with pytest.raises(
        ValueError, match=re.escape("has no trainable weights (its layers are frozen or have no weights)")
    ):
        _fit(model, [GradientHealthCallback(str(tmp_path))], x, y)


# ------------------------------------------------------------ stop_on_nonfinite


@pytest.mark.parametrize("steps_per_execution", [1, 2])
def test_stop_on_nonfinite_stops_after_the_step_and_names_the_layers(tmp_path, capsys, steps_per_execution):
    model = sgd.make_mlp()
    x, y = sgd.make_data(N_SAMPLES)
    x[3 * sgd.BATCH, 0] = np.nan
    callback = GradientHealthCallback(str(tmp_path), stop_on_nonfinite=True, update_freq=1)
    _fit(model, [callback], x, y, epochs=2, steps_per_execution=steps_per_execution)
    # Stopped after step 3 (with 2 steps per execution: after the execution of 2 and 3).
    assert int(model.optimizer.iterations.numpy()) == 4
    assert callback.nonfinite.step == 3
    assert callback.nonfinite.layers == sgd.EXPECTED_LAYERS and callback.nonfinite.applied
    assert (
        "non-finite gradient at step 3 in first, block/inner, last (its update was applied)" in capsys.readouterr().out
    )
    run = events.read_run(os.path.join(str(tmp_path), "train"))
    np.testing.assert_array_equal(run.steps[metadata.GRAD_NORM], np.arange(4))
    assert (run.values[metadata.NONFINITE][3] > 0).all()
    # From finite weights again, a fit without NaN runs to its end.
    model.set_weights(sgd.make_mlp().get_weights())
    _fit(model, [callback], x[: 3 * sgd.BATCH], y[: 3 * sgd.BATCH], compile=False)
    assert callback.nonfinite is None and int(model.optimizer.iterations.numpy()) == 4 + 3


@pytest.mark.slow
def test_stop_on_nonfinite_ignores_loss_scale_overflows_above_scale_one(tmp_path):
    x, y = sgd.make_data(40 * sgd.BATCH)
    nan_from = 12
    x[nan_from * sgd.BATCH :, 0] = np.nan
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = sgd.make_mlp()
        optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(LR), initial_scale=2.0**20)
        model.compile(optimizer=optimizer, loss="mse")
        callback = GradientHealthCallback(str(tmp_path), stop_on_nonfinite=True, update_freq=1)
        model.fit(x, y, batch_size=sgd.BATCH, shuffle=False, verbose=0, callbacks=[callback])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    # The first batches overflow at 2**20 and are skipped: not a reason to
    # stop. From batch 12 every gradient is NaN: skipped until the scale is 1
    # or less, then recorded, and training stops there, the update skipped.
    applied = int(model.optimizer.iterations.numpy())
    assert 0 < applied < nan_from
    assert callback.nonfinite is not None and not callback.nonfinite.applied
    assert callback.nonfinite.step == applied
    assert float(model.optimizer.dynamic_scale.numpy()) <= 1.0


def test_custom_loop_keeps_the_first_nonfinite_step_for_the_loop(tmp_path):
    model = sgd.make_mlp()
    optimizer = keras.optimizers.SGD(LR)
    x, y = sgd.make_data(6 * sgd.BATCH)
    x[2 * sgd.BATCH, 0] = np.nan
    stopped_after = None
    with GradientHealthRecorder(str(tmp_path), model, stop_on_nonfinite=True, update_freq=1) as writer:

        @tf.function
        def step(xb, yb):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(model(xb, training=True) - yb))
            writer.apply_gradients(
                optimizer, tape.gradient(loss, model.trainable_variables), model.trainable_variables, loss=loss
            )

        for index in range(6):
            step(x[index * 8 : (index + 1) * 8], y[index * 8 : (index + 1) * 8])
            if writer.nonfinite is not None:
                stopped_after = index
                break
    assert stopped_after == 2 and writer.nonfinite.step == 2 and writer.nonfinite.applied
    assert writer.nonfinite.layers == sgd.EXPECTED_LAYERS


def test_models_trained_with_the_callback_are_freed(tmp_path):
    # A sweep trains a model per trial: the hooks must not keep them alive.
    x, y = sgd.make_data(2 * sgd.BATCH)
    models = []
    for trial in range(3):
        model = sgd.make_mlp()
        _fit(model, [GradientHealthCallback(str(tmp_path / str(trial)), update_freq=1)], x, y)
        models.append(weakref.ref(model))
        del model
    gc.collect()
    assert [ref() for ref in models] == [None, None, None]
