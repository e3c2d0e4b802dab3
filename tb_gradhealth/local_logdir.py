"""A data provider over a local logdir's event files for the command line: only Gradient Health tags, checksums verified in bulk, no TensorFlow."""

from __future__ import annotations

import dataclasses
import os
import struct

import numpy as np
from tensorboard import errors
from tensorboard.compat.proto import event_pb2, types_pb2
from tensorboard.data import provider as tb_provider

from tb_gradhealth import event_files, metadata

# As TensorBoard's loaders (io_wrapper.IsTensorFlowEventsFile) pick them.
_EVENT_FILE_MARKER = "tfevents"
# A TFRecord: uint64 length, uint32 masked CRC-32C of the length, the data,
# uint32 masked CRC-32C of the data (all little-endian).
_LENGTH = struct.Struct("<Q")
_CRC = struct.Struct("<I")
_HEADER_BYTES = 12
_FOOTER_BYTES = 4


def read_records(data: bytes) -> list[bytes]:
    """Returns the records of an event file's bytes up to the first one that is incomplete or fails a checksum.

    TensorBoard's loaders stop reading a file at such a record too (the
    plugin reports it as a problem of the file, see `event_files`).
    """
    starts, lengths = [], []
    header_crcs: dict[bytes, int] = {}
    offset = 0
    while offset + _HEADER_BYTES <= len(data):
        length_bytes = data[offset : offset + 8]
        expected = header_crcs.get(length_bytes)
        if expected is None:
            expected = header_crcs[length_bytes] = event_files.header_crc(length_bytes)
        if _CRC.unpack_from(data, offset + 8)[0] != expected:
            break
        (length,) = _LENGTH.unpack(length_bytes)
        end = offset + _HEADER_BYTES + length + _FOOTER_BYTES
        if end > len(data):
            break
        starts.append(offset + _HEADER_BYTES)
        lengths.append(length)
        offset = end
    if not starts:
        return []
    buffer = np.frombuffer(data, dtype=np.uint8)
    starts_array, lengths_array = np.asarray(starts), np.asarray(lengths)
    good = np.ones(len(starts), dtype=bool)
    for length in np.unique(lengths_array):
        group = np.flatnonzero(lengths_array == length)
        rows = buffer[starts_array[group, None] + np.arange(length)]
        stored = np.frombuffer(
            b"".join(data[start + length : start + length + _FOOTER_BYTES] for start in starts_array[group]),
            dtype="<u4",
        )
        good[group] = event_files.masked_crc32c(rows) == stored
    end = len(starts) if good.all() else int(np.argmin(good))
    return [data[start : start + length] for start, length in zip(starts[:end], lengths[:end])]


def run_directories(logdir: str) -> dict[str, str]:
    """Returns {run name: directory} of every directory below `logdir` holding an event file, as TensorBoard names runs."""
    runs = {}
    for directory, _, files in os.walk(logdir):
        if any(_EVENT_FILE_MARKER in name for name in files):
            relative = os.path.relpath(directory, logdir)
            runs["." if relative == os.curdir else relative.replace(os.sep, "/")] = directory
    return runs


@dataclasses.dataclass
class _Tag:
    plugin_content: bytes
    steps: list[int] = dataclasses.field(default_factory=list)
    wall_times: list[float] = dataclasses.field(default_factory=list)
    tensors: list = dataclasses.field(default_factory=list)  # TensorProto per step

    def arrays(self) -> list[np.ndarray]:
        """The tensors as numpy arrays: float32 vectors of one length (every writer of ours) decoded in one go."""
        shapes = [tuple(dim.size for dim in tensor.tensor_shape.dim) for tensor in self.tensors]
        contents = [tensor.tensor_content if tensor.dtype == types_pb2.DT_FLOAT else b"" for tensor in self.tensors]
        first = shapes[0] if shapes else None
        if (
            first is not None
            and len(first) == 1
            and all(shape == first for shape in shapes)
            and all(len(content) == 4 * first[0] for content in contents)
        ):
            return list(np.frombuffer(b"".join(contents), dtype="<f4").reshape(len(contents), first[0]))
        # Others (not written by us) as TensorBoard's providers decode them: a
        # tensor that does not decode fails the read (the reader then reads
        # tag by tag and reports the tag).
        from tensorboard.util import tensor_util

        return [tensor_util.make_ndarray(tensor) for tensor in self.tensors]


def _read_run(directory: str) -> dict[str, _Tag]:
    """Reads a run directory's Gradient Health tags, every step; the first metadata of a tag is its metadata."""
    tags: dict[str, _Tag] = {}
    names = sorted(name for name in os.listdir(directory) if _EVENT_FILE_MARKER in name)
    for name in names:
        path = os.path.join(directory, name)
        try:
            with open(path, "rb") as stream:
                data = stream.read()
        except OSError:
            continue  # reported by the file checker
        for record in read_records(data):
            try:
                event = event_pb2.Event.FromString(record)
            except Exception:
                break  # as TensorBoard, which stops reading the file there
            step, wall_time = event.step, event.wall_time
            for value in event.summary.value:
                name = value.tag
                if not name.startswith(metadata.TAG_PREFIX):
                    continue
                tag = tags.get(name)
                if tag is None:
                    plugin_data = value.metadata.plugin_data
                    if plugin_data.plugin_name != metadata.PLUGIN_NAME:
                        continue
                    tag = tags[name] = _Tag(plugin_data.content)
                tag.steps.append(step)
                tag.wall_times.append(wall_time)
                tag.tensors.append(value.tensor)
    return tags


class LocalLogdir:
    """The calls of TensorBoard's `DataProvider` the reader and the command line make, over a local logdir, for plugin `gradient_health` only.

    A run is read when it is first asked for (so a report can print its
    first run before reading the others), every step kept (no sampling), as
    the multiplexer of `--load_fast=false` with
    `samples_per_plugin=gradient_health=0` would; steps written twice are
    all returned, and the reader keeps the latest.
    """

    def __init__(self, logdir: str):
        self._directories = dict(sorted(run_directories(logdir).items()))
        self._read: dict[str, dict[str, _Tag]] = {}

    def _tags(self, run: str) -> dict[str, _Tag]:
        tags = self._read.get(run)
        if tags is None:
            tags = self._read[run] = _read_run(self._directories[run])
        return tags

    def list_runs(self, ctx=None, *, experiment_id):
        """Every run directory (a directory holding an event file), whatever plugin's data it holds."""
        return [tb_provider.Run(run_id=run, run_name=run, start_time=None) for run in self._directories]

    def _selected(self, plugin_name: str, run_tag_filter):
        if plugin_name != metadata.PLUGIN_NAME:
            return
        runs = None if run_tag_filter is None else run_tag_filter.runs
        tags = None if run_tag_filter is None else run_tag_filter.tags
        for run in self._directories:
            if runs is not None and run not in runs:
                continue
            yield run, {tag: data for tag, data in self._tags(run).items() if tags is None or tag in tags}

    def list_tensors(self, ctx=None, *, experiment_id, plugin_name, run_tag_filter=None):
        return {
            run: {
                tag: tb_provider.TensorTimeSeries(
                    max_step=max(data.steps),
                    max_wall_time=max(data.wall_times),
                    plugin_content=data.plugin_content,
                    description="",
                    display_name="",
                )
                for tag, data in tags.items()
                if data.steps
            }
            for run, tags in self._selected(plugin_name, run_tag_filter)
            if tags
        }

    def read_tensors(self, ctx=None, *, experiment_id, plugin_name, downsample=None, run_tag_filter=None):
        if downsample is None:
            raise errors.InvalidArgumentError("downsample is required")
        return {
            run: {
                tag: [
                    tb_provider.TensorDatum(step=step, wall_time=wall_time, numpy=array)
                    for step, wall_time, array in zip(data.steps, data.wall_times, data.arrays())
                ]
                for tag, data in tags.items()
            }
            for run, tags in self._selected(plugin_name, run_tag_filter)
        }
