"""A run's statistics as numpy tables sharing one layer order, with notes on what had to be left out."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from tb_gradhealth import metadata
from tb_gradhealth.series import StatSeries


@dataclasses.dataclass(frozen=True)
class Table:
    """One statistic: `values[i, j]` is layer j (in `RunStats.layers` order) at `steps[i]`.

    Attributes:
      steps: int64 `[n_steps]`, increasing.
      values: float64 `[n_steps, n_layers]`; NaN where not recorded.
      recorded: bool `[n_steps, n_layers]`, False where the layer was not in
        the step's layer set (its value means nothing there).
    """

    steps: np.ndarray
    values: np.ndarray
    recorded: np.ndarray

    def until(self, step: int) -> Table:
        """Returns the rows up to and including `step`."""
        rows = int(np.searchsorted(self.steps, step, side="right"))
        return Table(self.steps[:rows], self.values[:rows], self.recorded[:rows])


@dataclasses.dataclass(frozen=True)
class Loss:
    """The run-level training loss: `values[i]` at `steps[i]`."""

    steps: np.ndarray
    values: np.ndarray

    def until(self, step: int) -> Loss:
        rows = int(np.searchsorted(self.steps, step, side="right"))
        return Loss(self.steps[:rows], self.values[:rows])


@dataclasses.dataclass
class RunStats:
    """The usable statistics of one run.

    Attributes:
      layers: layer names, input -> output, shared by every table.
      tables: per-layer statistics by name; statistics with no steps are absent.
      loss: the training loss, or None when the run has none.
      notes: what was left out and why.
    """

    layers: tuple[str, ...]
    tables: dict[str, Table]
    notes: list[str]
    loss: Loss | None = None

    def first_of(self, *stats: str) -> tuple[str | None, Table | None]:
        """Returns the first of `stats` the run has, as (name, table), or (None, None)."""
        for stat in stats:
            if stat in self.tables:
                return stat, self.tables[stat]
        return None, None

    def until(self, step: int) -> RunStats:
        """Returns the same statistics cut after `step` (the part of a run the rules may judge)."""
        return RunStats(
            layers=self.layers,
            tables={stat: table.until(step) for stat, table in self.tables.items()},
            notes=list(self.notes),
            loss=None if self.loss is None else self.loss.until(step),
        )


def _loss(series: StatSeries | None) -> Loss | None:
    """The run-level loss series as a `Loss`, or None when absent or of another shape."""
    if series is None or tuple(series.layers) != (metadata.LOSS,) or series.num_steps == 0:
        return None
    values = np.asarray(series.values, dtype=np.float64)[:, 0]
    if series.recorded is not None:
        values = np.where(series.recorded[:, 0], values, np.nan)
    return Loss(steps=np.asarray(series.steps, dtype=np.int64), values=values)


def collect(series: Mapping[str, StatSeries]) -> RunStats:
    """Puts a run's series into one layer order.

    The order is that of `grad_norm`, else of the first built-in statistic
    present, else of the first series. A statistic whose layers are a
    permutation of it is reordered; one with other layers is left out with a
    note (the rules compare layers across statistics, so they must agree).
    The run-level `loss` is kept apart.
    """
    loss = _loss(series.get(metadata.LOSS))
    present = {
        stat: s for stat, s in series.items() if s.num_steps > 0 and not (stat == metadata.LOSS and loss is not None)
    }
    if not present:
        return RunStats(layers=(), tables={}, notes=["no statistic has any logged step"], loss=loss)
    reference = next((stat for stat in metadata.BUILTIN_STATS if stat in present), next(iter(present)))
    layers = tuple(present[reference].layers)
    tables, notes = {}, []
    for stat, stat_series in present.items():
        recorded = stat_series.recorded
        if recorded is None:
            recorded = np.ones(stat_series.values.shape, dtype=bool)
        if tuple(stat_series.layers) == layers:
            columns = slice(None)
        elif sorted(stat_series.layers) == sorted(layers) and len(set(layers)) == len(layers):
            column_in_series = {name: index for index, name in enumerate(stat_series.layers)}
            columns = [column_in_series[name] for name in layers]
        else:
            notes.append("%s left out: its layers differ from those of %s" % (stat, reference))
            continue
        recorded = np.asarray(recorded, dtype=bool)[:, columns]
        values = np.asarray(stat_series.values, dtype=np.float64)[:, columns]
        tables[stat] = Table(
            steps=np.asarray(stat_series.steps, dtype=np.int64),
            values=np.where(recorded, values, np.nan),
            recorded=recorded,
        )
    return RunStats(layers=layers, tables=tables, notes=notes, loss=loss)


def at_common_steps(a: Table, b: Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns (steps, a's rows, b's rows) at the steps both tables have.

    Statistics may be logged (or kept by TensorBoard's sampling) at different
    steps; comparing two of them is only fair at the same step.
    """
    steps, a_rows, b_rows = np.intersect1d(a.steps, b.steps, assume_unique=True, return_indices=True)
    return steps, a.values[a_rows], b.values[b_rows]


def column_medians(values: np.ndarray) -> np.ndarray:
    """Column medians ignoring NaN; NaN for a column with no value."""
    out = np.full(values.shape[1], np.nan)
    for j in range(values.shape[1]):
        column = values[:, j]
        column = column[~np.isnan(column)]
        if len(column):
            out[j] = np.median(column)
    return out
