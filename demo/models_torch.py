"""The demo's models in PyTorch: the Keras models' layers, layer names and initialisation, as `nn.Sequential`s."""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Callable

import torch
from torch import nn

from demo import models as keras_models
from demo.data import IMAGE_SHAPE, NUM_CLASSES

_ACTIVATIONS = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu}


class Dense(nn.Linear):
    """A Keras `Dense` layer: `nn.Linear` and its activation in one module, so the row keeps the Keras layer's name.

    Weights are initialised as Keras does: `glorot_uniform` (or
    `he_uniform`) kernel, zero bias.

    Args:
      activation: `sigmoid`, `tanh`, `relu`, or None for the logits (the
        output layer's softmax is part of the loss, as Keras computes it).
      kernel_initializer: `glorot_uniform` or `he_uniform`.
    """

    def __init__(
        self, in_features: int, out_features: int, activation: str | None, kernel_initializer: str = "glorot_uniform"
    ):
        super().__init__(in_features, out_features)
        self.activation_name = activation
        with torch.no_grad():
            if kernel_initializer == "he_uniform":
                # Keras: U(-sqrt(6 / fan_in), sqrt(6 / fan_in)), which is this.
                nn.init.kaiming_uniform_(self.weight, nonlinearity="relu")
            elif kernel_initializer == "glorot_uniform":
                nn.init.xavier_uniform_(self.weight)
            else:
                raise ValueError("unknown kernel_initializer %r" % kernel_initializer)
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        return y if self.activation_name is None else _ACTIVATIONS[self.activation_name](y)


def _mlp(units: list[int], activation: str, kernel_initializer: str = "glorot_uniform") -> nn.Sequential:
    layers: collections.OrderedDict = collections.OrderedDict(flatten=nn.Flatten())
    width = math.prod(IMAGE_SHAPE)
    for index, out in enumerate(units, start=1):
        layers["hidden_%d" % index] = Dense(width, out, activation, kernel_initializer)
        width = out
    layers["output"] = Dense(width, NUM_CLASSES, None)
    return nn.Sequential(layers)


def baseline() -> nn.Sequential:
    """Flatten -> Dense(128, sigmoid) -> Dense(10) (softmax in the loss)."""
    return _mlp([128], "sigmoid")


def vanishing() -> nn.Sequential:
    """Flatten -> 5 x Dense(5, tanh) -> Dense(10)."""
    return _mlp([5] * 5, "tanh")


def vanishing_sigmoid() -> nn.Sequential:
    """Flatten -> 10 x Dense(32, sigmoid) -> Dense(10)."""
    return _mlp([32] * 10, "sigmoid")


def exploding() -> nn.Sequential:
    """Flatten -> 5 x Dense(5, relu, he_uniform) -> Dense(10), trained on 10x inputs and targets."""
    return _mlp([5] * 5, "relu", "he_uniform")


_BUILDERS: dict[str, Callable[[], nn.Module]] = {
    keras_models.BASELINE: baseline,
    keras_models.VANISHING: vanishing,
    keras_models.VANISHING_SIGMOID: vanishing_sigmoid,
    keras_models.EXPLODING: exploding,
}

# The Keras specs (name, data scale, summary) with PyTorch builders.
SPECS = {name: dataclasses.replace(spec, build=_BUILDERS[name]) for name, spec in keras_models.SPECS.items()}
MODEL_NAMES = tuple(SPECS)
