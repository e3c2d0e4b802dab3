"""The capture's reductions: mid-sized tensors reduced in single-threaded chunks give numpy's numbers, in a step too."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from support import events, sgd

from tb_gradhealth import GradientHealthCallback, metadata
from tb_gradhealth.capture import reductions

CHUNK = reductions.SINGLE_THREAD_ELEMENTS
# The notebook MLP's first kernel (784 x 128) is one of the mid-sized tensors.
SIZES = (1, 1000, CHUNK, CHUNK + 1, 784 * 128, reductions.MAX_CHUNKS * CHUNK, reductions.MAX_CHUNKS * CHUNK + 1)


def _split_ops(function, *args) -> int:
    graph = function.get_concrete_function(*args).graph
    return sum(op.type in ("Split", "SplitV") for op in graph.get_operations())


@pytest.mark.parametrize("size", SIZES)
def test_half_sum_of_squares_equals_numpy_whole_or_in_chunks(size):
    values = np.random.default_rng(size).normal(size=size).astype(np.float32)
    expected = 0.5 * np.sum(values.astype(np.float64) ** 2)
    traced = tf.function(reductions.half_sum_of_squares)
    compiled = tf.function(reductions.half_sum_of_squares, jit_compile=True)
    for function in (traced, compiled):
        np.testing.assert_allclose(function(tf.constant(values)).numpy(), expected, rtol=1e-6)
    # Split only where TensorFlow would hand the pass to several threads, and not under XLA.
    chunked = CHUNK < size <= reductions.MAX_CHUNKS * CHUNK
    assert _split_ops(traced, tf.constant(values)) == (1 if chunked else 0)
    assert _split_ops(compiled, tf.constant(values)) == 0


def _wide_mlp():
    keras.utils.set_random_seed(sgd.SEED)
    inputs = keras.Input((784,))
    hidden = keras.layers.Dense(128, activation="tanh", name="wide")(inputs)
    return keras.Model(inputs, keras.layers.Dense(sgd.N_OUTPUTS, name="last")(hidden))


@pytest.mark.parametrize("update_freq", [1, 3])
def test_a_layer_reduced_in_chunks_matches_numpy(tmp_path, update_freq):
    rng = np.random.default_rng(0)
    n_steps = 7
    x = rng.normal(size=(n_steps * sgd.BATCH, 784)).astype(np.float32)
    y = rng.normal(size=(n_steps * sgd.BATCH, sgd.N_OUTPUTS)).astype(np.float32)
    model = _wide_mlp()
    model.compile(optimizer=keras.optimizers.SGD(sgd.LEARNING_RATE), loss="mse")
    recorder = sgd.weight_recorder()
    callback = GradientHealthCallback(str(tmp_path), update_freq=update_freq)
    model.fit(x, y, batch_size=sgd.BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[callback, recorder])
    run = events.read_run(os.path.join(str(tmp_path), "train"))
    reference = sgd.reference_stats(recorder.snapshots, sgd.group_sizes(model))
    steps = run.steps[metadata.GRAD_NORM]
    # Logged steps, and the last one (it carries the per-step statistics only).
    expected_steps = sorted(set(range(0, n_steps, update_freq)) | {n_steps - 1})
    np.testing.assert_array_equal(steps, expected_steps)
    logged = [step for step in expected_steps if step % update_freq == 0]
    for stat in sgd.REFERENCE_STATS:
        np.testing.assert_allclose(run.values[stat], reference[stat][run.steps[stat]], rtol=sgd.REL_TOL, err_msg=stat)
        np.testing.assert_array_equal(run.steps[stat], steps if stat == metadata.GRAD_NORM else logged)
    # The largest norm since the previous written step, from half sums of squares kept between them.
    norms = reference["grad_norm"]
    previous = [-1, *expected_steps[:-1]]
    expected_max = [norms[start + 1 : step + 1].max(axis=0) for start, step in zip(previous, expected_steps)]
    np.testing.assert_allclose(run.values[metadata.GRAD_NORM_MAX], expected_max, rtol=sgd.REL_TOL)
    np.testing.assert_array_equal(run.values[metadata.NONFINITE], 0)
