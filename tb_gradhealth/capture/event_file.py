"""Opens a capture's event-file writer: on the chief worker only, failing at once with a clear message."""

from __future__ import annotations

import tensorflow as tf

from tb_gradhealth.metadata import FILENAME_SUFFIX


def open_event_file(logdir: str, strategy: tf.distribute.Strategy | None, owner: str):
    """Returns the TensorFlow summary writer a capture writes through.

    Under a multi-worker strategy only the worker that should save summaries
    (the chief) writes; the others get a no-op writer, so one run is written,
    not one copy per worker.

    Args:
      logdir: the directory the event file goes into.
      strategy: the model's distribution strategy; None for the current one.
      owner: who asks, named in the error (e.g. `GradientHealthCallback`).

    Raises:
      OSError: the directory cannot be created or written, raised before any
        training step so no work is lost.
    """
    strategy = strategy or tf.distribute.get_strategy()
    if not getattr(strategy.extended, "should_save_summary", True):
        return tf.summary.create_noop_writer()
    try:
        return tf.summary.create_file_writer(logdir, filename_suffix=FILENAME_SUFFIX)
    except (tf.errors.OpError, OSError) as error:
        message = getattr(error, "message", None) or str(error)
        raise OSError("%s cannot write its event files into log_dir %r: %s" % (owner, logdir, message)) from error
