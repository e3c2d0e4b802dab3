"""Finds the loss a Keras train step computed, so the statistics of the step can record it next to its gradients."""

from __future__ import annotations

import threading

import tensorflow as tf

# Where a loss was seen, most trusted last: `Model.compute_loss` returns the
# total loss of Keras's train step (and of the custom train steps Keras's
# guides show); `Optimizer.scale_loss` receives the loss whose scaled
# gradient the step then applies.
FROM_COMPUTE_LOSS = 1
FROM_SCALE_LOSS = 2


def _current_graph():
    return None if tf.executing_eagerly() else tf.compat.v1.get_default_graph()


class StepLoss:
    """Holds the loss of the train step being traced (or run eagerly) until its gradients are applied.

    Per thread: under a distribution strategy each replica traces its step
    in a thread of its own. A loss is taken only by the step (graph) that
    computed it, and only once.
    """

    def __init__(self):
        self._local = threading.local()

    def note(self, loss, source: int) -> None:
        """Remembers `loss`, unless a more trusted one was already seen in the same step."""
        if loss is None:
            return
        graph = _current_graph()
        seen = getattr(self._local, "seen", None)
        if seen is None or seen[0] is not graph or source >= seen[1]:
            self._local.seen = (graph, source, loss)

    def take(self):
        """The loss noted in the current step (graph), or None; forgets it."""
        seen = getattr(self._local, "seen", None)
        self._local.seen = None
        if seen is None or seen[0] is not _current_graph():
            return None
        return seen[2]
