"""Which rows a model gets: layers owning trainable variables, input -> output, innermost owner, frozen ones left out."""

from __future__ import annotations

import re

import keras
import numpy as np
import pytest

from tb_gradhealth.capture.layers import group_by_layer, groups_from_pairs, variable_key


def _names(model):
    return [group.name for group in group_by_layer(model)]


def test_functional_model_with_nested_sequential_and_attention():
    inputs = keras.Input((4, 6))
    x = keras.layers.Dense(6, name="embed")(inputs)
    x = keras.layers.MultiHeadAttention(2, 3, name="attn")(x, x)
    x = keras.Sequential(
        [keras.layers.Dense(5, name="a"), keras.layers.Dropout(0.1), keras.layers.Dense(6, name="b")], name="mlp"
    )(x)
    x = keras.layers.LayerNormalization(name="norm")(x)
    outputs = keras.layers.Dense(2, name="head")(x)
    model = keras.Model(inputs, outputs)
    assert _names(model) == [
        "embed",
        "attn/query",
        "attn/key",
        "attn/value",
        "attn/attention_output",
        "mlp/a",
        "mlp/b",
        "norm",
        "head",
    ]
    groups = group_by_layer(model)
    # Every trainable variable is in exactly one row.
    keys = [variable_key(v) for group in groups for v in group.variables]
    assert sorted(keys) == sorted(variable_key(v) for v in model.trainable_variables)
    assert [v.name for v in groups[-2].variables] == ["gamma", "beta"]


def test_frozen_and_weightless_layers_are_left_out_and_shared_layers_count_once():
    shared = keras.layers.Dense(4, name="shared")
    frozen = keras.layers.Dense(4, name="frozen")
    frozen.trainable = False
    inputs = keras.Input((4,))
    x = shared(keras.layers.ReLU(name="relu")(frozen(inputs)))
    outputs = keras.layers.Dense(1, name="out")(shared(x))
    assert _names(keras.Model(inputs, outputs)) == ["shared", "out"]


class _Block(keras.layers.Layer):
    """A layer with its own scale weight and two Dense sub-layers."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.first = keras.layers.Dense(3, name="dense")
        self.second = keras.layers.Dense(3, name="dense")  # same name as its sibling

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(), initializer="ones", name="scale")

    def call(self, inputs):
        return self.second(self.first(inputs)) * self.scale


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__(name="net")
        self.block = _Block(name="block")
        self.out = keras.layers.Dense(1, name="out")
        self.bias = self.add_weight(shape=(1,), initializer="zeros", name="bias")

    def call(self, inputs):
        return self.out(self.block(inputs)) + self.bias


def test_subclassed_model_own_weights_sublayers_and_duplicate_names():
    model = _Subclassed()
    model(keras.ops.zeros((2, 3)))
    assert _names(model) == ["net", "block", "block/dense", "block/dense_2", "out"]


def test_kinds_and_parameter_counts_of_the_layers_people_use():
    tokens = keras.Input((6,), dtype="int32")
    x = keras.layers.Embedding(20, 8, name="embedding")(tokens)
    x = keras.layers.MultiHeadAttention(2, 4, name="attention")(x, x)
    x = keras.layers.LayerNormalization(name="layer_norm")(x)
    x = keras.layers.Bidirectional(keras.layers.LSTM(3, return_sequences=True), name="bidirectional")(x)
    x = keras.layers.GRU(3, return_sequences=True, name="gru")(x)
    x = keras.layers.Reshape((6, 3, 2))(keras.layers.Dense(6, name="dense")(x))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="depthwise")(x)
    x = keras.layers.SeparableConv2D(4, 3, padding="same", name="separable")(x)
    x = keras.layers.BatchNormalization(name="batch_norm")(x)
    outputs = keras.layers.Dense(2, name="head")(keras.layers.Flatten()(x))
    model = keras.Model(tokens, outputs)
    groups = group_by_layer(model)
    kinds = {group.name: group.kind for group in groups}
    assert kinds == {
        "embedding": "embedding",
        "attention/query": "attention",
        "attention/key": "attention",
        "attention/value": "attention",
        "attention/attention_output": "attention",
        "layer_norm": "normalization",
        "bidirectional/forward_lstm/lstm_cell": "recurrent",
        "bidirectional/backward_lstm/lstm_cell": "recurrent",
        "gru/gru_cell": "recurrent",
        "dense": "dense",
        "conv": "conv",
        "depthwise": "conv",
        "separable": "conv",
        "batch_norm": "normalization",
        "head": "dense",
    }
    for group in groups:
        assert group.params == sum(int(np.prod(v.shape)) for v in group.variables) > 0
    assert sum(group.params for group in groups) == sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    # BatchNormalization's moving statistics are not trainable: gamma and beta only.
    assert groups[-2].params == 2 * 4


def test_a_model_with_nothing_to_record_is_refused_with_the_reason():
    frozen = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    frozen.trainable = False
    weightless = keras.Sequential([keras.Input((3, 2)), keras.layers.Flatten()])
    for model in (frozen, weightless):
        with pytest.raises(
            ValueError, match=re.escape("has no trainable weights (its layers are frozen or have no weights)")
        ):
            group_by_layer(model)
    with pytest.raises(ValueError, match="is not built yet"):
        group_by_layer(keras.Sequential([keras.layers.Dense(2)]))


def test_explicit_pairs_keep_order_and_need_variables():
    a, b = keras.Variable(1.0), keras.Variable(2.0)
    assert [g.name for g in groups_from_pairs([("x", [b]), ("y", [a])])] == ["x", "y"]
    with pytest.raises(ValueError):
        groups_from_pairs([("x", [])])
