"""Gradient health for custom training loops: apply the gradients through a writer that records them."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence

import keras
import tensorflow as tf

from tb_gradhealth.capture.layers import group_by_layer, groups_from_pairs
from tb_gradhealth.capture.recorder import StepRecorder
from tb_gradhealth.capture.reductions import in_xla_context
from tb_gradhealth.capture.writer import open_summary_writer

# Logged steps held in the graph before they are written (see keras_callback).
DEFAULT_BUFFER_STEPS = 128


class GradientHealthWriter:
    """Records per-layer gradient health in a `tf.GradientTape` training loop.

    Replace `optimizer.apply_gradients(zip(grads, variables))` with
    `writer.apply_gradients(optimizer, grads, variables)`: it applies the
    update and records the statistics of that exact step, eagerly or inside a
    `tf.function` (also under a distribution strategy's `run`)::

        writer = GradientHealthWriter("logs/run1", model)
        for x, y in dataset:
            train_step(x, y)        # calls writer.apply_gradients(...)
        writer.close()

    Rows are buffered in the graph and written when the buffer fills; inside
    an XLA-compiled step (`jit_compile=True`) summaries cannot be written, so
    call `writer.flush()` at least every `buffer_steps` logged steps (e.g.
    after each epoch). `close()` writes the rest, including the last step when
    it was not a logged one.

    Args:
      logdir: the run directory to write into.
      model: a built Keras model (or layer); its layers with trainable
        variables become the rows, input -> output.
      layers: instead of `model`, `(name, variables)` pairs in row order.
      update_freq: log every this many steps (see `GradientHealthCallback`).
      buffer_steps: logged steps held in the graph between writes.
    """

    def __init__(
        self,
        logdir: str,
        model=None,
        *,
        layers: Iterable[tuple[str, Sequence]] | None = None,
        update_freq: int = 1,
        buffer_steps: int = DEFAULT_BUFFER_STEPS,
    ):
        if (model is None) == (layers is None):
            raise ValueError("pass exactly one of model= and layers=")
        groups = group_by_layer(model) if model is not None else groups_from_pairs(layers)
        self._recorder = StepRecorder(groups, buffer_steps, update_freq)
        self.logdir = os.fspath(logdir)
        strategy = getattr(model, "distribute_strategy", None) if model is not None else None
        self._writer = open_summary_writer(self.logdir, strategy, type(self).__name__)
        self._recorder.ring.attach_writer(self._writer)
        self._warned_xla = False
        self._dropped_reported = 0

    @property
    def layer_names(self) -> tuple[str, ...]:
        return self._recorder.layer_names

    def apply_gradients(self, optimizer, grads: Sequence, variables: Sequence, *, loss=None) -> None:
        """Applies `grads` to `variables` with `optimizer` and records the step.

        Under a `LossScaleOptimizer` pass the scaled gradients, as to its own
        `apply_gradients`; the recorded values are unscaled.

        Args:
          optimizer: a Keras optimizer.
          grads, variables: as for `optimizer.apply(grads, variables)`.
          loss: the scalar loss the gradients came from, before
            `optimizer.scale_loss` (inside `strategy.run`, the replica's
            loss, whose gradients the replicas' sum); recorded as the step's
            `loss`. None records no loss.
        """
        grads = list(grads)
        variables = list(variables)
        if isinstance(optimizer, keras.optimizers.LossScaleOptimizer) and not optimizer.built:
            # The loss scale is read before the update: it must exist first.
            with keras.name_scope(optimizer.name, caller=optimizer):
                optimizer.build(variables)
        if in_xla_context() and not self._warned_xla:
            self._warned_xla = True
            warnings.warn(
                "GradientHealthWriter inside jit_compile: call writer.flush() at least every "
                "%d logged steps, or rows are dropped" % self._recorder.ring.capacity,
                stacklevel=2,
            )
        with tf.init_scope():
            # Numbering starts at the optimizer's step count (eagerly, also
            # when this runs while a tf.function traces).
            self._recorder.ring.start_at(int(tf.convert_to_tensor(optimizer.iterations).numpy()))
        self._recorder.apply(optimizer, optimizer.apply, grads, variables, loss=loss, flush_when_full=True)

    def flush(self) -> None:
        """Writes the buffered rows to disk (call from Python, not inside a tf.function)."""
        _, dropped = self._recorder.ring.flush()
        self._writer.flush()
        self._warn_dropped(dropped)

    def close(self) -> None:
        """Writes everything still buffered, including the last unlogged step, and closes the file."""
        if self._writer is None:
            return
        try:
            _, dropped = self._recorder.ring.flush(include_pending=True)
            self._writer.flush()
        finally:
            self._writer.close()
            self._writer = None
        self._warn_dropped(dropped)

    def _warn_dropped(self, dropped: int) -> None:
        if dropped > self._dropped_reported:
            warnings.warn(
                "GradientHealthWriter dropped %d logged steps: its buffer was full"
                % (dropped - self._dropped_reported),
                stacklevel=2,
            )
            self._dropped_reported = dropped

    def __enter__(self) -> GradientHealthWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
