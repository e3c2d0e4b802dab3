"""Keras callback that records per-layer gradient health of every `fit` step into TensorBoard event files."""

from __future__ import annotations

import functools
import os
import warnings

import keras
import tensorflow as tf

from tb_gradhealth.capture.layers import group_by_layer
from tb_gradhealth.capture.recorder import StepRecorder
from tb_gradhealth.capture.step_loss import FROM_COMPUTE_LOSS, FROM_SCALE_LOSS, StepLoss
from tb_gradhealth.capture.writer import open_summary_writer

# Logged steps kept in the graph between two writes by the host. At
# update_freq=1 the host writes every this many steps; 128 rows of 100 layers
# take 300 KiB.
DEFAULT_BUFFER_STEPS = 128
# Same subdirectory as keras.callbacks.TensorBoard, so both share a log_dir.
TRAIN_SUBDIR = "train"
# Attribute of our method wrappers: the instance-level method each replaced (or None).
_WRAPS = "_gradient_health_wraps"


def _original_method(owner, name: str):
    """`owner.name` as it is without our wrappers (one left by a fit that raised is skipped)."""
    previous = vars(owner).get(name)
    while previous is not None and hasattr(previous, _WRAPS):
        previous = getattr(previous, _WRAPS)
    return previous


def _wrap_method(owner, name: str, make_wrapper) -> None:
    """Sets the instance attribute `owner.name` to `make_wrapper(original bound method)`."""
    previous = _original_method(owner, name)
    original = previous if previous is not None else getattr(type(owner), name).__get__(owner)
    wrapper = functools.wraps(original)(make_wrapper(original))
    setattr(wrapper, _WRAPS, previous)
    object.__setattr__(owner, name, wrapper)


def _unwrap_method(owner, name: str) -> None:
    wrapper = vars(owner).get(name)
    if wrapper is None or not hasattr(wrapper, _WRAPS):
        return
    previous = getattr(wrapper, _WRAPS)
    if previous is not None:
        object.__setattr__(owner, name, previous)
    else:
        object.__delattr__(owner, name)


def _logged_steps_between(first: int, end: int, update_freq: int) -> int:
    """Number of multiples of `update_freq` in [first, end)."""
    if end <= first:
        return 0
    return (end - 1) // update_freq - (first - 1) // update_freq


class GradientHealthCallback(keras.callbacks.Callback):
    """Records the gradient health of each layer during `model.fit`.

    For every layer that owns trainable variables (input -> output) it
    records `grad_norm`, `grad_norm_max`, `grad_max_abs`, `nonfinite`,
    `weight_norm` and `update_ratio` of the gradient the optimizer applies,
    into `<log_dir>/train` (next to `keras.callbacks.TensorBoard`'s files).

    It wraps the optimizer's `apply` for the duration of `fit`: each step's
    statistics are reduced in the graph (XLA-compatible) into a small
    buffer, and the host writes the buffer every `buffer_steps` logged
    steps, at the end of each epoch and at the end of training; the host is
    not woken per step.

    Args:
      log_dir: the run's log directory, as for `keras.callbacks.TensorBoard`.
      update_freq: write every this many steps (steps whose number is a
        multiple of it); `grad_norm_max` and `nonfinite` cover all steps since
        the previous write, and the last step of training is always written
        when later steps were not.
      buffer_steps: logged steps held in the graph between writes.
    """

    def __init__(self, log_dir: str = "logs", update_freq: int = 1, buffer_steps: int = DEFAULT_BUFFER_STEPS):
        super().__init__()
        if isinstance(update_freq, bool) or not isinstance(update_freq, int) or update_freq < 1:
            raise ValueError("update_freq must be a positive number of steps, got %r" % (update_freq,))
        if isinstance(buffer_steps, bool) or not isinstance(buffer_steps, int) or buffer_steps < 1:
            raise ValueError("buffer_steps must be a positive number of steps, got %r" % (buffer_steps,))
        self.log_dir = os.fspath(log_dir)
        self.update_freq = update_freq
        self.buffer_steps = buffer_steps
        self._recorder: StepRecorder | None = None
        self._recorded_model = None
        self._writer = None
        # Train functions: Keras's own (restored after fit) and ours (reused by
        # a later fit of the same compiled model, so it is traced once).
        self._keras_train_function = None
        # Ours, by the recorder's `logged_mode` they were traced with: with
        # one step per execution the host knows which steps are logged and
        # runs a function without the logged-step work on the others (each
        # graph op costs ~10 us on a 2-core CPU, about as much as the
        # arithmetic of a small model's step); otherwise one function decides
        # in the graph (key None).
        self._instrumented_train_functions: dict = {}
        self._instrumented_for = None
        self._wrapped_optimizer = None
        self._step_loss = StepLoss()
        # Host-side mirror of the step counter, so the host knows when the
        # buffer fills without reading the device.
        self._next_step = 0
        self._epoch_first_step = 0
        self._rows_buffered = 0
        self._dropped = 0
        self._dropped_reported = 0

    @property
    def run_dir(self) -> str:
        return os.path.join(self.log_dir, TRAIN_SUBDIR)

    @property
    def layer_names(self) -> tuple[str, ...]:
        """Layer names in row order (available once training started)."""
        if self._recorder is None:
            raise RuntimeError("layer names are known once fit has started")
        return self._recorder.layer_names

    def _rows_per_execution(self) -> int:
        steps = max(1, int(getattr(self.model, "steps_per_execution", 1) or 1))
        return -(-steps // self.update_freq)

    def _make_recorder(self, model) -> None:
        optimizer = model.optimizer
        if optimizer is None:
            raise ValueError("GradientHealthCallback needs a compiled model (model.compile(optimizer=...))")
        if not optimizer.built:
            optimizer.build(model.trainable_variables)
        capacity = max(self.buffer_steps, self._rows_per_execution())
        self._recorder = StepRecorder(group_by_layer(model), capacity, self.update_freq)
        self._recorded_model = model

    def _install(self, model) -> None:
        optimizer = model.optimizer
        recorder = self._recorder
        step_loss = self._step_loss

        def apply_wrapper(original):
            def apply(grads, trainable_variables=None):
                return recorder.apply(optimizer, original, grads, trainable_variables, loss=step_loss.take())

            return apply

        def scale_loss_wrapper(original):
            def scale_loss(loss):
                step_loss.note(loss, FROM_SCALE_LOSS)
                return original(loss)

            return scale_loss

        def compute_loss_wrapper(original):
            def compute_loss(*args, **kwargs):
                loss = original(*args, **kwargs)
                step_loss.note(loss, FROM_COMPUTE_LOSS)
                return loss

            return compute_loss

        # An instance-level method left by a fit that raised (Keras then
        # skips on_train_end) is one of ours: it is replaced, never wrapped.
        _wrap_method(optimizer, "apply", apply_wrapper)
        _wrap_method(optimizer, "scale_loss", scale_loss_wrapper)
        _wrap_method(model, "compute_loss", compute_loss_wrapper)
        self._wrapped_optimizer = optimizer
        # Keras built (but did not trace) its train function before
        # on_train_begin; ours must be traced with the wrapped apply.
        if model.train_function not in self._instrumented_train_functions.values():
            self._keras_train_function = model.train_function
        modes = (True, False) if self._host_picks_logged_steps() else (None,)
        key = (id(self._keras_train_function), id(optimizer), modes)
        if self._instrumented_for != key:
            functions = {}
            for mode in modes:
                # Each traces on its first call, with the recorder's mode set
                # to `mode` (by on_train_batch_begin, or below).
                model.make_train_function(force=True)
                functions[mode] = model.train_function
            self._instrumented_train_functions = functions
            self._instrumented_for = key
        self._select_train_function(modes[0])

    def _host_picks_logged_steps(self) -> bool:
        return self.update_freq > 1 and int(getattr(self.model, "steps_per_execution", 1) or 1) == 1

    def _select_train_function(self, mode) -> None:
        self._recorder.logged_mode = mode
        self.model.train_function = self._instrumented_train_functions[mode]

    def _uninstall(self, model) -> None:
        optimizer = self._wrapped_optimizer
        if optimizer is not None:
            _unwrap_method(optimizer, "apply")
            _unwrap_method(optimizer, "scale_loss")
        _unwrap_method(model, "compute_loss")
        self._wrapped_optimizer = None
        if model.train_function in self._instrumented_train_functions.values():
            model.train_function = self._keras_train_function
        if self._recorder is not None:
            self._recorder.logged_mode = None

    def on_train_begin(self, logs=None):
        model = self.model
        if self._recorder is None:
            self._make_recorder(model)
        elif model is not self._recorded_model:
            raise ValueError(
                "this GradientHealthCallback records model %r; use a new callback for another model"
                % self._recorded_model.name
            )
        if self._rows_per_execution() > self._recorder.ring.capacity:
            raise ValueError(
                "steps_per_execution=%d logs more steps per execution than buffer_steps=%d holds"
                % (model.steps_per_execution, self._recorder.ring.capacity)
            )
        if self._writer is None:
            # Opened before the optimizer is wrapped, so an unwritable log_dir
            # fails here, before any step, leaving the model as it was. One
            # file per callback, kept open across fit calls so the traced
            # flush is reused; each fit ends with its data on disk.
            self._writer = open_summary_writer(self.run_dir, model.distribute_strategy, type(self).__name__)
            self._recorder.ring.attach_writer(self._writer)
        self._install(model)
        self._recorder.ring.start_at(_to_int(model.optimizer.iterations))
        # Also writes what a fit that raised (no on_train_end) left behind,
        # and syncs the host's step count with the device's.
        self._flush()
        self._epoch_first_step = self._next_step

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_first_step = self._next_step

    def on_train_batch_begin(self, batch, logs=None):
        # Only integer arithmetic per execution; the device is read when the
        # buffer could overflow during the coming execution.
        first = self._epoch_first_step + batch
        rows = _logged_steps_between(first, first + int(self.model.steps_per_execution), self.update_freq)
        if self._rows_buffered + rows > self._recorder.ring.capacity:
            self._flush()
        self._rows_buffered += rows
        if len(self._instrumented_train_functions) > 1:
            self._select_train_function(first % self.update_freq == 0)

    def on_epoch_end(self, epoch, logs=None):
        self._flush()

    def on_train_end(self, logs=None):
        try:
            self._flush(include_pending=True)
            self._writer.flush()
        finally:
            self._uninstall(self.model)
        if self._dropped > self._dropped_reported:
            warnings.warn(
                "GradientHealthCallback dropped %d logged steps because its buffer was full"
                % (self._dropped - self._dropped_reported),
                stacklevel=2,
            )
            self._dropped_reported = self._dropped

    def _flush(self, include_pending: bool = False) -> None:
        self._next_step, self._dropped = self._recorder.ring.flush(include_pending)
        self._rows_buffered = 0


def _to_int(value) -> int:
    return int(tf.convert_to_tensor(value).numpy())
