"""In-graph per-layer reductions of one training step: gradient norms, extremes, non-finite counts and update sizes."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import keras
import tensorflow as tf
from tensorflow.core.framework import attr_value_pb2
from tensorflow.python.ops import control_flow_util  # XLA-context test; no public equivalent

from tb_gradhealth.capture.plain_context import run_plain

# TensorFlow's CPU kernels hand a reduction over more elements than about
# this to several threads; for a tensor a few times this size, waking them
# costs more than the pass itself, so such a tensor is reduced in chunks of
# this size, each on one thread. Bigger tensors are left to the threads.
SINGLE_THREAD_ELEMENTS = 2**16
MAX_CHUNKS = 4


class GradientSums(NamedTuple):
    """What every step needs, float32 `[n_layers]` each.

    Attributes:
      grad_half_sq: half the sum of squares of each layer's gradient
        (`norm_from_half_squares` makes it the L2 norm; the running maximum
        and the pending step keep it as it is, so that steps not written
        spend no op on it).
      nonfinite: the number of NaN or Inf gradient elements of each layer.
    """

    grad_half_sq: tf.Tensor
    nonfinite: tf.Tensor


class StepDetails(NamedTuple):
    """What only logged steps need, float32 `[n_layers]` each."""

    grad_max_abs: tf.Tensor
    weight_norm: tf.Tensor
    update_ratio: tf.Tensor


def dense_gradient(gradient):
    """Returns `gradient` as a dense tensor, summing the rows an `IndexedSlices` repeats.

    Embedding gradients come as `IndexedSlices` whose indices may repeat; the
    gradient applied is their sum per row, and `unsorted_segment_sum` builds
    it with a static shape, which XLA needs.
    """
    if isinstance(gradient, tf.IndexedSlices):
        return tf.math.unsorted_segment_sum(gradient.values, gradient.indices, gradient.dense_shape[0])
    return gradient


def read(variable) -> tf.Tensor:
    """The current value of a Keras or TensorFlow variable (the local copy in a replica)."""
    if isinstance(variable, keras.Variable):
        variable = variable.value
    return tf.convert_to_tensor(variable)


def _as_float32(tensor: tf.Tensor) -> tf.Tensor:
    return tensor if tensor.dtype == tf.float32 else tf.cast(tensor, tf.float32)


@functools.cache
def _on_cpu_only() -> bool:
    """Whether the ops of a step run on the CPU (no GPU to place them on)."""
    return not tf.config.list_logical_devices("GPU")


def half_sum_of_squares(tensor: tf.Tensor) -> tf.Tensor:
    """`tf.nn.l2_loss(tensor)` (half the sum of squares, float32), mid-sized tensors in single-threaded chunks.

    The chunks share the tensor's buffer (a split along the first axis of a
    flat tensor is no copy). Under XLA, which fuses reductions itself, and on
    a GPU, where each chunk would be one more kernel launch, the tensor is
    reduced whole.
    """
    tensor = _as_float32(tensor)
    size = tensor.shape.num_elements()
    if (
        size is None
        or not SINGLE_THREAD_ELEMENTS < size <= MAX_CHUNKS * SINGLE_THREAD_ELEMENTS
        or in_xla_context()
        or not _on_cpu_only()
    ):
        return tf.nn.l2_loss(tensor)
    sizes = [SINGLE_THREAD_ELEMENTS] * (size // SINGLE_THREAD_ELEMENTS)
    if size % SINGLE_THREAD_ELEMENTS:
        sizes.append(size % SINGLE_THREAD_ELEMENTS)
    return tf.add_n([tf.nn.l2_loss(chunk) for chunk in tf.split(tf.reshape(tensor, [-1]), sizes)])


def _run_as_function_call(tensor: tf.Tensor) -> None:
    """Keeps the `tf.cond` that computed `tensor` one op that calls its taken branch.

    By default TensorFlow lowers a `tf.cond` into its graph, where the ops of
    the branch not taken still pass through the executor at every step; a
    branch that runs only on rare steps is cheaper called.
    """
    if tf.executing_eagerly():
        return
    op = tensor.op
    while op.type == "Identity":
        op = op.inputs[0].op
    if op.type in ("If", "StatelessIf"):
        op._set_attr("_lower_using_switch_merge", attr_value_pb2.AttrValue(b=False))


def in_xla_context() -> bool:
    """Whether the code being traced is compiled by XLA."""
    if tf.executing_eagerly():
        return False
    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def _copy_into(target: tf.Variable, value: tf.Tensor):
    """Makes `target` a copy of `value` (a read of a weight variable) that the weight's update leaves alone.

    `Snapshot` copies into a fresh buffer that `target` then owns, in one
    pass, so the optimizer still updates the weights in place.
    """
    return target.assign(tf.raw_ops.Snapshot(input=value), read_value=False)


class LayerReducer:
    """Reduces one step's gradients and weights to per-layer statistics, cheaply.

    The cost is in passes over the parameters and, on small models, in the
    number of ops (each has a fixed cost in TensorFlow's executor), so:

    * every step reads each gradient once (`half_sum_of_squares`); the
      non-finite count needs another pass and runs only when some sum of
      squares is not finite (any NaN or Inf element makes it so);
    * logged steps also take max and min of each gradient and, before the
      update, read the weights and take their norm. The reads are not
      copies: they share the weights' buffers, so the optimizer's update
      finds them shared and writes the new weights into fresh buffers
      (TensorFlow's copy-on-write), leaving the values read as they were;
      after the update `update_norm` subtracts the new weights from them.
      That copy is the only one, it lives for one step, and nothing waits
      for the statistics. (A tf.function runs a variable's reads and writes
      in program order, so the reads see the weights before the update.)
    * when whether a step is logged is decided in the graph, the values are
      copied into snapshot variables instead (`snapshot`), created on first
      use: a tensor cannot leave the branch that computed it.

    Args:
      variables: the recorded variables, layer by layer.
      layer_index: the row (layer) of each variable.
      n_layers: number of rows.
    """

    def __init__(self, variables: Sequence, layer_index: Sequence[int], n_layers: int):
        self.variables = list(variables)
        self.layer_index = tuple(int(i) for i in layer_index)
        self.n_layers = int(n_layers)
        self._snapshots = None

    def _per_layer_sum(self, per_variable: tf.Tensor) -> tf.Tensor:
        """Per-layer sums of a vector holding one value per recorded variable."""
        return tf.math.unsorted_segment_sum(per_variable, self.layer_index, self.n_layers)

    def _per_layer_norm(self, half_squares: tf.Tensor) -> tf.Tensor:
        """Per-layer L2 norm from the vector of each variable's `tf.nn.l2_loss` (half its sum of squares)."""
        return norm_from_half_squares(self._per_layer_sum(half_squares))

    def zeros(self) -> tf.Tensor:
        return tf.zeros([self.n_layers], tf.float32)

    def gradient_sums(self, grads: Sequence) -> GradientSums:
        """Per-layer half sum of squares and non-finite count of `grads` (None: no gradient)."""
        zero = tf.zeros([], tf.float32)
        half_sq = tf.stack([zero if g is None else half_sum_of_squares(g) for g in grads])

        def count_nonfinite():
            return self._per_layer_sum(
                tf.stack(
                    [
                        zero if g is None else tf.reduce_sum(tf.cast(tf.logical_not(tf.math.is_finite(g)), tf.float32))
                        for g in grads
                    ]
                )
            )

        nonfinite = tf.cond(tf.reduce_all(tf.math.is_finite(half_sq)), self.zeros, count_nonfinite)
        _run_as_function_call(nonfinite)
        return GradientSums(grad_half_sq=self._per_layer_sum(half_sq), nonfinite=nonfinite)

    def before_update(self, grads: Sequence) -> tuple[tf.Tensor, tf.Tensor, list]:
        """Logged steps, before the update: (per-layer max |g|, weight norm, the weights read)."""
        zero = tf.zeros([], tf.float32)
        # max(max g, -min g) reads the gradient twice but, unlike
        # reduce_max(abs(g)), allocates no tensor the size of the gradient.
        top = tf.stack([zero if g is None else _as_float32(tf.reduce_max(g)) for g in grads])
        bottom = tf.stack([zero if g is None else _as_float32(tf.reduce_min(g)) for g in grads])
        # Empty segments and tensors give -inf; a magnitude starts at 0.
        grad_max_abs = tf.maximum(
            tf.math.unsorted_segment_max(tf.maximum(top, -bottom), self.layer_index, self.n_layers), zero
        )
        weights = [read(variable) for variable in self.variables]
        weight_norm = self._per_layer_norm(tf.stack([half_sum_of_squares(w) for w in weights]))
        return grad_max_abs, weight_norm, weights

    def update_norm(self, weights_before: Sequence[tf.Tensor], weight_norm: tf.Tensor) -> tf.Tensor:
        """Logged steps, after the update: per-layer ||after - before|| (`before_update`'s reads and norm)."""
        # Once the weight norm is done the subtraction is the last reader of
        # the values before, and may write its result into their buffers.
        with tf.control_dependencies([weight_norm]):
            half_sq = [
                half_sum_of_squares(before - read(variable)) for before, variable in zip(weights_before, self.variables)
            ]
        return self._per_layer_norm(tf.stack(half_sq))

    def snapshot(self, weights: Sequence[tf.Tensor]) -> list:
        """Copies `before_update`'s reads into the snapshot variables; returns the copy ops."""
        if self._snapshots is None:
            specs = [(tuple(v.shape), tf.as_dtype(v.dtype)) for v in self.variables]
            self._snapshots = run_plain(
                lambda: [
                    tf.Variable(tf.zeros(shape, dtype), trainable=False, name="gradient_health_snapshot")
                    for shape, dtype in specs
                ]
            )
        return [_copy_into(snapshot, value) for snapshot, value in zip(self._snapshots, weights)]

    def update_norm_from_snapshot(self) -> tf.Tensor:
        """Like `update_norm`, from the values `snapshot` copied (turned into `before - after` in place)."""
        half_sq = []
        for variable, snapshot in zip(self.variables, self._snapshots):
            snapshot.assign_sub(read(variable), read_value=False)
            half_sq.append(half_sum_of_squares(snapshot.value()))
        return self._per_layer_norm(tf.stack(half_sq))


def norm_from_half_squares(half_squares: tf.Tensor) -> tf.Tensor:
    """The L2 norm from half the sum of squares (what `tf.nn.l2_loss` gives).

    Both operations are monotone, so the norm of the largest half sum is the
    largest norm, exactly (NaN stays NaN).
    """
    return tf.sqrt(2.0 * half_squares)


def update_ratio(update_norm: tf.Tensor, weight_norm: tf.Tensor) -> tf.Tensor:
    """||after - before|| / ||before||: 0 for a layer that did not move, +inf for an all-zero one that did."""
    # `update_norm == 0` rather than `> 0`: a NaN update must stay NaN, not
    # read as "did not move".
    return tf.where(tf.equal(update_norm, 0.0), 0.0, update_norm / weight_norm)
