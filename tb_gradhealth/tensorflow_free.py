"""Which paths the package reads and writes without TensorFlow: local ones, through Python's own file I/O.

TensorFlow takes seconds to import and writes to stderr. TensorBoard's own
event-file I/O goes through `tensorboard.compat.tf`, which is TensorFlow
whenever it is installed, and resolving that to TensorBoard's stub would
change it for the whole process (`tf.summary` is TensorBoard's too). So the
numpy writer (`summary.LocalEventFileWriter`) and the command line's reader
(`local_logdir.LocalLogdir`) do their own I/O on local paths, and leave
remote ones (`gs://`, `s3://`), which only TensorFlow's file systems read,
to TensorBoard.
"""

from __future__ import annotations

import os


def is_remote(path: str) -> bool:
    """Whether `path` is on a file system only TensorFlow reads (`gs://`, `s3://`, `hdfs://`)."""
    return "://" in os.fspath(path)
