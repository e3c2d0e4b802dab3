"""Hand-made and damaged event files for the reader's and the server's tests: raw events, runs flushed step by step, garbage."""

from __future__ import annotations

import os
import pathlib
import time

import numpy as np
from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from tb_gradhealth import event_files, metadata
from tb_gradhealth.summary import GradientHealthFileWriter

LAYERS = ("in", "hidden", "out")
WALL_TIME_0 = 1_600_000_000.0  # seconds since the epoch
GARBAGE = b"\x00\x01 not a record, e.g. a disk block of another file \xff" * 2
# Older than any grace period: the writer of such a file is gone.
SETTLED_AGE_S = event_files.UNFINISHED_WRITE_GRACE_S + 60.0
# Metadata content nested far deeper than any JSON parser's recursion allows.
DEEP_CONTENT = ('{"version":1,"stat":"grad_norm","layers":["a"],"pad":%s1%s}' % ("[" * 2_000, "]" * 2_000)).encode()


def vector_tensor(values, dtype=types_pb2.DT_FLOAT, content: bytes | None = None) -> tensor_pb2.TensorProto:
    """A tensor proto of `values` (float32 bytes), or of the raw `content` bytes under any declared dtype."""
    values = np.asarray(values, dtype=np.float32)
    return tensor_pb2.TensorProto(
        dtype=dtype,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in values.shape]
        ),
        tensor_content=values.tobytes() if content is None else content,
    )


class RawWriter:
    """Writes hand-made Gradient Health events, including malformed ones."""

    def __init__(self, run_dir: str, layers=LAYERS, wall_time_0: float = WALL_TIME_0):
        self._writer = EventFileWriter(run_dir, filename_suffix=".raw")
        self._layers = tuple(layers)
        self._wall_time_0 = wall_time_0
        self._tags_with_metadata = set()

    def write(self, step, tag, tensor, summary_metadata=None):
        """Writes one value; the first of a tag carries `summary_metadata` (default: valid metadata for the layers)."""
        value = summary_pb2.Summary.Value(tag=tag, tensor=tensor)
        if tag not in self._tags_with_metadata:
            self._tags_with_metadata.add(tag)
            value.metadata.CopyFrom(
                summary_metadata or metadata.create_summary_metadata(metadata.stat_for_tag(tag), self._layers)
            )
        summary = summary_pb2.Summary(value=[value])
        self._writer.add_event(event_pb2.Event(step=step, wall_time=self._wall_time_0 + step, summary=summary))

    def close(self):
        self._writer.close()


def step_values(step: int) -> list[float]:
    """The `grad_norm` of `write_run`'s step `step`, one value per layer of `LAYERS`."""
    return [step + 0.5, step * 2.0, 1.0 / (step + 1)]


def write_run(
    run_dir: pathlib.Path, num_steps: int, wall_time_0: float = WALL_TIME_0
) -> tuple[pathlib.Path, list[int]]:
    """Writes a run with our writer, flushing each step; returns (event file, file size after each flush).

    The sizes after each flush are the record boundaries, known without
    parsing the file.
    """
    writer = GradientHealthFileWriter(str(run_dir))
    writer.flush()
    (event_file,) = run_dir.iterdir()
    boundaries = [0, event_file.stat().st_size]  # then the file_version record
    for step in range(num_steps):
        writer.write(step, {"grad_norm": step_values(step)}, LAYERS, wall_time=wall_time_0 + step)
        writer.flush()
        boundaries.append(event_file.stat().st_size)
    writer.close()
    return event_file, boundaries


def age(path: pathlib.Path, seconds: float = SETTLED_AGE_S) -> None:
    """Sets the file's modification time `seconds` into the past."""
    then = time.time() - seconds
    os.utime(path, (then, then))
