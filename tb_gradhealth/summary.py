"""Framework-neutral writer of Gradient Health summaries: numpy and TensorBoard only, no TensorFlow."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping, Sequence

import numpy as np
from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
from tensorboard.summary.writer import event_file_writer
from tensorboard.summary.writer.record_writer import RecordWriter

from tb_gradhealth import metadata, tensorflow_free
from tb_gradhealth.layer_sets import LayerSetTags

FILENAME_SUFFIX = metadata.FILENAME_SUFFIX


class LocalEventFileWriter(event_file_writer.EventFileWriter):
    """TensorBoard's `EventFileWriter` for a local directory, writing with Python's own file I/O.

    TensorBoard's own opens its file through `tensorboard.compat.tf`, which
    imports TensorFlow when it is installed (see `tensorflow_free`). The
    file, its name, its first event and the asynchronous writing are those
    of TensorBoard's writer.
    """

    def __init__(self, logdir: str, max_queue_size: int = 10, flush_secs: int = 120, filename_suffix: str = ""):
        # Not super().__init__(): that is the part that opens the file through TensorFlow.
        logdir = os.fspath(logdir)
        os.makedirs(logdir, exist_ok=True)
        self._logdir = logdir
        self._file_name = (
            os.path.join(
                logdir,
                "events.out.tfevents.%010d.%s.%s.%s"
                % (time.time(), socket.gethostname(), os.getpid(), event_file_writer._global_uid.get()),
            )
            + filename_suffix
        )
        self._general_file_writer = open(self._file_name, "wb")
        self._async_writer = event_file_writer._AsyncWriter(
            RecordWriter(self._general_file_writer), max_queue_size, flush_secs
        )
        self.add_event(
            event_pb2.Event(
                wall_time=time.time(),
                file_version="brain.Event:2",
                source_metadata=event_pb2.SourceMetadata(writer="tensorboard.summary.writer.event_file_writer"),
            )
        )
        self.flush()


def event_file_writer_for(
    logdir: str, max_queue_size: int = 10, flush_secs: int = 120, filename_suffix: str = ""
) -> event_file_writer.EventFileWriter:
    """Returns an event file writer on `logdir`: TensorBoard's own for a remote path, else a `LocalEventFileWriter`."""
    writer_class = event_file_writer.EventFileWriter if tensorflow_free.is_remote(logdir) else LocalEventFileWriter
    return writer_class(logdir, max_queue_size=max_queue_size, flush_secs=flush_secs, filename_suffix=filename_suffix)


def layer_values_tensor(values: Sequence[float] | np.ndarray) -> tensor_pb2.TensorProto:
    """Returns the float32 `[n_layers]` tensor proto of one step of one statistic."""
    vector = np.asarray(values, dtype=np.float32)
    if vector.ndim != 1 or vector.size == 0:
        raise ValueError("values must be a non-empty 1-D sequence, got shape %s" % (vector.shape,))
    return tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=vector.size)]),
        tensor_content=vector.astype("<f4", copy=False).tobytes(),
    )


def layer_stat_summary(
    stat: str,
    layers: Sequence[str],
    values: Sequence[float] | np.ndarray,
    include_metadata: bool = True,
    *,
    scope: str = metadata.SCOPE_LAYER,
    kinds: Sequence[str] | None = None,
    params: Sequence[int] | None = None,
    layer_set: str | None = None,
) -> summary_pb2.Summary:
    """Returns a `Summary` holding one step of one statistic.

    Args:
      stat: statistic name, e.g. `grad_norm` or one of your own.
      layers: layer names in model order, input -> output (`[stat]` for a
        run-level statistic).
      values: one value per layer, in the order of `layers`.
      include_metadata: TensorBoard keeps the first metadata it sees per tag,
        so writers attach it to the first value of a tag only.
      scope, kinds, params, layer_set: see `metadata.content_json`.
    """
    tensor = layer_values_tensor(values)
    if tensor.tensor_shape.dim[0].size != len(layers):
        raise ValueError("%s: got %d values for %d layers" % (stat, tensor.tensor_shape.dim[0].size, len(layers)))
    value = summary_pb2.Summary.Value(tag=metadata.tag_for_stat(stat, layer_set), tensor=tensor)
    if include_metadata:
        value.metadata.CopyFrom(
            metadata.create_summary_metadata(stat, layers, scope=scope, kinds=kinds, params=params, layer_set=layer_set)
        )
    return summary_pb2.Summary(value=[value])


class GradientHealthFileWriter:
    """Writes per-layer statistics of a run into a TensorBoard event file.

    Usable from any framework (PyTorch, JAX, numpy):

        with GradientHealthFileWriter("logs/run1") as writer:
            writer.write(step, {"grad_norm": norms}, layers=["fc1", "fc2"])

    The tab reads every statistic written this way, built-in or not.
    """

    def __init__(self, logdir: str, max_queue: int = 1024, flush_secs: int = 30):
        # TensorBoard's own writer imports TensorFlow when it is installed:
        # seconds of start-up for a numpy-only writer.
        self._writer = event_file_writer_for(
            logdir, max_queue_size=max_queue, flush_secs=flush_secs, filename_suffix=FILENAME_SUFFIX
        )
        self._layer_sets = LayerSetTags(self._writer.get_logdir())
        # Tags whose metadata this file already holds.
        self._tags_written: set[str] = set()

    @property
    def logdir(self) -> str:
        return self._writer.get_logdir()

    def write_stat(
        self,
        step: int,
        stat: str,
        values: Sequence[float] | np.ndarray,
        layers: Sequence[str],
        wall_time: float | None = None,
    ) -> None:
        """Writes one statistic (one value per layer) for one step."""
        self.write(step, {stat: values}, layers, wall_time)

    def write(
        self,
        step: int,
        stats: Mapping[str, Sequence[float] | np.ndarray],
        layers: Sequence[str],
        wall_time: float | None = None,
        *,
        loss: float | None = None,
        kinds: Sequence[str] | None = None,
        params: Sequence[int] | None = None,
    ) -> None:
        """Writes several statistics of one step, each one value per layer, as one event.

        The layers may change from one step to the next (e.g. layers frozen
        or unfrozen): each list of layers is written under tags of its own
        (docs/design.md, "Layer sets"), and the tab shows a layer as not
        recorded at the steps where it is absent.

        Args:
          step: the step number (one optimizer update).
          stats: statistic name -> one value per layer, in the order of `layers`.
          layers: layer names, input -> output, distinct.
          wall_time: seconds since the epoch; now when None.
          loss: the training loss of the step, written as the run-level
            statistic `loss`.
          kinds: optional kind of each layer (`metadata.LAYER_KINDS`).
          params: optional number of trainable parameters of each layer.

        Raises:
          ValueError: a bad name or shape, duplicate layer names, or `kinds`
            / `params` not one per layer.
        """
        layers = tuple(str(name) for name in layers)
        wall_time = time.time() if wall_time is None else float(wall_time)
        layer_set = self._layer_sets.layer_set(layers) if stats else None
        values = []
        for stat, stat_values in stats.items():
            tag = metadata.tag_for_stat(stat, layer_set)
            summary = layer_stat_summary(
                stat,
                layers,
                stat_values,
                include_metadata=tag not in self._tags_written,
                kinds=kinds,
                params=params,
                layer_set=layer_set,
            )
            values.extend(summary.value)
        if loss is not None:
            tag = metadata.tag_for_stat(metadata.LOSS)
            summary = layer_stat_summary(
                metadata.LOSS,
                [metadata.LOSS],
                [loss],
                include_metadata=tag not in self._tags_written,
                scope=metadata.SCOPE_RUN,
            )
            values.extend(summary.value)
        self._tags_written.update(value.tag for value in values)
        event = event_pb2.Event(wall_time=wall_time, step=int(step), summary=summary_pb2.Summary(value=values))
        self._writer.add_event(event)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> GradientHealthFileWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def write_layer_stats(
    logdir: str,
    step: int,
    stats: Mapping[str, Sequence[float] | np.ndarray],
    layers: Sequence[str],
    wall_time: float | None = None,
) -> None:
    """One-shot helper: writes one step of statistics into a new event file.

    Prefer a long-lived `GradientHealthFileWriter` in a training loop; this
    opens and closes a file per call.
    """
    with GradientHealthFileWriter(logdir) as writer:
        writer.write(step, stats, layers, wall_time)
