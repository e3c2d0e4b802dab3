"""The diagnosis's calibration zoo: small real models of several families, healthy and broken, with generated data."""

from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Callable

import numpy as np

# Keras (and TensorFlow) are imported inside the builders, so that importing
# this module (e.g. while collecting tests for `make test-fast`) stays quick.

SEED = 0
BATCH = 32  # Keras's default batch size, as in the notebook
N_CLASSES = 10
IMAGE_SHAPE = (28, 28)  # the notebook's MNIST-shaped inputs, for the MLPs
SMALL_IMAGE_SHAPE = (16, 16, 1)  # for the convolutional models (2 shared cores)
BLOB_FEATURES = 20
VOCAB = 32  # tokens of the generated sequences
SEQUENCE_LENGTH = 16
SIGNAL_FEATURES = 4  # per time step of the generated signals
SIGNAL_LENGTH = 40
SIGNAL_SCALE = 0.1  # small inputs: a ReLU RNN's state stays moderate at the start

# Runs that must show health over time are longer, those whose problem shows
# within the first steps short.
LONG_STEPS = 200
SHORT_STEPS = 48
# At a coarser update_freq a case trains for more epochs, so that the rules
# still see this many logged steps.
MIN_LOGGED_STEPS = 16

HEALTHY = "healthy"


# --- generated data -----------------------------------------------------------


def _one_hot(labels: np.ndarray) -> np.ndarray:
    return np.eye(N_CLASSES, dtype="float32")[labels]


def image_data(n: int, shape=IMAGE_SHAPE, scale: float = 1.0):
    """Images of per-class sparse prototypes in [0, 1] plus noise, one-hot labels (times `scale`)."""
    rng = np.random.default_rng(SEED)
    prototypes = rng.random((N_CLASSES, *shape)) < 0.2
    labels = rng.integers(0, N_CLASSES, n)
    brightness = rng.uniform(0.5, 1.0, (n, *shape))
    images = np.clip(prototypes[labels] * brightness + rng.normal(0, 0.15, (n, *shape)), 0, 1)
    return (images * scale).astype("float32"), _one_hot(labels) * scale


def small_image_data(n: int):
    return image_data(n, shape=SMALL_IMAGE_SHAPE)


def blob_data(n: int):
    """Well separated Gaussian blobs: an MLP fits them to almost zero loss."""
    rng = np.random.default_rng(SEED)
    centers = rng.normal(0, 3, (N_CLASSES, BLOB_FEATURES))
    labels = rng.integers(0, N_CLASSES, n)
    x = centers[labels] + rng.normal(0, 1, (n, BLOB_FEATURES))
    return x.astype("float32"), _one_hot(labels)


def regression_data(n: int):
    rng = np.random.default_rng(SEED + 1)
    x = rng.normal(size=(n, BLOB_FEATURES)).astype("float32")
    return x, (x @ rng.normal(size=(BLOB_FEATURES, 1))).astype("float32")


def token_data(n: int):
    """Token sequences whose class sets which tokens are frequent (a bag of words decides it)."""
    rng = np.random.default_rng(SEED)
    preferences = rng.dirichlet(np.full(VOCAB, 0.3), N_CLASSES)
    labels = rng.integers(0, N_CLASSES, n)
    cumulative = np.cumsum(preferences[labels], axis=1)
    draws = rng.random((n, SEQUENCE_LENGTH, 1))
    tokens = np.minimum((draws > cumulative[:, None, :]).sum(axis=2), VOCAB - 1)
    return tokens.astype("int32"), _one_hot(labels)


def signal_data(n: int):
    """Noisy signals whose class sets a per-feature offset, seen through every time step."""
    rng = np.random.default_rng(SEED)
    offsets = rng.normal(0, 1, (N_CLASSES, SIGNAL_FEATURES))
    labels = rng.integers(0, N_CLASSES, n)
    x = offsets[labels][:, None, :] + rng.normal(0, 1, (n, SIGNAL_LENGTH, SIGNAL_FEATURES))
    return (x * SIGNAL_SCALE).astype("float32"), _one_hot(labels)


# --- models ---------------------------------------------------------------------


def mlp(input_shape, *layers):
    """Flatten, then `layers` (from `dense`) named hidden_1, hidden_2, ... and output, as the demo names them."""
    import keras

    names = ["hidden_%d" % (index + 1) for index in range(len(layers) - 1)] + ["output"]
    return keras.Sequential(
        [keras.Input(input_shape), keras.layers.Flatten(), *(layer(name) for layer, name in zip(layers, names))]
    )


def dense(units, activation=None, **kwargs):
    """A Dense layer for `mlp`, which names it."""

    def build(name):
        import keras

        return keras.layers.Dense(units, activation=activation, name=name, **kwargs)

    return build


def transformer(blocks: int = 2, width: int = 32):
    """Embedding, `blocks` x (self-attention + residual + LayerNorm, feed-forward + residual + LayerNorm), Dense."""
    import keras

    layers = keras.layers
    tokens = keras.Input((SEQUENCE_LENGTH,), dtype="int32")
    x = layers.Embedding(VOCAB, width, name="embedding")(tokens)
    for block in range(blocks):
        attended = layers.MultiHeadAttention(2, width // 2, name="attn%d" % block)(x, x)
        x = layers.LayerNormalization(name="norm%d_attn" % block)(layers.Add()([x, attended]))
        hidden = layers.Dense(2 * width, activation="relu", name="ffn%d_in" % block)(x)
        hidden = layers.Dense(width, name="ffn%d_out" % block)(hidden)
        x = layers.LayerNormalization(name="norm%d_ffn" % block)(layers.Add()([x, hidden]))
    x = layers.GlobalAveragePooling1D()(x)
    return keras.Model(tokens, layers.Dense(N_CLASSES, activation="softmax", name="output")(x))


def residual_cnn(blocks: int = 2, filters: int = 8):
    """Conv stem, `blocks` x (Conv-BN-ReLU-Conv-BN + skip, ReLU), global pooling, Dense."""
    import keras

    layers = keras.layers

    def conv_bn(x, name):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=name)(x)
        return layers.BatchNormalization(name=name + "_bn")(x)

    images = keras.Input(SMALL_IMAGE_SHAPE)
    x = layers.ReLU()(conv_bn(images, "stem"))
    for block in range(blocks):
        y = layers.ReLU()(conv_bn(x, "block%d_a" % block))
        y = conv_bn(y, "block%d_b" % block)
        x = layers.ReLU()(layers.Add()([x, y]))
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(images, layers.Dense(N_CLASSES, activation="softmax", name="output")(x))


def depthwise_cnn(blocks: int = 2, filters: int = 16):
    """Conv stem, `blocks` x (depthwise 3x3-BN-ReLU, pointwise 1x1-BN-ReLU), global pooling, Dense."""
    import keras

    layers = keras.layers
    images = keras.Input(SMALL_IMAGE_SHAPE)
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name="stem")(images)
    x = layers.ReLU()(layers.BatchNormalization(name="stem_bn")(x))
    for block in range(blocks):
        x = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="block%d_depthwise" % block)(x)
        x = layers.ReLU()(layers.BatchNormalization(name="block%d_depthwise_bn" % block)(x))
        x = layers.Conv2D(filters, 1, use_bias=False, name="block%d_pointwise" % block)(x)
        x = layers.ReLU()(layers.BatchNormalization(name="block%d_pointwise_bn" % block)(x))
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(images, layers.Dense(N_CLASSES, activation="softmax", name="output")(x))


def sigmoid_cnn(depth: int = 8, filters: int = 8):
    """`depth` x Conv2D(sigmoid), Flatten, Dense: a CNN without normalisation or skips."""
    import keras

    layers = keras.layers
    return keras.Sequential(
        [keras.Input(SMALL_IMAGE_SHAPE)]
        + [
            layers.Conv2D(filters, 3, padding="same", activation="sigmoid", name="conv_%d" % (index + 1))
            for index in range(depth)
        ]
        + [layers.Flatten(), layers.Dense(N_CLASSES, activation="softmax", name="output")]
    )


def token_rnn(cell: str, units: int = 32):
    """Embedding, an LSTM or GRU, Dense."""
    import keras

    layers = keras.layers
    recurrent = {"lstm": layers.LSTM, "gru": layers.GRU}[cell]
    return keras.Sequential(
        [
            keras.Input((SEQUENCE_LENGTH,), dtype="int32"),
            layers.Embedding(VOCAB, 16, name="embedding"),
            recurrent(units, name=cell),
            layers.Dense(N_CLASSES, activation="softmax", name="output"),
        ]
    )


def relu_rnn(units: int = 32, gain: float = 1.0):
    """A SimpleRNN with ReLU units and identity recurrent weights (times `gain`), then Dense."""
    import keras

    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input((SIGNAL_LENGTH, SIGNAL_FEATURES)),
            layers.SimpleRNN(
                units,
                activation="relu",
                recurrent_initializer=keras.initializers.Identity(gain),
                name="rnn",
            ),
            layers.Dense(N_CLASSES, activation="softmax", name="output"),
        ]
    )


# --- optimisers -------------------------------------------------------------------


def sgd(learning_rate, **kwargs):
    def build():
        import keras

        return keras.optimizers.SGD(learning_rate, **kwargs)

    return build


def adam(learning_rate, **kwargs):
    def build():
        import keras

        return keras.optimizers.Adam(learning_rate, **kwargs)

    return build


def rmsprop(learning_rate, **kwargs):
    def build():
        import keras

        return keras.optimizers.RMSprop(learning_rate, **kwargs)

    return build


# --- the zoo ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    """A model, its data and optimiser, and the diagnosis it must get.

    Attributes:
      family: the architecture family (mlp, transformer, cnn, rnn).
      build: returns the (unbuilt or built) Keras model.
      data: n -> (x, y).
      optimizer: returns the optimiser.
      loss: Keras loss name.
      steps: optimizer updates (one epoch of `steps` batches).
      kinds: the kinds of every finding, most severe first (() for healthy).
    """

    family: str
    build: Callable
    data: Callable
    optimizer: Callable
    loss: str
    steps: int
    kinds: tuple[str, ...]

    @property
    def verdict(self) -> str:
        return self.kinds[0] if self.kinds else HEALTHY


CROSSENTROPY = "categorical_crossentropy"

CASES = {
    # The notebook's baseline: Flatten, Dense(128, sigmoid), Dense(10, softmax), SGD.
    "healthy_mlp_sigmoid": Case(
        "mlp",
        lambda: mlp(IMAGE_SHAPE, dense(128, "sigmoid"), dense(N_CLASSES, "softmax")),
        image_data,
        sgd(0.01),
        CROSSENTROPY,
        LONG_STEPS,
        (),
    ),
    # Adam drives the loss to ~0: gradient norms shrink by orders of magnitude.
    "healthy_mlp_relu_adam": Case(
        "mlp",
        lambda: mlp(IMAGE_SHAPE, dense(64, "relu"), dense(32, "relu"), dense(N_CLASSES, "softmax")),
        image_data,
        adam(1e-3),
        CROSSENTROPY,
        LONG_STEPS,
        (),
    ),
    # Converges on easy data: norms shrink and updates become small.
    "healthy_mlp_converging_momentum": Case(
        "mlp",
        lambda: mlp((BLOB_FEATURES,), dense(32, "relu"), dense(32, "relu"), dense(N_CLASSES, "softmax")),
        blob_data,
        sgd(0.05, momentum=0.9),
        CROSSENTROPY,
        LONG_STEPS,
        (),
    ),
    "healthy_transformer_adam": Case("transformer", transformer, token_data, adam(1e-3), CROSSENTROPY, LONG_STEPS, ()),
    "healthy_residual_cnn_batchnorm": Case(
        "cnn", residual_cnn, small_image_data, sgd(0.05, momentum=0.9), CROSSENTROPY, LONG_STEPS, ()
    ),
    "healthy_depthwise_cnn_adam": Case(
        "cnn", depthwise_cnn, small_image_data, adam(1e-3), CROSSENTROPY, LONG_STEPS, ()
    ),
    "healthy_lstm_adam": Case("rnn", lambda: token_rnn("lstm"), token_data, adam(1e-3), CROSSENTROPY, LONG_STEPS, ()),
    "healthy_gru_rmsprop": Case(
        "rnn", lambda: token_rnn("gru"), token_data, rmsprop(1e-3), CROSSENTROPY, LONG_STEPS, ()
    ),
    "vanishing_deep_sigmoid_mlp": Case(
        "mlp",
        lambda: mlp(IMAGE_SHAPE, *[dense(32, "sigmoid") for _ in range(10)], dense(N_CLASSES, "softmax")),
        image_data,
        sgd(0.1),
        CROSSENTROPY,
        SHORT_STEPS,
        ("vanishing",),
    ),
    "vanishing_deep_sigmoid_cnn": Case(
        "cnn", sigmoid_cnn, small_image_data, sgd(0.1), CROSSENTROPY, SHORT_STEPS, ("vanishing",)
    ),
    "vanishing_learning_rate_too_low": Case(
        "mlp",
        lambda: mlp(IMAGE_SHAPE, dense(64, "relu"), dense(N_CLASSES, "softmax")),
        image_data,
        sgd(1e-5),
        CROSSENTROPY,
        SHORT_STEPS,
        ("vanishing",),
    ),
    "nonfinite_transformer_too_hot": Case(
        "transformer", transformer, token_data, sgd(3.0), CROSSENTROPY, SHORT_STEPS, ("nonfinite", "exploding")
    ),
    # A ReLU RNN over 40 time steps: training pushes its recurrent weights
    # past a spectral radius of 1 and the gradient grows until it overflows.
    "nonfinite_relu_rnn": Case(
        "rnn", lambda: relu_rnn(gain=0.8), signal_data, sgd(0.1), CROSSENTROPY, SHORT_STEPS, ("nonfinite", "exploding")
    ),
    # The same with gradient clipping: the weights stay finite, the gradient
    # (recorded before clipping) still spikes by orders of magnitude.
    "exploding_relu_rnn_clipped": Case(
        "rnn",
        lambda: relu_rnn(gain=0.8),
        signal_data,
        sgd(0.3, clipnorm=1.0),
        CROSSENTROPY,
        SHORT_STEPS,
        ("exploding",),
    ),
    # Plain SGD far above the stable step size for this regression.
    "nonfinite_learning_rate_too_high": Case(
        "mlp",
        lambda: mlp((BLOB_FEATURES,), dense(32, "relu"), dense(32, "relu"), dense(1)),
        regression_data,
        sgd(0.3),
        "mean_squared_error",
        SHORT_STEPS,
        ("nonfinite", "exploding"),
    ),
    # The notebook's "exploding" model: ReLU MLP on x*10 and y*10.
    "nonfinite_notebook_relu_10x": Case(
        "mlp",
        lambda: mlp(
            IMAGE_SHAPE,
            *[dense(5, "relu", kernel_initializer="he_uniform") for _ in range(5)],
            dense(N_CLASSES, "softmax"),
        ),
        lambda n: image_data(n, scale=10.0),
        sgd(0.01),
        CROSSENTROPY,
        SHORT_STEPS,
        ("nonfinite", "exploding"),
    ),
    # The second hidden layer's ReLUs never activate: no gradient reaches it
    # or the layer before it.
    "dead_relu_layer": Case(
        "mlp",
        lambda: mlp(
            IMAGE_SHAPE,
            dense(32, "relu"),
            dense(32, "relu", bias_initializer=_constant(-100.0)),
            dense(32, "relu"),
            dense(N_CLASSES, "softmax"),
        ),
        image_data,
        sgd(0.05),
        CROSSENTROPY,
        SHORT_STEPS,
        ("dead",),
    ),
}


def _constant(value):
    import keras

    return keras.initializers.Constant(value)


def default_update_freq() -> int:
    """The callback's default `update_freq`, read from its signature."""
    from tb_gradhealth import GradientHealthCallback

    return inspect.signature(GradientHealthCallback).parameters["update_freq"].default


def update_freqs() -> tuple[int, ...]:
    """Every case is checked when each step is logged and at the callback's default (once if they are equal)."""
    return tuple(sorted({1, default_update_freq()}))


def run_name(name: str, update_freq: int) -> str:
    """The run (relative to the zoo's logdir) that `train_case` writes."""
    return "%s/freq%d/train" % (name, update_freq)


def epochs(name: str, update_freq: int) -> int:
    """Epochs `train_case` trains for: one, or enough for `MIN_LOGGED_STEPS` logged steps.

    More epochs over the same data (not more data) keep the first epoch's
    trajectory the same at every `update_freq`.
    """
    return max(1, math.ceil(MIN_LOGGED_STEPS * update_freq / CASES[name].steps))


def train_case(name: str, logdir: str, update_freq: int, callbacks=()) -> str:
    """Trains one case with `GradientHealthCallback` into `logdir`; returns its run name (see `run_name`)."""
    import keras

    from tb_gradhealth import GradientHealthCallback

    case = CASES[name]
    keras.utils.set_random_seed(SEED)
    x, y = case.data(case.steps * BATCH)
    model = case.build()
    model.compile(optimizer=case.optimizer(), loss=case.loss)
    run = run_name(name, update_freq)
    callback = GradientHealthCallback("%s/%s" % (logdir, run.rsplit("/", 1)[0]), update_freq=update_freq)
    model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=epochs(name, update_freq),
        shuffle=True,
        verbose=0,
        callbacks=[callback, *callbacks],
    )
    return run


# --- measurements -------------------------------------------------------------------


def _column_median(values: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        return np.array(
            [np.median(column[np.isfinite(column)]) if np.isfinite(column).any() else np.nan for column in values.T]
        )


def first_nonfinite(series) -> tuple[int | None, tuple[str, ...]]:
    """(first logged step with a NaN/Inf gradient element, its layers), from the `nonfinite` counts."""
    counts = series["nonfinite"]
    bad = (counts.values > 0) | np.isnan(counts.values)
    if not bad.any():
        return None, ()
    row = int(np.argmax(bad.any(axis=1)))
    return int(counts.steps[row]), tuple(name for name, is_bad in zip(counts.layers, bad[row]) if is_bad)


def healthy_part(series) -> dict:
    """The series cut after the first non-finite step (the whole run when there is none)."""
    step, _ = first_nonfinite(series)
    if step is None:
        return dict(series)
    cut = {}
    for stat, stat_series in series.items():
        keep = stat_series.steps <= step
        cut[stat] = dataclasses.replace(
            stat_series,
            steps=stat_series.steps[keep],
            wall_times=stat_series.wall_times[keep],
            values=stat_series.values[keep],
            recorded=None if stat_series.recorded is None else stat_series.recorded[keep],
        )
    return cut


def depth_ratios(series) -> tuple[np.ndarray, np.ndarray]:
    """Per layer, the median over steps of (relative gradient, largest element) over the output layer's."""
    grad, weight, max_abs = (series[stat].values for stat in ("grad_norm", "weight_norm", "grad_max_abs"))
    with np.errstate(all="ignore"):
        relative = grad / weight
        return _column_median(relative / relative[:, -1:]), _column_median(max_abs / max_abs[:, -1:])


def model_norm_growth(series) -> tuple[np.ndarray, np.ndarray]:
    """(steps, model gradient norm of `grad_norm_max` over its smallest of the first 3 steps), finite rows only."""
    values = series["grad_norm_max"].values
    keep = ~np.isnan(values).any(axis=1)
    with np.errstate(over="ignore"):
        norms = np.sqrt(np.square(values[keep]).sum(axis=1))
    return series["grad_norm_max"].steps[keep], norms / norms[:3].min()


@dataclasses.dataclass(frozen=True)
class Measured:
    """The numbers of one calibration run that the calibration table shows (numpy on its series)."""

    smallest_layer: str  # the non-output layer with the smallest gradient for its size
    smallest_ratio: float  # its relative gradient over the output layer's (median)
    smallest_max_abs_ratio: float  # its largest element over the output layer's (median)
    smallest_update_ratio: float  # the smallest median update ratio of any layer
    largest_growth: float  # the model's largest gradient norm over its start (finite steps)
    largest_zero_fraction: float  # the largest fraction of steps with an exactly-zero gradient
    first_nonfinite_step: int | None
    loss_start: float | None  # median of the first quarter of steps, when the run has its loss
    loss_end: float | None


def measure(series) -> Measured:
    """Measures a run's series on their healthy part (before NaN), as the rules judge them."""
    first_bad, _ = first_nonfinite(series)
    part = healthy_part(series)
    relative, max_abs = depth_ratios(part)
    layers = part["grad_norm"].layers
    worst = int(np.nanargmin(np.fmax(relative, max_abs)[:-1])) if len(layers) > 1 else 0
    _, growth = model_norm_growth(part)
    norm_max = part["grad_norm_max"].values
    finite = np.isfinite(norm_max)
    zero_fraction = ((norm_max == 0) & finite).sum(axis=0) / np.maximum(finite.sum(axis=0), 1)
    loss_start = loss_end = None
    if "loss" in part:
        loss = part["loss"].values[:, 0]
        loss = loss[np.isfinite(loss)]
        quarter = max(1, len(loss) // 4)
        loss_start, loss_end = float(np.median(loss[:quarter])), float(np.median(loss[-quarter:]))
    return Measured(
        smallest_layer=layers[worst],
        smallest_ratio=float(relative[worst]),
        smallest_max_abs_ratio=float(max_abs[worst]),
        smallest_update_ratio=float(np.nanmin(_column_median(part["update_ratio"].values))),
        largest_growth=float(np.max(growth)),
        largest_zero_fraction=float(zero_fraction.max()),
        first_nonfinite_step=first_bad,
        loss_start=loss_start,
        loss_end=loss_end,
    )


def table_row(name: str, series, diagnosis) -> str:
    """One markdown row of the calibration table in docs/diagnosis.md."""
    case = CASES[name]
    m = measure(series)
    loss = "-" if m.loss_start is None else "%.2g -> %.2g" % (m.loss_start, m.loss_end)
    verdict = "; ".join(
        "%s %s (step %d, %s)"
        % (f.kind, f.severity, f.first_step, ", ".join(f.layers) if len(f.layers) <= 3 else "%d layers" % len(f.layers))
        for f in diagnosis.findings
    )
    return "| %s | %s | %d | %s: %.2g (%.2g) | %.2g | %.3gx | %.0f%% | %s | %s | %s |" % (
        name,
        case.family,
        len(series["grad_norm"].layers),
        m.smallest_layer,
        m.smallest_ratio,
        m.smallest_max_abs_ratio,
        m.smallest_update_ratio,
        m.largest_growth,
        100 * m.largest_zero_fraction,
        "-" if m.first_nonfinite_step is None else m.first_nonfinite_step,
        loss,
        verdict or "healthy",
    )


def main() -> None:
    """Trains every case at update_freq=1 and prints the calibration table's rows."""
    import tempfile

    from tb_gradhealth import cli, reader
    from tb_gradhealth.diagnosis import diagnose

    with tempfile.TemporaryDirectory() as logdir:
        runs = {name: train_case(name, logdir, 1) for name in CASES}
        provider, ctx, experiment_id = cli.provider_for_logdir(logdir)
        for name, run in runs.items():
            series = reader.read_run(provider, ctx, experiment_id, run)
            print(table_row(name, series, diagnose(series)))


if __name__ == "__main__":
    main()
