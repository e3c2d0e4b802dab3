"""Identity of the Gradient Health plugin: names, tags and the summary metadata shared by writer and reader."""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import re
import threading
from collections.abc import Sequence

import numpy as np
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

# Bounds on what a reader accepts (docs/design.md, "Bounds"), so that no
# event file can take the server's memory or the tab down; writers refuse
# to write beyond them. Anything outside is a problem of its run.
MAX_CONTENT_BYTES = 8 * 2**20  # bytes of one tag's content JSON: 100,000 names of ~80 characters
MAX_CONTENT_DEPTH = 4  # JSON nesting of the content; ours is 2 (an object of lists)
MAX_LAYERS = 100_000  # layers per tag: more than any model that has been trained
MAX_LAYER_NAME_CHARS = 1_024  # characters per layer name: a deep nested path fits
# A parameter count is an int64 on every writer's side.
_MAX_PARAMS = 2**63 - 1

# Statistics that are never negative by definition (norms, a count); a
# negative value of one is reported as a problem of its run.
NON_NEGATIVE_STATS = (GRAD_NORM, GRAD_NORM_MAX, GRAD_MAX_ABS, NONFINITE, WEIGHT_NORM)

# Names echoed in messages (errors, problems) are cut to this many
# characters, so a huge name never makes a huge message.
MAX_NAME_IN_MESSAGE = 200


def quoted_name(name: str) -> str:
    """Returns `repr(name)` for a message, cut to about `MAX_NAME_IN_MESSAGE` characters.

    The cut applies to the repr too: a name of escaped characters (e.g.
    astral-plane code points, ten characters each) stays as short.
    """
    text = repr(name[:MAX_NAME_IN_MESSAGE])
    cut = len(name) > MAX_NAME_IN_MESSAGE
    if len(text) > MAX_NAME_IN_MESSAGE + 2:
        text, cut = text[: MAX_NAME_IN_MESSAGE + 1] + text[0], True
    return text + ("..." if cut else "")


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


def _first_duplicate(names: Sequence[str]) -> str | None:
    if len(set(names)) == len(names):
        return None
    seen: set[str] = set()
    return next(name for name in names if name in seen or seen.add(name))


def _validated_layers(layers: Sequence[str]) -> list[str]:
    layers = [str(name) for name in layers]
    if not layers:
        raise ValueError("a gradient health summary needs at least one layer")
    if len(layers) > MAX_LAYERS:
        raise ValueError("at most %d layers per summary, got %d" % (MAX_LAYERS, len(layers)))
    too_long = next((name for name in layers if len(name) > MAX_LAYER_NAME_CHARS), None)
    if too_long is not None:
        raise ValueError(
            "layer names have at most %d characters, got %d: %s"
            % (MAX_LAYER_NAME_CHARS, len(too_long), quoted_name(too_long))
        )
    duplicate = _first_duplicate(layers)
    if duplicate is not None:
        raise ValueError("layer names must be distinct; %s is given twice" % quoted_name(duplicate))
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


# A JSON string, escapes included, so that brackets inside names are not
# counted as nesting.
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = re.compile(r"[^\[\]{}]+")


def _nesting_depth(text: str) -> int:
    """Returns the deepest nesting of JSON arrays and objects in `text`, without decoding it.

    Python's decoder recurses per level, so a deep document must be refused
    before it is decoded; this scan is flat (numpy over the brackets).
    """
    brackets = _NOT_BRACKETS.sub("", _JSON_STRING.sub("", text)).encode("ascii")
    if not brackets:
        return 0
    codes = np.frombuffer(brackets, dtype=np.uint8)
    opening = (codes == ord("[")) | (codes == ord("{"))
    return int(np.cumsum(np.where(opening, 1, -1)).max())


def _excerpt(value) -> str:
    """A decoded value as JSON for a message, cut like a name."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= MAX_NAME_IN_MESSAGE else text[:MAX_NAME_IN_MESSAGE] + "..."


def _decode(content: bytes):
    if len(content) > MAX_CONTENT_BYTES:
        raise ValueError(
            "gradient health metadata of %d bytes is over the limit of %d bytes" % (len(content), MAX_CONTENT_BYTES)
        )
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError("gradient health metadata is not UTF-8 JSON: %s" % error) from None
    depth = _nesting_depth(text)
    if depth > MAX_CONTENT_DEPTH:
        raise ValueError(
            "gradient health metadata is nested %d levels deep; the limit is %d" % (depth, MAX_CONTENT_DEPTH)
        )
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as error:
        # RecursionError: a nesting the scan above did not see can only be
        # invalid JSON, but the decoder must never take a request down.
        raise ValueError("gradient health metadata is not UTF-8 JSON: %s" % str(error)[:MAX_NAME_IN_MESSAGE]) from None


def _is_int(value) -> bool:
    # bool is a subclass of int, and JSON's `true` is no number.
    return isinstance(value, int) and not isinstance(value, bool)


def _validated(decoded) -> PluginContent:
    if not isinstance(decoded, dict):
        raise ValueError("gradient health metadata must be a JSON object")
    if "version" not in decoded:
        raise ValueError("gradient health metadata has no version")
    version = decoded["version"]
    if not _is_int(version) or version != CONTENT_VERSION:
        raise ValueError(
            "unknown gradient health content version %s (this reader knows %d)" % (_excerpt(version), CONTENT_VERSION)
        )
    stat = decoded.get("stat")
    if not isinstance(stat, str) or not stat:
        raise ValueError("gradient health metadata has no stat name")
    try:
        validate_stat_name(stat)
    except ValueError:
        raise ValueError(
            "statistic name %s is not 1 to %d characters of a-z, 0-9 and '_'" % (quoted_name(stat), MAX_STAT_NAME_CHARS)
        ) from None
    layers = decoded.get("layers")
    if not isinstance(layers, list) or not layers or not all(isinstance(name, str) for name in layers):
        raise ValueError("gradient health metadata needs a non-empty list of layer names")
    try:
        layers = tuple(_validated_layers(layers))
    except ValueError as error:
        raise ValueError("gradient health metadata: %s" % error) from None
    scope = decoded.get("scope", SCOPE_LAYER)
    if scope not in SCOPES:
        raise ValueError("unknown scope %s (this reader knows %s)" % (_excerpt(scope), ", ".join(SCOPES)))
    if scope == SCOPE_RUN and len(layers) != 1:
        raise ValueError("a run-level statistic has one value per step, got %d layers" % len(layers))
    kinds = decoded.get("kinds")
    if kinds is not None:
        if not isinstance(kinds, list) or len(kinds) != len(layers) or not all(isinstance(k, str) for k in kinds):
            raise ValueError("kinds must be a list of %d strings, one per layer" % len(layers))
        known = frozenset(LAYER_KINDS)
        kinds = tuple(kind if kind in known else OTHER_KIND for kind in kinds)
    params = decoded.get("params")
    if params is not None:
        if (
            not isinstance(params, list)
            or len(params) != len(layers)
            or not all(_is_int(count) and 0 <= count <= _MAX_PARAMS for count in params)
        ):
            raise ValueError("params must be a list of %d non-negative integers, one per layer" % len(layers))
        params = tuple(params)
    layer_set = decoded.get("layer_set")
    if layer_set is not None and not (isinstance(layer_set, str) and _LAYER_SET.fullmatch(layer_set)):
        raise ValueError(
            "layer_set must be %d lowercase hex digits, got %s" % (LAYER_SET_HEX_DIGITS, _excerpt(layer_set))
        )
    return PluginContent(
        version=version, stat=stat, layers=layers, scope=scope, kinds=kinds, params=params, layer_set=layer_set
    )


class _ParsedContents:
    """What each content decoded to (or why it could not be), by digest, least recently used first out.

    Every request lists every tag's content; parsing it again each time
    would make the CPU and memory of a request grow with the metadata.
    """

    # Bytes of content whose results are kept; a parsed content takes about
    # as much memory as its bytes.
    MAX_BYTES = 64 * 2**20
    # Small contents count as this much, so a flood of tiny tags is bounded too.
    MIN_ENTRY_BYTES = 1_024

    def __init__(self):
        self._entries: collections.OrderedDict[bytes, tuple[int, PluginContent | str]] = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.parses = 0

    def get(self, content: bytes) -> PluginContent:
        digest = content_digest(content)
        with self._lock:
            entry = self._entries.get(digest)
            if entry is not None:
                self._entries.move_to_end(digest)
        if entry is None:
            try:
                result: PluginContent | str = _validated(_decode(content))
            except ValueError as error:
                result = str(error)
            size = max(len(content), self.MIN_ENTRY_BYTES)
            with self._lock:
                self.parses += 1
                if digest not in self._entries:
                    self._entries[digest] = (size, result)
                    self._bytes += size
                while self._bytes > self.MAX_BYTES and len(self._entries) > 1:
                    _, (evicted, _) = self._entries.popitem(last=False)
                    self._bytes -= evicted
        else:
            result = entry[1]
        if isinstance(result, str):
            raise ValueError(result)
        return result


_parsed = _ParsedContents()


def content_digest(content: bytes) -> bytes:
    """Returns a short digest of a tag's content: what the readers key it by instead of its bytes."""
    return hashlib.blake2b(content, digest_size=16).digest()


def parse_plugin_metadata(content: bytes) -> PluginContent:
    """Decodes and validates `plugin_data.content` (see docs/design.md, "Metadata" and "Bounds").

    Each distinct content is parsed once; later calls with the same bytes
    get the kept result. Unknown keys are ignored; `kinds` values that are
    not one of `LAYER_KINDS` read as `OTHER_KIND`.

    Raises:
      ValueError: the content is out of bounds (size, nesting, layers, name
        lengths), not JSON, of another version than the integer 1, lacks
        the stat or the layer names, names a layer twice, or has a known key
        of the wrong type. The message says which; names in it are cut.
    """
    if len(content) > MAX_CONTENT_BYTES:
        # Refused by its size alone: not even hashed.
        return _validated(_decode(content))
    return _parsed.get(content)
