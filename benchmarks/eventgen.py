"""Writes large benchmark logdirs fast, byte for byte as TensorFlow's summary writer would, in both layouts.

Gradient Health layout: what the Keras callback writes through
`tf.summary.write`, one event per statistic per logged step holding the
float32 `[n_layers]` vector, the tag's metadata on its first event only.

Scalars layout (the anchor): the same numbers as `tf.summary.scalar` writes
them, one scalar tag per statistic and layer (`grad_norm/layer_007`), one
event per value, with the scalars metadata on every event (as TensorFlow
does).

Building a protobuf per event in Python costs ~0.15 ms per logged step in
our layout and ~11 ms in the scalars one (600 values), far too slow for
500,000 steps. Only a few bytes of each event change from step to step (the
wall time, the step, the float payload), so each event is serialized once by
protobuf as a template and the variable bytes are spliced in; the records go
through TensorFlow's own `TFRecordWriter` (C++ CRC). The smoke test checks
that every record equals what protobuf serializes for the same Event and
that the files read back to the generated numbers.

Generated run directories are cached under `benchmarks/out/pool/` and
hard-linked into logdirs of any number of runs, so a 50-run logdir reuses
the runs of the 10-run one.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import struct

import numpy as np
from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
from tensorboard.plugins.scalar import metadata as scalar_metadata

from tb_gradhealth import metadata

OUT_DIR = pathlib.Path(__file__).resolve().parent / "out"
GRADIENT_HEALTH = "gradient_health"
SCALARS = "scalars"
LAYOUTS = (GRADIENT_HEALTH, SCALARS)
STATS = metadata.BUILTIN_STATS

# Wall time of step 0 and the time between logged steps (s): a run of 10,000
# steps spans ~17 minutes, as a small model trained on a CPU would.
_WALL_TIME_START_S = 1_700_000_000.0
_WALL_TIME_PER_STEP_S = 0.1
# Wall times of different runs are this far apart (s).
_WALL_TIME_PER_RUN_S = 10_000.0
_FILE_VERSION = "brain.Event:2"
# Fixed so that every file is reproducible.
_HOST = "bench"
_STEPS_PER_CHUNK = 1_000  # steps generated and written per numpy batch


def layer_names(n_layers: int) -> list[str]:
    """Layer names in model order, as Keras would name Dense layers (`dense`, `dense_1`, ...)."""
    return ["dense" if index == 0 else "dense_%d" % index for index in range(n_layers)]


def scalar_tag(stat: str, layer: str) -> str:
    """Tag of one statistic of one layer in the scalars layout."""
    return "%s/%s" % (stat, layer)


def scalar_tags(n_layers: int) -> list[str]:
    """Every tag of the scalars layout, in the order each step writes them."""
    return [scalar_tag(stat, layer) for stat in STATS for layer in layer_names(n_layers)]


def run_name(index: int) -> str:
    return "run_%03d" % index


def run_values(run_index: int, n_steps: int, n_layers: int, first_step: int = 0) -> np.ndarray:
    """Returns float32 `[n_steps, len(STATS), n_layers]`: healthy-looking statistics of one run.

    Deterministic in (run_index, step): any chunk of steps can be generated
    on its own. Gradient norms grow ~20x from the input layer to the output
    one and decay slowly over training, with noise; weights grow slowly;
    updates move the weights by ~1e-3; no NaN/Inf.
    """
    rng = np.random.default_rng([run_index, first_step, n_layers])
    steps = np.arange(first_step, first_step + n_steps, dtype=np.float64)[:, None]
    depth = np.linspace(-3.0, 0.0, n_layers)[None, :]
    noise = rng.lognormal(0.0, 0.3, size=(n_steps, n_layers))
    grad_norm = np.exp(depth) * (1.0 + 1.0 / (1.0 + steps / 500.0)) * noise
    grad_norm_max = grad_norm * (1.0 + rng.exponential(0.05, size=(n_steps, n_layers)))
    grad_max_abs = grad_norm * 0.1 * rng.uniform(0.5, 1.5, size=(n_steps, n_layers))
    nonfinite = np.zeros((n_steps, n_layers))
    weight_norm = 10.0 + np.sqrt(steps) * 0.01 + 0.01 * rng.standard_normal((n_steps, n_layers))
    update_ratio = 1e-3 * rng.lognormal(0.0, 0.2, size=(n_steps, n_layers))
    columns = {
        metadata.GRAD_NORM: grad_norm,
        metadata.GRAD_NORM_MAX: grad_norm_max,
        metadata.GRAD_MAX_ABS: grad_max_abs,
        metadata.NONFINITE: nonfinite,
        metadata.WEIGHT_NORM: weight_norm,
        metadata.UPDATE_RATIO: update_ratio,
    }
    return np.stack([columns[stat] for stat in STATS], axis=1).astype(np.float32)


def wall_time(run_index: int, step: int) -> float:
    return _WALL_TIME_START_S + run_index * _WALL_TIME_PER_RUN_S + step * _WALL_TIME_PER_STEP_S


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


# Event fields 1 (wall_time, double) and 2 (step, int64) come before field 5
# (summary); protobuf serializes fields in number order and omits a zero
# step, so "head + serialized summary" is exactly the Event's serialization.
_WALL_TIME_KEY = b"\x09"
_STEP_KEY = b"\x10"
_SUMMARY_KEY = b"\x2a"


def event_head(wall_time_s: float, step: int) -> bytes:
    """Serialized Event fields wall_time and step (what precedes the summary)."""
    head = _WALL_TIME_KEY + struct.pack("<d", wall_time_s)
    if step:
        head += _STEP_KEY + _varint(step)
    return head


def _summary_field(summary_bytes: bytes) -> bytes:
    return _SUMMARY_KEY + _varint(len(summary_bytes)) + summary_bytes


def _split_at_payload(summary: summary_pb2.Summary, payload: bytes) -> tuple[bytes, bytes]:
    """Serializes `summary` (holding the unique `payload`) and returns the bytes before and after it."""
    serialized = summary.SerializeToString()
    at = serialized.find(payload)
    if at < 0 or serialized.find(payload, at + 1) >= 0:
        raise AssertionError("template payload is not unique in the serialized summary")
    return serialized[:at], serialized[at + len(payload) :]


def gradient_health_value(stat: str, layers: list[str], vector: np.ndarray, with_metadata: bool) -> summary_pb2.Summary:
    """The Summary `tf.summary.write(tag, vector, metadata=...)` writes for one statistic of one step."""
    value = summary_pb2.Summary.Value(
        tag=metadata.tag_for_stat(stat),
        tensor=tensor_pb2.TensorProto(
            dtype=types_pb2.DT_FLOAT,
            tensor_shape=tensor_shape_pb2.TensorShapeProto(
                dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=len(layers))]
            ),
            tensor_content=np.asarray(vector, dtype="<f4").tobytes(),
        ),
    )
    if with_metadata:
        value.metadata.CopyFrom(metadata.create_summary_metadata(stat, layers))
    return summary_pb2.Summary(value=[value])


def scalar_value(tag: str, number: np.float32) -> summary_pb2.Summary:
    """The Summary `tf.summary.scalar(tag, number)` writes (float32 scalar, metadata on every event)."""
    value = summary_pb2.Summary.Value(
        tag=tag,
        tensor=tensor_pb2.TensorProto(
            dtype=types_pb2.DT_FLOAT,
            tensor_shape=tensor_shape_pb2.TensorShapeProto(),
            tensor_content=np.asarray(number, dtype="<f4").tobytes(),
        ),
        metadata=summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=scalar_metadata.PLUGIN_NAME)
        ),
    )
    return summary_pb2.Summary(value=[value])


def _sentinel(n_floats: int) -> bytes:
    # Distinct non-repeating bytes, so the payload is found at one place only.
    return bytes((index * 37 + 11) % 251 for index in range(4 * n_floats))


def _steps(run_index: int, n_steps: int, n_layers: int):
    """Yields (step, its Event's serialized head, its float32 values [n_stats, n_layers]), generated in chunks."""
    for first in range(0, n_steps, _STEPS_PER_CHUNK):
        count = min(_STEPS_PER_CHUNK, n_steps - first)
        values = run_values(run_index, count, n_layers, first_step=first).astype("<f4", copy=False)
        for offset in range(count):
            step = first + offset
            yield step, event_head(wall_time(run_index, step), step), values[offset]


def gradient_health_records(run_index: int, n_steps: int, n_layers: int):
    """Yields the serialized Events of one run in the Gradient Health layout, file version first."""
    layers = layer_names(n_layers)
    yield event_pb2.Event(wall_time=wall_time(run_index, 0), file_version=_FILE_VERSION).SerializeToString()
    sentinel = _sentinel(n_layers)
    templates = []
    for stat in STATS:
        summary = gradient_health_value(stat, layers, np.frombuffer(sentinel, "<f4"), with_metadata=False)
        before, after = _split_at_payload(summary, sentinel)
        templates.append((before, after))
    for step, head, row in _steps(run_index, n_steps, n_layers):
        for column, stat in enumerate(STATS):
            if step == 0:
                summary_bytes = gradient_health_value(stat, layers, row[column], True).SerializeToString()
            else:
                before, after = templates[column]
                summary_bytes = before + row[column].tobytes() + after
            yield head + _summary_field(summary_bytes)


def scalar_records(run_index: int, n_steps: int, n_layers: int):
    """Yields the serialized Events of one run in the scalars layout, file version first."""
    yield event_pb2.Event(wall_time=wall_time(run_index, 0), file_version=_FILE_VERSION).SerializeToString()
    sentinel = _sentinel(1)
    # Every tag's template, in write order; the summary is the last Event
    # field, so its length prefix is fixed per tag and part of the template.
    templates = []
    for tag in scalar_tags(n_layers):
        before, after = _split_at_payload(scalar_value(tag, np.frombuffer(sentinel, "<f4")[0]), sentinel)
        length = len(before) + len(sentinel) + len(after)
        templates.append((_SUMMARY_KEY + _varint(length) + before, after))
    for _, head, row in _steps(run_index, n_steps, n_layers):
        payloads = row.tobytes()
        for index, (before, after) in enumerate(templates):
            yield head + before + payloads[4 * index : 4 * index + 4] + after


_RECORDS = {GRADIENT_HEALTH: gradient_health_records, SCALARS: scalar_records}
_SUFFIX = {GRADIENT_HEALTH: ".gradient_health", SCALARS: ".v2"}


def event_file_name(layout: str, run_index: int) -> str:
    # TensorBoard reads files whose name contains "tfevents".
    return "events.out.tfevents.%010d.%s.%d.0%s" % (int(wall_time(run_index, 0)), _HOST, run_index, _SUFFIX[layout])


def write_run(run_dir: pathlib.Path, layout: str, run_index: int, n_steps: int, n_layers: int) -> pathlib.Path:
    """Writes one run's event file into `run_dir` and returns its path."""
    # TensorFlow is imported here only: reading the logdirs does not need it.
    import tensorflow as tf

    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / event_file_name(layout, run_index)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in _RECORDS[layout](run_index, n_steps, n_layers):
            writer.write(record)
    return path


@dataclasses.dataclass(frozen=True)
class LogdirSpec:
    """A benchmark logdir: `runs` runs x `layers` layers x `steps` logged steps in one layout."""

    layout: str
    runs: int
    layers: int
    steps: int

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError("layout must be one of %s, got %r" % (LAYOUTS, self.layout))
        if min(self.runs, self.layers, self.steps) < 1:
            raise ValueError("runs, layers and steps must be >= 1")

    @property
    def pool_key(self) -> str:
        return "%s-l%d-s%d" % (self.layout, self.layers, self.steps)

    @property
    def name(self) -> str:
        return "%s-r%d-l%d-s%d" % (self.layout, self.runs, self.layers, self.steps)

    @property
    def last_scalar_tag(self) -> str:
        """The tag each step of the scalars layout writes last."""
        return scalar_tags(self.layers)[-1]


def build_logdir(spec: LogdirSpec, out_dir: pathlib.Path = OUT_DIR, log=print) -> pathlib.Path:
    """Returns a logdir for `spec`, generating (and caching) the runs it lacks.

    Runs are generated once into `out_dir/pool/<layout-layers-steps>/` and
    hard-linked into `out_dir/logdirs/<spec.name>/<run>/`.
    """
    pool = out_dir / "pool" / spec.pool_key
    logdir = out_dir / "logdirs" / spec.name
    for index in range(spec.runs):
        name = run_name(index)
        done = pool / (name + ".done")
        source_dir = pool / name
        if not done.exists():
            log("generating %s/%s" % (spec.pool_key, name))
            if source_dir.exists():
                for stale in source_dir.iterdir():
                    stale.unlink()
            write_run(source_dir, spec.layout, index, spec.steps, spec.layers)
            done.touch()
        target_dir = logdir / name
        target_dir.mkdir(parents=True, exist_ok=True)
        for source in source_dir.iterdir():
            target = target_dir / source.name
            if not target.exists():
                os.link(source, target)
    return logdir


def logdir_bytes(logdir: pathlib.Path) -> int:
    """Total size of the event files under `logdir`."""
    return sum(path.stat().st_size for path in logdir.rglob("*tfevents*"))
