"""A zoo of real architectures trained a few steps with GradientHealthCallback, and an independent tf.GradientTape + numpy reference of every step.

Tiny inputs and few steps: each case costs a trace and a handful of steps.
`train` runs one case into a log directory; `reference` recomputes, for
every step, the gradient with `tf.GradientTape` at the weights before the
step and the statistics with numpy; `assert_matches` compares them with what
the callback wrote, and the rows with the forward order.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Iterator, Mapping
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from support import events
from tb_gradhealth import GradientHealthCallback, metadata

STEPS = 3
LEARNING_RATE = 0.05
REL_TOL = 1e-4
SEED = 7
N_CLASSES = 4


def _classifier_loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _images(shape):
    def data(n, seed):
        rng = np.random.default_rng(seed)
        return rng.normal(size=(n, *shape)).astype("float32"), rng.integers(0, N_CLASSES, n)

    return data


def _tokens(length, vocabulary):
    def data(n, seed):
        rng = np.random.default_rng(seed)
        return rng.integers(0, vocabulary, (n, length)), rng.integers(0, N_CLASSES, n)

    return data


def _functional_rows(model) -> list[str]:
    """Rows in Keras's own topological order of a functional model's layers (nested models and sub-layers flattened)."""
    rows = []

    def walk(layer, path):
        children = (
            list(layer.layers)
            if isinstance(layer, keras.Model)
            else list(layer._flatten_layers(include_self=False, recursive=False))
        )
        owned = {id(v) for child in children for v in child.trainable_weights}
        if any(id(v) not in owned for v in layer.trainable_weights) and path and path not in rows:
            rows.append(path)
        for child in children:
            if child.trainable_weights:
                walk(child, child.name if not path else path + "/" + child.name)

    walk(model, "")
    return rows


# ------------------------------------------------------------------- models


def mobilenet_v2():
    return keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=N_CLASSES, classifier_activation=None
    )


def residual_cnn():
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="stem")(inputs)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU()(x)
    for block in range(2):
        shortcut = x
        y = keras.layers.Conv2D(8, 3, padding="same", name="block%d_conv1" % block)(x)
        y = keras.layers.BatchNormalization(name="block%d_bn1" % block)(y)
        y = keras.layers.ReLU()(y)
        y = keras.layers.Conv2D(8, 3, padding="same", name="block%d_conv2" % block)(y)
        y = keras.layers.BatchNormalization(name="block%d_bn2" % block)(y)
        x = keras.layers.ReLU()(keras.layers.Add()([shortcut, y]))
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(N_CLASSES, name="head")(x), name="residual_cnn")


def embedding_lstm():
    inputs = keras.Input((10,), dtype="int32")
    x = keras.layers.Embedding(40, 8, name="embedding")(inputs)
    x = keras.layers.LSTM(8, name="lstm")(x)
    return keras.Model(inputs, keras.layers.Dense(N_CLASSES, name="head")(x), name="embedding_lstm")


def attention_block():
    inputs = keras.Input((8,), dtype="int32")
    x = keras.layers.Embedding(40, 16, name="embedding")(inputs)
    attended = keras.layers.MultiHeadAttention(2, 8, name="attention")(x, x)
    x = keras.layers.LayerNormalization(name="norm1")(keras.layers.Add()([x, attended]))
    fed = keras.layers.Dense(16, name="ff2")(keras.layers.Dense(32, activation="relu", name="ff1")(x))
    x = keras.layers.LayerNormalization(name="norm2")(keras.layers.Add()([x, fed]))
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, keras.layers.Dense(N_CLASSES, name="head")(x), name="attention_block")


class SubclassedWithTrainStep(keras.Model):
    """Nested sub-models, attributes created head first, and the custom train step of Keras's guide."""

    def __init__(self):
        super().__init__(name="subclassed")
        self.head = keras.layers.Dense(N_CLASSES, name="head")
        self.encoder = keras.Sequential(
            [
                keras.layers.Dense(12, activation="tanh", name="dense_a"),
                keras.layers.Dense(12, activation="tanh", name="dense_b"),
            ],
            name="encoder",
        )
        self.mixer = keras.Sequential([keras.layers.Dense(12, activation="relu", name="mix")], name="mixer")

    def call(self, inputs, training=False):
        return self.head(self.mixer(self.encoder(inputs)))

    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as tape:
            loss = self.compute_loss(x=x, y=y, y_pred=self(x, training=True))
        self.optimizer.apply(tape.gradient(loss, self.trainable_variables), self.trainable_variables)
        return {"loss": loss}


def subclassed_with_train_step():
    model = SubclassedWithTrainStep()
    model(np.zeros((1, 6), np.float32))
    return model


class FrozenAndShared(keras.Model):
    """A frozen layer and a layer used twice; built by its first step when called lazily."""

    def __init__(self):
        super().__init__(name="frozen_shared")
        self.frozen = keras.layers.Dense(6, activation="tanh", name="frozen")
        self.frozen.trainable = False
        self.entry = keras.layers.Dense(6, activation="tanh", name="entry")
        self.shared = keras.layers.Dense(6, activation="tanh", name="shared")
        self.head = keras.layers.Dense(N_CLASSES, name="head")

    def call(self, inputs, training=False):
        x = self.entry(self.frozen(inputs))
        return self.head(self.shared(self.shared(x)))


def frozen_and_shared_built():
    model = FrozenAndShared()
    model(np.zeros((1, 6), np.float32))
    return model


@dataclasses.dataclass(frozen=True)
class ZooCase:
    """One architecture: how to build it, its data and the rows its forward pass gives, input first."""

    name: str
    build: Callable
    data: Callable
    rows: Callable  # model -> expected row names
    batch: int = 4
    lazy: bool = False


CASES = {
    case.name: case
    for case in (
        ZooCase("mobilenet_v2", mobilenet_v2, _images((32, 32, 3)), _functional_rows),
        ZooCase("residual_cnn", residual_cnn, _images((16, 16, 3)), _functional_rows),
        ZooCase("embedding_lstm", embedding_lstm, _tokens(10, 40), _functional_rows),
        ZooCase("attention_block", attention_block, _tokens(8, 40), _functional_rows),
        ZooCase(
            "subclassed_train_step",
            subclassed_with_train_step,
            _images((6,)),
            lambda model: ["encoder/dense_a", "encoder/dense_b", "mixer/mix", "head"],
        ),
        ZooCase(
            "frozen_shared_built", frozen_and_shared_built, _images((6,)), lambda model: ["entry", "shared", "head"]
        ),
        ZooCase(
            "frozen_shared_lazy", FrozenAndShared, _images((6,)), lambda model: ["entry", "shared", "head"], lazy=True
        ),
    )
}


# ------------------------------------------------------------------ training


class _Trajectory(keras.callbacks.Callback):
    """Per execution: the trainable weights, the loss scale and the update count before it, and the weights after."""

    def __init__(self):
        super().__init__()
        self.before, self.after, self.scales, self.iterations = {}, {}, {}, {}
        self._batch = None

    def _weights(self):
        return [np.array(v.numpy()) for v in self.model.trainable_variables]

    def on_train_batch_begin(self, batch, logs=None):
        self._batch = batch
        if self.model.built:
            self.before[batch] = self._weights()
        optimizer = self.model.optimizer
        if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            scale = optimizer.dynamic_scale if optimizer.built else optimizer.initial_scale
            self.scales[batch] = float(np.asarray(scale))
        self.iterations[batch] = int(optimizer.iterations.numpy())

    def on_train_batch_end(self, batch, logs=None):
        self.after[self._batch] = (self._weights(), int(self.model.optimizer.iterations.numpy()))


@dataclasses.dataclass
class ZooRun:
    """A case trained with the callback: what the reference and other tests need."""

    case: ZooCase
    log_dir: pathlib.Path
    model: object
    batches: list
    trajectory: _Trajectory
    steps_per_execution: int
    mixed: bool
    jit_compile: bool

    @property
    def run_dir(self) -> pathlib.Path:
        return self.log_dir / "train"


def train(case: ZooCase, log_dir, *, jit_compile=False, steps_per_execution=1, mixed=False, steps=STEPS) -> ZooRun:
    """Trains `case` for `steps` batches with plain SGD and GradientHealthCallback into `log_dir`."""
    if mixed:
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        keras.utils.set_random_seed(SEED)
        model = case.build()
        model.compile(
            optimizer=keras.optimizers.SGD(LEARNING_RATE),
            loss=_classifier_loss(),
            jit_compile=jit_compile,
            steps_per_execution=steps_per_execution,
        )
        x, y = case.data(steps * case.batch, SEED)
        trajectory = _Trajectory()
        model.fit(
            x,
            y,
            batch_size=case.batch,
            shuffle=False,
            verbose=0,
            callbacks=[GradientHealthCallback(str(log_dir), update_freq=1), trajectory],
        )
    finally:
        keras.mixed_precision.set_global_policy("float32")
    batches = [(x[i : i + case.batch], y[i : i + case.batch]) for i in range(0, len(x), case.batch)]
    return ZooRun(case, pathlib.Path(log_dir), model, batches, trajectory, steps_per_execution, mixed, jit_compile)


# ----------------------------------------------------------------- reference


def _rows_and_variables(model) -> list[tuple[str, list]]:
    from tb_gradhealth.capture.layers import group_by_layer

    return [(group.name, list(group.variables)) for group in group_by_layer(model)]


def reference(run: ZooRun) -> tuple[list[int], dict[str, dict[str, np.ndarray]]]:
    """Recomputes every applied step: (its step numbers, {row name: {stat: [n_steps]}}, plus `loss`).

    The gradient of step k is `tf.GradientTape`'s, with the model's weights
    set to those before the step (recorded per execution; inside an
    execution of several steps, carried forward by the SGD update the
    reference computes itself); under mixed precision the loss is scaled by
    the step's loss scale and the gradient unscaled, as Keras does, and a
    step whose scaled gradient overflowed is no step. The statistics are
    numpy's, in float64.
    """
    model, trajectory = run.model, run.trajectory
    variables = list(model.trainable_variables)
    index = {id(v): i for i, v in enumerate(variables)}
    rows = [(name, [index[id(v)] for v in group]) for name, group in _rows_and_variables(model)]
    loss_fn = _classifier_loss()

    # A graph, as Keras's train step is, so both run the same kernels.
    @tf.function(jit_compile=run.jit_compile)
    def gradient(xb, yb, scale):
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=True))
            scaled = loss * scale
        return loss, [tf.convert_to_tensor(g) for g in tape.gradient(scaled, variables)]

    stats = {name: {stat: [] for stat in metadata.BUILTIN_STATS} for name, _ in rows}
    losses, steps = [], []
    weights = None
    spe = run.steps_per_execution
    for k, (xb, yb) in enumerate(run.batches):
        execution = (k // spe) * spe
        if k == execution:
            if execution not in trajectory.before:
                # Built by its first step: the weights before it are unknown.
                weights = None
                continue
            weights = trajectory.before[execution]
        if weights is None:
            continue
        for variable, value in zip(variables, weights):
            variable.assign(value)
        scale = trajectory.scales.get(k, 1.0)
        loss, grads = gradient(tf.constant(xb), tf.constant(yb), tf.constant(scale, tf.float32))
        grads = [np.array(g, np.float64) / scale for g in grads]
        if spe == 1 and trajectory.after[k][1] == trajectory.iterations[k]:
            continue  # the loss-scale optimizer skipped it: no step
        if k + 1 == min(execution + spe, len(run.batches)):
            after, _ = trajectory.after[execution]
        else:
            after = [np.array(w - LEARNING_RATE * g.astype(w.dtype)) for w, g in zip(weights, grads)]
        # A step is numbered by the optimizer's update count before it.
        steps.append(trajectory.iterations[execution] + (k - execution))
        losses.append(float(loss))
        for name, members in rows:
            g = np.concatenate([grads[i].ravel() for i in members])
            before = np.concatenate([np.asarray(weights[i], np.float64).ravel() for i in members])
            moved = np.concatenate([np.asarray(after[i], np.float64).ravel() for i in members]) - before
            row = stats[name]
            row[metadata.GRAD_NORM].append(np.linalg.norm(g))
            row[metadata.GRAD_NORM_MAX].append(np.linalg.norm(g))
            row[metadata.GRAD_MAX_ABS].append(np.abs(g).max())
            row[metadata.NONFINITE].append(0.0)
            row[metadata.WEIGHT_NORM].append(np.linalg.norm(before))
            row[metadata.UPDATE_RATIO].append(np.linalg.norm(moved) / np.linalg.norm(before))
        weights = after
    result = {name: {stat: np.array(values) for stat, values in row.items()} for name, row in stats.items()}
    result[metadata.LOSS] = np.array(losses)
    return steps, result


def assert_matches(run: ZooRun, rel_tol: float = REL_TOL) -> dict[str, float]:
    """What the callback wrote equals the reference at every step it computed; rows in forward order.

    Returns:
      The largest relative error per statistic (for the record).
    """
    written = events.read_run(run.run_dir)
    assert list(written.layers) == run.case.rows(run.model), run.case.name
    steps, expected = reference(run)
    assert len(steps) >= 2, "%s: too few steps to compare" % run.case.name
    errors = {}
    for stat in metadata.BUILTIN_STATS:
        rows_at = np.searchsorted(written.steps[stat], steps)
        np.testing.assert_array_equal(written.steps[stat][rows_at], steps, err_msg="%s %s" % (run.case.name, stat))
        got = written.values[stat][rows_at]
        want = np.stack([expected[name][stat] for name in written.layers], axis=1)
        if stat == metadata.NONFINITE:
            np.testing.assert_array_equal(got, want, err_msg=run.case.name)
            continue
        np.testing.assert_allclose(got, want, rtol=rel_tol, err_msg="%s %s" % (run.case.name, stat))
        errors[stat] = float(np.max(np.abs(got - want) / np.maximum(np.abs(want), 1e-30)))
    loss_at = np.searchsorted(written.steps[metadata.LOSS], steps)
    np.testing.assert_allclose(
        written.values[metadata.LOSS][loss_at, 0], expected[metadata.LOSS], rtol=rel_tol, err_msg=run.case.name
    )
    return errors


class TrainedZoo(Mapping):
    """{case name: ZooRun} of every case trained plainly into `root/<name>`, each trained when first asked for."""

    def __init__(self, root):
        self._root = pathlib.Path(root)
        self._runs: dict[str, ZooRun] = {}

    def __getitem__(self, name: str) -> ZooRun:
        if name not in self._runs:
            self._runs[name] = train(CASES[name], self._root / name)
        return self._runs[name]

    def __iter__(self) -> Iterator[str]:
        return iter(CASES)

    def __len__(self) -> int:
        return len(CASES)
