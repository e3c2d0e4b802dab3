"""Rule `vanishing`: gradients orders of magnitude smaller towards the input, or updates too small to move stalled layers."""

from __future__ import annotations

import dataclasses

import numpy as np

from tb_gradhealth import metadata
from tb_gradhealth.diagnosis import findings
from tb_gradhealth.diagnosis.findings import format_number
from tb_gradhealth.diagnosis.tables import RunStats, at_common_steps

# A layer vanishes across depth when its gradient, measured size-fairly, is
# two orders of magnitude below the output layer's (median over logged
# steps). Healthy calibration layers never went below 0.16 (relative
# gradient) and 0.046 (largest element) of the output layer; the 10-layer
# sigmoid MLP's first eight are at 9.4e-3 .. 1.6e-6.
DEPTH_RATIO = 1e-2  # x the output layer's

# Updates too small to move the weights: two orders of magnitude below the
# usual rule of thumb of ~1e-3 per step. Healthy calibration runs stayed
# above 2.4e-4 (Adam) and 2.9e-5 (SGD with momentum, converging); SGD at a
# learning rate of 1e-5 gives 1.6e-6.
UPDATE_RATIO_TINY = 1e-5  # ||update|| / ||weights|| per step

# The loss is not in the data, so "the loss is not improving" is judged by
# the layer's own gradient norm: a model that learns (converges) sees it
# fall; a stalled one keeps it flat. Stalled: the median of the last quarter
# of logged steps is at least half that of the first quarter. Converging
# calibration runs fell to 0.01-0.025; stalled layers (deep sigmoid, too
# low a learning rate) stayed at 0.72-1.1.
STALLED_NORM_CHANGE = 0.5  # last quarter / first quarter

# Fewest logged steps for the stall test (a first and a last quarter).
MIN_TREND_STEPS = 4  # logged steps

# A layer two further orders of magnitude below a threshold effectively does
# not train: the finding is critical.
CRITICAL_FACTOR = 1e-2

ADVICE_DEPTH = (
    "Use ReLU-family activations with He initialisation, add normalisation layers or residual "
    "connections, or make the network shallower."
)
ADVICE_UPDATES = "Raise the learning rate (or check that its schedule has not decayed it to almost zero)."


@dataclasses.dataclass(frozen=True)
class _Measure:
    """A per-layer gradient size comparable across layers of different sizes."""

    description: str
    steps: np.ndarray
    values: np.ndarray


def _depth_measures(stats: RunStats) -> tuple[list[_Measure], list[str]]:
    """Returns the size-fair measures the run allows, most telling first, and notes.

    The raw L2 norm grows with the square root of a layer's parameter
    count, which the data does not hold. Two measures cancel the size:
    the relative gradient ||g|| / ||w|| (both norms grow alike with size; it
    is what the update ratio is for plain SGD) and the largest gradient
    element max|g| (grows only like sqrt(log n)). A layer is flagged only if
    every measure available agrees.
    """
    measures, notes = [], []
    grad = stats.tables.get(metadata.GRAD_NORM)
    weight = stats.tables.get(metadata.WEIGHT_NORM)
    if grad is not None and weight is not None:
        steps, g, w = at_common_steps(grad, weight)
        with np.errstate(divide="ignore", invalid="ignore"):
            relative = np.where(w > 0, g / w, np.nan)
        if len(steps):
            measures.append(_Measure("relative gradient grad_norm / weight_norm", steps, relative))
    max_abs = stats.tables.get(metadata.GRAD_MAX_ABS)
    if max_abs is not None:
        measures.append(_Measure("largest gradient element grad_max_abs", max_abs.steps, max_abs.values))
    if not measures:
        stat, table = stats.first_of(metadata.GRAD_NORM, metadata.GRAD_NORM_MAX)
        if table is not None:
            measures.append(_Measure("gradient norm %s" % stat, table.steps, table.values))
            notes.append(
                "no weight_norm or grad_max_abs: vanishing across depth judged on raw gradient norms, "
                "which grow with layer size"
            )
    return measures, notes


def _ratios_to_output(measure: _Measure, output: int) -> np.ndarray:
    """Per step and layer, the measure over the output layer's; NaN where undefined."""
    values = np.where(np.isfinite(measure.values), measure.values, np.nan)
    reference = values[:, output : output + 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(reference > 0, values / reference, np.nan)


def _nanmedian(values: np.ndarray) -> np.ndarray:
    """Column medians ignoring NaN; NaN for a column with no value."""
    out = np.full(values.shape[1], np.nan)
    for j in range(values.shape[1]):
        column = values[:, j]
        column = column[~np.isnan(column)]
        if len(column):
            out[j] = np.median(column)
    return out


def _depth(stats: RunStats, alive: np.ndarray):
    """Returns (flagged mask, primary median ratios, first step, description, notes)."""
    n_layers = len(stats.layers)
    measures, notes = _depth_measures(stats)
    if n_layers < 2 or not measures or not alive.any():
        return np.zeros(n_layers, bool), None, None, None, notes
    # The gradient enters the network at the output layer; the layer nearest
    # the output that has a gradient at all is the reference.
    output = int(np.flatnonzero(alive)[-1])
    flagged = alive.copy()
    flagged[output] = False
    medians = []
    for measure in measures:
        ratios = _ratios_to_output(measure, output)
        median = _nanmedian(ratios)
        flagged &= median <= DEPTH_RATIO  # NaN compares False
        medians.append((ratios, median))
    if not flagged.any():
        return flagged, medians[0][1], None, None, notes
    primary_ratios, primary_median = medians[0]
    # A median at or below the threshold means some step is too.
    below = (primary_ratios[:, flagged] <= DEPTH_RATIO).any(axis=1)
    first_step = int(measures[0].steps[np.argmax(below)])
    return flagged, primary_median, first_step, measures[0].description, notes


def _stalled_small_updates(stats: RunStats, alive: np.ndarray):
    """Returns (flagged mask, median update ratios, norm changes, first step, notes)."""
    n_layers = len(stats.layers)
    none = np.zeros(n_layers, bool)
    updates = stats.tables.get(metadata.UPDATE_RATIO)
    _, norms = stats.first_of(metadata.GRAD_NORM, metadata.GRAD_NORM_MAX, metadata.GRAD_MAX_ABS)
    if updates is None or norms is None:
        return none, None, None, None, ["no update_ratio or gradient norm: too-small updates not checked"]
    if len(updates.steps) < MIN_TREND_STEPS or len(norms.steps) < MIN_TREND_STEPS:
        return none, None, None, None, ["fewer than %d logged steps: too-small updates not checked" % MIN_TREND_STEPS]
    update_median = _nanmedian(np.where(np.isfinite(updates.values), updates.values, np.nan))
    values = np.where(np.isfinite(norms.values), norms.values, np.nan)
    quarter = max(1, len(values) // 4)
    with np.errstate(divide="ignore", invalid="ignore"):
        change = _nanmedian(values[-quarter:]) / _nanmedian(values[:quarter])
    flagged = alive & (update_median <= UPDATE_RATIO_TINY) & (change >= STALLED_NORM_CHANGE)
    if not flagged.any():
        return flagged, update_median, change, None, []
    below = (updates.values[:, flagged] <= UPDATE_RATIO_TINY).any(axis=1)
    first_step = int(updates.steps[np.argmax(below)])
    return flagged, update_median, change, first_step, []


def check(stats: RunStats, dead_layers: set[str]) -> tuple[findings.Finding | None, list[str]]:
    """Returns the `vanishing` finding of a run (or None) and notes on what was not checked.

    Args:
      dead_layers: layers of the run's `dead` finding; a layer with no
        gradient at all is dead, not vanishing, and is left out here.
    """
    alive = np.array([name not in dead_layers for name in stats.layers], dtype=bool)
    deep, depth_median, depth_step, depth_description, notes = _depth(stats, alive)
    small, update_median, change, small_step, small_notes = _stalled_small_updates(stats, alive)
    notes += small_notes
    flagged = deep | small
    if not flagged.any():
        return None, notes
    columns = np.flatnonzero(flagged)
    layers = tuple(stats.layers[j] for j in columns)
    first_step = min(step for step in (depth_step, small_step) if step is not None)
    evidence: dict = {}
    parts = []
    critical = False
    if deep.any():
        evidence["ratio_to_output"] = depth_median[columns]
        evidence["ratio_threshold"] = DEPTH_RATIO
        worst = float(np.nanmin(depth_median[deep]))
        critical |= worst <= DEPTH_RATIO * CRITICAL_FACTOR
        parts.append(
            "The %s of %s is %s to %s of the output layer's (median over logged steps, threshold %g), "
            "from step %d: the layers nearest the input barely learn."
            % (
                depth_description,
                findings.format_layers([stats.layers[j] for j in np.flatnonzero(deep)]),
                format_number(worst),
                format_number(float(np.nanmax(depth_median[deep]))),
                DEPTH_RATIO,
                depth_step,
            )
        )
    if update_median is not None:
        evidence["update_ratio"] = update_median[columns]
    if small.any():
        evidence["update_ratio_threshold"] = UPDATE_RATIO_TINY
        evidence["norm_change"] = change[columns]
        worst = float(np.nanmin(update_median[small]))
        critical |= worst <= UPDATE_RATIO_TINY * CRITICAL_FACTOR
        parts.append(
            "Updates of %s move the weights by a median %s of their norm per step (threshold %g) "
            "while their gradient norm stays flat (last / first quarter of the run: %s to %s), from step %d."
            % (
                findings.format_layers([stats.layers[j] for j in np.flatnonzero(small)]),
                format_number(worst),
                UPDATE_RATIO_TINY,
                format_number(float(np.nanmin(change[small]))),
                format_number(float(np.nanmax(change[small]))),
                small_step,
            )
        )
    return (
        findings.Finding(
            kind=findings.VANISHING,
            layers=layers,
            first_step=first_step,
            severity=findings.CRITICAL if critical else findings.WARNING,
            evidence=evidence,
            message=" ".join(parts),
            advice=ADVICE_DEPTH if deep.any() else ADVICE_UPDATES,
        ),
        notes,
    )
