"""Groups a Keras model's trainable variables by the innermost layer that owns them, in model order."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence

import keras

from tb_gradhealth import metadata

# Separates the names of nested layers, as in Keras variable paths ("encoder/dense").
_NAME_SEPARATOR = "/"

# Kind of a layer by the name of its class or of a base class (the nearest
# in the method resolution order wins). Names, not classes: Keras moves its
# private base classes (BaseConv, BaseDepthwiseConv, ...) between releases.
_KIND_BY_CLASS_NAME = {
    "Dense": "dense",
    "EinsumDense": "dense",
    "BaseConv": "conv",
    "BaseConvTranspose": "conv",
    "BaseDepthwiseConv": "conv",
    "BaseSeparableConv": "conv",
    "BatchNormalization": "normalization",
    "LayerNormalization": "normalization",
    "GroupNormalization": "normalization",
    "RMSNormalization": "normalization",
    "Embedding": "embedding",
    "MultiHeadAttention": "attention",
    "GroupedQueryAttention": "attention",
    "Attention": "attention",
    "AdditiveAttention": "attention",
    "RNN": "recurrent",
    "Bidirectional": "recurrent",
    "StackedRNNCells": "recurrent",
    "SimpleRNNCell": "recurrent",
    "LSTMCell": "recurrent",
    "GRUCell": "recurrent",
    "ConvLSTMCell": "recurrent",
}
# Kinds that every layer inside such a layer shares: the query/key/value
# projections of an attention layer are EinsumDense layers, and the cell of
# a recurrent layer may be made of Dense layers; both follow their own
# gradient regime.
_ENCLOSING_KINDS = ("attention", "recurrent")


def layer_kind(layer) -> str:
    """The kind of `layer` alone (one of `metadata.LAYER_KINDS`), from its class."""
    for cls in type(layer).__mro__:
        kind = _KIND_BY_CLASS_NAME.get(cls.__name__)
        if kind is not None:
            return kind
    return metadata.OTHER_KIND


@dataclasses.dataclass(frozen=True)
class LayerGroup:
    """One row of the statistics: a layer name, the trainable variables it owns and its kind.

    Attributes:
      name: the row's name (a nested layer's path, `encoder/dense`).
      variables: the trainable variables of the row.
      kind: one of `metadata.LAYER_KINDS`, or None when not known (rows given
        as explicit pairs).
    """

    name: str
    variables: tuple
    kind: str | None = None

    @property
    def params(self) -> int:
        """Number of trainable parameters of the row."""
        return sum(math.prod(int(dim) for dim in variable.shape) for variable in self.variables)


def variable_key(variable) -> int:
    """Returns a key identifying a variable whether given as a Keras or a TensorFlow variable.

    Keras wraps a `tf.Variable` (or, under a distribution strategy, a
    distributed variable); the optimizer may be handed either form.
    """
    if isinstance(variable, keras.Variable):
        variable = variable.value
    container = getattr(variable, "_distributed_container", None)
    if container is not None:
        variable = container()
    return id(variable)


def _sublayers(layer) -> list:
    tracked = list(layer._flatten_layers(include_self=False, recursive=False))
    if not isinstance(layer, keras.Model):
        return tracked
    # `Model.layers` is in topological order (input -> output) for
    # functional models and in call order for Sequential; layers only
    # attached as attributes come after them.
    ordered = list(layer.layers)
    known = {id(child) for child in ordered}
    return ordered + [child for child in tracked if id(child) not in known]


def _walk(layer, path: str, claimed: set, seen_layers: set, groups: list, enclosing_kind: str | None = None) -> None:
    if id(layer) in seen_layers or not layer.trainable:
        return
    seen_layers.add(id(layer))
    kind = enclosing_kind or layer_kind(layer)
    children = _sublayers(layer)
    owned_by_children = {variable_key(v) for child in children for v in child.trainable_weights}
    own = [
        v
        for v in layer.trainable_weights
        if variable_key(v) not in owned_by_children and variable_key(v) not in claimed
    ]
    if own:
        claimed.update(variable_key(v) for v in own)
        groups.append(LayerGroup(name=path or layer.name, variables=tuple(own), kind=kind))
    inherited = kind if kind in _ENCLOSING_KINDS else None
    for child in children:
        child_path = child.name if not path else path + _NAME_SEPARATOR + child.name
        _walk(child, child_path, claimed, seen_layers, groups, inherited)


def _unique_names(groups: Sequence[LayerGroup]) -> list[LayerGroup]:
    # Subclassed models may give two sublayers one name; rows need distinct names.
    counts: dict[str, int] = {}
    unique = []
    for group in groups:
        counts[group.name] = counts.get(group.name, 0) + 1
        name = group.name if counts[group.name] == 1 else "%s_%d" % (group.name, counts[group.name])
        unique.append(dataclasses.replace(group, name=name))
    return unique


def group_by_layer(model) -> list[LayerGroup]:
    """Returns the layers of `model` that own trainable variables, in model order.

    Nested models and layers made of sub-layers are walked depth first; each
    variable belongs to the innermost layer that owns it, so a Sequential
    inside a functional model contributes its Dense layers as
    `"sequential/dense"`, and a layer with both its own weights and
    sub-layers (e.g. attention) gives one row for its own weights followed by
    its sub-layers. Frozen layers own no trainable variables and are left out.
    Each row's kind is its layer's, or that of an enclosing attention or
    recurrent layer. The order is that of `Model.layers` (input -> output
    for functional and Sequential models; attribute order for subclassed
    ones: `in_forward_order` puts a traced step's order on it).

    Raises:
      ValueError: the model is not built yet, or has no trainable weights.
    """
    groups: list[LayerGroup] = []
    _walk(model, "", set(), set(), groups)
    if not groups:
        if not model.built:
            raise ValueError(
                "model %r is not built yet: its layers and weights are known once it has been called on data "
                "(or built, e.g. with keras.Input)" % model.name
            )
        raise ValueError(
            "model %r has no trainable weights (its layers are frozen or have no weights): "
            "there is no gradient to record" % model.name
        )
    return _unique_names(groups)


def _handle_ids(variable) -> list[int]:
    """Ids of the resource handles a traced step may read `variable` through (one per replica copy)."""
    if isinstance(variable, keras.Variable):
        variable = variable.value
    copies = getattr(variable, "_values", None) or (variable,)
    return [id(copy.handle) for copy in copies if getattr(copy, "handle", None) is not None]


def in_forward_order(groups: Sequence[LayerGroup], graph) -> list[LayerGroup]:
    """`groups` in the order the step traced in `graph` first uses their variables: the forward pass.

    A subclassed model's attributes may be created in any order; the order
    of its forward pass is the one that puts the input first. Each group
    goes where the graph first reads one of its variables (a read, a gather,
    a loop or call that takes the variable); groups the graph does not use
    keep their place after the group before them. Without a graph (eager
    code) the order is unchanged.
    """
    captures = getattr(graph, "captures", None)
    if not captures:
        return list(groups)
    external_by_internal = {id(internal): id(external) for external, internal in captures}
    group_by_handle = {}
    for index, group in enumerate(groups):
        for variable in group.variables:
            for handle in _handle_ids(variable):
                group_by_handle[handle] = index
    first_use: dict[int, int] = {}
    for position, op in enumerate(graph.get_operations()):
        for tensor in op.inputs:
            index = group_by_handle.get(external_by_internal.get(id(tensor)))
            if index is not None and index not in first_use:
                first_use[index] = position
        if len(first_use) == len(groups):
            break
    keys, previous = [], -1
    for index in range(len(groups)):
        previous = first_use.get(index, previous)
        keys.append((previous, index))
    return [groups[index] for _, index in sorted(keys)]


def groups_from_pairs(pairs: Iterable[tuple[str, Sequence]]) -> list[LayerGroup]:
    """Builds layer groups from explicit `(name, variables)` pairs, in the given order."""
    groups = [LayerGroup(name=str(name), variables=tuple(variables)) for name, variables in pairs]
    if not groups or any(not group.variables for group in groups):
        raise ValueError("every layer group needs a name and at least one variable")
    return _unique_names(groups)
