"""Records one training step: statistics around the optimizer's update, folded into its step buffer without a host round trip."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Callable

import keras
import tensorflow as tf

from tb_gradhealth.capture.layers import LayerGroup, variable_key
from tb_gradhealth.capture.plain_context import run_plain
from tb_gradhealth.capture.reductions import (
    GradientSums,
    LayerReducer,
    StepDetails,
    dense_gradient,
    in_xla_context,
    read,
    update_ratio,
)
from tb_gradhealth.capture.step_buffer import StepBuffer

# A LossScaleOptimizer step that overflows while the loss scale is at most
# this counts as non-finite: the scale no longer magnifies the gradient, so
# the overflow is the model's own (see docs/capture.md).
GENUINE_OVERFLOW_MAX_SCALE = 1.0
# Name scope of every op the recording adds to a train step, so a profile
# (TensorFlow's profiler, benchmarks/profile_step.py) tells them apart.
GRAPH_SCOPE = "gradient_health"


@dataclasses.dataclass(frozen=True)
class NonFiniteStep:
    """The first recorded step whose gradient had NaN or Inf elements (`stop_on_nonfinite`).

    Attributes:
      step: its number.
      layers: the layers with non-finite elements, in row order.
      applied: whether the optimizer applied that step's update (a
        loss-scale optimizer skips it; others apply it).
    """

    step: int
    layers: tuple[str, ...]
    applied: bool

    def __str__(self) -> str:
        return "non-finite gradient at step %d in %s (%s)" % (
            self.step,
            ", ".join(self.layers),
            "its update was applied" if self.applied else "the optimizer skipped its update",
        )


def _first_replica(strategy, value):
    """One replica's copy of a per-replica value (all replicas computed the same)."""
    if value is None or isinstance(value, (bool, float)):
        return value
    return strategy.experimental_local_results(value)[0]


class StepNumbers:
    """Numbers the steps one writer records: the optimizer's update count plus an offset.

    A step is one optimizer update, numbered like Keras's
    `optimizer.iterations` before the update. The offset (a plain variable)
    keeps the numbers of a run directory unique and increasing: the host
    raises it when a model whose count is behind starts writing into a run
    directory used before, and the graph raises it after a step a
    loss-scale optimizer skipped but that was recorded (the count did not
    move, the next step must not reuse its number).

    With `counting`, a step whose optimizer updates at every call (no loss
    scaling, no gradient accumulation) reads its number from a counter the
    host sets to `iterations + offset` when a fit starts and the step then
    advances: one variable read and one increment per step, as few ops as
    numbering can take. Otherwise the step reads the count and the offset.

    Args:
      counting: whether the steps of a fit are only ever recorded between
        two `start` calls (Keras `fit`); a custom loop may apply updates the
        recorder does not see.
    """

    def __init__(self, counting: bool):
        self.counting = counting

        def create():
            def variable(name):
                return tf.Variable(tf.constant(0, tf.int64), trainable=False, name="gradient_health_" + name)

            return variable("step_offset"), variable("next_step")

        self.offset, self.counter = run_plain(create)

    def start(self, iterations: int, next_free: int) -> int:
        """Host code (also while a step is traced): makes the next step `max(iterations + offset, next_free)`.

        Returns:
          That step number.
        """

        def start():
            offset = max(int(self.offset.numpy()), next_free - iterations, 0)
            self.offset.assign(offset)
            self.counter.assign(iterations + offset)
            return iterations + offset

        return run_plain(start)

    def next_step(self, optimizer) -> int:
        """Host code: the number the optimizer's next update gets (one device read)."""
        return read_iterations(optimizer) + run_plain(lambda: int(self.offset.numpy()))

    def number(self, optimizer, exact: bool) -> tuple[tf.Tensor, bool]:
        """Graph code: (this step's number, whether `advance` must follow the step).

        Args:
          exact: the optimizer updates at every call (see the class).
        """
        if self.counting and exact:
            return self.counter.value(), True
        iterations = tf.cast(tf.convert_to_tensor(read(optimizer.iterations)), tf.int64)
        return iterations + self.offset.value(), False

    def advance(self) -> None:
        """Graph code: after a step numbered by the counter."""
        self.counter.assign_add(1)


def read_iterations(optimizer) -> int:
    """Host code: `optimizer.iterations` as a Python int, whatever the caller's tracing or strategy context."""
    return run_plain(lambda: int(tf.convert_to_tensor(read(optimizer.iterations)).numpy()))


def ensure_built(optimizer, variables: Sequence) -> None:
    """Builds `optimizer` for `variables` as its own `apply` would, so its state can be read before the update."""
    if not optimizer.built:
        with keras.name_scope(optimizer.name, caller=optimizer):
            optimizer.build(list(variables))
        optimizer.built = True


def _loss_scale(optimizer):
    """The factor the step's gradients carry: a LossScaleOptimizer's dynamic scale (a tensor), `loss_scale_factor`, or None."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return tf.cast(read(optimizer.dynamic_scale), tf.float32)
    factor = getattr(optimizer, "loss_scale_factor", None)
    return None if factor is None else float(factor)


def _float32_scalar(value) -> tf.Tensor:
    """`value` as a float32 scalar, with no op when it is one already (the usual loss)."""
    value = tf.convert_to_tensor(value)
    if value.dtype != tf.float32:
        value = tf.cast(value, tf.float32)
    return value if value.shape.rank == 0 else tf.reshape(value, [])


def _accumulating(optimizer):
    """The optimizer that accumulates gradients (itself or a LossScaleOptimizer's inner one), or None."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    return inner if getattr(inner, "gradient_accumulation_steps", None) else None


class LayerSetRecorder:
    """Per-layer statistics of every optimizer step of one set of layers, kept in a `StepBuffer`.

    Args:
      groups: the rows, in order.
      capacity: logged steps the buffer holds.
      update_freq: log every this many steps.
      numbers: the writer's step numbering (shared by all its sets of layers).
      layer_set: the tags' layer-set suffix (None for the plain tags).
      watch_nonfinite: keep the first non-finite step for the host
        (`stop_on_nonfinite`).
    """

    def __init__(
        self,
        groups: Sequence[LayerGroup],
        capacity: int,
        update_freq: int,
        numbers: StepNumbers,
        *,
        layer_set: str | None = None,
        watch_nonfinite: bool = False,
    ):
        self.groups = tuple(groups)
        kinds = [group.kind for group in self.groups]
        self.buffer = StepBuffer(
            [group.name for group in self.groups],
            capacity,
            update_freq,
            kinds=None if None in kinds else kinds,
            params=[group.params for group in self.groups],
            layer_set=layer_set,
            watch_nonfinite=watch_nonfinite,
        )
        self.numbers = numbers
        self._variables = [v for group in self.groups for v in group.variables]
        self._trace_state = None
        self._accumulated_loss = None
        # Whether the optimizer last traced applies a non-finite update (a
        # loss-scale optimizer skips it).
        self.applies_nonfinite = True
        self._reduce = LayerReducer(
            self._variables,
            [i for i, group in enumerate(self.groups) for _ in group.variables],
            len(self.groups),
        )

    @property
    def layer_names(self) -> tuple[str, ...]:
        return self.buffer.layer_names

    def first_nonfinite(self) -> NonFiniteStep | None:
        """The first recorded step with a non-finite gradient (one device read), or None."""
        found = self.buffer.first_nonfinite()
        if found is None:
            return None
        step, rows = found
        return NonFiniteStep(
            step=step, layers=tuple(self.layer_names[row] for row in rows), applied=self.applies_nonfinite
        )

    def _accumulated(self, optimizer, grads, scale, loss):
        """Under gradient accumulation: the gradient the optimizer applies at this micro-batch, and whether it does.

        Returns:
          (gradients (unscaled), loss of the update, update (bool tensor)).
        """
        accumulating = _accumulating(optimizer)
        steps = accumulating.gradient_accumulation_steps
        accumulators = [
            accumulating._accumulated_gradients[accumulating._get_variable_index(v)] for v in self._variables
        ]
        update = tf.equal((read(accumulating._iterations) + 1) % steps, 0)
        # Keras applies (g + accumulated) / steps at the last micro-batch.
        grads = [
            None if g is None else ((g if scale is None else g / scale) + tf.cast(read(a), g.dtype)) / steps
            for g, a in zip(grads, accumulators)
        ]
        if loss is not None:
            if self._accumulated_loss is None:
                self._accumulated_loss = run_plain(
                    lambda: tf.Variable(0.0, trainable=False, name="gradient_health_accumulated_loss")
                )
            total = self._accumulated_loss.value() + loss
            self._accumulated_loss.assign(tf.where(update, 0.0, total))
            loss = total / steps
        return grads, loss, update

    def _before_update(self, strategy, optimizer, grads, loss, logged_mode):
        # Cross-replica (or default) context: runs once per step.
        grads = [_first_replica(strategy, g) for g in grads]
        loss = _first_replica(strategy, loss)
        scale = _loss_scale(optimizer)
        loss_scaling = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        step, counted = self.numbers.number(optimizer, exact=not loss_scaling and _accumulating(optimizer) is None)
        update = True
        if _accumulating(optimizer) is not None:
            grads, loss, update = self._accumulated(optimizer, grads, scale, loss)
            unscale = None
        else:
            unscale = scale
        logged = self.buffer.is_logged(step, logged_mode)
        sums = self._reduce.gradient_sums(grads)
        weights_before = None
        if logged is True:
            grad_max_abs, weight_norm, weights_before = self._reduce.before_update(grads)
        elif logged is False:
            grad_max_abs = weight_norm = None
        else:
            zeros = self._reduce.zeros

            def logged_step():
                grad_max_abs, weight_norm, weights = self._reduce.before_update(grads)
                with tf.control_dependencies(self._reduce.snapshot(weights)):
                    return tf.identity(grad_max_abs), tf.identity(weight_norm)

            grad_max_abs, weight_norm = tf.cond(logged, logged_step, lambda: (zeros(), zeros()))
        # Handed to _after_update, the next merge call of the same trace.
        self._trace_state = {
            "step": step,
            "logged": logged,
            "sums": sums,
            "grad_max_abs": grad_max_abs,
            "weight_norm": weight_norm,
            "weights_before": weights_before,
            "scale": scale,
            "unscale": unscale,
            "update": update,
            "loss": loss,
            "loss_scaling": loss_scaling,
            "counted": counted,
        }
        if isinstance(logged, bool):
            # Nothing waits for the statistics: the update runs as soon as the
            # optimizer has what it needs.
            return []
        # The update waits for the snapshot copies, so it finds the weights'
        # buffers unshared and changes them in place instead of copying.
        return [weight_norm]

    def _after_update(self, strategy, flush: bool):
        state, self._trace_state = self._trace_state, None
        logged = state["logged"]
        sums = state["sums"]
        if logged is False:
            details = None
        else:
            if logged is True:
                update_norm = self._reduce.update_norm(state["weights_before"], state["weight_norm"])
            else:
                update_norm = tf.cond(logged, self._reduce.update_norm_from_snapshot, self._reduce.zeros)
            details = StepDetails(
                grad_max_abs=state["grad_max_abs"],
                weight_norm=state["weight_norm"],
                update_ratio=update_ratio(update_norm, state["weight_norm"]),
            )
        unscale = state["unscale"]
        if unscale is not None:
            # The gradients were reduced as the optimizer got them (scaled);
            # unscaling the per-layer results spares a pass over each one.
            sums = GradientSums(grad_half_sq=sums.grad_half_sq / (unscale * unscale), nonfinite=sums.nonfinite)
            if details is not None:
                details = details._replace(grad_max_abs=details.grad_max_abs / unscale)
        visible = state["update"]
        genuine_overflow = None
        if state["loss_scaling"]:
            # Keras skips a step whose scaled gradient overflowed: no step
            # unless the scale cannot explain the overflow (then it is the
            # model's own, recorded, and not applied).
            overflow = tf.reduce_sum(sums.nonfinite) > 0.0
            genuine_overflow = tf.logical_and(overflow, state["scale"] <= GENUINE_OVERFLOW_MAX_SCALE)
            applied = tf.logical_not(overflow)
            visible = tf.logical_or(genuine_overflow, applied if visible is True else tf.logical_and(applied, visible))
        self.buffer.record(state["step"], logged, sums, details, visible, state["loss"])
        if state["counted"]:
            self.numbers.advance()
        if genuine_overflow is not None:
            # The update count did not move: the next step must not reuse this number.
            self.numbers.offset.assign_add(tf.cast(genuine_overflow, tf.int64))
        if flush:
            self.buffer.flush_if_full_in_graph()

    def apply(
        self,
        optimizer,
        apply_fn: Callable,
        grads: Sequence,
        trainable_variables: Sequence | None,
        loss=None,
        logged_mode: bool | None = None,
        flush_when_full: bool = False,
    ):
        """Runs `apply_fn(grads, trainable_variables)` and records the step.

        Call it where the optimizer's `apply` runs: in a replica context under
        a distribution strategy. Variables outside the recorded layers are
        applied but not recorded; recorded variables without a gradient count
        as a zero gradient.

        Args:
          loss: the loss the gradients came from, before any loss scaling (a
            replica's share under a distribution strategy, as its gradients
            are), or None.
          logged_mode: whether the steps traced are logged steps: None decides
            per step in the graph; True or False (a host that picks a train
            function per step) leaves the other case out of the graph.
          flush_when_full: also write the buffer from the graph when it is
            full (for custom loops, which have no host hook; ignored inside
            XLA, where summary ops cannot run).
        """
        grads = list(grads)
        variables = (
            list(trainable_variables) if trainable_variables is not None else list(optimizer._trainable_variables)
        )
        ensure_built(optimizer, variables)
        by_key = {variable_key(v): g for g, v in zip(grads, variables)}
        tracked = [by_key.get(variable_key(v)) for v in self._variables]
        self.applies_nonfinite = not isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        context = tf.distribute.get_replica_context()
        if context is None:
            # Cross-replica context (a custom loop outside strategy.run).
            merge = lambda fn, args: fn(tf.distribute.get_strategy(), *args)  # noqa: E731
        else:
            merge = lambda fn, args: context.merge_call(fn, args=args)  # noqa: E731
        with tf.name_scope(GRAPH_SCOPE) as scope:
            tracked = [None if g is None else dense_gradient(g) for g in tracked]
            if loss is not None:
                loss = _float32_scalar(loss)
            if context is not None and context.num_replicas_in_sync > 1:
                # Each replica holds its share (Keras divides the loss by the
                # number of replicas); the gradient applied, and the loss it
                # came from, are their sums.
                present = [g for g in tracked + [loss] if g is not None]
                reduced = iter(context.all_reduce(tf.distribute.ReduceOp.SUM, present) if present else ())
                tracked = [None if g is None else next(reduced) for g in tracked]
                loss = None if loss is None else next(reduced)
            done_before = merge(
                lambda strategy, tracked, loss: self._before_update(strategy, optimizer, tracked, loss, logged_mode),
                (tracked, loss),
            )
        # Empty unless the logged-step decision is in the graph (see
        # _before_update).
        with tf.control_dependencies(tf.nest.flatten(done_before)):
            result = apply_fn(grads, trainable_variables)
        flush = flush_when_full and not in_xla_context()
        with tf.name_scope(scope):  # the same scope again, not a numbered one
            merge(lambda strategy: self._after_update(strategy, flush), ())
        return result
