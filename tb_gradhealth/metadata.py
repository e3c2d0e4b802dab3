"""Identity of the Gradient Health plugin: names, tags and the summary metadata shared by writer and reader."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

from tensorboard.compat.proto import summary_pb2

PLUGIN_NAME = "gradient_health"
TAB_LABEL = "Gradient Health"

# Bump when the layout of the content JSON or of the tensors changes; readers
# refuse versions they do not know instead of misreading them.
CONTENT_VERSION = 1

TAG_PREFIX = PLUGIN_NAME + "/"

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

_STAT_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")


@dataclasses.dataclass(frozen=True)
class PluginContent:
    """The decoded `plugin_data.content` of one Gradient Health tag."""

    version: int
    stat: str
    layers: tuple[str, ...]


def validate_stat_name(stat: str) -> str:
    """Returns `stat` if it is a valid statistic name (lowercase, digits, `_`).

    Raises:
      ValueError: the name is empty or has other characters (it becomes part
        of a tag and of URLs, so it is kept plain).
    """
    if not isinstance(stat, str) or not stat or not set(stat) <= _STAT_NAME_CHARS:
        raise ValueError("statistic name must be non-empty and use only a-z, 0-9 and '_', got %r" % (stat,))
    return stat


def tag_for_stat(stat: str) -> str:
    """Returns the event-file tag of a statistic, e.g. `gradient_health/grad_norm`."""
    return TAG_PREFIX + validate_stat_name(stat)


def stat_for_tag(tag: str) -> str | None:
    """Returns the statistic of a Gradient Health tag, or None for other tags."""
    if not tag.startswith(TAG_PREFIX):
        return None
    return tag[len(TAG_PREFIX) :] or None


def create_summary_metadata(stat: str, layers: Sequence[str]) -> summary_pb2.SummaryMetadata:
    """Builds the metadata of one statistic's tag.

    Args:
      stat: statistic name, e.g. `grad_norm`.
      layers: layer names in model order, input -> output; the tensor of each
        step holds one value per layer in this order.
    """
    layers = [str(name) for name in layers]
    if not layers:
        raise ValueError("a gradient health summary needs at least one layer")
    content = {
        "version": CONTENT_VERSION,
        "stat": validate_stat_name(stat),
        "layers": layers,
    }
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
