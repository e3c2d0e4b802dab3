"""The rows of a PyTorch model: the modules that own the optimizer's trainable parameters, in forward order."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Sequence

import torch
from torch import nn

# Where torch.compile keeps the module it compiled; never part of a layer's name.
_COMPILED_ATTRIBUTE = "_orig_mod"

# The layer kinds of the data contract (metadata.LAYER_KINDS), most specific first.
_KINDS = (
    ((nn.MultiheadAttention,), "attention"),
    ((nn.RNNBase, nn.RNNCellBase), "recurrent"),
    ((nn.Embedding, nn.EmbeddingBag), "embedding"),
    ((nn.modules.conv._ConvNd,), "conv"),
    ((nn.Linear, nn.Bilinear), "dense"),
    ((nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm), "normalization"),
)


@dataclasses.dataclass(frozen=True)
class LayerParams:
    """One row of the statistics: a module's name, kind and the trainable parameters it owns."""

    name: str
    kind: str
    params: tuple[torch.nn.Parameter, ...]

    @property
    def size(self) -> int:
        return sum(p.numel() for p in self.params)


def unwrap(model: nn.Module) -> nn.Module:
    """Returns the user's model inside DistributedDataParallel, DataParallel and torch.compile wrappers."""
    while True:
        inner = None
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            inner = model.module
        elif isinstance(getattr(model, _COMPILED_ATTRIBUTE, None), nn.Module):
            inner = getattr(model, _COMPILED_ATTRIBUTE)
        if inner is None:
            return model
        model = inner


def display_name(path: str) -> str:
    """A module path without torch.compile's `_orig_mod` parts (a submodule may be compiled on its own)."""
    return ".".join(part for part in path.split(".") if part != _COMPILED_ATTRIBUTE)


def layer_kind(module: nn.Module) -> str:
    """The module's kind in the data contract: dense, conv, normalization, embedding, attention, recurrent or other."""
    for classes, kind in _KINDS:
        if isinstance(module, classes):
            return kind
    # Normalization layers of other libraries follow PyTorch's naming.
    return "normalization" if type(module).__name__.endswith("Norm") else "other"


class ForwardOrder:
    """Notes the order in which a model's forward pass first calls its modules.

    A forward pre-hook on every module records its first call; `stop()`
    removes the hooks, so the order costs one forward pass and nothing after.
    """

    def __init__(self, model: nn.Module):
        self._first_call: dict[str, int] = {}
        # Named as `group_parameters` names them: inside the wrappers.
        self._handles = [
            module.register_forward_pre_hook(functools.partial(self._called, name))
            for name, module in unwrap(model).named_modules()
        ]

    def _called(self, name: str, module, args) -> None:
        self._first_call.setdefault(name, len(self._first_call))

    @property
    def seen(self) -> bool:
        return bool(self._first_call)

    def stop(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def key(self, name: str, registration_index: int) -> tuple:
        """Sort key of module `name`: its first call, else just after its nearest called ancestor.

        A module whose forward is never called but whose weights are used
        (`nn.MultiheadAttention.out_proj`, a tied weight) sits right after the
        module that uses it, not at the end, where the diagnosis would take
        it for the output layer.
        """
        if name in self._first_call:
            return (self._first_call[name], 0, registration_index)
        parts = name.split(".") if name else []
        while parts:
            parts = parts[:-1]
            ancestor = ".".join(parts)
            if ancestor in self._first_call:
                return (self._first_call[ancestor], 1, registration_index)
        return (len(self._first_call), 1, registration_index)


def _root_name(model: nn.Module) -> str:
    return type(model).__name__


def group_parameters(
    model: nn.Module, parameters: Iterable[torch.nn.Parameter], order: ForwardOrder | None = None
) -> list[LayerParams]:
    """Returns the modules of `model` that own any of `parameters` with `requires_grad`, in forward order.

    Each parameter belongs to the first module (in registration order) that
    owns it directly, so a weight shared by two modules is one row's. Rows
    are named by module path without wrapper prefixes (`encoder.0.linear`);
    parameters owned by the model itself get a row named after its class.

    Args:
      model: the model, wrapped or not.
      parameters: the parameters the optimizer updates.
      order: the observed forward order; registration order without it.
    """
    wanted = {id(p) for p in parameters if p.requires_grad}
    model = unwrap(model)
    claimed: set[int] = set()
    found = []
    for index, (name, module) in enumerate(model.named_modules()):
        own = []
        for param in module.parameters(recurse=False):
            if id(param) in wanted and id(param) not in claimed:
                claimed.add(id(param))
                own.append(param)
        if own:
            key = order.key(name, index) if order is not None and order.seen else (index,)
            found.append((key, LayerParams(display_name(name) or _root_name(model), layer_kind(module), tuple(own))))
    missing = wanted - claimed
    if missing:
        raise ValueError(
            "the optimizer updates %d parameter(s) that are not part of the model; pass the model the optimizer trains"
            % len(missing)
        )
    found.sort(key=lambda item: item[0])
    return [layer for _, layer in found]


def parameter_signature(param_groups: Sequence[dict]) -> tuple[bool, ...]:
    """What decides the rows besides the model: how many parameters the optimizer has and which are trainable."""
    return tuple(p.requires_grad for group in param_groups for p in group["params"])
