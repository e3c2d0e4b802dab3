"""Chooses which steps of a per-layer series to serve when it has more than asked for, keeping every non-finite step and each layer's extremes."""

from __future__ import annotations

import dataclasses

import numpy as np

# The first and the last step are always kept, so a chart spans the run.
MIN_POINTS = 2


@dataclasses.dataclass(frozen=True)
class RowSelection:
    """The rows chosen, and how many of the rows that must be kept could be.

    Attributes:
      indices: sorted row indices.
      required: rows that hold the first or last step, a non-finite value
        or a layer's extreme (0 when the series was kept whole).
      required_kept: how many of those are in `indices` (less than
        `required` only when they do not fit in the limit).
    """

    indices: np.ndarray
    required: int = 0
    required_kept: int = 0

    @property
    def complete(self) -> bool:
        """Whether every non-finite step and every extreme is kept."""
        return self.required_kept == self.required


# Layers (columns) looked at together while finding the required rows: the
# temporary arrays are this many columns tall, not the whole table.
_COLUMNS_AT_ONCE = 64


def _required(values: np.ndarray, recorded: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Returns (the sorted rows holding the first or last step, a non-finite value, or a layer's smallest or largest finite value; whether each row holds a non-finite value)."""
    n_rows, n_columns = values.shape
    required = np.zeros(n_rows, dtype=bool)
    required[[0, n_rows - 1]] = True
    nonfinite_rows = np.zeros(n_rows, dtype=bool)
    for start in range(0, n_columns, _COLUMNS_AT_ONCE):
        block = values[:, start : start + _COLUMNS_AT_ONCE]
        finite = np.isfinite(block)
        nonfinite = ~finite if recorded is None else ~finite & recorded[:, start : start + _COLUMNS_AT_ONCE]
        nonfinite_rows |= nonfinite.any(axis=1)
        # Cells not recorded hold NaN, so `finite` leaves them out of the extremes.
        has_finite = finite.any(axis=0)
        required[np.where(finite, block, np.inf).argmin(axis=0)[has_finite]] = True
        required[np.where(finite, block, -np.inf).argmax(axis=0)[has_finite]] = True
    required |= nonfinite_rows
    return np.flatnonzero(required), nonfinite_rows


def _spread(candidates: np.ndarray, count: int) -> np.ndarray:
    """Returns about `count` of the sorted `candidates`, evenly spaced, the first and last included."""
    if count >= len(candidates):
        return candidates
    if count <= 0:
        return candidates[:0]
    return candidates[np.unique(np.round(np.linspace(0, len(candidates) - 1, count)).astype(np.int64))]


def select_rows(
    values: np.ndarray, max_points: int, recorded: np.ndarray | None = None, limit: int | None = None
) -> RowSelection:
    """Chooses the rows of `values` to serve.

    All rows when there are at most `max_points`. Otherwise the required
    rows are kept: the first and the last, every row holding a NaN or +-Inf
    in a recorded cell, and for each layer (column) the rows of its smallest
    and largest finite value. The remaining budget, `max_points` minus
    those, is spread evenly over the other rows. So the result can exceed
    `max_points` by the number of required rows, up to `limit`. When the
    required rows alone exceed `limit`, the first and last rows, the first
    non-finite row and an even spread of the other required rows are kept,
    `limit` in all, and the selection says it is not complete.

    Args:
      values: `[n_steps, n_layers]` array in step order.
      max_points: target number of rows, at least `MIN_POINTS`.
      recorded: bool mask of the cells recorded (None: all of them); a cell
        not recorded is never non-finite and never an extreme.
      limit: most rows returned, at least `MIN_POINTS` (None: no limit).
    """
    if max_points < MIN_POINTS or (limit is not None and limit < MIN_POINTS):
        raise ValueError("max_points and limit must be at least %d, got %d, %s" % (MIN_POINTS, max_points, limit))
    if limit is not None:
        max_points = min(max_points, limit)
    n_rows = values.shape[0]
    if n_rows <= max_points:
        return RowSelection(np.arange(n_rows))
    required, nonfinite = _required(values, recorded)
    if limit is not None and len(required) > limit:
        first_nonfinite = np.flatnonzero(nonfinite)[:1].tolist()
        # In this order, as far as the limit allows.
        leading = np.unique(list(dict.fromkeys([0, n_rows - 1, *first_nonfinite]))[:limit])
        others = np.setdiff1d(required, leading, assume_unique=True)
        kept = np.union1d(leading, _spread(others, limit - len(leading)))
        return RowSelection(kept, len(required), len(kept))
    kept = np.zeros(n_rows, dtype=bool)
    kept[required] = True
    kept[_spread(np.flatnonzero(~kept), max_points - len(required))] = True
    return RowSelection(np.flatnonzero(kept), len(required), len(required))
