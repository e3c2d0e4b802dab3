"""Downsampling a per-layer series keeps every non-finite step and each layer's extremes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tb_gradhealth import downsample


def _required_rows(values: np.ndarray, recorded: np.ndarray | None = None) -> set[int]:
    """The rows that must survive, computed row by row, independently of the module."""
    recorded = np.ones(values.shape, dtype=bool) if recorded is None else recorded
    rows = {0, len(values) - 1}
    for row in range(len(values)):
        if any(not np.isfinite(v) and r for v, r in zip(values[row], recorded[row])):
            rows.add(row)
    for layer in range(values.shape[1]):
        column = [
            (value, row) for row, value in enumerate(values[:, layer]) if np.isfinite(value) and recorded[row, layer]
        ]
        if column:
            rows.add(min(column)[1])
            rows.add(max(column, key=lambda pair: (pair[0], -pair[1]))[1])
    return rows


def test_short_series_is_kept_whole():
    values = np.ones((5, 2))
    np.testing.assert_array_equal(downsample.select_rows(values, 5).indices, np.arange(5))
    np.testing.assert_array_equal(downsample.select_rows(values, 100).indices, np.arange(5))


def test_nan_run_after_a_spike_is_kept_and_budget_spreads_evenly():
    values = np.full((1_000, 2), 1.0)
    values[:, 0] = np.linspace(1, 2, 1_000)
    values[400, 1] = 1e4  # spike
    values[900:, 1] = np.nan
    rows = downsample.select_rows(values, 120).indices
    assert set(range(900, 1_000)) <= set(rows)
    assert {0, 400, 999} <= set(rows)
    assert len(rows) == 120
    # The 16 remaining points spread over steps 1..899, not bunched.
    spread = [row for row in rows if row < 900 and row not in (0, 400)]
    assert len(spread) >= 14 and max(np.diff(spread)) < 120


def test_max_points_below_minimum_is_refused():
    with pytest.raises(ValueError, match="at least 2"):
        downsample.select_rows(np.ones((10, 1)), 1)


finite_or_not = st.one_of(
    st.floats(width=32, allow_nan=False, allow_infinity=False),
    st.sampled_from([np.nan, np.inf, -np.inf]),
)


_tables = hnp.arrays(
    np.float64,
    st.tuples(st.integers(1, 60), st.integers(1, 4)),
    elements=st.one_of(st.floats(-1e6, 1e6, width=32), finite_or_not),
)


@settings(max_examples=200, deadline=None)
@given(values=_tables, max_points=st.integers(2, 80), data=st.data())
def test_select_rows_properties(values, max_points, data):
    recorded = data.draw(st.none() | hnp.arrays(np.bool_, values.shape))
    if recorded is not None:
        values = np.where(recorded, values, np.nan)  # as the reader stores cells not recorded
    selection = downsample.select_rows(values, max_points, recorded)
    rows = selection.indices
    n_rows = len(values)
    assert list(rows) == sorted(set(rows.tolist()))
    assert all(0 <= row < n_rows for row in rows)
    assert selection.complete
    if n_rows <= max_points:
        assert rows.tolist() == list(range(n_rows))
        return
    required = _required_rows(values, recorded)
    assert required <= set(rows.tolist())
    assert selection.required == len(required)
    assert len(rows) == max(max_points, len(required))


@settings(max_examples=200, deadline=None)
@given(values=_tables, max_points=st.integers(2, 80), limit=st.integers(2, 80))
def test_a_limit_caps_the_rows_and_says_when_required_ones_are_left_out(values, max_points, limit):
    selection = downsample.select_rows(values, max_points, limit=limit)
    rows = selection.indices.tolist()
    n_rows = len(values)
    assert len(rows) <= limit
    if n_rows <= min(max_points, limit):
        assert rows == list(range(n_rows)) and selection.complete
        return
    required = _required_rows(values)
    assert selection.required == len(required)
    assert {0, n_rows - 1} <= set(rows)
    if len(required) <= limit:
        assert selection.complete and required <= set(rows)
        assert len(rows) == max(min(max_points, limit), len(required))
    else:
        assert not selection.complete
        assert len(rows) == selection.required_kept == limit
        assert set(rows) <= required
        nonfinite_rows = [row for row in range(n_rows) if not np.isfinite(values[row]).all()]
        if nonfinite_rows and limit > 2:
            assert nonfinite_rows[0] in rows  # the onset comes right after the first and the last


def test_cells_not_recorded_are_neither_non_finite_nor_extremes():
    values = np.tile(np.linspace(1.0, 2.0, 100)[:, None], (1, 2))
    recorded = np.ones(values.shape, dtype=bool)
    recorded[10:20, 1] = False
    values[~recorded] = np.nan
    values[50, 1] = 1e6  # a real extreme of a recorded cell
    selection = downsample.select_rows(values, 5, recorded)
    assert set(selection.indices.tolist()) & set(range(10, 20)) <= {selection.indices[1]}
    assert 50 in selection.indices and selection.required == 3  # first, last, the spike
