"""Chooses which steps of a per-layer series to serve when it has more than asked for, never losing a non-finite step or an extreme."""

from __future__ import annotations

import numpy as np

# The first and the last step are always kept, so a chart spans the run.
MIN_POINTS = 2


def keep_indices(values: np.ndarray, max_points: int) -> np.ndarray:
    """Returns the sorted row indices of `values` to keep.

    All rows when there are at most `max_points`. Otherwise these rows are
    always kept: the first and the last, every row holding a NaN or +-Inf,
    and for each layer (column) the rows of its smallest and largest finite
    value. The remaining budget, `max_points` minus those, is spread evenly
    over the other rows. So the result can exceed `max_points` by the
    number of non-finite rows and extremes, but never drops one.

    Args:
      values: `[n_steps, n_layers]` array in step order.
      max_points: target number of rows, at least `MIN_POINTS`.
    """
    if max_points < MIN_POINTS:
        raise ValueError("max_points must be at least %d, got %d" % (MIN_POINTS, max_points))
    n_rows = values.shape[0]
    if n_rows <= max_points:
        return np.arange(n_rows)
    finite = np.isfinite(values)
    required = {0, n_rows - 1}
    required.update(np.flatnonzero(~finite.all(axis=1)).tolist())
    has_finite = finite.any(axis=0)
    low = np.where(finite, values, np.inf).argmin(axis=0)
    high = np.where(finite, values, -np.inf).argmax(axis=0)
    required.update(low[has_finite].tolist())
    required.update(high[has_finite].tolist())
    kept = np.zeros(n_rows, dtype=bool)
    kept[list(required)] = True
    budget = max_points - int(kept.sum())
    if budget > 0:
        others = np.flatnonzero(~kept)
        picks = np.unique(np.round(np.linspace(0, len(others) - 1, budget)).astype(np.int64))
        kept[others[picks]] = True
    return np.flatnonzero(kept)
