"""Gradient health for custom training loops: apply the gradients through a recorder that records each step."""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Iterable, Sequence

import tensorflow as tf

from tb_gradhealth.capture import run_dirs
from tb_gradhealth.capture.event_file import open_event_file
from tb_gradhealth.capture.layers import group_by_layer, groups_from_pairs, in_forward_order, variable_key
from tb_gradhealth.capture.recorder import LayerSetRecorder, NonFiniteStep, StepNumbers, read_iterations
from tb_gradhealth.capture.reductions import in_xla_context
from tb_gradhealth.capture.step_buffer import DEFAULT_BUFFER_STEPS, DEFAULT_UPDATE_FREQ, DroppedSteps, check_steps
from tb_gradhealth.layer_sets import LayerSetTags


class GradientHealthRecorder:
    """Records per-layer gradient health in a `tf.GradientTape` training loop.

    Replace `optimizer.apply_gradients(zip(grads, variables))` with
    `recorder.apply_gradients(optimizer, grads, variables, loss=loss)`: it
    applies the update and records the statistics of that exact step, and
    its loss, eagerly or inside a `tf.function` (also under a distribution
    strategy's `run`)::

        recorder = GradientHealthRecorder("logs/run1", model)
        for x, y in dataset:
            train_step(x, y)        # calls recorder.apply_gradients(...)
        recorder.close()

    A step is one optimizer update, numbered like `optimizer.iterations`.
    The rows are the model's layers that own the variables given to
    `apply_gradients`, input -> output (in the order a traced step uses
    them); other variables given to `apply_gradients` change the set of
    layers (written under tags of its own, docs/capture.md).

    Rows are buffered in the graph and written when the buffer fills; inside
    an XLA-compiled step (`jit_compile=True`) summaries cannot be written, so
    call `recorder.flush()` at least every `buffer_steps` logged steps (e.g.
    after each epoch). `close()` writes the rest, including the last step when
    it was not a logged one.

    Args:
      logdir: the run directory to write into.
      model: a Keras model (or layer); its layers with trainable variables
        become the rows.
      layers: instead of `model`, `(name, variables)` pairs in row order.
      update_freq: log every this many steps (see `GradientHealthCallback`).
      buffer_steps: logged steps held in the graph between writes.
      stop_on_nonfinite: keep the first step whose gradient has a NaN or Inf
        element in `nonfinite`, for the loop to stop on.
    """

    def __init__(
        self,
        logdir: str,
        model=None,
        *,
        layers: Iterable[tuple[str, Sequence]] | None = None,
        update_freq: int = DEFAULT_UPDATE_FREQ,
        buffer_steps: int = DEFAULT_BUFFER_STEPS,
        stop_on_nonfinite: bool = False,
    ):
        if (model is None) == (layers is None):
            raise ValueError("pass exactly one of model= and layers=")
        self.update_freq = check_steps("update_freq", update_freq)
        self.buffer_steps = check_steps("buffer_steps", buffer_steps)
        self.stop_on_nonfinite = bool(stop_on_nonfinite)
        self._model = model
        self._groups = groups_from_pairs(layers) if layers is not None else None
        self.logdir = os.fspath(logdir)
        strategy = getattr(model, "distribute_strategy", None) if model is not None else None
        self._writer = open_event_file(self.logdir, strategy, type(self).__name__)
        self._layer_sets = LayerSetTags(self.logdir)
        self._numbers = StepNumbers(counting=False)
        self._started = False
        self._optimizer = None
        # One per set of variables given to apply_gradients, by that set.
        self._recorders: dict = {}
        self._recorder: LayerSetRecorder | None = None
        self._lock = threading.Lock()
        self._warned_xla = False
        self._dropped = DroppedSteps(type(self).__name__)
        self._nonfinite: NonFiniteStep | None = None

    @property
    def layer_names(self) -> tuple[str, ...]:
        """The rows recorded last (with `model=`, known once the first step ran or was traced)."""
        if self._recorder is not None:
            return self._recorder.layer_names
        if self._groups is not None:
            return tuple(group.name for group in self._groups)
        raise RuntimeError("layer names are known once the first step ran or was traced")

    @property
    def nonfinite(self) -> NonFiniteStep | None:
        """With `stop_on_nonfinite`: the first recorded step with a non-finite gradient, or None.

        Reads one number from the device while there was none: check it after
        each step (from Python, not inside a `tf.function`) and stop the loop
        when it is set.
        """
        if not self.stop_on_nonfinite:
            raise RuntimeError("%s keeps the first non-finite step with stop_on_nonfinite=True" % type(self).__name__)
        if self._nonfinite is None and self._recorder is not None:
            self._nonfinite = self._recorder.first_nonfinite()
        return self._nonfinite

    def _recorder_for(self, optimizer, variables: Sequence) -> LayerSetRecorder:
        # Explicit rows are one set whatever the variables given.
        key = frozenset(variable_key(v) for v in variables) if self._groups is None else None
        with self._lock:
            recorder = self._recorders.get(key)
            if recorder is not None:
                self._recorder = recorder
                return recorder
            if self._groups is not None:
                groups = self._groups
            else:
                graph = None if tf.executing_eagerly() else tf.compat.v1.get_default_graph()
                groups = [
                    group
                    for group in group_by_layer(self._model)
                    if any(variable_key(v) in key for v in group.variables)
                ]
                if not groups:
                    raise ValueError("none of the variables given to apply_gradients belongs to the model")
                groups = in_forward_order(groups, graph)
            if not self._started:
                self._started = True
                self._numbers.start(read_iterations(optimizer), run_dirs.next_free_step(self.logdir))
            names = [group.name for group in groups]
            recorder = LayerSetRecorder(
                groups,
                self.buffer_steps,
                self.update_freq,
                self._numbers,
                layer_set=self._layer_sets.layer_set(names),
                watch_nonfinite=self.stop_on_nonfinite,
            )
            recorder.buffer.attach_writer(self._writer)
            run_dirs.register(self.logdir, recorder.buffer)
            self._recorders[key] = self._recorder = recorder
            return recorder

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
        if self._writer is None:
            raise RuntimeError("%s is closed" % type(self).__name__)
        grads = list(grads)
        variables = list(variables)
        if in_xla_context() and not self._warned_xla:
            self._warned_xla = True
            warnings.warn(
                "%s inside jit_compile: call its flush() at least every %d logged steps, or rows are dropped"
                % (type(self).__name__, self.buffer_steps),
                stacklevel=2,
            )
        self._optimizer = optimizer
        recorder = self._recorder_for(optimizer, variables)
        recorder.apply(optimizer, optimizer.apply, grads, variables, loss=loss, flush_when_full=True)

    def flush(self) -> None:
        """Writes the buffered rows to disk (call from Python, not inside a tf.function)."""
        for recorder in list(self._recorders.values()):
            self._dropped.update(recorder.buffer, recorder.buffer.flush())
        self._writer.flush()
        self._dropped.warn_if_more()

    def close(self) -> None:
        """Writes everything still buffered, including the last unlogged step, and closes the file."""
        if self._writer is None:
            return
        try:
            for recorder in list(self._recorders.values()):
                self._dropped.update(recorder.buffer, recorder.buffer.flush(include_pending=True))
                run_dirs.unregister(self.logdir, recorder.buffer)
            self._writer.flush()
            if self._optimizer is not None:
                run_dirs.note_next_free_step(self.logdir, self._numbers.next_step(self._optimizer))
        finally:
            self._writer.close()
            self._writer = None
        self._dropped.warn_if_more()

    def __enter__(self) -> GradientHealthRecorder:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


# The name this class had first; it keeps working.
GradientHealthWriter = GradientHealthRecorder
