"""Downsampling a per-layer series keeps every non-finite step and each layer's extremes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tb_gradhealth import downsample


def _required_rows(values: np.ndarray) -> set[int]:
    """The rows that must survive, computed row by row, independently of the module."""
    rows = {0, len(values) - 1}
    for row in range(len(values)):
        if not all(np.isfinite(values[row])):
            rows.add(row)
    for layer in range(values.shape[1]):
        column = [(value, row) for row, value in enumerate(values[:, layer]) if np.isfinite(value)]
        if column:
            rows.add(min(column)[1])
            rows.add(max(column, key=lambda pair: (pair[0], -pair[1]))[1])
    return rows


def test_short_series_is_kept_whole():
    values = np.ones((5, 2))
    np.testing.assert_array_equal(downsample.keep_indices(values, 5), np.arange(5))
    np.testing.assert_array_equal(downsample.keep_indices(values, 100), np.arange(5))


def test_nan_run_after_a_spike_is_kept_and_budget_spreads_evenly():
    values = np.full((1_000, 2), 1.0)
    values[:, 0] = np.linspace(1, 2, 1_000)
    values[400, 1] = 1e4  # spike
    values[900:, 1] = np.nan
    rows = downsample.keep_indices(values, 120)
    assert set(range(900, 1_000)) <= set(rows)
    assert {0, 400, 999} <= set(rows)
    assert len(rows) == 120
    # The 16 remaining points spread over steps 1..899, not bunched.
    spread = [row for row in rows if row < 900 and row not in (0, 400)]
    assert len(spread) >= 14 and max(np.diff(spread)) < 120


def test_max_points_below_minimum_is_refused():
    with pytest.raises(ValueError, match="at least 2"):
        downsample.keep_indices(np.ones((10, 1)), 1)


finite_or_not = st.one_of(
    st.floats(width=32, allow_nan=False, allow_infinity=False),
    st.sampled_from([np.nan, np.inf, -np.inf]),
)


@settings(max_examples=200, deadline=None)
@given(
    values=hnp.arrays(
        np.float64,
        st.tuples(st.integers(1, 60), st.integers(1, 4)),
        elements=st.one_of(st.floats(-1e6, 1e6, width=32), finite_or_not),
    ),
    max_points=st.integers(2, 80),
)
def test_keep_indices_properties(values, max_points):
    rows = downsample.keep_indices(values, max_points)
    n_rows = len(values)
    assert list(rows) == sorted(set(rows.tolist()))
    assert all(0 <= row < n_rows for row in rows)
    if n_rows <= max_points:
        assert rows.tolist() == list(range(n_rows))
        return
    required = _required_rows(values)
    assert required <= set(rows.tolist())
    assert len(rows) == max(max_points, len(required))
