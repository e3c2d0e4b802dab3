"""The models the capture benchmarks train: the notebook's MLP, a big MLP and three realistic workloads (CNN, transformer, LSTM)."""

from __future__ import annotations

import dataclasses
from typing import Callable

import keras
import numpy as np

from demo import models as demo_models

SEED = 1234
NUM_CLASSES = 10

# The MLPs take MNIST-shaped images, as the notebook does.
IMAGE_SHAPE = (28, 28)
BIG_WIDTH = 1024
BIG_DEPTH = 8

# The realistic workloads are sized so that one step takes 10-100 ms on a
# 2-core CPU: small enough to repeat, big enough that the model's own work
# dominates TensorFlow's fixed cost per op, as it does in real training.
CNN_IMAGE_SHAPE = (32, 32, 3)
CNN_WIDTHS = (16, 32, 64)  # channels of the three residual stages
SEQUENCE_LENGTH = 64
VOCABULARY = 2000
TRANSFORMER_WIDTH = 64
TRANSFORMER_HEADS = 4
TRANSFORMER_BLOCKS = 2
TRANSFORMER_FEED_FORWARD = 128
LSTM_UNITS = 96


@dataclasses.dataclass(frozen=True)
class Workload:
    """A model to train, its batch size, its data and how it is compiled."""

    name: str
    build: Callable[[], keras.Model]
    batch_size: int
    data: Callable[[int, int], tuple[np.ndarray, np.ndarray]]  # (steps, seed) -> (x, y)
    optimizer: Callable[[], keras.optimizers.Optimizer]
    loss: str
    default_steps: int


def mnist_like(steps: int, seed: int, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """MNIST-shaped inputs in [0, 1) and one-hot targets."""
    rng = np.random.default_rng(seed)
    x = rng.random((steps * batch_size, *IMAGE_SHAPE), dtype=np.float32)
    y = keras.utils.to_categorical(rng.integers(0, NUM_CLASSES, steps * batch_size), NUM_CLASSES).astype(np.float32)
    return x, y


def big_mlp() -> keras.Model:
    """Flatten -> 8 x Dense(1024, relu) -> Dense(10, softmax)."""
    layers = [keras.Input(shape=IMAGE_SHAPE), keras.layers.Flatten(name="flatten")]
    for index in range(BIG_DEPTH):
        layers.append(keras.layers.Dense(BIG_WIDTH, activation="relu", name="hidden_%d" % (index + 1)))
    layers.append(keras.layers.Dense(NUM_CLASSES, activation="softmax", name="output"))
    return keras.Sequential(layers, name="big_mlp")


def residual_cnn() -> keras.Model:
    """A ResNet-style CNN: a stem, three stages of one residual block with BatchNormalization, pooling, a classifier."""
    inputs = keras.Input(CNN_IMAGE_SHAPE)
    # A strided stem, as ResNets have, keeps the step short on a CPU.
    x = keras.layers.Conv2D(CNN_WIDTHS[0], 3, strides=2, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU()(x)
    for stage, width in enumerate(CNN_WIDTHS):
        stride = 1 if stage == 0 else 2
        prefix = "stage%d_" % (stage + 1)
        shortcut = x
        y = keras.layers.Conv2D(width, 3, strides=stride, padding="same", use_bias=False, name=prefix + "conv1")(x)
        y = keras.layers.BatchNormalization(name=prefix + "bn1")(y)
        y = keras.layers.ReLU()(y)
        y = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name=prefix + "conv2")(y)
        y = keras.layers.BatchNormalization(name=prefix + "bn2")(y)
        if stride != 1 or shortcut.shape[-1] != width:
            shortcut = keras.layers.Conv2D(width, 1, strides=stride, use_bias=False, name=prefix + "proj")(shortcut)
            shortcut = keras.layers.BatchNormalization(name=prefix + "proj_bn")(shortcut)
        x = keras.layers.ReLU()(keras.layers.Add()([y, shortcut]))
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(NUM_CLASSES, name="classifier")(x)
    return keras.Model(inputs, outputs, name="residual_cnn")


def images(steps: int, seed: int, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(steps * batch_size, *CNN_IMAGE_SHAPE)).astype(np.float32)
    return x, rng.integers(0, NUM_CLASSES, steps * batch_size).astype(np.int32)


class _PositionEmbedding(keras.layers.Layer):
    """Token plus learned position embeddings."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.tokens = keras.layers.Embedding(VOCABULARY, TRANSFORMER_WIDTH, name="tokens")
        self.positions = keras.layers.Embedding(SEQUENCE_LENGTH, TRANSFORMER_WIDTH, name="positions")

    def call(self, inputs):
        positions = keras.ops.arange(keras.ops.shape(inputs)[-1])
        return self.tokens(inputs) + self.positions(positions)


def transformer() -> keras.Model:
    """A small transformer encoder classifier: embeddings, pre-norm attention and feed-forward blocks, pooling."""
    inputs = keras.Input((SEQUENCE_LENGTH,), dtype="int32")
    x = _PositionEmbedding(name="embedding")(inputs)
    for block in range(TRANSFORMER_BLOCKS):
        prefix = "block%d_" % (block + 1)
        h = keras.layers.LayerNormalization(name=prefix + "ln1")(x)
        h = keras.layers.MultiHeadAttention(
            TRANSFORMER_HEADS, TRANSFORMER_WIDTH // TRANSFORMER_HEADS, name=prefix + "attention"
        )(h, h)
        x = keras.layers.Add()([x, h])
        h = keras.layers.LayerNormalization(name=prefix + "ln2")(x)
        h = keras.layers.Dense(TRANSFORMER_FEED_FORWARD, activation="gelu", name=prefix + "ff1")(h)
        h = keras.layers.Dense(TRANSFORMER_WIDTH, name=prefix + "ff2")(h)
        x = keras.layers.Add()([x, h])
    x = keras.layers.LayerNormalization(name="final_ln")(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    outputs = keras.layers.Dense(NUM_CLASSES, name="classifier")(x)
    return keras.Model(inputs, outputs, name="transformer")


def lstm() -> keras.Model:
    """Embedding -> LSTM -> Dense: a text classifier."""
    return keras.Sequential(
        [
            keras.Input((SEQUENCE_LENGTH,), dtype="int32"),
            keras.layers.Embedding(VOCABULARY, TRANSFORMER_WIDTH, name="embedding"),
            keras.layers.LSTM(LSTM_UNITS, name="lstm"),
            keras.layers.Dense(NUM_CLASSES, name="classifier"),
        ],
        name="lstm",
    )


def tokens(steps: int, seed: int, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, VOCABULARY, size=(steps * batch_size, SEQUENCE_LENGTH)).astype(np.int32)
    return x, rng.integers(0, NUM_CLASSES, steps * batch_size).astype(np.int32)


WORKLOADS = {
    workload.name: workload
    for workload in (
        # The notebook's healthy MLP: one MNIST epoch at batch 32. Its steps are
        # so short that TensorFlow's fixed cost per op weighs most: the worst case.
        Workload("baseline_mlp", demo_models.baseline, 32, mnist_like, lambda: "sgd", "categorical_crossentropy", 1875),
        Workload("big_mlp", big_mlp, 32, mnist_like, lambda: "sgd", "categorical_crossentropy", 150),
        Workload(
            "residual_cnn",
            residual_cnn,
            64,
            images,
            lambda: keras.optimizers.SGD(0.05, momentum=0.9),
            "sparse_categorical_crossentropy_logits",
            60,
        ),
        Workload(
            "transformer",
            transformer,
            32,
            tokens,
            lambda: keras.optimizers.Adam(1e-3),
            "sparse_categorical_crossentropy_logits",
            100,
        ),
        Workload(
            "lstm", lstm, 32, tokens, lambda: keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy_logits", 80
        ),
    )
}


def compiled(name: str, jit_compile="auto") -> keras.Model:
    """A freshly built and compiled model of workload `name`; the same seed gives the same weights."""
    workload = WORKLOADS[name]
    keras.utils.set_random_seed(SEED)
    model = workload.build()
    if workload.loss == "sparse_categorical_crossentropy_logits":
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    else:
        loss = workload.loss
    model.compile(loss=loss, optimizer=workload.optimizer(), metrics=["accuracy"], jit_compile=jit_compile)
    return model


def data(name: str, steps: int, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """`steps` batches of workload `name`'s data."""
    workload = WORKLOADS[name]
    return workload.data(steps, seed, workload.batch_size)
