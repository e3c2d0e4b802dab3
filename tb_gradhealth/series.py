"""In-memory form of one run's per-layer statistic over steps, shared by the reader, the diagnosis and the CLI."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class StatSeries:
    """One statistic of one run: a `[n_steps, n_layers]` table in step order.

    Attributes:
      stat: statistic name, e.g. `grad_norm`.
      layers: layer names in model order, input -> output (the columns).
      steps: int64 `[n_steps]`, strictly increasing.
      wall_times: float64 `[n_steps]`, seconds since the epoch.
      values: float `[n_steps, n_layers]`, of the type written (float32 for
        every writer of ours; the reader makes integers float64), so every
        value is exact; NaN and +-Inf are kept as such.
      recorded: bool `[n_steps, n_layers]`, False where the layer was not
        in the layer set of that step (its value there is NaN and means
        nothing: not non-finite, not zero); None when every layer was
        recorded at every step.
    """

    stat: str
    layers: tuple[str, ...]
    steps: np.ndarray
    wall_times: np.ndarray
    values: np.ndarray
    recorded: np.ndarray | None = None

    def __post_init__(self):
        n_steps = len(self.steps)
        if self.values.shape != (n_steps, len(self.layers)):
            raise ValueError(
                "%s: values of shape %s do not match %d steps x %d layers"
                % (self.stat, self.values.shape, n_steps, len(self.layers))
            )
        if len(self.wall_times) != n_steps:
            raise ValueError("%s: %d wall times for %d steps" % (self.stat, len(self.wall_times), n_steps))
        if self.recorded is not None and self.recorded.shape != self.values.shape:
            raise ValueError(
                "%s: recorded mask of shape %s for values of shape %s"
                % (self.stat, self.recorded.shape, self.values.shape)
            )

    @property
    def num_steps(self) -> int:
        return len(self.steps)

    @property
    def nbytes(self) -> int:
        """Bytes of its arrays (the memory it holds)."""
        arrays = (self.steps, self.wall_times, self.values, self.recorded)
        return sum(array.nbytes for array in arrays if array is not None)
