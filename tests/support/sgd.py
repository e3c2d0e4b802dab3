"""Tiny Keras models trained with plain SGD, and the statistics their weight trajectory implies: exact numpy references.

Plain SGD applies `w_after = w_before - lr * g`, so the gradient applied at a
step is `(w_before - w_after) / lr`, recorded by Keras's own callbacks
independently of the code under test.
"""

from __future__ import annotations

import numpy as np

# Large, so w_before - w_after keeps many significant digits in float32.
LEARNING_RATE = 0.5
# Tolerance of every comparison with a numpy reference.
REL_TOL = 1e-4
N_FEATURES = 6
N_OUTPUTS = 3
BATCH = 8
SEED = 1
# The rows of `make_mlp`.
EXPECTED_LAYERS = ("first", "block/inner", "last")
# The statistics the weight trajectory gives a reference for.
REFERENCE_STATS = ("grad_norm", "grad_max_abs", "weight_norm", "update_ratio")


def make_data(n_samples: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Regression data: float32 `x [n, N_FEATURES]`, `y [n, N_OUTPUTS]`."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_samples, N_FEATURES)).astype("float32")
    y = rng.normal(size=(n_samples, N_OUTPUTS)).astype("float32")
    return x, y


def batches(x: np.ndarray, y: np.ndarray, batch: int = BATCH) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, len(x), batch)]


def make_mlp(name_prefix: str = ""):
    """Input -> Dense(8, tanh) -> nested Sequential(Dense(5, tanh)) -> Dense(3): three rows, one nested; same seed, same weights."""
    import keras

    keras.utils.set_random_seed(SEED)
    inputs = keras.Input((N_FEATURES,))
    hidden = keras.layers.Dense(8, activation="tanh", name=name_prefix + "first")(inputs)
    block = keras.Sequential([keras.layers.Dense(5, activation="tanh", name="inner")], name=name_prefix + "block")
    outputs = keras.layers.Dense(N_OUTPUTS, name=name_prefix + "last")(block(hidden))
    return keras.Model(inputs, outputs)


def base_and_head():
    """A transfer-learning model: a nested `base` (b1, b2, tanh) under a `head`; returns (model, base, head)."""
    import keras

    keras.utils.set_random_seed(4)
    inputs = keras.Input((N_FEATURES,))
    base = keras.Sequential(
        [keras.layers.Dense(8, activation="tanh", name="b1"), keras.layers.Dense(5, activation="tanh", name="b2")],
        name="base",
    )
    head = keras.layers.Dense(N_OUTPUTS, name="head")
    return keras.Model(inputs, head(base(inputs))), base, head


def mlp_losses(snapshots, x: np.ndarray, y: np.ndarray, batch: int = BATCH) -> np.ndarray:
    """Mean squared error of each batch of `make_mlp` under the weights before its step (float64 numpy).

    Step i uses snapshot i and batch i, as `weight_recorder` records them.
    """
    losses = []
    for step, weights in enumerate(snapshots[:-1]):
        xb, yb = x[step * batch : (step + 1) * batch], y[step * batch : (step + 1) * batch]
        hidden = np.tanh(xb @ weights[0] + weights[1])
        hidden = np.tanh(hidden @ weights[2] + weights[3])
        losses.append(np.mean((hidden @ weights[4] + weights[5] - yb) ** 2))
    return np.array(losses)


def weight_recorder(after_each_batch_only: bool = False):
    """A callback keeping the model's trainable weights at train begin and after every batch.

    With steps_per_execution=1 the i-th snapshot is the weights before step
    i. `after_each_batch_only` skips the one at train begin, for models that
    are built by their first step.
    """
    import keras

    class WeightRecorder(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.snapshots = []

        def _take(self):
            self.snapshots.append([np.array(v.numpy(), np.float64) for v in self.model.trainable_variables])

        def on_train_begin(self, logs=None):
            if not self.snapshots and not after_each_batch_only:
                self._take()

        def on_train_batch_end(self, batch, logs=None):
            self._take()

    return WeightRecorder()


def group_sizes(model) -> list[int]:
    """How many of `model.trainable_variables` belong to each row, in order (rows in structural order)."""
    from tb_gradhealth.capture.layers import group_by_layer

    return [len(group.variables) for group in group_by_layer(model)]


def reference_stats(snapshots, sizes, lr: float = LEARNING_RATE) -> dict[str, np.ndarray]:
    """Per step (snapshot i -> i+1) and row, the statistics plain SGD implies, in float64 numpy.

    Args:
      snapshots: lists of weights as `weight_recorder` keeps them.
      sizes: number of consecutive variables of each row (`group_sizes`).

    Returns:
      {stat: [n_steps, n_rows]} for `REFERENCE_STATS`.
    """
    out = {name: [] for name in REFERENCE_STATS}
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


def assert_matches_reference(run, reference: dict, steps_offset: int = 0, rtol: float = REL_TOL) -> None:
    """Every logged step's statistics equal the reference of that step (rows in the same order).

    Args:
      run: `events.read_run(...)`.
      reference: `reference_stats(...)`, row i for step `i + steps_offset`.
    """
    from tb_gradhealth import metadata

    steps = run.steps[metadata.GRAD_NORM]
    assert len(steps) > 0
    for stat, expected in reference.items():
        np.testing.assert_array_equal(run.steps[stat], steps)
        np.testing.assert_allclose(run.values[stat], expected[steps - steps_offset], rtol=rtol, err_msg=stat)
    np.testing.assert_array_equal(run.values[metadata.NONFINITE], 0)


def train_custom_loop(recorder, model, optimizer, x, y, n_steps: int, strategy=None, compile_step: bool = True):
    """Trains `n_steps` batches in a `tf.GradientTape` loop through `recorder.apply_gradients(..., loss=)`.

    Returns:
      The trainable weights before each step and after the last, as
      `weight_recorder` keeps them.
    """
    import tensorflow as tf

    def replica_step(xb, yb):
        with tf.GradientTape() as tape:
            squared = tf.reduce_mean(tf.square(model(xb, training=True) - yb), axis=-1)
            # Mean over the global batch, so the replicas' gradients (and
            # losses) sum to the full batch's: the usual custom-loop convention.
            loss = tf.nn.compute_average_loss(squared, global_batch_size=BATCH)
        grads = tape.gradient(loss, model.trainable_variables)
        recorder.apply_gradients(optimizer, grads, model.trainable_variables, loss=loss)

    def step(xb, yb):
        if strategy is None:
            replica_step(xb, yb)
        else:
            strategy.run(replica_step, args=(xb, yb))

    step = tf.function(step) if compile_step else step
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH)
    if strategy is not None:
        dataset = strategy.experimental_distribute_dataset(dataset)

    def snapshot():
        return [np.array(v.numpy(), np.float64) for v in model.trainable_variables]

    snapshots = []
    for _, (xb, yb) in zip(range(n_steps), dataset):
        snapshots.append(snapshot())
        step(xb, yb)
    snapshots.append(snapshot())
    return snapshots
