"""Shared helpers of the capture tests: tiny models, a per-step weight recorder, event-file reading and numpy references.

No tests live here; the other test_capture_* modules (and the MirroredStrategy
subprocess) import these helpers.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
from tensorboard.backend.event_processing import plugin_event_accumulator, plugin_event_multiplexer
from tensorboard.util import tensor_util

from tb_gradhealth import metadata

LEARNING_RATE = 0.5  # large, so w_before - w_after keeps many significant digits in float32
REL_TOL = 1e-4
N_FEATURES = 6
N_OUTPUTS = 3
BATCH = 8
RUN = "train"


@dataclasses.dataclass
class RunData:
    """Everything one run directory holds, as numpy: per stat `steps` and `[n_steps, n_layers]` values."""

    layers: tuple
    steps: dict
    values: dict
    metadata: dict


def read_run(run_dir: str) -> RunData:
    """Reads a run with TensorBoard's Python multiplexer, keeping every tensor event."""
    mux = plugin_event_multiplexer.EventMultiplexer(size_guidance={plugin_event_accumulator.TENSORS: 0})
    mux.AddRun(run_dir, name=RUN)
    mux.Reload()
    steps, values, metas, layers = {}, {}, {}, None
    for tag in mux.Runs()[RUN][plugin_event_accumulator.TENSORS]:
        stat = metadata.stat_for_tag(tag)
        if stat is None:
            continue
        events = mux.Tensors(RUN, tag)
        summary_metadata = mux.SummaryMetadata(RUN, tag)
        metas[stat] = summary_metadata
        content = json.loads(summary_metadata.plugin_data.content.decode("utf-8"))
        if content.get("scope", metadata.SCOPE_LAYER) == metadata.SCOPE_LAYER:
            layers = tuple(content["layers"])
        steps[stat] = np.array([e.step for e in events])
        values[stat] = np.stack([tensor_util.make_ndarray(e.tensor_proto) for e in events])
    return RunData(layers=layers, steps=steps, values=values, metadata=metas)


def make_data(n_samples: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_samples, N_FEATURES)).astype("float32")
    y = rng.normal(size=(n_samples, N_OUTPUTS)).astype("float32")
    return x, y


def make_mlp(name_prefix: str = ""):
    """Input -> Dense(8, tanh) -> nested Sequential(Dense(5, tanh)) -> Dense(3): three rows, one nested."""
    import keras

    keras.utils.set_random_seed(1)
    inputs = keras.Input((N_FEATURES,))
    hidden = keras.layers.Dense(8, activation="tanh", name=name_prefix + "first")(inputs)
    block = keras.Sequential([keras.layers.Dense(5, activation="tanh", name="inner")], name=name_prefix + "block")
    outputs = keras.layers.Dense(N_OUTPUTS, name=name_prefix + "last")(block(hidden))
    return keras.Model(inputs, outputs)


EXPECTED_LAYERS = ("first", "block/inner", "last")


def mlp_losses(snapshots, x, y, batch: int = BATCH) -> np.ndarray:
    """Mean squared error of each batch under the weights before its step (`make_mlp`, float64 numpy).

    Step i uses snapshot i and batch i, as `weight_recorder` records them.
    """
    losses = []
    for step, weights in enumerate(snapshots[:-1]):
        xb, yb = x[step * batch : (step + 1) * batch], y[step * batch : (step + 1) * batch]
        hidden = np.tanh(xb @ weights[0] + weights[1])
        hidden = np.tanh(hidden @ weights[2] + weights[3])
        losses.append(np.mean((hidden @ weights[4] + weights[5] - yb) ** 2))
    return np.array(losses)


def weight_recorder():
    """A callback keeping the model's trainable weights at train begin and after every batch.

    With steps_per_execution=1 the i-th snapshot is the weights before step
    i; the trajectory is recorded by Keras' own callbacks, independently of
    the code under test.
    """
    import keras

    class WeightRecorder(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.snapshots = []

        def _take(self):
            self.snapshots.append([np.array(v.numpy(), np.float64) for v in self.model.trainable_variables])

        def on_train_begin(self, logs=None):
            if not self.snapshots:
                self._take()

        def on_train_batch_end(self, batch, logs=None):
            self._take()

    return WeightRecorder()


def group_sizes(model) -> list:
    """How many of `model.trainable_variables` belong to each expected row, in order."""
    from tb_gradhealth.capture.layers import group_by_layer

    return [len(group.variables) for group in group_by_layer(model)]


def reference_stats(snapshots, sizes, lr: float = LEARNING_RATE) -> dict:
    """Per step (before -> after) and row, the statistics plain SGD implies, in float64 numpy.

    Returns:
      {stat: array [n_steps, n_rows]} for grad_norm, grad_max_abs,
      weight_norm and update_ratio, where step i goes from snapshot i to i+1.
    """
    out = {name: [] for name in ("grad_norm", "grad_max_abs", "weight_norm", "update_ratio")}
    for before, after in zip(snapshots[:-1], snapshots[1:]):
        rows = {name: [] for name in out}
        start = 0
        for size in sizes:
            b = np.concatenate([w.ravel() for w in before[start : start + size]])
            a = np.concatenate([w.ravel() for w in after[start : start + size]])
            start += size
            grad = (b - a) / lr
            rows["grad_norm"].append(np.linalg.norm(grad))
            rows["grad_max_abs"].append(np.abs(grad).max())
            rows["weight_norm"].append(np.linalg.norm(b))
            rows["update_ratio"].append(np.linalg.norm(a - b) / np.linalg.norm(b))
        for name in out:
            out[name].append(rows[name])
    return {name: np.array(rows) for name, rows in out.items()}


def assert_matches_reference(run: RunData, reference: dict, steps_offset: int = 0, rtol: float = REL_TOL) -> None:
    """Every logged step's statistics equal the reference of that step (rows in the same order)."""
    steps = run.steps[metadata.GRAD_NORM]
    assert len(steps) > 0
    for stat, expected in reference.items():
        np.testing.assert_array_equal(run.steps[stat], steps)
        got = run.values[stat]
        want = expected[steps - steps_offset]
        np.testing.assert_allclose(got, want, rtol=rtol, err_msg=stat)
    np.testing.assert_array_equal(run.values[metadata.NONFINITE], 0)


def event_files(run_dir: str) -> list:
    return sorted(os.path.join(run_dir, name) for name in os.listdir(run_dir) if "tfevents" in name)
