"""Helpers of the test_gradients_* modules (tiny MLP, weight recorder, numpy reference, event read-back); as a script, their two-CPU case."""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import keras
import tensorflow as tf
from tensorboard.backend.event_processing import plugin_event_multiplexer
from tensorboard.util import tensor_util

from tb_gradhealth import metadata

N_SAMPLES = 64
INPUT_DIM = 5
OUTPUT_DIM = 3
BATCH_SIZE = 8
STEPS_PER_EPOCH = N_SAMPLES // BATCH_SIZE
# A power of two: exact in float32, so (w_before - w_after) / lr adds no
# rounding of its own, and large enough that the update is not lost in the
# float32 rounding of the weights (relative error ~ eps * |w| / |lr * g|).
LEARNING_RATE = 0.125
# Relative tolerance of the "Must show" list.
REL_TOL = 1e-4
SEED = 1234
TRAIN_RUN = "train"
LAYERS = ("hidden_tanh", "hidden_relu", "output")
# Keeps every tensor of ours; 0 means unbounded in TensorBoard's size guidance.
KEEP_ALL = 0
LOGICAL_CPUS = 2
# The statistics a numpy reference exists for (from the weights around a step).
REFERENCE_STATS = ("grad_norm", "grad_max_abs", "weight_norm", "update_ratio")


def make_data(n_samples: int = N_SAMPLES, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_samples, INPUT_DIM)).astype(np.float32)
    y = rng.normal(size=(n_samples, OUTPUT_DIM)).astype(np.float32)
    return x, y


def build_mlp(seed: int = SEED) -> keras.Model:
    """Dense(8, tanh) -> Dense(4, relu) -> Dense(3), built; same seed, same weights."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((INPUT_DIM,)),
            keras.layers.Dense(8, activation="tanh", name=LAYERS[0]),
            keras.layers.Dense(4, activation="relu", name=LAYERS[1]),
            keras.layers.Dense(OUTPUT_DIM, name=LAYERS[2]),
        ]
    )


def layer_size(name: str) -> int:
    """Number of trainable parameters of one layer of `build_mlp`."""
    return sum(int(np.prod(v.shape)) for v in build_mlp().get_layer(name).trainable_weights)


def compile_sgd(model: keras.Model) -> keras.Model:
    # Plain SGD: w_after = w_before - lr * g, so g is recoverable from the weights.
    model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE, momentum=0.0), loss="mse")
    return model


def layer_vector(layer) -> np.ndarray:
    """All trainable variables of a layer, flattened into one float64 vector (norms are over all of them)."""
    return np.concatenate([np.asarray(v.numpy(), np.float64).ravel() for v in layer.trainable_weights])


class WeightRecorder(keras.callbacks.Callback):
    """Records each layer's trainable weights at every batch begin and end (per execution)."""

    def __init__(self, layer_names):
        super().__init__()
        self.layer_names = tuple(layer_names)
        self.before = {name: [] for name in self.layer_names}
        self.after = {name: [] for name in self.layer_names}

    def _snapshot(self, into) -> None:
        for name in self.layer_names:
            into[name].append(layer_vector(self.model.get_layer(name)))

    def on_train_batch_begin(self, batch, logs=None):
        self._snapshot(self.before)

    def on_train_batch_end(self, batch, logs=None):
        self._snapshot(self.after)

    def arrays(self) -> dict[str, np.ndarray]:
        """{"<layer>:before" / "<layer>:after": [n_executions, n_weights]}."""
        out = {}
        for name in self.layer_names:
            out[name + ":before"] = np.stack(self.before[name])
            out[name + ":after"] = np.stack(self.after[name])
        return out


def expected_stats(weights: dict[str, np.ndarray], layer_names, learning_rate: float = LEARNING_RATE):
    """Numpy reference per step from recorded weights: {stat: [n_steps, n_layers]}.

    Plain SGD applies w_after = w_before - lr * g, so the applied gradient is
    (w_before - w_after) / lr. `weight_norm` is taken before the update, the
    convention of the capture code (reductions.LayerReducer.before_update),
    and `update_ratio` divides by that same norm.
    """
    columns = {stat: [] for stat in REFERENCE_STATS}
    for name in layer_names:
        before, after = weights[name + ":before"], weights[name + ":after"]
        grad = (before - after) / learning_rate
        weight_norm = np.linalg.norm(before, axis=1)
        columns["grad_norm"].append(np.linalg.norm(grad, axis=1))
        columns["grad_max_abs"].append(np.abs(grad).max(axis=1))
        columns["weight_norm"].append(weight_norm)
        columns["update_ratio"].append(np.linalg.norm(after - before, axis=1) / weight_norm)
    return {stat: np.stack(values, axis=1) for stat, values in columns.items()}


def relative_error(actual, expected) -> float:
    """Largest |actual - expected| / |expected| (finite entries; expected nonzero)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    return float(np.max(np.abs(actual - expected) / np.abs(expected)))


def multiplexer_for(logdir) -> plugin_event_multiplexer.EventMultiplexer:
    """TensorBoard's Python multiplexer (`--load_fast=false`), keeping every tensor of ours."""
    multiplexer = plugin_event_multiplexer.EventMultiplexer(tensor_size_guidance={metadata.PLUGIN_NAME: KEEP_ALL})
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    return multiplexer


def read_stats(logdir, run: str = TRAIN_RUN):
    """Reads every Gradient Health tag of `run` through the multiplexer.

    Returns:
      (layers, {stat: (steps int64 [n], values float64 [n, n_layers])}).
    """
    multiplexer = multiplexer_for(logdir)
    contents = multiplexer.PluginRunToTagToContent(metadata.PLUGIN_NAME)[run]
    layers, stats = None, {}
    for tag, content in contents.items():
        parsed = metadata.parse_plugin_metadata(content)
        if parsed.stat == metadata.LOSS:
            continue
        assert layers is None or parsed.layers == layers
        layers = parsed.layers
        events = multiplexer.Tensors(run, tag)
        steps = np.array([event.step for event in events], np.int64)
        values = np.stack([tensor_util.make_ndarray(event.tensor_proto) for event in events]).astype(np.float64)
        stats[parsed.stat] = (steps, values)
    return layers, stats


def assert_matches_reference(case: str, stats, expected, steps, stat_names=REFERENCE_STATS) -> dict:
    """Asserts the recorded `stat_names` equal the numpy reference at `steps`; returns the errors.

    Args:
      stats: `read_stats(...)[1]`.
      expected: `expected_stats(...)`, one row per step of `steps`.
    """
    errors = {}
    for stat in stat_names:
        recorded_steps, values = stats[stat]
        np.testing.assert_array_equal(recorded_steps, steps, err_msg="%s: steps of %s" % (case, stat))
        errors[stat] = relative_error(values, expected[stat])
    # The measured errors, for the record (visible with pytest -s).
    print("%s: max relative error %s" % (case, ", ".join("%s %.1e" % item for item in errors.items())))
    for stat, error in errors.items():
        assert error < REL_TOL, "%s: %s differs from the numpy reference by %.2e relative" % (case, stat, error)
    return errors


def train_custom_loop(writer, model, optimizer, x, y, n_steps: int, strategy=None, compile_step: bool = True):
    """Trains `n_steps` batches in a `tf.GradientTape` loop through `writer.apply_gradients`.

    Returns:
      The weights around each step, as `WeightRecorder.arrays()` gives them.
    """

    def replica_step(xb, yb):
        with tf.GradientTape() as tape:
            squared = tf.reduce_mean(tf.square(model(xb, training=True) - yb), axis=-1)
            # Mean over the global batch, so the replicas' gradients sum to
            # the full batch's (the usual custom-loop convention).
            loss = tf.nn.compute_average_loss(squared, global_batch_size=BATCH_SIZE)
        grads = tape.gradient(loss, model.trainable_variables)
        writer.apply_gradients(optimizer, grads, model.trainable_variables)

    def step(xb, yb):
        if strategy is None:
            replica_step(xb, yb)
        else:
            strategy.run(replica_step, args=(xb, yb))

    step = tf.function(step) if compile_step else step
    batches = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH_SIZE)
    if strategy is not None:
        batches = strategy.experimental_distribute_dataset(batches)
    recorder = WeightRecorder(LAYERS)
    recorder.set_model(model)
    for _, (xb, yb) in zip(range(n_steps), batches):
        recorder.on_train_batch_begin(None)
        step(xb, yb)
        recorder.on_train_batch_end(None)
    return recorder.arrays()


# ---------------------------------------------------------------- subprocess


def _mirrored_strategy() -> tf.distribute.MirroredStrategy:
    return tf.distribute.MirroredStrategy([device.name for device in tf.config.list_logical_devices("CPU")])


def _mirrored_custom_loop(out: pathlib.Path) -> dict:
    from tb_gradhealth import GradientHealthRecorder

    strategy = _mirrored_strategy()
    with strategy.scope():
        model = build_mlp()
        optimizer = keras.optimizers.SGD(LEARNING_RATE)
    logdir = out / "mirrored_custom_loop"
    x, y = make_data()
    with GradientHealthRecorder(str(logdir / TRAIN_RUN), model) as writer:
        weights = train_custom_loop(writer, model, optimizer, x, y, STEPS_PER_EPOCH, strategy=strategy)
    np.savez(out / "mirrored_custom_loop.npz", **weights)
    return {
        "logdir": str(logdir),
        "weights": str(out / "mirrored_custom_loop.npz"),
        "replicas": strategy.num_replicas_in_sync,
    }


# fit under MirroredStrategy is tested by test_capture_mirrored.py.
SUBPROCESS_CASES = {"mirrored_custom_loop": _mirrored_custom_loop}


def main(argv=None) -> None:
    """Trains the cases that need two logical CPUs; prints {case: {logdir, weights, replicas} or {error}} as JSON.

    The logical devices must be configured before TensorFlow initialises
    its devices, which a test process importing TensorFlow has long done:
    hence a fresh process, once for all cases.
    """
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("out", type=pathlib.Path)
    args = parser.parse_args(argv)
    (cpu,) = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * LOGICAL_CPUS)
    summary = {}
    for name, case in SUBPROCESS_CASES.items():
        # One failing case must not hide the other's numbers.
        try:
            summary[name] = case(args.out)
        except Exception as error:
            summary[name] = {"error": "%s: %s" % (type(error).__name__, error)}
    json.dump(summary, sys.stdout)


if __name__ == "__main__":
    main()
