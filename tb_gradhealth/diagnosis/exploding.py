"""Rule `exploding`: the gradient norm grows by orders of magnitude above its level at the start of the run."""

from __future__ import annotations

import numpy as np

from tb_gradhealth import metadata
from tb_gradhealth.diagnosis import findings, loss
from tb_gradhealth.diagnosis.findings import format_number
from tb_gradhealth.diagnosis.tables import RunStats, Table

# Growth of the model's gradient norm over its starting level that counts as
# exploding: two orders of magnitude. Healthy calibration runs stay within
# 11x of their start (an LSTM, whose gradients grow as it leaves its first
# near-uniform predictions; MLPs within 2x); the broken ones pass 100x a few
# steps after the onset, then overflow, turn NaN or spike again.
EXPLODING_GROWTH = 100.0  # x the starting norm

# The starting level is the smallest norm of the first logged steps: one step
# is noisy (minibatch), and an explosion can start at the second step, so a
# median or mean of a longer window would already include it. A step is
# compared only with the steps up to it: with update_freq > 1 the first
# logged steps are far apart, and a norm that falls steeply between them
# (a model leaving its initialisation) is no growth at the first one.
BASELINE_STEPS = 3  # logged steps

ADVICE = (
    "Lower the learning rate, clip gradients (e.g. clipnorm=1.0) or add normalisation layers, "
    "and check the scale of inputs and labels."
)


def _model_norm(stat: str, values: np.ndarray) -> np.ndarray:
    """Per step, the model's norm from per-layer ones over the layers recorded (NaN there)."""
    if stat == metadata.GRAD_MAX_ABS:
        return np.nanmax(np.where(np.isnan(values), -np.inf, values), axis=1)
    with np.errstate(over="ignore"):
        return np.sqrt(np.nansum(np.square(values), axis=1))


def _baselines(values: np.ndarray) -> np.ndarray:
    """Per row and column, the starting level: the smallest finite, positive value of the first `BASELINE_STEPS`
    rows up to that row (NaN if none)."""
    head = values[:BASELINE_STEPS]
    head = np.minimum.accumulate(np.where(np.isfinite(head) & (head > 0), head, np.inf), axis=0)
    low = np.concatenate([head, np.repeat(head[-1:], len(values) - len(head), axis=0)])
    return np.where(np.isinf(low), np.nan, low)


def _segments(recorded: np.ndarray) -> list[slice]:
    """Row ranges over which the same layers were recorded.

    A change of layer set (layers frozen or unfrozen) changes what the
    model's norm adds up, so each stretch is judged against its own start.
    """
    if not len(recorded):
        return []
    changes = np.flatnonzero((recorded[1:] != recorded[:-1]).any(axis=1)) + 1
    bounds = [0, *changes.tolist(), len(recorded)]
    return [slice(start, end) for start, end in zip(bounds[:-1], bounds[1:])]


def _growth(stat: str, table: Table) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Returns (rows kept, model norms, their baselines, per-layer values, per-layer baselines).

    Rows where a recorded layer is NaN are the nonfinite rule's business and
    are dropped; +Inf (an overflowed norm) is the largest growth there is and
    stays.
    """
    keep = ~(np.isnan(table.values) & table.recorded).any(axis=1)
    rows = np.flatnonzero(keep)
    values, recorded = table.values[rows], table.recorded[rows]
    norms = _model_norm(stat, values)
    baselines = np.full(len(rows), np.nan)
    layer_baselines = np.full(values.shape, np.nan)
    for segment in _segments(recorded):
        baselines[segment] = _baselines(norms[segment][:, None])[:, 0]
        layer_baselines[segment] = _baselines(values[segment])
    return rows, norms, baselines, values, layer_baselines


def check(stats: RunStats, nonfinite_step: int | None) -> tuple[findings.Finding | None, list[str]]:
    """Returns the `exploding` finding of a run (or None) and notes on what was not checked.

    Args:
      nonfinite_step: first step of the run's `nonfinite` finding, if any; an
        explosion followed by NaN/Inf is critical.
    """
    # grad_norm_max keeps a spike between logged steps, so it is preferred.
    stat, table = stats.first_of(metadata.GRAD_NORM_MAX, metadata.GRAD_NORM, metadata.GRAD_MAX_ABS)
    if table is None:
        return None, ["no gradient statistic recorded: exploding gradients not checked"]
    rows, norms, baselines, values, layer_baselines = _growth(stat, table)
    if len(rows) < 2:
        return None, ["fewer than 2 finite logged steps: exploding gradients not checked"]
    steps = table.steps[rows]
    with np.errstate(divide="ignore", invalid="ignore"):
        growth = norms / baselines
    above = growth >= EXPLODING_GROWTH  # NaN compares False
    if not above.any():
        return None, []
    cross = int(np.argmax(above))
    baseline = float(baselines[cross])
    with np.errstate(divide="ignore", invalid="ignore"):
        layer_growth = values[cross] / layer_baselines[cross]
    flagged = np.flatnonzero(layer_growth >= EXPLODING_GROWTH)
    if not len(flagged):
        # Several layers grew together past the threshold, none alone: name
        # the one that grew most (or, without a start of its own, the largest).
        known = ~np.isnan(layer_growth)
        flagged = np.array(
            [int(np.nanargmax(layer_growth) if known.any() else np.nanargmax(np.nan_to_num(values[cross], nan=-1)))]
        )
    layers = tuple(stats.layers[j] for j in flagged)
    peak = int(np.nanargmax(np.where(np.isnan(norms), -np.inf, norms)))
    went_nonfinite = nonfinite_step is not None and nonfinite_step >= int(steps[cross])
    still_high = bool(above[-1])
    if went_nonfinite:
        outcome = "then non-finite from step %d." % nonfinite_step
    elif still_high:
        outcome = "still %sx at the last logged step %d." % (format_number(growth[-1]), int(steps[-1]))
    else:
        outcome = "back below %gx by the last logged step %d." % (EXPLODING_GROWTH, int(steps[-1]))
    message = (
        "The gradient norm (%s) grew from %s at the start to %s at step %d (%sx, threshold %gx) "
        "in %s, peaking at %s at step %d; %s"
        % (
            stat,
            format_number(baseline),
            format_number(norms[cross]),
            int(steps[cross]),
            format_number(growth[cross]),
            EXPLODING_GROWTH,
            findings.format_layers(layers),
            format_number(norms[peak]),
            int(steps[peak]),
            outcome,
        )
    )
    evidence = {
        "baseline_norm": baseline,
        "norm_at_first_step": float(norms[cross]),
        "peak_norm": float(norms[peak]),
        "peak_step": int(steps[peak]),
        "growth_threshold": EXPLODING_GROWTH,
        "layer_growth": layer_growth[flagged],
    }
    message += _loss_sentence(stats, evidence, int(steps[0]), int(steps[cross]))
    return (
        findings.Finding(
            kind=findings.EXPLODING,
            layers=layers,
            first_step=int(steps[cross]),
            severity=findings.CRITICAL if went_nonfinite or still_high else findings.WARNING,
            evidence=evidence,
            message=message,
            advice=ADVICE,
        ),
        [],
    )


def _loss_sentence(stats: RunStats, evidence: dict, start_step: int, first_step: int) -> str:
    """Adds the loss at the start and at the explosion to `evidence`; returns a sentence on it ('' without loss)."""
    at_start = loss.at_step(stats.loss, start_step)
    at_first = loss.at_step(stats.loss, first_step)
    if at_start is None or at_first is None:
        return ""
    evidence["loss_start"] = at_start
    evidence["loss_at_first_step"] = at_first
    return " The loss went from %s at step %d to %s at step %d." % (
        format_number(at_start),
        start_step,
        format_number(at_first),
        first_step,
    )
