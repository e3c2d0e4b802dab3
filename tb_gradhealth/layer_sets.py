"""Chooses the tags a writer uses for each set of layers it records into a run directory (see docs/design.md, "Layer sets")."""

from __future__ import annotations

import json
import os
import struct
import threading
from collections.abc import Sequence

from tensorboard.compat.proto import event_pb2

from tb_gradhealth import metadata

# Metadata is attached to the first value of each tag of a file, i.e. to the
# first events a writer writes: a file whose first records carry none holds
# no plain tag of ours.
_RECORDS_SCANNED_PER_FILE = 16
_LENGTH = struct.Struct("<Q")
_HEADER_BYTES = 12  # uint64 length and its CRC
_FOOTER_BYTES = 4  # CRC of the data
# Larger records are not ours (a step of 100,000 layers is ~0.4 MB per
# statistic plus metadata): they are not read while scanning.
_MAX_SCANNED_RECORD_BYTES = 64 * 2**20

# {real path of a run directory: layers of its plain tags}, for writers of
# this process whose files may not be flushed yet.
_plain_layers_by_dir: dict[str, tuple[str, ...]] = {}
_lock = threading.Lock()


def _records(path: str, limit: int):
    """Yields the data of the first `limit` whole records of an event file (no CRC check: a scan, not a read)."""
    with open(path, "rb") as stream:
        for _ in range(limit):
            header = stream.read(_HEADER_BYTES)
            if len(header) < _HEADER_BYTES:
                return
            (length,) = _LENGTH.unpack(header[:8])
            if length > _MAX_SCANNED_RECORD_BYTES:
                return
            data = stream.read(length)
            if len(data) < length or len(stream.read(_FOOTER_BYTES)) < _FOOTER_BYTES:
                return
            yield data


def _plain_layers_in_file(path: str) -> tuple[str, ...] | None:
    for data in _records(path, _RECORDS_SCANNED_PER_FILE):
        try:
            event = event_pb2.Event.FromString(data)
        except Exception:
            return None
        for value in event.summary.value:
            parsed = metadata.parse_tag(value.tag)
            if parsed is None or parsed[1] is not None:
                continue
            plugin_data = value.metadata.plugin_data
            if plugin_data.plugin_name != metadata.PLUGIN_NAME:
                continue
            try:
                layers = json.loads(plugin_data.content.decode("utf-8")).get("layers")
            except (ValueError, UnicodeDecodeError, AttributeError, RecursionError):
                continue
            if isinstance(layers, list) and layers and all(isinstance(name, str) for name in layers):
                return tuple(layers)
    return None


def plain_layers_on_disk(run_dir: str) -> tuple[str, ...] | None:
    """Returns the layers of the plain `gradient_health/<stat>` tags already in `run_dir`'s files, or None."""
    try:
        names = sorted(name for name in os.listdir(run_dir) if name.endswith(metadata.FILENAME_SUFFIX))
    except OSError:
        return None
    for name in names:
        try:
            layers = _plain_layers_in_file(os.path.join(run_dir, name))
        except OSError:
            continue
        if layers is not None:
            return layers
    return None


class LayerSetTags:
    """The layer set of each list of layers one writer records into one run directory.

    The first layers recorded in a run directory get the plain tags; any
    other layers get `metadata.layer_set_id(layers)`, so one list of layers
    always gets the same tags, whichever writer of whichever process writes
    them.
    """

    def __init__(self, run_dir: str):
        self._key = os.path.realpath(os.fspath(run_dir))

    def layer_set(self, layers: Sequence[str]) -> str | None:
        """Returns None when `layers` are written under the plain tags, else their `<set>` suffix."""
        layers = tuple(str(name) for name in layers)
        with _lock:
            plain = _plain_layers_by_dir.get(self._key)
            if plain is None:
                plain = plain_layers_on_disk(self._key) or layers
                _plain_layers_by_dir[self._key] = plain
        return None if plain == layers else metadata.layer_set_id(layers)
