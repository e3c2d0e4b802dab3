"""Ring buffer of per-step statistics kept in TensorFlow variables, and its flush into TensorBoard event files."""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from tb_gradhealth import metadata
from tb_gradhealth.capture.plain_variables import create_plain
from tb_gradhealth.capture.reductions import GradientSums, StepDetails

STATS = metadata.BUILTIN_STATS
# Computed at every step; the others only at logged steps.
PER_STEP_COLUMNS = tuple(
    STATS.index(stat) for stat in (metadata.GRAD_NORM, metadata.GRAD_NORM_MAX, metadata.NONFINITE)
)


def _max_keeping_nan(running: tf.Tensor, new: tf.Tensor) -> tf.Tensor:
    # "The largest grad_norm" is NaN once one was NaN. tf.maximum keeps a NaN
    # in its first argument on every device, but XLA drops one in the second.
    return tf.where(tf.math.is_nan(new), new, tf.maximum(running, new))


class StatsRing:
    """Holds the statistics of logged steps until the host writes them.

    Per step (graph code, XLA-compatible: only variable reads and writes)
    `record` folds the step into the running `grad_norm_max` / `nonfinite`
    accumulators and writes its row `[n_layers, len(STATS)]` into slot
    `min(count, capacity)`; a logged step then advances `count`, so its row
    stays, while an unlogged step's row is overwritten by the next step (and
    is the one written at the end of training if no logged step followed).
    Slot `capacity` also takes logged rows that find the buffer full (they
    are counted as dropped), and slot `capacity + 1` the rows of invisible
    steps. `flush` (a `tf.function` run by the host, or from the graph in
    custom loops) writes the stored rows through TensorFlow's C++ summary
    writer and empties the buffer.

    Steps are numbered by the ring, one per recorded training step, from the
    number given to `start_at` (the optimizer's `iterations` when recording
    begins).
    """

    def __init__(self, layer_names: Sequence[str], capacity: int, update_freq: int):
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError("buffer_steps must be a positive number of logged steps, got %r" % (capacity,))
        if isinstance(update_freq, bool) or not isinstance(update_freq, int) or update_freq < 1:
            raise ValueError("update_freq must be a positive number of steps, got %r" % (update_freq,))
        self.layer_names = tuple(layer_names)
        self.capacity = capacity
        self.update_freq = update_freq
        n_layers = len(self.layer_names)
        self._serialized_metadata = [
            metadata.create_summary_metadata(stat, self.layer_names).SerializeToString() for stat in STATS
        ]
        self._tags = [metadata.tag_for_stat(stat) for stat in STATS]
        slots = capacity + 2

        def create():
            def variable(initial, name):
                return tf.Variable(initial, trainable=False, name="gradient_health_" + name)

            return {
                "rows": variable(tf.zeros([slots, n_layers, len(STATS)]), "rows"),
                "row_steps": variable(tf.fill([slots], tf.constant(-1, tf.int64)), "row_steps"),
                "count": variable(tf.constant(0, tf.int64), "count"),
                "step": variable(tf.constant(-1, tf.int64), "step"),
                "acc_max": variable(tf.zeros([n_layers]), "grad_norm_max"),
                "acc_nonfinite": variable(tf.zeros([n_layers]), "nonfinite"),
                "last_written_step": variable(tf.constant(-1, tf.int64), "last_written_step"),
                "dropped": variable(tf.constant(0, tf.int64), "dropped"),
                "metadata_written": variable(tf.zeros([len(STATS)], tf.bool), "metadata_written"),
            }

        created = create_plain(create)
        self._rows = created["rows"]
        self._row_steps = created["row_steps"]
        self._count = created["count"]
        self._step = created["step"]
        self._acc_max = created["acc_max"]
        self._acc_nonfinite = created["acc_nonfinite"]
        self._last_written_step = created["last_written_step"]
        self._dropped = created["dropped"]
        self._metadata_written = created["metadata_written"]
        self._writer = None
        self._flush_fns: dict = {}

    def start_at(self, step: int) -> None:
        """Sets the first step number if no step was recorded yet (host code)."""
        if int(self._step.numpy()) < 0:
            self._step.assign(int(step))

    def next_step(self) -> int:
        """The number the next recorded step gets (-1 before `start_at`)."""
        return int(self._step.numpy())

    def position(self):
        """Graph code: (this step's number, whether it is a logged step; Python True when all are)."""
        step = self._step.value()
        if self.update_freq == 1:
            return step, True
        return step, tf.equal(step % self.update_freq, 0)

    def record(self, step, logged, sums: GradientSums, details: StepDetails, visible) -> None:
        """Graph code: folds one training step into the buffer, with no host round trip.

        Args:
          step, logged: from `position()`.
          sums, details: the step's statistics (`details` are only read on
            logged steps).
          visible: Python True, or a bool scalar that is False for a step
            that applied no gradient and must leave no trace (a loss-scale
            overflow, see recorder).
        """
        always = logged is True and visible is True
        if always:
            grad_norm_max, nonfinite = sums.grad_norm, sums.nonfinite
            keep = None
        else:
            keep = logged if visible is True else visible if logged is True else tf.logical_and(logged, visible)
            new_norm = sums.grad_norm if visible is True else tf.where(visible, sums.grad_norm, 0.0)
            new_nonfinite = sums.nonfinite if visible is True else tf.where(visible, sums.nonfinite, 0.0)
            grad_norm_max = _max_keeping_nan(self._acc_max.value(), new_norm)
            nonfinite = self._acc_nonfinite.value() + new_nonfinite
        columns = {
            metadata.GRAD_NORM: sums.grad_norm,
            metadata.GRAD_NORM_MAX: grad_norm_max,
            metadata.GRAD_MAX_ABS: details.grad_max_abs,
            metadata.NONFINITE: nonfinite,
            metadata.WEIGHT_NORM: details.weight_norm,
            metadata.UPDATE_RATIO: details.update_ratio,
        }
        row = tf.stack([columns[stat] for stat in STATS], axis=1)
        count = self._count.value()
        slot = tf.minimum(count, self.capacity)
        if visible is not True:
            slot = tf.where(visible, slot, tf.constant(self.capacity + 1, tf.int64))
        # The raw ops take a scalar slot, sparing reshapes on every step.
        tf.raw_ops.ResourceScatterUpdate(resource=self._rows.handle, indices=slot, updates=row)
        tf.raw_ops.ResourceScatterUpdate(resource=self._row_steps.handle, indices=slot, updates=step)
        if always:
            self._count.assign_add(1)
        else:
            self._count.assign_add(tf.cast(keep, tf.int64))
            self._acc_max.assign(tf.where(keep, tf.zeros_like(grad_norm_max), grad_norm_max))
            self._acc_nonfinite.assign(tf.where(keep, tf.zeros_like(nonfinite), nonfinite))
        self._step.assign_add(1)

    def attach_writer(self, writer) -> None:
        """Sends later flushes to `writer`; its file gets the metadata again on each tag's first value."""
        self._writer = writer
        self._flush_fns = {}
        self._metadata_written.assign(tf.zeros([len(STATS)], tf.bool))

    def _write_value(self, row: tf.Tensor, step: tf.Tensor, column: int) -> None:
        # TensorBoard keeps the first metadata it sees per tag: attach it to
        # the first value of each tag in this file only.
        tag, serialized = self._tags[column], self._serialized_metadata[column]

        def with_metadata():
            tf.summary.write(tag, row[:, column], step=step, metadata=serialized)
            return tf.constant(True)

        def without():
            tf.summary.write(tag, row[:, column], step=step)
            return tf.constant(True)

        tf.cond(self._metadata_written[column], without, with_metadata)
        self._metadata_written.scatter_update(tf.IndexedSlices(tf.constant([True]), [column]))

    def _write_rows(self, rows: tf.Tensor, steps: tf.Tensor) -> None:
        total = tf.shape(rows)[0]

        def first_row():
            for column in range(len(STATS)):
                self._write_value(rows[0], steps[0], column)
            return tf.constant(1)

        start = tf.cond(total > 0, first_row, lambda: tf.constant(0))

        def body(index):
            for column, tag in enumerate(self._tags):
                tf.summary.write(tag, rows[index, :, column], step=steps[index])
            return (index + 1,)

        tf.while_loop(lambda index: index < total, body, (start,))

    def _flush(self, include_pending: bool):
        with self._writer.as_default(), tf.summary.record_if(True):
            count = self._count.read_value()
            stored = tf.minimum(count, self.capacity)
            rows = self._rows[:stored]
            steps = self._row_steps[:stored]
            self._write_rows(rows, steps)
            written_through = tf.maximum(
                self._last_written_step.read_value(), tf.reduce_max(tf.concat([steps, [-1]], 0))
            )
            if include_pending:
                # The slot after the stored rows holds the last visible step;
                # if it came after everything written, write what every step
                # computes (the per-step statistics), so a spike or NaN after
                # the last logged step is not lost when training ends. The
                # statistics of logged steps only are not known there.
                pending_step = self._row_steps[stored]
                pending_row = self._rows[stored]

                def write_pending():
                    for column in PER_STEP_COLUMNS:
                        self._write_value(pending_row, pending_step, column)
                    return pending_step

                written_through = tf.cond(pending_step > written_through, write_pending, lambda: written_through)
                self._acc_max.assign(tf.zeros_like(self._acc_max))
                self._acc_nonfinite.assign(tf.zeros_like(self._acc_nonfinite))
            self._last_written_step.assign(written_through)
            self._dropped.assign_add(count - stored)
            # Later steps write from slot 0 on: move the latest unlogged row
            # there, where the end of training looks for it.
            self._rows.scatter_update(tf.IndexedSlices(self._rows[stored][tf.newaxis], [0]))
            self._row_steps.scatter_update(tf.IndexedSlices(self._row_steps[stored][tf.newaxis], [0]))
            self._count.assign(0)
        return self._step.read_value(), self._dropped.read_value()

    def flush(self, include_pending: bool = False) -> tuple[int, int]:
        """Writes the stored rows (and, with `include_pending`, the last unlogged step). Host code.

        Returns:
          (the next step number; logged steps dropped so far because the
          buffer was full).
        """
        step, dropped = self.flush_in_graph(include_pending)
        return int(step), int(dropped)

    def flush_in_graph(self, include_pending: bool = False):
        """Like `flush`, also usable inside a traced (not XLA) function; returns tensors."""
        if self._writer is None:
            raise RuntimeError("StatsRing.flush needs a writer: call attach_writer first")
        fn = self._flush_fns.get(include_pending)
        if fn is None:
            fn = tf.function(lambda: self._flush(include_pending), autograph=False)
            self._flush_fns[include_pending] = fn
        return fn()

    def flush_if_full_in_graph(self) -> None:
        """Graph code: flushes when the buffer is full (not inside XLA)."""
        tf.cond(
            self._count.read_value() >= self.capacity,
            lambda: self.flush_in_graph(False)[0],
            lambda: tf.constant(0, tf.int64),
        )
