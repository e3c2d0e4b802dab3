"""Rule `vanishing`: gradients shrinking layer by layer towards the input, or updates too small while nothing learns."""

from __future__ import annotations

import dataclasses

import numpy as np

from tb_gradhealth import metadata
from tb_gradhealth.diagnosis import findings, loss
from tb_gradhealth.diagnosis.findings import format_number
from tb_gradhealth.diagnosis.tables import RunStats, at_common_steps, column_medians

# A layer is far below the output layer when its gradient, measured
# size-fairly, is two orders of magnitude below the output layer's (median
# over logged steps). The deep sigmoid MLP's first eight layers are at
# 9.4e-3 .. 1.6e-6; the layers of healthy calibration runs stay above 0.041,
# except attention's query/key projections (down to 8e-4), which the two
# rules below leave alone.
DEPTH_RATIO = 1e-2  # x the output layer's

# Vanishing is a property of depth: the gradient shrinks layer after layer on
# its way back to the input. So the layers far below the output must be a
# block of at least two consecutive layers from the input on; one small layer,
# or small layers with a normal one nearer the input, is that layer's own
# business (a query/key projection behind a near-uniform softmax, an
# embedding, a normalisation layer), and the gradient demonstrably reaches
# the layers nearer the input.
MIN_BLOCK_LAYERS = 2  # layers

# ... and the block must lead smoothly into the layers above it: the first
# layer above the block is at most this factor above the block's last layer.
# In vanishing calibration runs the gradient grows at most 9x per layer; a block
# that gets all its two orders of magnitude at one layer boundary (a query
# and a key projection before their value projection: 8,600x) is the
# property of those layers, not of depth.
MAX_STEP_OUT_OF_BLOCK = 1 / DEPTH_RATIO  # x the block's last layer

# Updates too small to move the weights: two orders of magnitude below the
# usual rule of thumb of ~1e-3 per step. Healthy calibration runs stayed
# above 2.9e-5 (SGD with momentum, converging) and 2.2e-4 (Adam); SGD at a
# learning rate of 1e-5 gives 1.6e-6.
UPDATE_RATIO_TINY = 1e-5  # ||update|| / ||weights|| per step

# Without the loss, "the model is not learning" is judged by the layer's own
# gradient norm: a model that learns (converges) sees it fall; a stalled one
# keeps it flat. Stalled: the median of the last quarter of logged steps is
# at least half that of the first quarter. Converging calibration runs fell
# to 0.01-0.025; stalled layers (deep sigmoid, too low a learning rate)
# stayed at 0.72-1.1.
STALLED_NORM_CHANGE = 0.5  # last quarter / first quarter

# Fewest logged steps for the stall test (a first and a last quarter).
MIN_TREND_STEPS = 4  # logged steps

# A layer two further orders of magnitude below a threshold effectively does
# not train: the finding is critical (unless the loss shows the model
# learning all the same, see `loss.LEARNING_FALL`).
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


@dataclasses.dataclass(frozen=True)
class _Depth:
    """What the across-depth test found."""

    flagged: np.ndarray  # bool per layer
    medians: list[np.ndarray]  # per measure, each layer's median ratio to the output layer
    first_step: int | None = None
    description: str | None = None


def _block_from_input(small: np.ndarray, alive: np.ndarray) -> np.ndarray:
    """The leading layers that are small (dead layers, reported as dead, are passed over), as a mask."""
    block = np.zeros(len(small), bool)
    for j in range(len(small)):
        if not alive[j]:
            continue
        if not small[j]:
            break
        block[j] = True
    return block


def _depth(stats: RunStats, alive: np.ndarray) -> tuple[_Depth, list[str]]:
    """The block of layers from the input far below the output layer, leading smoothly into the layers above."""
    n_layers = len(stats.layers)
    none = np.zeros(n_layers, bool)
    measures, notes = _depth_measures(stats)
    if n_layers < 2 or not measures or not alive.any():
        return _Depth(none, []), notes
    # The gradient enters the network at the output layer; the layer nearest
    # the output that has a gradient at all is the reference.
    output = int(np.flatnonzero(alive)[-1])
    small = alive.copy()
    small[output] = False
    ratios, medians = [], []
    for measure in measures:
        measure_ratios = _ratios_to_output(measure, output)
        median = column_medians(measure_ratios)
        small &= median <= DEPTH_RATIO  # NaN compares False
        ratios.append(measure_ratios)
        medians.append(median)
    block = _block_from_input(small, alive)
    columns = np.flatnonzero(block)
    if len(columns) < MIN_BLOCK_LAYERS:
        return _Depth(none, medians), notes
    above = next((j for j in range(columns[-1] + 1, n_layers) if alive[j]), None)
    if above is not None and any(
        not median[above] <= MAX_STEP_OUT_OF_BLOCK * median[columns[-1]] for median in medians
    ):
        return _Depth(none, medians), notes
    # A median at or below the threshold means some step is too.
    below = (ratios[0][:, block] <= DEPTH_RATIO).any(axis=1)
    first_step = int(measures[0].steps[np.argmax(below)])
    return _Depth(block, medians, first_step, measures[0].description), notes


@dataclasses.dataclass(frozen=True)
class _SmallUpdates:
    """What the too-small-updates test found."""

    flagged: np.ndarray
    update_medians: np.ndarray | None = None
    norm_change: np.ndarray | None = None  # per layer, when judged without the loss
    first_step: int | None = None


def _small_updates(stats: RunStats, alive: np.ndarray, trend: loss.LossTrend | None) -> tuple[_SmallUpdates, list[str]]:
    """Layers whose updates are too small while the model does not learn.

    "Does not learn" is the loss not falling when the run has the loss, else
    the layer's gradient norm not falling.
    """
    none = _SmallUpdates(np.zeros(len(stats.layers), bool))
    updates = stats.tables.get(metadata.UPDATE_RATIO)
    if updates is None:
        return none, ["no update_ratio recorded: too-small updates not checked"]
    if len(updates.steps) < MIN_TREND_STEPS:
        return none, ["fewer than %d logged steps: too-small updates not checked" % MIN_TREND_STEPS]
    update_median = column_medians(np.where(np.isfinite(updates.values), updates.values, np.nan))
    tiny = alive & (update_median <= UPDATE_RATIO_TINY)
    change, notes = None, []
    if trend is not None:
        not_learning = np.full(len(stats.layers), trend.stalled)
    else:
        if stats.loss is not None:
            notes.append(
                "fewer than %d finite loss values: 'not learning' judged from the gradient norms" % loss.MIN_STEPS
            )
        _, norms = stats.first_of(metadata.GRAD_NORM, metadata.GRAD_NORM_MAX, metadata.GRAD_MAX_ABS)
        if norms is None or len(norms.steps) < MIN_TREND_STEPS:
            notes.append("no gradient norm over %d logged steps: too-small updates not checked" % MIN_TREND_STEPS)
            return _SmallUpdates(none.flagged, update_median), notes
        values = np.where(np.isfinite(norms.values), norms.values, np.nan)
        quarter = max(1, len(values) // 4)
        with np.errstate(divide="ignore", invalid="ignore"):
            change = column_medians(values[-quarter:]) / column_medians(values[:quarter])
        not_learning = change >= STALLED_NORM_CHANGE  # NaN compares False
    flagged = tiny & not_learning
    if not flagged.any():
        return _SmallUpdates(flagged, update_median, change), notes
    below = (updates.values[:, flagged] <= UPDATE_RATIO_TINY).any(axis=1)
    return _SmallUpdates(flagged, update_median, change, int(updates.steps[np.argmax(below)])), notes


def check(stats: RunStats, dead_layers: set[str]) -> tuple[findings.Finding | None, list[str]]:
    """Returns the `vanishing` finding of a run (or None) and notes on what was not checked.

    Args:
      dead_layers: layers of the run's `dead` finding; a layer with no
        gradient at all is dead, not vanishing, and is left out here.
    """
    alive = np.array([name not in dead_layers for name in stats.layers], dtype=bool)
    trend = loss.trend(stats.loss)
    depth, notes = _depth(stats, alive)
    small, small_notes = _small_updates(stats, alive, trend)
    notes += small_notes
    deep = depth.flagged
    flagged = deep | small.flagged
    if not flagged.any():
        return None, notes
    columns = np.flatnonzero(flagged)
    layers = tuple(stats.layers[j] for j in columns)
    first_step = min(step for step in (depth.first_step, small.first_step) if step is not None)
    evidence: dict = {}
    parts = []
    critical = False
    if deep.any():
        primary = depth.medians[0]
        evidence["ratio_to_output"] = primary[columns]
        if len(depth.medians) > 1:
            evidence["max_abs_ratio_to_output"] = depth.medians[1][columns]
        evidence["ratio_threshold"] = DEPTH_RATIO
        worst = float(np.nanmin(primary[deep]))
        critical |= worst <= DEPTH_RATIO * CRITICAL_FACTOR
        parts.append(
            "The %s shrinks layer by layer towards the input: in %s, the %d layers nearest the input, it is "
            "%s to %s of the output layer's (median over logged steps, threshold %g%s), from step %d."
            % (
                depth.description,
                findings.format_layers([stats.layers[j] for j in np.flatnonzero(deep)]),
                int(deep.sum()),
                format_number(worst),
                format_number(float(np.nanmax(primary[deep]))),
                DEPTH_RATIO,
                "; every size-fair measure agrees" if len(depth.medians) > 1 else "",
                depth.first_step,
            )
        )
    if small.update_medians is not None:
        evidence["update_ratio"] = small.update_medians[columns]
    if small.flagged.any():
        evidence["update_ratio_threshold"] = UPDATE_RATIO_TINY
        worst = float(np.nanmin(small.update_medians[small.flagged]))
        critical |= worst <= UPDATE_RATIO_TINY * CRITICAL_FACTOR
        if small.norm_change is not None:
            evidence["norm_change"] = small.norm_change[columns]
            why = "their gradient norm stays flat (last / first quarter of the run: %s to %s)" % (
                format_number(float(np.nanmin(small.norm_change[small.flagged]))),
                format_number(float(np.nanmax(small.norm_change[small.flagged]))),
            )
        else:
            why = "the loss does not fall"
        parts.append(
            "Updates of %s move the weights by a median %s of their norm per step (threshold %g) while %s, "
            "from step %d."
            % (
                findings.format_layers([stats.layers[j] for j in np.flatnonzero(small.flagged)]),
                format_number(worst),
                UPDATE_RATIO_TINY,
                why,
                small.first_step,
            )
        )
    if trend is not None:
        evidence.update(trend.evidence())
        parts.append(trend.sentence())
        if trend.learning and not small.flagged.any():
            # The layers above the block learn the task: the block holds the
            # model back, but training is not broken.
            critical = False
            parts.append("The layers nearer the output still learn.")
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
