"""Comparison of a run with a known good one: layers whose gradient level moved by more than a factor."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from tb_gradhealth import metadata
from tb_gradhealth.diagnosis import tables
from tb_gradhealth.series import StatSeries

# A layer's gradient level moved when it is more than an order of magnitude
# above or below the baseline's. Two trainings of one calibration model with
# different seeds moved by up to 3.9x (an Adam MLP whose gradients fall
# 100-fold as it converges, so its median depends on when it converges;
# 1.2x for the transformer, residual CNN and LSTM), while a 3x or 10x
# learning rate moved that MLP's layers by 25x to 120x (docs/diagnosis.md).
LEVEL_FACTOR = 10.0  # x the baseline's level, either way

RELATIVE_LEVEL = "median relative gradient grad_norm / weight_norm"
RAW_LEVEL = "median gradient norm grad_norm"


@dataclasses.dataclass(frozen=True)
class LayerLevel:
    """One layer's gradient level in both runs.

    Attributes:
      layer: the layer name.
      level: its level in the run.
      baseline_level: its level in the baseline.
    """

    layer: str
    level: float
    baseline_level: float

    @property
    def ratio(self) -> float:
        """The run's level over the baseline's (NaN when undefined, inf when the baseline's is 0)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return float(np.float64(self.level) / np.float64(self.baseline_level))

    def to_json(self) -> dict:
        return {"layer": self.layer, "level": self.level, "baseline_level": self.baseline_level, "ratio": self.ratio}


@dataclasses.dataclass(frozen=True)
class BaselineComparison:
    """A run's gradient levels against a known good run's, layers matched by name.

    Attributes:
      measure: what a level is (`RELATIVE_LEVEL`, or `RAW_LEVEL` when a run
        lacks `weight_norm`).
      factor: the factor a level must move by to count (`LEVEL_FACTOR`).
      last_step: levels are medians over the steps up to this one, the part
        of training both runs have (None when they share no step range).
      layers: every layer of both runs with a level in both, in the run's order.
      moved: those whose level moved by more than `factor` either way, or
        that have a level in one run only (zero or no finite value in the other).
      only_in_run: layers the baseline does not have, in the run's order.
      only_in_baseline: layers the run does not have, in the baseline's order.
      notes: what could not be compared and why.
    """

    measure: str
    factor: float
    last_step: int | None
    layers: tuple[LayerLevel, ...]
    moved: tuple[LayerLevel, ...]
    only_in_run: tuple[str, ...]
    only_in_baseline: tuple[str, ...]
    notes: tuple[str, ...] = ()

    @property
    def regressed(self) -> bool:
        """Whether some layer's gradient level moved (layers in one run only do not count)."""
        return bool(self.moved)

    def to_json(self) -> dict:
        """Plain Python types (floats may be NaN/Inf)."""
        return {
            "measure": self.measure,
            "factor": self.factor,
            "last_step": self.last_step,
            "regressed": self.regressed,
            "moved": [level.to_json() for level in self.moved],
            "only_in_run": list(self.only_in_run),
            "only_in_baseline": list(self.only_in_baseline),
            "notes": list(self.notes),
        }


def _levels(stats: tables.RunStats, measure: str, last_step: int) -> dict[str, float]:
    """Each layer's median level over its finite, recorded values up to `last_step` (NaN if none)."""
    grad = stats.tables[metadata.GRAD_NORM].until(last_step)
    if measure == RELATIVE_LEVEL:
        weight = stats.tables[metadata.WEIGHT_NORM].until(last_step)
        _, g, w = tables.at_common_steps(grad, weight)
        with np.errstate(divide="ignore", invalid="ignore"):
            values = np.where(w > 0, g / w, np.nan)
    else:
        values = grad.values
    medians = tables.column_medians(np.where(np.isfinite(values), values, np.nan))
    return dict(zip(stats.layers, medians.tolist()))


def _last_common_step(run: tables.RunStats, baseline: tables.RunStats) -> int | None:
    run_steps, baseline_steps = run.tables[metadata.GRAD_NORM].steps, baseline.tables[metadata.GRAD_NORM].steps
    last = min(int(run_steps[-1]), int(baseline_steps[-1]))
    if last < max(int(run_steps[0]), int(baseline_steps[0])):
        return None
    return last


def compare(
    run: Mapping[str, StatSeries], baseline: Mapping[str, StatSeries], factor: float = LEVEL_FACTOR
) -> BaselineComparison:
    """Compares a run's per-layer gradient levels with a known good run's.

    A layer's level is its median relative gradient grad_norm / weight_norm
    (size-fair, and what moves when inputs, initialisation, loss scale or
    learning rate change) over the steps up to the last step both runs have,
    so a longer baseline (which converged further) is not compared with a
    shorter run's early steps; with no `weight_norm` in either run it is the
    median `grad_norm`. Layers are matched by name.

    Args:
      run: the run's statistics by name (as `diagnose` takes them).
      baseline: the known good run's.
      factor: a level more than `factor` times above or below the
        baseline's has moved.

    Returns:
      The comparison; `regressed` is True when some layer's level moved.

    Raises:
      ValueError: `factor` is not above 1.
    """
    if not factor > 1:
        raise ValueError("factor must be above 1, got %r" % (factor,))
    run_stats, baseline_stats = tables.collect(run), tables.collect(baseline)
    only_in_run = tuple(name for name in run_stats.layers if name not in set(baseline_stats.layers))
    only_in_baseline = tuple(name for name in baseline_stats.layers if name not in set(run_stats.layers))
    both = [stats for stats in (run_stats, baseline_stats) if metadata.GRAD_NORM in stats.tables]
    if len(both) < 2:
        missing = "the run" if metadata.GRAD_NORM not in run_stats.tables else "the baseline"
        return BaselineComparison(
            RAW_LEVEL,
            factor,
            None,
            (),
            (),
            only_in_run,
            only_in_baseline,
            ("no grad_norm in %s: nothing compared" % missing,),
        )
    notes = []
    measure = RELATIVE_LEVEL
    if any(metadata.WEIGHT_NORM not in stats.tables for stats in both):
        measure = RAW_LEVEL
        notes.append("no weight_norm in both runs: compared raw gradient norms, which also move with layer size")
    last_step = _last_common_step(run_stats, baseline_stats)
    if last_step is None:
        notes.append("the runs share no range of steps: nothing compared")
        return BaselineComparison(measure, factor, None, (), (), only_in_run, only_in_baseline, tuple(notes))
    run_levels = _levels(run_stats, measure, last_step)
    baseline_levels = _levels(baseline_stats, measure, last_step)
    levels = tuple(
        LayerLevel(name, run_levels[name], baseline_levels[name])
        for name in run_stats.layers
        if name in baseline_levels
    )
    moved = tuple(level for level in levels if _moved(level, factor))
    return BaselineComparison(measure, factor, last_step, levels, moved, only_in_run, only_in_baseline, tuple(notes))


def _moved(level: LayerLevel, factor: float) -> bool:
    run_known, baseline_known = not np.isnan(level.level), not np.isnan(level.baseline_level)
    if not run_known and not baseline_known:
        return False
    if run_known != baseline_known:
        # Finite values in one run only: e.g. every step NaN in the other.
        return True
    if level.baseline_level == 0 or level.level == 0:
        return level.baseline_level != level.level
    return not (1 / factor <= level.ratio <= factor)
