"""Records one training step: statistics around the optimizer's update, folded into the ring without a host round trip."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Callable

import keras
import tensorflow as tf

from tb_gradhealth.capture.layers import LayerGroup, variable_key
from tb_gradhealth.capture.reductions import (
    GradientSums,
    LayerReducer,
    StepDetails,
    dense_gradient,
    in_xla_context,
    read,
    update_ratio,
)
from tb_gradhealth.capture.ring import StatsRing

# A LossScaleOptimizer step that overflows while the loss scale is at most
# this counts as non-finite: the scale no longer magnifies the gradient, so
# the overflow is the model's own (see README, "What the statistics mean").
GENUINE_OVERFLOW_MAX_SCALE = 1.0
# Name scope of every op the recording adds to a train step, so a profile
# (TensorFlow's profiler, benchmarks/profile_step.py) tells them apart.
GRAPH_SCOPE = "gradient_health"


def loss_scale_of(optimizer):
    """Returns the loss scale the step's gradients carry, or None without loss scaling."""
    if not isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return None
    return tf.cast(read(optimizer.dynamic_scale), tf.float32)


def _first_replica(strategy, value):
    """One replica's copy of a per-replica value (all replicas computed the same)."""
    if value is None or isinstance(value, bool):
        return value
    return strategy.experimental_local_results(value)[0]


class StepRecorder:
    """Per-layer statistics of every optimizer step of one set of layers, kept in a `StatsRing`."""

    def __init__(self, groups: Sequence[LayerGroup], capacity: int, update_freq: int):
        self.groups = tuple(groups)
        kinds = [group.kind for group in self.groups]
        self.ring = StatsRing(
            [group.name for group in self.groups],
            capacity,
            update_freq,
            kinds=None if None in kinds else kinds,
            params=[group.params for group in self.groups],
        )
        self._variables = [v for group in self.groups for v in group.variables]
        self._trace_state = None
        # Whether the steps traced from now on are logged steps: None decides
        # per step in the graph; True or False (set by a host that picks a
        # train function per step) leaves the other case out of the graph.
        self.logged_mode: bool | None = None
        self._reduce = LayerReducer(
            self._variables,
            [i for i, group in enumerate(self.groups) for _ in group.variables],
            len(self.groups),
        )

    @property
    def layer_names(self) -> tuple[str, ...]:
        return self.ring.layer_names

    def _before_update(self, strategy, grads, loss_scale, loss):
        # Cross-replica (or default) context: runs once per step.
        grads = [_first_replica(strategy, g) for g in grads]
        loss_scale = _first_replica(strategy, loss_scale)
        loss = _first_replica(strategy, loss)
        step, logged = self.ring.position(self.logged_mode)
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
            "loss_scale": loss_scale,
            "loss": loss,
        }
        if isinstance(logged, bool):
            # Nothing waits for the statistics: holding every variable's
            # update until all reductions are done cost 4-8% of a step of
            # the notebook's MLP (benchmarks/README.md).
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
        loss_scale = state["loss_scale"]
        visible = True
        if loss_scale is not None:
            # The gradients were reduced as the optimizer got them (scaled);
            # unscaling the per-layer results spares a pass over each one.
            sums = GradientSums(grad_norm=sums.grad_norm / loss_scale, nonfinite=sums.nonfinite)
            if details is not None:
                details = details._replace(grad_max_abs=details.grad_max_abs / loss_scale)
            # Keras skips a step whose scaled gradient overflowed; only when
            # the scale cannot explain the overflow is it the model's.
            visible = tf.logical_or(
                tf.equal(tf.reduce_sum(sums.nonfinite), 0.0), loss_scale <= GENUINE_OVERFLOW_MAX_SCALE
            )
        self.ring.record(state["step"], logged, sums, details, visible, state["loss"])
        if flush:
            self.ring.flush_if_full_in_graph()

    def apply(
        self,
        optimizer,
        apply_fn: Callable,
        grads: Sequence,
        trainable_variables: Sequence | None,
        loss=None,
        flush_when_full: bool = False,
    ):
        """Runs `apply_fn(grads, trainable_variables)` and records the step.

        Call it where the optimizer's `apply` runs: in a replica context under
        a distribution strategy. Variables outside the recorded layers are
        applied but not recorded; recorded variables without a gradient count
        as a zero gradient. The ring needs its start step (`start_at`).

        Args:
          loss: the loss the gradients came from, before any loss scaling (a
            replica's share under a distribution strategy, as its gradients
            are), or None.
          flush_when_full: also write the buffer from the graph when it is
            full (for custom loops, which have no host hook; ignored inside
            XLA, where summary ops cannot run).
        """
        grads = list(grads)
        variables = (
            list(trainable_variables) if trainable_variables is not None else list(optimizer._trainable_variables)
        )
        by_key = {variable_key(v): g for g, v in zip(grads, variables)}
        tracked = [by_key.get(variable_key(v)) for v in self._variables]
        context = tf.distribute.get_replica_context()
        if context is None:
            # Cross-replica context (a custom loop outside strategy.run).
            merge = lambda fn, args: fn(tf.distribute.get_strategy(), *args)  # noqa: E731
        else:
            merge = lambda fn, args: context.merge_call(fn, args=args)  # noqa: E731
        with tf.name_scope(GRAPH_SCOPE) as scope:
            tracked = [None if g is None else dense_gradient(g) for g in tracked]
            if loss is not None:
                loss = tf.reshape(tf.cast(loss, tf.float32), [])
            if context is not None and context.num_replicas_in_sync > 1:
                # Each replica holds its share (Keras divides the loss by the
                # number of replicas); the gradient applied, and the loss it
                # came from, are their sums.
                present = [g for g in tracked + [loss] if g is not None]
                reduced = iter(context.all_reduce(tf.distribute.ReduceOp.SUM, present) if present else ())
                tracked = [None if g is None else next(reduced) for g in tracked]
                loss = None if loss is None else next(reduced)
            done_before = merge(self._before_update, (tracked, loss_scale_of(optimizer), loss))
        # Empty unless the logged-step decision is in the graph (see
        # _before_update).
        with tf.control_dependencies(tf.nest.flatten(done_before)):
            result = apply_fn(grads, trainable_variables)
        flush = flush_when_full and not in_xla_context()
        with tf.name_scope(scope):  # the same scope again, not a numbered one
            merge(lambda strategy: self._after_update(strategy, flush), ())
        return result
