"""Identity of the Gradient Health plugin: names, tags and the summary metadata shared by writer and reader."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Sequence

from tensorboard.compat.proto import summary_pb2

PLUGIN_NAME = "gradient_health"
TAB_LABEL = "Gradient Health"

# Bump when the layout of the content JSON or of the tensors changes; readers
# refuse versions they do not know instead of misreading them.
CONTENT_VERSION = 1

TAG_PREFIX = PLUGIN_NAME + "/"

# Keeps our event files apart from those of other writers in the same run
# directory (e.g. keras.callbacks.TensorBoard writing `<log_dir>/train`).
FILENAME_SUFFIX = ".gradient_health"

GRAD_NORM = "grad_norm"
GRAD_NORM_MAX = "grad_norm_max"
GRAD_MAX_ABS = "grad_max_abs"
NONFINITE = "nonfinite"
WEIGHT_NORM = "weight_norm"
UPDATE_RATIO = "update_ratio"

# The statistics the capture side records, in the order it stores them.
BUILTIN_STATS = (
    GRAD_NORM,
    GRAD_NORM_MAX,
    GRAD_MAX_ABS,
    NONFINITE,
    WEIGHT_NORM,
    UPDATE_RATIO,
)

# Run-level statistics: one value per step for the whole run, not per layer.
LOSS = "loss"

# What a statistic's values are per step (the content's optional `scope`).
SCOPE_LAYER = "layer"  # one value per layer (the default)
SCOPE_RUN = "run"  # one value for the run, stored as a [1] vector under layers [<stat>]
SCOPES = (SCOPE_LAYER, SCOPE_RUN)

# The kinds of layer the content's optional `kinds` may name; readers take
# any other value as OTHER_KIND.
LAYER_KINDS = ("dense", "conv", "normalization", "embedding", "attention", "recurrent", "other")
OTHER_KIND = "other"

# A layer set other than a run's first is written under
# `gradient_health/<stat>/<set>`: this many hex digits of the SHA-256 of its
# layer names (collisions within one run are astronomically unlikely).
LAYER_SET_HEX_DIGITS = 8
_LAYER_SET = re.compile(r"[0-9a-f]{%d}" % LAYER_SET_HEX_DIGITS)

MAX_STAT_NAME_CHARS = 64

_STAT_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")


@dataclasses.dataclass(frozen=True)
class PluginContent:
    """The decoded `plugin_data.content` of one Gradient Health tag (see docs/design.md).

    Attributes:
      version: content version (`CONTENT_VERSION`).
      stat: statistic name.
      layers: layer names, input -> output (`[stat]` for a run-level statistic).
      scope: `SCOPE_LAYER` or `SCOPE_RUN`.
      kinds: each layer's kind (one of `LAYER_KINDS`), or None when not written.
      params: each layer's number of recorded parameters, or None when not written.
      layer_set: the tag's layer-set suffix, or None for the plain tag.
    """

    version: int
    stat: str
    layers: tuple[str, ...]
    scope: str = SCOPE_LAYER
    kinds: tuple[str, ...] | None = None
    params: tuple[int, ...] | None = None
    layer_set: str | None = None


def validate_stat_name(stat: str) -> str:
    """Returns `stat` if it is a valid statistic name (lowercase, digits, `_`, at most 64 characters).

    Raises:
      ValueError: the name is empty, too long or has other characters (it
        becomes part of a tag and of URLs, so it is kept plain).
    """
    if not isinstance(stat, str) or not stat or len(stat) > MAX_STAT_NAME_CHARS or not set(stat) <= _STAT_NAME_CHARS:
        raise ValueError(
            "statistic name must be 1 to %d characters of a-z, 0-9 and '_', got %r" % (MAX_STAT_NAME_CHARS, stat)
        )
    return stat


def layer_set_id(layers: Sequence[str]) -> str:
    """Returns the `<set>` suffix of a layer set's tags: hex digits of the SHA-256 of the names joined by newlines."""
    digest = hashlib.sha256("\n".join(str(name) for name in layers).encode("utf-8")).hexdigest()
    return digest[:LAYER_SET_HEX_DIGITS]


def tag_for_stat(stat: str, layer_set: str | None = None) -> str:
    """Returns the event-file tag of a statistic, e.g. `gradient_health/grad_norm`.

    Args:
      stat: statistic name.
      layer_set: None for the run's first layer set, else `layer_set_id(layers)`.
    """
    tag = TAG_PREFIX + validate_stat_name(stat)
    if layer_set is None:
        return tag
    if not isinstance(layer_set, str) or not _LAYER_SET.fullmatch(layer_set):
        raise ValueError("layer_set must be %d lowercase hex digits, got %r" % (LAYER_SET_HEX_DIGITS, layer_set))
    return tag + "/" + layer_set


def parse_tag(tag: str) -> tuple[str, str | None] | None:
    """Returns (stat, layer_set or None) of a Gradient Health tag, or None for a tag of another form."""
    if not tag.startswith(TAG_PREFIX):
        return None
    stat, _, layer_set = tag[len(TAG_PREFIX) :].partition("/")
    try:
        validate_stat_name(stat)
    except ValueError:
        return None
    if not layer_set:
        return None if tag.endswith("/") else (stat, None)
    return (stat, layer_set) if _LAYER_SET.fullmatch(layer_set) else None


def stat_for_tag(tag: str) -> str | None:
    """Returns the statistic of a Gradient Health tag, or None for other tags."""
    parsed = parse_tag(tag)
    return None if parsed is None else parsed[0]


def _validated_layers(layers: Sequence[str]) -> list[str]:
    layers = [str(name) for name in layers]
    if not layers:
        raise ValueError("a gradient health summary needs at least one layer")
    if len(set(layers)) != len(layers):
        seen: set[str] = set()
        duplicate = next(name for name in layers if name in seen or seen.add(name))
        raise ValueError("layer names must be distinct; %r is given twice" % duplicate)
    return layers


def content_json(
    stat: str,
    layers: Sequence[str],
    *,
    scope: str = SCOPE_LAYER,
    kinds: Sequence[str] | None = None,
    params: Sequence[int] | None = None,
    layer_set: str | None = None,
) -> dict:
    """Returns the content JSON object of one statistic's tag (see docs/design.md).

    Args:
      stat: statistic name, e.g. `grad_norm`.
      layers: layer names in model order, input -> output; the tensor of each
        step holds one value per layer in this order. For `scope=SCOPE_RUN`
        pass `[stat]`.
      scope: `SCOPE_LAYER` or `SCOPE_RUN`.
      kinds: optional kind of each layer, one of `LAYER_KINDS`.
      params: optional number of recorded parameters of each layer.
      layer_set: the tag's layer-set suffix, if any.

    Raises:
      ValueError: a bad name, duplicate layers, or a list not parallel to `layers`.
    """
    layers = _validated_layers(layers)
    content: dict = {"version": CONTENT_VERSION, "stat": validate_stat_name(stat), "layers": layers}
    if scope not in SCOPES:
        raise ValueError("scope must be one of %s, got %r" % (SCOPES, scope))
    if scope != SCOPE_LAYER:
        if len(layers) != 1:
            raise ValueError("a run-level statistic has one value per step (layers=[%r])" % stat)
        content["scope"] = scope
    if kinds is not None:
        kinds = [str(kind) for kind in kinds]
        if len(kinds) != len(layers) or not set(kinds) <= set(LAYER_KINDS):
            raise ValueError("kinds must give one of %s for each of the %d layers" % (LAYER_KINDS, len(layers)))
        content["kinds"] = kinds
    if params is not None:
        params = [int(count) for count in params]
        if len(params) != len(layers) or any(count < 0 for count in params):
            raise ValueError("params must give a non-negative count for each of the %d layers" % len(layers))
        content["params"] = params
    if layer_set is not None:
        tag_for_stat(stat, layer_set)  # validates the suffix
        content["layer_set"] = layer_set
    return content


def create_summary_metadata(
    stat: str,
    layers: Sequence[str],
    *,
    scope: str = SCOPE_LAYER,
    kinds: Sequence[str] | None = None,
    params: Sequence[int] | None = None,
    layer_set: str | None = None,
) -> summary_pb2.SummaryMetadata:
    """Builds the metadata of one statistic's tag; the arguments are those of `content_json`."""
    content = content_json(stat, layers, scope=scope, kinds=kinds, params=params, layer_set=layer_set)
    return summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(
            plugin_name=PLUGIN_NAME,
            content=json.dumps(content, ensure_ascii=False).encode("utf-8"),
        ),
        # Without an explicit data class the Rust data server drops the data.
        data_class=summary_pb2.DATA_CLASS_TENSOR,
    )


def parse_plugin_metadata(content: bytes) -> PluginContent:
    """Decodes `plugin_data.content` written by `create_summary_metadata`.

    Raises:
      ValueError: the content is not valid JSON of a known version, or lacks
        the stat or the layer names.
    """
    try:
        decoded = json.loads(content.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise ValueError("gradient health metadata is not UTF-8 JSON: %s" % error) from None
    if not isinstance(decoded, dict):
        raise ValueError("gradient health metadata must be a JSON object")
    version = decoded.get("version")
    if version != CONTENT_VERSION:
        raise ValueError(
            "unknown gradient health content version %r (this reader knows %d)" % (version, CONTENT_VERSION)
        )
    stat = decoded.get("stat")
    layers = decoded.get("layers")
    if not isinstance(stat, str) or not stat:
        raise ValueError("gradient health metadata has no stat name")
    if not isinstance(layers, list) or not layers or not all(isinstance(name, str) for name in layers):
        raise ValueError("gradient health metadata needs a non-empty list of layer names")
    return PluginContent(version=version, stat=stat, layers=tuple(layers))
