"""Keras callback that records per-layer gradient health of every `fit` step into TensorBoard event files."""

from __future__ import annotations

import os
import threading

import keras
import tensorflow as tf
from keras.src.utils import io_utils  # how Keras's own callbacks print (TerminateOnNaN)

from tb_gradhealth.capture import run_dirs
from tb_gradhealth.capture.event_file import open_event_file
from tb_gradhealth.capture.keras_hooks import ModelHooks
from tb_gradhealth.capture.layers import group_by_layer, in_forward_order, variable_key
from tb_gradhealth.capture.recorder import LayerSetRecorder, NonFiniteStep, StepNumbers, read_iterations
from tb_gradhealth.capture.step_buffer import DEFAULT_BUFFER_STEPS, DEFAULT_UPDATE_FREQ, DroppedSteps, check_steps
from tb_gradhealth.layer_sets import LayerSetTags

# Same subdirectory as keras.callbacks.TensorBoard, so both share a log_dir.
TRAIN_SUBDIR = "train"


def _logged_steps_between(first: int, end: int, update_freq: int) -> int:
    """Number of multiples of `update_freq` in [first, end)."""
    if end <= first:
        return 0
    return (end - 1) // update_freq - (first - 1) // update_freq


def _exact_step_count(optimizer) -> bool:
    """Whether every batch is one step, so the host can number the steps itself without reading the device."""
    return not isinstance(optimizer, keras.optimizers.LossScaleOptimizer) and not getattr(
        optimizer, "gradient_accumulation_steps", None
    )


class GradientHealthCallback(keras.callbacks.Callback):
    """Records the gradient health of each layer during `model.fit`.

    For every layer that owns trainable variables (input -> output) it
    records `grad_norm`, `grad_norm_max`, `grad_max_abs`, `nonfinite`,
    `weight_norm` and `update_ratio` of the gradient the optimizer applies,
    and the step's loss, into `<log_dir>/train` (next to
    `keras.callbacks.TensorBoard`'s files). A step is one optimizer update,
    numbered like `optimizer.iterations`.

    It hooks into the model for the duration of `fit` (see `ModelHooks`):
    each step's statistics are reduced in the graph (XLA-compatible) into a
    small buffer, and the host writes the buffer every `buffer_steps` logged
    steps, at the end of each epoch and at the end of training; the host is
    not woken per step. The layers recorded are those trainable at each
    `fit`; a new set of layers (transfer learning) is written under tags of
    its own. docs/capture.md has the details.

    Args:
      log_dir: the run's log directory, as for `keras.callbacks.TensorBoard`.
      update_freq: write every this many steps (steps whose number is a
        multiple of it); `grad_norm_max` and `nonfinite` cover all steps since
        the previous write, and the last step of training is always written
        when later steps were not.
      buffer_steps: logged steps held in the graph between writes.
      stop_on_nonfinite: stop training after the step (with
        `steps_per_execution > 1`, the execution) whose gradient has a NaN or
        Inf element, like `keras.callbacks.TerminateOnNaN`; `nonfinite` then
        says which step and layers. Reads one number from the device per
        execution.
    """

    def __init__(
        self,
        log_dir: str = "logs",
        update_freq: int = DEFAULT_UPDATE_FREQ,
        buffer_steps: int = DEFAULT_BUFFER_STEPS,
        stop_on_nonfinite: bool = False,
    ):
        super().__init__()
        self.update_freq = check_steps("update_freq", update_freq)
        self.buffer_steps = check_steps("buffer_steps", buffer_steps)
        self.log_dir = os.fspath(log_dir)
        self.stop_on_nonfinite = bool(stop_on_nonfinite)
        self.nonfinite: NonFiniteStep | None = None
        self._recorded_model = None
        self._hooks: ModelHooks | None = None
        self._writer = None
        self._layer_sets = LayerSetTags(self.run_dir)
        self._numbers = StepNumbers(counting=True)
        # One per set of trainable variables recorded, by that set.
        self._recorders: dict = {}
        self._recorder: LayerSetRecorder | None = None  # the set recorded last
        self._recorders_lock = threading.Lock()
        self._dropped = DroppedSteps(type(self).__name__)
        # Host-side mirror of the step numbers (exact when every batch is a
        # step), so the host knows when the buffer fills without reading the device.
        self._exact_steps = True
        self._next_step = 0
        self._epoch_first_step = 0
        self._rows_buffered = 0

    @property
    def run_dir(self) -> str:
        return os.path.join(self.log_dir, TRAIN_SUBDIR)

    @property
    def run_dir_key(self) -> str:
        return run_dirs.key(self.run_dir)

    @property
    def layer_names(self) -> tuple[str, ...]:
        """Layer names in row order of the layers recorded last (known once the first step was traced)."""
        if self._recorder is None:
            raise RuntimeError("layer names are known once fit has run its first step")
        return self._recorder.layer_names

    def set_model(self, model):
        super().set_model(model)
        ModelHooks.of(model).join(self)

    def _steps_per_execution(self) -> int:
        return max(1, int(getattr(self.model, "steps_per_execution", 1) or 1))

    def _rows_per_execution(self) -> int:
        return -(-self._steps_per_execution() // self.update_freq)

    def _host_picks_logged_steps(self) -> bool:
        return self.update_freq > 1 and self._steps_per_execution() == 1 and self._exact_steps

    # ------------------------------------------------------------------ hooks

    def on_train_begin(self, logs=None):
        model = self.model
        if model.optimizer is None:
            raise ValueError("GradientHealthCallback needs a compiled model (model.compile(optimizer=...))")
        if self._recorded_model is not None and model is not self._recorded_model:
            raise ValueError(
                "this GradientHealthCallback records model %r; use a new callback for another model"
                % self._recorded_model.name
            )
        if model.built and not model.trainable_weights:
            group_by_layer(model)  # raises the reason
        if self._rows_per_execution() > self.buffer_steps:
            raise ValueError(
                "steps_per_execution=%d logs more steps per execution than buffer_steps=%d holds"
                % (self._steps_per_execution(), self.buffer_steps)
            )
        if self._writer is None:
            # Opened before the model is hooked, so an unwritable log_dir
            # fails here, before any step, leaving the model as it was. One
            # file per callback, kept open across fit calls so the traced
            # flush is reused; each fit ends with its data on disk.
            self._writer = open_event_file(self.run_dir, model.distribute_strategy, type(self).__name__)
        self._recorded_model = model
        self._hooks = ModelHooks.of(model)
        self._hooks.begin(self)
        # What a fit that raised left in a buffer of this run directory is
        # written first, so its steps come before the new ones.
        run_dirs.flush_all(self.run_dir)
        self._exact_steps = _exact_step_count(model.optimizer)
        self._next_step = self._numbers.start(read_iterations(model.optimizer), run_dirs.next_free_step(self.run_dir))
        self._epoch_first_step = self._next_step
        self._rows_buffered = 0
        self.nonfinite = None
        if self.stop_on_nonfinite:
            for recorder in self._recorders.values():
                recorder.buffer.forget_nonfinite()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_first_step = self._next_step

    def on_train_batch_begin(self, batch, logs=None):
        # Only integer arithmetic per execution; the device is read when the
        # buffer could overflow during the coming execution.
        steps = self._steps_per_execution()
        first = self._epoch_first_step + batch
        if self._exact_steps:
            rows = _logged_steps_between(first, first + steps, self.update_freq)
        else:
            rows = self._rows_per_execution()
        if self._rows_buffered + rows > self.buffer_steps:
            self._flush()
        self._rows_buffered += rows
        self._next_step = first + steps
        self._hooks.authorize(first % self.update_freq == 0 if self._host_picks_logged_steps() else None)

    def on_train_batch_end(self, batch, logs=None):
        if not self.stop_on_nonfinite or self._recorder is None or self.nonfinite is not None:
            return
        self.nonfinite = self._recorder.first_nonfinite()
        if self.nonfinite is not None:
            io_utils.print_msg("GradientHealthCallback: %s; stopping training." % self.nonfinite)
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        self._flush()

    def on_train_end(self, logs=None):
        try:
            self._flush(include_pending=True)
            self._writer.flush()
            run_dirs.note_next_free_step(self.run_dir, self._numbers.next_step(self.model.optimizer))
        finally:
            self._hooks.end(self)
        self._dropped.warn_if_more()

    def fit_abandoned(self) -> None:
        """Called by `ModelHooks` when a fit of ours raised: writes what the buffers hold."""
        self._flush(include_pending=True)
        self._writer.flush()
        if self._recorded_model is not None:
            run_dirs.note_next_free_step(self.run_dir, self._numbers.next_step(self._recorded_model.optimizer))
        self._dropped.warn_if_more()

    # ------------------------------------------------------------ in the trace

    def record_step(self, optimizer, apply_fn, grads, trainable_variables=None, *, loss=None, mode=None):
        """Called while a train step is traced, where the optimizer applies `grads`: records that step."""
        recorder = self._recorder_for_trace()
        return recorder.apply(optimizer, apply_fn, grads, trainable_variables, loss=loss, logged_mode=mode)

    def _recorder_for_trace(self) -> LayerSetRecorder:
        """The recorder of the model's trainable layers now (the model is built once its step is traced)."""
        groups = group_by_layer(self.model)
        key = frozenset(variable_key(v) for group in groups for v in group.variables)
        with self._recorders_lock:
            recorder = self._recorders.get(key)
            if recorder is None:
                graph = None if tf.executing_eagerly() else tf.compat.v1.get_default_graph()
                groups = in_forward_order(groups, graph)
                names = [group.name for group in groups]
                recorder = LayerSetRecorder(
                    groups,
                    max(self.buffer_steps, self._rows_per_execution()),
                    self.update_freq,
                    self._numbers,
                    layer_set=self._layer_sets.layer_set(names),
                    watch_nonfinite=self.stop_on_nonfinite,
                )
                recorder.buffer.attach_writer(self._writer)
                run_dirs.register(self.run_dir, recorder.buffer)
                self._recorders[key] = recorder
            self._recorder = recorder
        return recorder

    # ------------------------------------------------------------------- host

    def _flush(self, include_pending: bool = False) -> None:
        for recorder in list(self._recorders.values()):
            self._dropped.update(recorder.buffer, recorder.buffer.flush(include_pending))
        self._rows_buffered = 0
