"""A run's statistics as numpy tables sharing one layer order, with notes on what had to be left out."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from tb_gradhealth import metadata
from tb_gradhealth.series import StatSeries


@dataclasses.dataclass(frozen=True)
class Table:
    """One statistic: `values[i, j]` is layer j (in `RunStats.layers` order) at `steps[i]`."""

    steps: np.ndarray
    values: np.ndarray


@dataclasses.dataclass
class RunStats:
    """The usable statistics of one run.

    Attributes:
      layers: layer names, input -> output, shared by every table.
      tables: by statistic name; statistics with no steps are absent.
      notes: what was left out and why.
    """

    layers: tuple[str, ...]
    tables: dict[str, Table]
    notes: list[str]

    def first_of(self, *stats: str) -> tuple[str | None, Table | None]:
        """Returns the first of `stats` the run has, as (name, table), or (None, None)."""
        for stat in stats:
            if stat in self.tables:
                return stat, self.tables[stat]
        return None, None


def collect(series: Mapping[str, StatSeries]) -> RunStats:
    """Puts a run's series into one layer order.

    The order is that of `grad_norm`, else of the first built-in statistic
    present, else of the first series. A statistic whose layers are a
    permutation of it is reordered; one with other layers is left out with a
    note (the rules compare layers across statistics, so they must agree).
    """
    present = {stat: s for stat, s in series.items() if s.num_steps > 0}
    if not present:
        return RunStats(layers=(), tables={}, notes=["no statistic has any logged step"])
    reference = next((stat for stat in metadata.BUILTIN_STATS if stat in present), next(iter(present)))
    layers = tuple(present[reference].layers)
    tables, notes = {}, []
    for stat, stat_series in present.items():
        if tuple(stat_series.layers) == layers:
            values = stat_series.values
        elif sorted(stat_series.layers) == sorted(layers) and len(set(layers)) == len(layers):
            column_in_series = {name: index for index, name in enumerate(stat_series.layers)}
            values = stat_series.values[:, [column_in_series[name] for name in layers]]
        else:
            notes.append("%s left out: its layers differ from those of %s" % (stat, reference))
            continue
        tables[stat] = Table(
            steps=np.asarray(stat_series.steps, dtype=np.int64),
            values=np.asarray(values, dtype=np.float64),
        )
    return RunStats(layers=layers, tables=tables, notes=notes)


def at_common_steps(a: Table, b: Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns (steps, a's rows, b's rows) at the steps both tables have.

    Statistics may be logged (or kept by TensorBoard's sampling) at different
    steps; comparing two of them is only fair at the same step.
    """
    steps, a_rows, b_rows = np.intersect1d(a.steps, b.steps, assume_unique=True, return_indices=True)
    return steps, a.values[a_rows], b.values[b_rows]
