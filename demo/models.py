"""The demo's Keras models: the notebook's three, plus a deep sigmoid MLP whose gradients really vanish."""

from __future__ import annotations

import dataclasses
from typing import Callable

import keras

from demo.data import IMAGE_SHAPE, NUM_CLASSES

BASELINE = "baseline"
VANISHING = "vanishing"
VANISHING_SIGMOID = "vanishing_sigmoid"
EXPLODING = "exploding"

# The notebook multiplies both inputs and one-hot targets by 10 for its
# exploding model; the larger loss and activations make SGD diverge.
EXPLODING_SCALE = 10.0


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One demo run: how to build the model and how to scale its data.

    Attributes:
      name: the run's name (`<logdir>/<name>`).
      build: returns a fresh, uncompiled model.
      scale: factor applied to both the [0, 1] inputs and the one-hot targets.
      summary: what the run is meant to show, for the console and the run's metadata.
    """

    name: str
    build: Callable[[], keras.Model]
    scale: float
    summary: str


def _mlp(name: str, units: list[int], activation: str, **dense_kwargs) -> keras.Model:
    # Explicit layer names keep the tab's rows the same in every process
    # (Keras' automatic names count up across models: dense_7, dense_8, ...).
    layers = [keras.Input(shape=IMAGE_SHAPE), keras.layers.Flatten(name="flatten")]
    for index, width in enumerate(units, start=1):
        layers.append(keras.layers.Dense(width, activation=activation, name="hidden_%d" % index, **dense_kwargs))
    layers.append(keras.layers.Dense(NUM_CLASSES, activation="softmax", name="output"))
    return keras.Sequential(layers, name=name)


def baseline() -> keras.Model:
    """The notebook's healthy model: Flatten -> Dense(128, sigmoid) -> Dense(10, softmax)."""
    return _mlp(BASELINE, [128], "sigmoid")


def vanishing() -> keras.Model:
    """The notebook's "vanishing" model: Flatten -> 5 x Dense(5, tanh) -> Dense(10, softmax)."""
    return _mlp(VANISHING, [5] * 5, "tanh")


def vanishing_sigmoid() -> keras.Model:
    """A model whose gradients do vanish: Flatten -> 10 x Dense(32, sigmoid) -> Dense(10, softmax).

    Each sigmoid layer multiplies the backpropagated gradient by at most 0.25
    (the sigmoid's largest slope), so it shrinks by orders of magnitude from
    the output towards the input.
    """
    return _mlp(VANISHING_SIGMOID, [32] * 10, "sigmoid")


def exploding() -> keras.Model:
    """The notebook's exploding model: Flatten -> 5 x Dense(5, relu, he_uniform) -> Dense(10, softmax).

    Trained on inputs and targets multiplied by `EXPLODING_SCALE`.
    """
    return _mlp(EXPLODING, [5] * 5, "relu", kernel_initializer="he_uniform")


SPECS = {
    spec.name: spec
    for spec in (
        ModelSpec(BASELINE, baseline, 1.0, "healthy reference: a shallow sigmoid MLP"),
        ModelSpec(VANISHING, vanishing, 1.0, "the notebook's deep, narrow tanh MLP"),
        ModelSpec(
            VANISHING_SIGMOID, vanishing_sigmoid, 1.0, "a deep sigmoid MLP whose gradients vanish towards the input"
        ),
        ModelSpec(
            EXPLODING, exploding, EXPLODING_SCALE, "a ReLU MLP trained on 10x inputs and targets: gradients explode"
        ),
    )
}
MODEL_NAMES = tuple(SPECS)
