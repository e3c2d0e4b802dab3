"""Buffer of the statistics of logged steps, kept in TensorFlow variables until the host writes them into event files."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence

import tensorflow as tf

from tb_gradhealth import metadata
from tb_gradhealth.capture.plain_context import run_plain
from tb_gradhealth.capture.reductions import GradientSums, StepDetails, in_xla_context, norm_from_half_squares

STATS = metadata.BUILTIN_STATS
# Logged steps kept in the graph between two writes by the host. At
# update_freq=1 the host writes every this many steps; 128 rows of 100 layers
# take 300 KiB.
DEFAULT_BUFFER_STEPS = 128
# Steps between two written steps by default: an unwritten step costs a
# fraction of a written one, and `grad_norm_max` and `nonfinite` still cover
# every step, so a spike or a NaN between written steps is caught
# (docs/capture.md, "What it costs", has the measurements behind it).
DEFAULT_UPDATE_FREQ = 20
# Computed at every step; the others only at logged steps.
PER_STEP_COLUMNS = tuple(STATS.index(stat) for stat in (metadata.GRAD_NORM, metadata.GRAD_NORM_MAX, metadata.NONFINITE))
# Index of the loss among the tags written (after the per-layer statistics).
LOSS_OUTPUT = len(STATS)


def check_steps(name: str, value) -> int:
    """Returns `value` if it is a positive number of steps (`update_freq`, `buffer_steps`).

    Raises:
      ValueError: not a positive integer (a bool is not one).
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError("%s must be a positive number of steps, got %r" % (name, value))
    return value


class DroppedSteps:
    """Counts the logged steps a writer's buffers dropped because they were full, and warns of new ones."""

    def __init__(self, owner: str):
        self.owner = owner
        self._by_buffer: dict[int, int] = {}
        self._reported = 0

    def update(self, buffer, dropped_so_far: int) -> None:
        """Notes what `buffer.flush` returned."""
        self._by_buffer[id(buffer)] = dropped_so_far

    def warn_if_more(self) -> None:
        total = sum(self._by_buffer.values())
        if total > self._reported:
            warnings.warn(
                "%s dropped %d logged steps: its buffer was full" % (self.owner, total - self._reported),
                stacklevel=3,
            )
            self._reported = total


def _max_keeping_nan(running: tf.Tensor, new: tf.Tensor) -> tf.Tensor:
    # "The largest grad_norm" is NaN once one was NaN. TensorFlow's CPU and
    # GPU kernels of tf.maximum keep a NaN in either argument; XLA keeps one
    # in its first argument only.
    if not in_xla_context():
        return tf.maximum(running, new)
    return tf.where(tf.math.is_nan(new), new, tf.maximum(running, new))


def _visible_only(sums: GradientSums, visible) -> GradientSums:
    """`sums`, or zeros where `visible` is False (a step that must leave no trace in the accumulators)."""
    if visible is True:
        return sums
    return GradientSums(
        grad_half_sq=tf.where(visible, sums.grad_half_sq, 0.0), nonfinite=tf.where(visible, sums.nonfinite, 0.0)
    )


class StepBuffer:
    """Holds the statistics of logged steps until the host writes them.

    Per step (graph code, XLA-compatible: only variable reads and writes)
    `record` folds the step into the running `grad_norm_max` / `nonfinite`
    accumulators; a logged step also writes its row `[n_layers, len(STATS)]`
    into slot `min(count, capacity)` and advances `count` (slot `capacity`
    takes the rows that find the buffer full, counted as dropped, and, when
    whether a step is logged is only known in the graph, the rows of the
    other steps). The running maximum holds half sums of squares (see
    `GradientSums`), turned into norms when a row is written. An unlogged
    step keeps its number and half sum of squares as the pending step, the one written at the end of training if no logged step
    followed. `flush` (a `tf.function` run by the host, or from the graph in
    custom loops) writes the stored rows through TensorFlow's C++ summary
    writer and empties the buffer.

    The caller numbers the steps (see recorder). With `watch_nonfinite`,
    the buffer also keeps the number and per-layer non-finite counts of the
    first recorded step with a non-finite gradient, for the host to read.
    """

    def __init__(
        self,
        layer_names: Sequence[str],
        capacity: int,
        update_freq: int,
        *,
        kinds: Sequence[str] | None = None,
        params: Sequence[int] | None = None,
        layer_set: str | None = None,
        watch_nonfinite: bool = False,
    ):
        check_steps("buffer_steps", capacity)
        check_steps("update_freq", update_freq)
        self.layer_names = tuple(layer_names)
        self.capacity = capacity
        self.update_freq = update_freq
        n_layers = len(self.layer_names)
        self._serialized_metadata = [
            metadata.create_summary_metadata(
                stat, self.layer_names, kinds=kinds, params=params, layer_set=layer_set
            ).SerializeToString()
            for stat in STATS
        ]
        self._tags = [metadata.tag_for_stat(stat, layer_set) for stat in STATS]
        self.watch_nonfinite = watch_nonfinite
        # The run-level loss goes last: column LOSS_OUTPUT of what is written.
        self._serialized_metadata.append(
            metadata.create_summary_metadata(
                metadata.LOSS, [metadata.LOSS], scope=metadata.SCOPE_RUN
            ).SerializeToString()
        )
        self._tags.append(metadata.tag_for_stat(metadata.LOSS))
        # Whether a traced step handed over its loss (set while tracing).
        self.has_loss = False
        slots = capacity + 1

        def create():
            def variable(initial, name):
                return tf.Variable(initial, trainable=False, name="gradient_health_" + name)

            return {
                "rows": variable(tf.zeros([slots, n_layers, len(STATS)]), "rows"),
                "row_steps": variable(tf.fill([slots], tf.constant(-1, tf.int64)), "row_steps"),
                "row_loss": variable(tf.zeros([slots]), "row_loss"),
                "count": variable(tf.constant(0, tf.int64), "count"),
                "first_nonfinite_step": variable(tf.constant(-1, tf.int64), "first_nonfinite_step"),
                "first_nonfinite": variable(tf.zeros([n_layers]), "first_nonfinite"),
                "acc_max": variable(tf.zeros([n_layers]), "grad_half_sq_max"),
                "acc_nonfinite": variable(tf.zeros([n_layers]), "nonfinite"),
                "pending_step": variable(tf.constant(-1, tf.int64), "pending_step"),
                "pending_half_sq": variable(tf.zeros([n_layers]), "pending_grad_half_sq"),
                "last_written_step": variable(tf.constant(-1, tf.int64), "last_written_step"),
                "dropped": variable(tf.constant(0, tf.int64), "dropped"),
                "metadata_written": variable(tf.zeros([len(STATS) + 1], tf.bool), "metadata_written"),
            }

        created = run_plain(create)
        self._rows = created["rows"]
        self._row_steps = created["row_steps"]
        self._row_loss = created["row_loss"]
        self._count = created["count"]
        self._first_nonfinite_step = created["first_nonfinite_step"]
        self._first_nonfinite = created["first_nonfinite"]
        self._acc_max = created["acc_max"]
        self._acc_nonfinite = created["acc_nonfinite"]
        self._pending_step = created["pending_step"]
        self._pending_half_sq = created["pending_half_sq"]
        self._last_written_step = created["last_written_step"]
        self._dropped = created["dropped"]
        self._metadata_written = created["metadata_written"]
        self._writer = None
        self._flush_fns: dict = {}

    def forget_nonfinite(self) -> None:
        """Host code: the next non-finite step is the first again (a new fit)."""
        run_plain(lambda: self._first_nonfinite_step.assign(-1))

    def first_nonfinite(self) -> tuple[int, list[int]] | None:
        """Host code: (step, rows with non-finite elements) of the first recorded non-finite step, or None.

        Reads one scalar from the device while there was none.
        """
        step = int(self._first_nonfinite_step.numpy())
        if step < 0:
            return None
        counts = self._first_nonfinite.numpy()
        return step, [row for row, count in enumerate(counts) if count > 0]

    def is_logged(self, step, logged=None):
        """Graph code: whether step number `step` is a logged step.

        Args:
          logged: Python True or False when the caller knows (the host picks
            a train function per step); None to decide from the step number
            (in the graph unless every step is logged).
        """
        if logged is not None:
            return bool(logged)
        if self.update_freq == 1:
            return True
        return tf.equal(step % self.update_freq, 0)

    def record(self, step, logged, sums: GradientSums, details: StepDetails, visible, loss=None) -> None:
        """Graph code: folds one training step into the buffer, with no host round trip.

        Each op here runs at every training step and has a fixed cost in
        TensorFlow's executor, so the cases the caller knows while tracing
        (`logged` and `visible` as Python bools) get only the ops they need.

        Args:
          step: the step's number (int64 scalar).
          logged: from `is_logged()`.
          sums, details: the step's statistics (`details` are only read on
            logged steps; None when `logged` is False).
          visible: Python True, or a bool scalar that is False for a step
            that applied no gradient and must leave no trace (a loss-scale
            overflow, see recorder).
          loss: the step's loss (float32 scalar), kept with logged rows; None
            when the step did not hand one over.
        """
        if loss is not None:
            self.has_loss = True
        if logged is False:
            self._record_unlogged(step, sums, visible)
        elif logged is True and visible is True:
            self._record_logged(step, sums, details, loss)
        else:
            self._record_either(step, logged, sums, details, visible, loss)
        if self.watch_nonfinite:
            self._watch(step, sums, visible)

    def _watch(self, step, sums: GradientSums, visible) -> None:
        nonfinite = tf.reduce_any(sums.nonfinite > 0)
        first = tf.logical_and(nonfinite, self._first_nonfinite_step.value() < 0)
        if visible is not True:
            first = tf.logical_and(first, visible)
        self._first_nonfinite_step.assign(tf.where(first, step, self._first_nonfinite_step.value()))
        self._first_nonfinite.assign(tf.where(first, sums.nonfinite, self._first_nonfinite.value()))

    def _write_row(self, step, half_sq_max, nonfinite, details: StepDetails, slot, loss, half_sq=None) -> None:
        """Writes a logged row into `slot`, from the half sums of squares of its largest and own gradient."""
        grad_norm_max = norm_from_half_squares(half_sq_max)
        columns = {
            metadata.GRAD_NORM: grad_norm_max if half_sq is None else norm_from_half_squares(half_sq),
            metadata.GRAD_NORM_MAX: grad_norm_max,
            metadata.GRAD_MAX_ABS: details.grad_max_abs,
            metadata.NONFINITE: nonfinite,
            metadata.WEIGHT_NORM: details.weight_norm,
            metadata.UPDATE_RATIO: details.update_ratio,
        }
        row = tf.stack([columns[stat] for stat in STATS], axis=1)
        # The raw ops take a scalar slot, sparing reshapes on every step.
        tf.raw_ops.ResourceScatterUpdate(resource=self._rows.handle, indices=slot, updates=row)
        tf.raw_ops.ResourceScatterUpdate(resource=self._row_steps.handle, indices=slot, updates=step)
        if loss is not None:
            tf.raw_ops.ResourceScatterUpdate(resource=self._row_loss.handle, indices=slot, updates=loss)

    def _record_logged(self, step, sums: GradientSums, details: StepDetails, loss) -> None:
        slot = tf.minimum(self._count.value(), self.capacity)
        if self.update_freq == 1:
            # Every step is logged: nothing accumulates between them.
            self._write_row(step, sums.grad_half_sq, sums.nonfinite, details, slot, loss)
        else:
            half_sq_max = _max_keeping_nan(self._acc_max.value(), sums.grad_half_sq)
            nonfinite = self._acc_nonfinite.value() + sums.nonfinite
            self._write_row(step, half_sq_max, nonfinite, details, slot, loss, half_sq=sums.grad_half_sq)
            self._acc_max.assign(tf.zeros_like(half_sq_max))
            self._acc_nonfinite.assign(tf.zeros_like(nonfinite))
        self._count.assign_add(1)

    def _record_unlogged(self, step, sums: GradientSums, visible) -> None:
        sums = _visible_only(sums, visible)
        if visible is not True:
            step = tf.where(visible, step, self._pending_step.value())
            pending_half_sq = tf.where(visible, sums.grad_half_sq, self._pending_half_sq.value())
        else:
            pending_half_sq = sums.grad_half_sq
        self._acc_max.assign(_max_keeping_nan(self._acc_max.value(), sums.grad_half_sq))
        self._acc_nonfinite.assign_add(sums.nonfinite)
        self._pending_step.assign(step)
        self._pending_half_sq.assign(pending_half_sq)

    def _record_either(self, step, logged, sums: GradientSums, details: StepDetails, visible, loss) -> None:
        """Whether the step is logged (and visible) is only known in the graph: no branches, for XLA."""
        keep = logged if visible is True else visible if logged is True else tf.logical_and(logged, visible)
        new = _visible_only(sums, visible)
        half_sq_max = _max_keeping_nan(self._acc_max.value(), new.grad_half_sq)
        nonfinite = self._acc_nonfinite.value() + new.nonfinite
        slot = tf.where(keep, tf.minimum(self._count.value(), self.capacity), tf.constant(self.capacity, tf.int64))
        self._write_row(step, half_sq_max, nonfinite, details, slot, loss, half_sq=sums.grad_half_sq)
        self._count.assign_add(tf.cast(keep, tf.int64))
        self._acc_max.assign(tf.where(keep, tf.zeros_like(half_sq_max), half_sq_max))
        self._acc_nonfinite.assign(tf.where(keep, tf.zeros_like(nonfinite), nonfinite))
        pending = tf.logical_and(tf.logical_not(logged), visible) if visible is not True else tf.logical_not(logged)
        self._pending_step.assign(tf.where(pending, step, self._pending_step.value()))
        self._pending_half_sq.assign(tf.where(pending, sums.grad_half_sq, self._pending_half_sq.value()))

    def attach_writer(self, writer) -> None:
        """Sends later flushes to `writer`; its file gets the metadata again on each tag's first value.

        Host code, also callable while a step is traced.
        """
        self._writer = writer
        self._flush_fns = {}
        run_plain(lambda: self._metadata_written.assign(tf.zeros([len(self._tags)], tf.bool)))

    def _outputs(self, row: tf.Tensor, loss: tf.Tensor, columns) -> list:
        """(output index, value) of what is written for one step: per-layer `columns` of `row`, then the loss."""
        outputs = [(column, row[:, source]) for source, column in columns]
        if self.has_loss:
            outputs.append((LOSS_OUTPUT, tf.reshape(loss, [1])))
        return outputs

    def _write_first(self, outputs, step: tf.Tensor) -> None:
        # TensorBoard keeps the first metadata it sees per tag: attach it to
        # the first value of each tag in this file only.
        for index, values in outputs:
            tag, serialized = self._tags[index], self._serialized_metadata[index]

            def with_metadata(tag=tag, values=values, serialized=serialized):
                tf.summary.write(tag, values, step=step, metadata=serialized)
                return tf.constant(True)

            def without(tag=tag, values=values):
                tf.summary.write(tag, values, step=step)
                return tf.constant(True)

            tf.cond(self._metadata_written[index], without, with_metadata)
            self._metadata_written.scatter_update(tf.IndexedSlices(tf.constant([True]), [index]))

    def _write_rows(self, rows: tf.Tensor, losses: tf.Tensor, steps: tf.Tensor) -> None:
        total = tf.shape(rows)[0]
        all_columns = [(column, column) for column in range(len(STATS))]

        def first_row():
            self._write_first(self._outputs(rows[0], losses[0], all_columns), steps[0])
            return tf.constant(1)

        start = tf.cond(total > 0, first_row, lambda: tf.constant(0))

        def body(index):
            for output, values in self._outputs(rows[index], losses[index], all_columns):
                tf.summary.write(self._tags[output], values, step=steps[index])
            return (index + 1,)

        tf.while_loop(lambda index: index < total, body, (start,))

    def _flush(self, include_pending: bool):
        with self._writer.as_default(), tf.summary.record_if(True):
            count = self._count.read_value()
            stored = tf.minimum(count, self.capacity)
            rows = self._rows[:stored]
            steps = self._row_steps[:stored]
            self._write_rows(rows, self._row_loss[:stored], steps)
            written_through = tf.maximum(
                self._last_written_step.read_value(), tf.reduce_max(tf.concat([steps, [-1]], 0))
            )
            if include_pending:
                # The last step, if it came after everything written, so a
                # spike or NaN after the last stored row is not lost when
                # training ends: a logged row dropped because the buffer was
                # full (the last one is in slot `capacity`) is written whole;
                # an unlogged step with what every step computes (the
                # per-step statistics; the others, and the loss, are not
                # kept there).
                pending_step = self._pending_step.read_value()
                dropped_step = tf.where(
                    count > self.capacity, self._row_steps[self.capacity], tf.constant(-1, tf.int64)
                )
                pending_row = tf.stack(
                    [
                        norm_from_half_squares(self._pending_half_sq.read_value()),
                        norm_from_half_squares(self._acc_max.read_value()),
                        self._acc_nonfinite.read_value(),
                    ],
                    axis=1,
                )

                def write_dropped():
                    all_columns = [(column, column) for column in range(len(STATS))]
                    outputs = self._outputs(self._rows[self.capacity], self._row_loss[self.capacity], all_columns)
                    self._write_first(outputs, dropped_step)
                    return dropped_step

                def write_pending():
                    columns = list(enumerate(PER_STEP_COLUMNS))
                    self._write_first([(column, pending_row[:, source]) for source, column in columns], pending_step)
                    return pending_step

                last_step = tf.maximum(pending_step, dropped_step)
                written_through = tf.cond(
                    last_step > written_through,
                    lambda: tf.cond(dropped_step > pending_step, write_dropped, write_pending),
                    lambda: written_through,
                )
                self._acc_max.assign(tf.zeros_like(self._acc_max))
                self._acc_nonfinite.assign(tf.zeros_like(self._acc_nonfinite))
            self._last_written_step.assign(written_through)
            self._dropped.assign_add(count - stored)
            self._count.assign(0)
        return self._dropped.read_value()

    def flush(self, include_pending: bool = False) -> int:
        """Writes the stored rows (and, with `include_pending`, the last unlogged step). Host code.

        Returns:
          The number of logged steps dropped so far because the buffer was full.
        """
        return int(self.flush_in_graph(include_pending))

    def write_out(self) -> int:
        """Host code: writes everything held, the last step included, and pushes it to disk; returns `flush`'s count."""
        dropped = self.flush(include_pending=True)
        self._writer.flush()
        return dropped

    def flush_in_graph(self, include_pending: bool = False):
        """Like `flush`, also usable inside a traced (not XLA) function; returns a tensor."""
        if self._writer is None:
            raise RuntimeError("StepBuffer.flush needs a writer: call attach_writer first")
        # Traced again once a step hands over its loss.
        key = (include_pending, self.has_loss)
        fn = self._flush_fns.get(key)
        if fn is None:
            # A partial, not a lambda: TensorFlow warns of "retracing" when
            # functions share one code object, as every buffer's flush would
            # (a sweep creating a callback per trial).
            fn = tf.function(functools.partial(self._flush, include_pending), autograph=False)
            self._flush_fns[key] = fn
        return fn()

    def flush_if_full_in_graph(self) -> None:
        """Graph code: flushes when the buffer is full (not inside XLA)."""
        tf.cond(
            self._count.read_value() >= self.capacity,
            lambda: self.flush_in_graph(False),
            lambda: self._dropped.read_value(),
        )
