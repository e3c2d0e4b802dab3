"""PyTorch monitor: records per-layer gradient health of every optimizer step from the optimizer's step hooks."""

from __future__ import annotations

import atexit
import math
import os
import threading
import time
import weakref
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from tb_gradhealth import metadata
from tb_gradhealth.summary import GradientHealthFileWriter
from tb_gradhealth.torch.layers import ForwardOrder, LayerParams, group_parameters, parameter_signature, unwrap
from tb_gradhealth.torch.reductions import LayerReducer, norms_and_ratio

# Columns of the device buffer, one `[n_layers]` vector each per logged step.
# Norms are kept squared (the host takes the roots of a whole buffer); the
# gradient's and the weights' sums of squares are adjacent, so one op fills both.
_GRAD_SQ, _WEIGHT_SQ, _GRAD_MAX_ABS, _NONFINITE, _UPDATE_SQ, _GRAD_SQ_MAX = range(6)
_N_COLUMNS = 6

# Logged steps kept on the device between two copies to the host: at
# update_freq=1 the host copies and writes every this many steps.
DEFAULT_BUFFER_STEPS = 128
# A copy to the host also happens when this long has passed since the last,
# so a slow training still shows up in the tab while it runs.
DEFAULT_FLUSH_SECS = 30.0
# A step GradScaler skips while its scale is above this is no step: the
# scale, not the model, overflowed. At or below it the overflow is the
# model's own, and the step is recorded as non-finite (docs/design.md, "Steps").
GENUINE_OVERFLOW_MAX_SCALE = 1.0
# Attribute marking an optimizer or scaler a monitor has hooked.
_OWNER = "_gradient_health_monitor"

# {real path of a run directory: the next step number}, so a later monitor of
# this process continues where an earlier one stopped.
_next_step_by_dir: dict[str, int] = {}
_next_step_lock = threading.Lock()
_open_monitors: weakref.WeakSet = weakref.WeakSet()


class NonFiniteGradientError(FloatingPointError):
    """Raised by `optimizer.step()` (or `scaler.step()`) when `stop_on_nonfinite` is on and a gradient is NaN or Inf.

    The step's update was not applied: the weights are those before it.

    Attributes:
      step: the step's number.
      layers: the names of the layers with non-finite gradient elements.
    """

    def __init__(self, step: int, layers: list[str]):
        self.step = step
        self.layers = layers
        shown = ", ".join(layers[:10]) + (" and %d more" % (len(layers) - 10) if len(layers) > 10 else "")
        super().__init__(
            "non-finite gradient at step %d in %s; the update was not applied (stop_on_nonfinite=True)" % (step, shown)
        )


def _optimizer_update_count(optimizer: torch.optim.Optimizer) -> int:
    """The updates an optimizer has applied, for those that count them (Adam and most others); else 0."""
    counts = [state["step"] for state in optimizer.state.values() if isinstance(state, dict) and "step" in state]
    return int(max(float(count) for count in counts)) if counts else 0


def _rank() -> int:
    distributed = torch.distributed
    return distributed.get_rank() if distributed.is_available() and distributed.is_initialized() else 0


class _StepState(NamedTuple):
    """What the step hooks hand from before the update to after it."""

    step: int
    logged: bool
    grad_sq: torch.Tensor | None  # per-layer sum of squares of the gradient
    nonfinite: torch.Tensor | None  # per-layer count; None when none was counted


class GradientHealthMonitor:
    """Records the gradient health of each layer of a PyTorch model at every optimizer step.

    One line attaches it to a model and its optimizer; nothing changes in
    the training loop::

        monitor = GradientHealthMonitor(model, optimizer, "runs/exp1")
        for x, y in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            monitor.record_loss(loss)      # optional: the loss of the coming step
            loss.backward()
            optimizer.step()               # recorded here, by the optimizer's step hooks
        monitor.close()

    For every module that owns parameters the optimizer trains (in the
    order the forward pass first calls them, named by module path) it
    records `grad_norm`, `grad_norm_max`, `grad_max_abs`, `nonfinite`,
    `weight_norm` and `update_ratio` of the gradient `optimizer.step()`
    applies: after `GradScaler` unscaling, after a clipping the training
    loop did before `step()`, the accumulated gradient under gradient
    accumulation, the all-reduced one under `DistributedDataParallel`. A
    step is one `optimizer.step()`. The statistics are reduced on the
    device into a buffer that is copied to the host every `buffer_steps`
    logged steps, every `flush_secs`, on `flush()` and on `close()`; no step
    waits for the host.

    Args:
      model: the model (wrapped in `DistributedDataParallel` or
        `torch.compile` or not). Create the monitor before its first forward
        pass, so the rows follow the forward order.
      optimizer: the optimizer that trains it; its step hooks are used.
      log_dir: the run directory the event files go into (as for
        `torch.utils.tensorboard.SummaryWriter`).
      update_freq: write every this many steps (steps whose number is a
        multiple of it); `grad_norm_max` and `nonfinite` cover the steps in
        between, and the last step is written on `close()`.
      stop_on_nonfinite: raise `NonFiniteGradientError` from the step whose
        gradient has a NaN or Inf, before its update is applied. Reads one
        scalar per step from an accelerator.
      scaler: the `torch.amp.GradScaler` of a mixed-precision loop, so a
        step it skips is seen: skipped while its scale is above 1 it is no
        step; at a scale of 1 or less it is recorded as non-finite.
      buffer_steps: logged steps held on the device between copies.
      flush_secs: longest time between two copies to the host.
      start_step: the number of the first step. Default: the optimizer's
        own update count when it keeps one (resuming from a checkpoint
        continues its numbering), else after the steps an earlier monitor
        of this process wrote into `log_dir`, else 0.

    Raises:
      ValueError: a bad argument, or the optimizer trains parameters that
        are not the model's.
      RuntimeError: the optimizer or scaler already has a monitor.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        log_dir: str | os.PathLike = "runs",
        *,
        update_freq: int = 1,
        stop_on_nonfinite: bool = False,
        scaler: torch.amp.GradScaler | None = None,
        buffer_steps: int = DEFAULT_BUFFER_STEPS,
        flush_secs: float = DEFAULT_FLUSH_SECS,
        start_step: int | None = None,
    ):
        for name, value in (("update_freq", update_freq), ("buffer_steps", buffer_steps)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError("%s must be a positive number of steps, got %r" % (name, value))
        if not isinstance(model, nn.Module):
            raise ValueError("model must be a torch.nn.Module, got %r" % type(model).__name__)
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError("optimizer must be a torch.optim.Optimizer, got %r" % type(optimizer).__name__)
        for hooked in (optimizer, scaler):
            if hooked is not None and getattr(hooked, _OWNER, None) is not None:
                raise RuntimeError(
                    "this %s already has a GradientHealthMonitor; close it first" % type(hooked).__name__
                )
        owned = {id(p) for p in unwrap(model).parameters()}
        foreign = sum(1 for group in optimizer.param_groups for p in group["params"] if id(p) not in owned)
        if foreign:
            raise ValueError(
                "the optimizer updates %d parameter(s) that are not part of the model; "
                "pass the model the optimizer trains" % foreign
            )
        self.model = model
        self.optimizer = optimizer
        self.log_dir = os.fspath(log_dir)
        self.update_freq = update_freq
        self.stop_on_nonfinite = bool(stop_on_nonfinite)
        self.buffer_steps = buffer_steps
        self.flush_secs = float(flush_secs)
        self.rank = _rank()
        # Only rank 0 writes (every rank holds the same all-reduced gradient).
        self._writer = GradientHealthFileWriter(self.log_dir) if self.rank == 0 else None
        self._dir_key = os.path.realpath(self.log_dir)
        if start_step is None:
            with _next_step_lock:
                start_step = max(_optimizer_update_count(optimizer), _next_step_by_dir.get(self._dir_key, 0))
        self._next_step = int(start_step)
        self._order = ForwardOrder(model)
        self._layers: tuple[LayerParams, ...] = ()
        self._signature = None
        self._reducer: LayerReducer | None = None
        self._state: _StepState | None = None
        self._stepped = False
        self._losses: list[torch.Tensor] = []
        self._closed = False
        self._reset_buffer()
        self._handles = [
            optimizer.register_step_pre_hook(self._before_step),
            optimizer.register_step_post_hook(self._after_step),
        ]
        setattr(optimizer, _OWNER, self)
        self._scaler = scaler
        if scaler is not None:
            self._wrap_scaler(scaler)
        _open_monitors.add(self)

    # ------------------------------------------------------------ public

    @property
    def layer_names(self) -> tuple[str, ...]:
        """The rows, input -> output (known from the first step on)."""
        return tuple(layer.name for layer in self._layers)

    @property
    def next_step(self) -> int:
        """The number the next step gets."""
        return self._next_step

    def record_loss(self, loss: torch.Tensor | float) -> None:
        """Hands over the training loss of the coming optimizer step (kept on the device; nothing waits).

        Call it before `optimizer.step()`. Under gradient accumulation call
        it with each micro-batch's own loss: the step's loss is their mean.
        Pass the loss as computed, not the one `GradScaler.scale` returned.
        """
        if not isinstance(loss, torch.Tensor):
            loss = torch.tensor(float(loss))
        self._losses.append(loss.detach().reshape(()))

    def flush(self) -> None:
        """Copies the buffered steps to the host and writes them to disk."""
        self._flush(include_pending=False)

    def close(self) -> None:
        """Writes everything buffered, including the last step when it was not a logged one, and detaches."""
        if self._closed:
            return
        self._closed = True
        for handle in self._handles:
            handle.remove()
        self._order.stop()
        if getattr(self.optimizer, _OWNER, None) is self:
            delattr(self.optimizer, _OWNER)
        if self._scaler is not None:
            self._scaler.__dict__.pop("step", None)
            self._scaler.__dict__.pop(_OWNER, None)
        try:
            self._flush(include_pending=True)
        finally:
            if self._writer is not None:
                self._writer.close()
            _open_monitors.discard(self)

    def __enter__(self) -> GradientHealthMonitor:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # ------------------------------------------------------------ hooks

    def _wrap_scaler(self, scaler) -> None:
        original = scaler.step
        monitor = weakref.ref(self)

        def step(optimizer, *args, **kwargs):
            this = monitor()
            if this is None or optimizer is not this.optimizer or not scaler.is_enabled():
                return original(optimizer, *args, **kwargs)
            this._stepped = False
            result = original(optimizer, *args, **kwargs)
            if not this._stepped:
                this._skipped_by_scaler(scaler.get_scale())
            return result

        scaler.step = step
        setattr(scaler, _OWNER, self)

    def _skipped_by_scaler(self, scale: float, grad_scale: torch.Tensor | None = None) -> None:
        """A step GradScaler skipped because its gradient had a NaN or Inf."""
        if scale > GENUINE_OVERFLOW_MAX_SCALE:
            self._losses.clear()
            return
        with torch.no_grad():
            state = self._before_update(keep_weights=False, grad_scale=grad_scale)
            self._after_update(state, applied=False)

    def _before_step(self, optimizer, args, kwargs) -> None:
        self._stepped = True
        self._state = None
        if self._closed:
            return
        # A fused optimizer under GradScaler (`_step_supports_amp_scaling`)
        # gets the scaled gradient with the scale and the overflow flag, and
        # skips an overflowing update itself; reading the flag is this
        # mode's one read per step.
        grad_scale = getattr(optimizer, "grad_scale", None)
        found_inf = getattr(optimizer, "found_inf", None)
        if found_inf is not None and float(found_inf) > 0:
            # Without `grad_scale` the loop unscaled the gradient itself; the
            # scale it overflowed at is the scaler's.
            if grad_scale is not None:
                scale = float(grad_scale)
            else:
                scale = self._scaler.get_scale() if self._scaler is not None else GENUINE_OVERFLOW_MAX_SCALE
            self._skipped_by_scaler(scale, grad_scale)
            return
        with torch.no_grad():
            self._state = self._before_update(keep_weights=True, grad_scale=grad_scale)

    def _after_step(self, optimizer, args, kwargs) -> None:
        state, self._state = self._state, None
        if state is None:
            return
        with torch.no_grad():
            self._after_update(state, applied=True)

    # ------------------------------------------------------------ recording

    def _current_layers(self) -> LayerReducer:
        signature = parameter_signature(self.optimizer.param_groups)
        if self._reducer is not None and signature == self._signature:
            return self._reducer
        if self._reducer is not None:
            # Layers frozen, unfrozen or added: what the old layers buffered
            # is written under their tags first.
            self._flush(include_pending=True)
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        layers = group_parameters(self.model, params, self._order)
        # The forward order is known after the first step's forward pass; it
        # stays known for later changes of the layers.
        self._order.stop()
        if not layers:
            raise ValueError("the optimizer has no trainable parameters to record")
        self._layers = tuple(layers)
        self._signature = signature
        self._reducer = LayerReducer(layers, layers[0].params[0].device)
        self._reset_buffer()
        return self._reducer

    def _reset_buffer(self) -> None:
        reducer = self._reducer
        self._rows = None
        if reducer is not None and self._writer is not None:
            self._rows = torch.zeros(self.buffer_steps, _N_COLUMNS, reducer.n_layers, device=reducer.device)
            self._acc_max = reducer.zeros()
            self._acc_nonfinite = reducer.zeros()
        self._pending_sq: torch.Tensor | None = None
        self._pending_step = -1
        self._accumulated = False
        self._nonfinite_accumulated = False
        self._row_steps: list[int] = []
        self._row_wall_times: list[float] = []
        self._row_losses: list[torch.Tensor | None] = []
        self._row_accumulated: list[bool] = []
        self._last_written_step = -1
        self._last_flush = time.monotonic()

    def _before_update(self, keep_weights: bool, grad_scale: torch.Tensor | None = None) -> _StepState:
        """Reduces the step's gradients (and, on logged steps, weights) before the update is applied."""
        reducer = self._current_layers()
        step = self._next_step
        if self._writer is None and not self.stop_on_nonfinite:
            return _StepState(step, False, None, None)
        logged = self._writer is not None and step % self.update_freq == 0
        grads, present = reducer.gradients()
        row = None
        if logged:
            row = self._rows[len(self._row_steps)]
            reducer.grad_and_weight_square_sums(row[_GRAD_SQ : _WEIGHT_SQ + 1], grads, present)
            grad_sq = row[_GRAD_SQ]
        else:
            grad_sq = reducer.square_sums(grads, present)
        scale = None
        if grad_scale is not None:
            scale = torch.as_tensor(grad_scale, dtype=torch.float32, device=reducer.device)
            grad_sq.div_(scale * scale)
        finite = None
        if reducer.device.type == "cpu" or self.stop_on_nonfinite:
            # On the CPU the value is already on the host; on an accelerator
            # this is the one read per step that stop_on_nonfinite costs.
            finite = math.isfinite(float(grad_sq.sum()))
        # Squares of large finite elements may also sum to Inf: then no element is counted.
        nonfinite = None if finite else reducer.nonfinite_counts(grads, present)
        if logged:
            reducer.max_abs(row[_GRAD_MAX_ABS], grads, present)
            if scale is not None:
                row[_GRAD_MAX_ABS].div_(scale)
            if nonfinite is not None:
                row[_NONFINITE].copy_(nonfinite)
            if keep_weights and finite is not False:
                reducer.keep_weights()
        state = _StepState(step, logged, grad_sq, nonfinite)
        if finite is False and self.stop_on_nonfinite:
            self._after_update(state, applied=False)
            self._flush(include_pending=True)
            counts = nonfinite.cpu().tolist()
            named = [layer.name for layer, count in zip(self._layers, counts) if count > 0]
            raise NonFiniteGradientError(step, named or list(self.layer_names))
        return state

    def _after_update(self, state: _StepState, applied: bool) -> None:
        """Completes the step's statistics after its update (or without one, for a step not applied)."""
        self._next_step = state.step + 1
        loss = None
        if self._losses:
            loss = self._losses[0] if len(self._losses) == 1 else torch.stack(self._losses).float().mean()
            self._losses = []
        if self._writer is None:
            return
        if not state.logged:
            torch.maximum(self._acc_max, state.grad_sq, out=self._acc_max)
            if state.nonfinite is not None:
                self._acc_nonfinite.add_(state.nonfinite)
                self._nonfinite_accumulated = True
            self._pending_sq = state.grad_sq
            self._pending_step = state.step
            self._accumulated = True
            return
        slot = len(self._row_steps)
        row = self._rows[slot]
        if applied:
            self._reducer.update_square_sums(row[_UPDATE_SQ])
        if self._accumulated:
            torch.maximum(self._acc_max, row[_GRAD_SQ], out=row[_GRAD_SQ_MAX])
            self._acc_max.zero_()
            if self._nonfinite_accumulated:
                row[_NONFINITE].add_(self._acc_nonfinite)
                self._acc_nonfinite.zero_()
        self._row_steps.append(state.step)
        self._row_wall_times.append(time.time())
        self._row_losses.append(loss)
        self._row_accumulated.append(self._accumulated)
        self._accumulated = self._nonfinite_accumulated = False
        if slot + 1 >= self.buffer_steps or time.monotonic() - self._last_flush >= self.flush_secs:
            self._flush(include_pending=False)

    # ------------------------------------------------------------ writing

    def _flush(self, include_pending: bool) -> None:
        with _next_step_lock:
            _next_step_by_dir[self._dir_key] = max(_next_step_by_dir.get(self._dir_key, 0), self._next_step)
        self._last_flush = time.monotonic()
        writer = self._writer
        if writer is None or self._reducer is None:
            return
        layers = self.layer_names
        kinds = [layer.kind for layer in self._layers]
        params = [layer.size for layer in self._layers]
        count = len(self._row_steps)
        if count:
            # The one copy to the host of everything buffered (a copy also on
            # the CPU, where the buffer is zeroed for reuse next).
            rows = self._rows[:count].to("cpu", copy=True).numpy()
            self._rows[:count].zero_()
            present = [loss for loss in self._row_losses if loss is not None]
            losses = iter(
                torch.stack([loss.float().to(present[0].device, non_blocking=True) for loss in present]).cpu().tolist()
                if present
                else ()
            )
            grad_norm, weight_norm, ratio = norms_and_ratio(rows[:, _GRAD_SQ], rows[:, _WEIGHT_SQ], rows[:, _UPDATE_SQ])
            grad_norm_max = np.sqrt(rows[:, _GRAD_SQ_MAX])
            for index in range(count):
                stats = {
                    metadata.GRAD_NORM: grad_norm[index],
                    metadata.GRAD_NORM_MAX: grad_norm_max[index] if self._row_accumulated[index] else grad_norm[index],
                    metadata.GRAD_MAX_ABS: rows[index, _GRAD_MAX_ABS],
                    metadata.NONFINITE: rows[index, _NONFINITE],
                    metadata.WEIGHT_NORM: weight_norm[index],
                    metadata.UPDATE_RATIO: ratio[index],
                }
                loss = next(losses) if self._row_losses[index] is not None else None
                writer.write(
                    self._row_steps[index],
                    stats,
                    layers,
                    self._row_wall_times[index],
                    loss=loss,
                    kinds=kinds,
                    params=params,
                )
            self._last_written_step = max(self._last_written_step, self._row_steps[-1])
            self._row_steps, self._row_wall_times, self._row_losses, self._row_accumulated = [], [], [], []
        if include_pending and self._pending_step > self._last_written_step:
            # The last step, when it came after every logged one: what every
            # step computes, so a spike or NaN at the end is not lost.
            pending = {
                metadata.GRAD_NORM: np.sqrt(self._pending_sq.cpu().numpy()),
                metadata.GRAD_NORM_MAX: np.sqrt(self._acc_max.cpu().numpy()),
                metadata.NONFINITE: self._acc_nonfinite.cpu().numpy(),
            }
            writer.write(self._pending_step, pending, layers, kinds=kinds, params=params)
            self._last_written_step = self._pending_step
            self._acc_max.zero_()
            self._acc_nonfinite.zero_()
            self._accumulated = self._nonfinite_accumulated = False
        writer.flush()


def _close_open_monitors() -> None:
    for monitor in list(_open_monitors):
        try:
            monitor.close()
        except Exception:  # at exit nothing is left to report to
            pass


atexit.register(_close_open_monitors)
