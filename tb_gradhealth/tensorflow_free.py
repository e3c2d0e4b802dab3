"""TensorBoard's event-file I/O without importing TensorFlow for local paths (TensorFlow takes seconds to import and writes to stderr)."""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
import types

from tensorboard.compat.proto import event_pb2
from tensorboard.summary.writer import event_file_writer
from tensorboard.summary.writer.record_writer import RecordWriter

# TensorBoard's `tensorboard.compat.tf` resolves, once per process, to its
# own TensorFlow stub when this module can be imported, else to TensorFlow
# if it is installed.
_NO_TENSORFLOW_MODULE = "tensorboard.compat.notf"
_lock = threading.Lock()


def is_remote(path: str) -> bool:
    """Whether `path` is on a file system only TensorFlow reads (gs://, s3://, hdfs://)."""
    return "://" in os.fspath(path)


class LocalEventFileWriter(event_file_writer.EventFileWriter):
    """TensorBoard's `EventFileWriter` for a local directory, writing with Python's own file I/O.

    TensorBoard's own opens its file through `tensorboard.compat.tf`, which
    imports TensorFlow when it is installed; resolving it to TensorBoard's
    stub instead would change it for the whole process (e.g. break a later
    `tf.summary` of the user's). The file, its name, its first event and
    the asynchronous writing are those of TensorBoard's writer.
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
    writer_class = event_file_writer.EventFileWriter if is_remote(logdir) else LocalEventFileWriter
    return writer_class(logdir, max_queue_size=max_queue_size, flush_secs=flush_secs, filename_suffix=filename_suffix)


def use_stub_for(path: str) -> None:
    """Makes TensorBoard's I/O use its stub for the rest of the process, unless `path` is remote or TensorFlow is already imported.

    Only for a program that owns its process (the command line): the choice
    is TensorBoard's, made once per process, and it also decides what
    `tf.summary` finds later (TensorFlow's `tf.summary` is TensorBoard's).
    """
    if is_remote(path) or "tensorflow" in sys.modules:
        return
    with _lock:
        from tensorboard import compat

        placed = _NO_TENSORFLOW_MODULE not in sys.modules
        if placed:
            sys.modules[_NO_TENSORFLOW_MODULE] = types.ModuleType(_NO_TENSORFLOW_MODULE)
        try:
            # Resolves the lazy module now, while the marker is there.
            dir(compat.tf)
        finally:
            if placed:
                del sys.modules[_NO_TENSORFLOW_MODULE]
