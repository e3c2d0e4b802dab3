"""Rule `exploding`: the gradient norm grows by orders of magnitude above its level at the start of the run."""

from __future__ import annotations

import numpy as np

from tb_gradhealth import metadata
from tb_gradhealth.diagnosis import findings
from tb_gradhealth.diagnosis.findings import format_number
from tb_gradhealth.diagnosis.tables import RunStats

# Growth of the model's gradient norm over its starting level that counts as
# exploding: two orders of magnitude. Healthy calibration runs never rose
# above 2x their start (1.9x over a Fashion-MNIST epoch); the notebook's ReLU
# model on 10x inputs is at 550x-1700x within 5-8 steps, then NaN.
EXPLODING_GROWTH = 100.0  # x the starting norm

# The starting level is the smallest norm of the first logged steps: one step
# is noisy (minibatch), and an explosion can start at the second step, so a
# median or mean of a longer window would already include it.
BASELINE_STEPS = 3  # logged steps

ADVICE = (
    "Lower the learning rate, clip gradients (e.g. clipnorm=1.0) or add normalisation layers, "
    "and check the scale of inputs and labels."
)


def _model_norm(stat: str, values: np.ndarray) -> np.ndarray:
    """Per step, the model's norm from per-layer ones (the largest element for `grad_max_abs`)."""
    if stat == metadata.GRAD_MAX_ABS:
        return values.max(axis=1)
    with np.errstate(over="ignore"):
        return np.sqrt(np.square(values).sum(axis=1))


def _baseline(values: np.ndarray) -> np.ndarray:
    """Smallest finite, positive value of the first `BASELINE_STEPS` rows, per column (NaN if none)."""
    head = values[:BASELINE_STEPS]
    head = np.where(np.isfinite(head) & (head > 0), head, np.inf)
    low = head.min(axis=0)
    return np.where(np.isinf(low), np.nan, low)


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
    # NaN rows are the nonfinite rule's business; +Inf (an overflowed norm)
    # is the largest growth there is and stays.
    keep = ~np.isnan(table.values).any(axis=1)
    steps, values = table.steps[keep], table.values[keep]
    if len(steps) < 2:
        return None, ["fewer than 2 finite logged steps: exploding gradients not checked"]
    norms = _model_norm(stat, values)
    baseline = float(_baseline(norms[:, None])[0])
    if np.isnan(baseline):
        return None, []
    growth = norms / baseline
    above = growth >= EXPLODING_GROWTH
    if not above.any():
        return None, []
    cross = int(np.argmax(above))
    with np.errstate(divide="ignore", invalid="ignore"):
        layer_growth = values[cross] / _baseline(values)
    flagged = np.flatnonzero(layer_growth >= EXPLODING_GROWTH)
    if not len(flagged):
        # Several layers grew together past the threshold, none alone: name
        # the one that grew most (or, without a start of its own, the largest).
        known = ~np.isnan(layer_growth)
        flagged = np.array([int(np.nanargmax(layer_growth) if known.any() else np.argmax(values[cross]))])
    layers = tuple(stats.layers[j] for j in flagged)
    peak = int(np.argmax(norms))
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
