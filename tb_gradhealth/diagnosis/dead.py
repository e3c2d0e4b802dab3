"""Rule `dead`: layers whose gradient is exactly zero on most logged steps."""

from __future__ import annotations

import numpy as np

from tb_gradhealth import metadata
from tb_gradhealth.diagnosis import findings, loss
from tb_gradhealth.diagnosis.tables import RunStats

# "Most steps": a layer without any gradient on at least half of the logged
# steps learns on a minority of them. No layer of a healthy calibration run
# ever had an exactly-zero gradient; layers behind a dead ReLU layer have one
# on 100%.
DEAD_FRACTION = 0.5  # of the finite logged steps the layer was recorded at

# Fewest finite logged steps of a layer for "most steps" to mean something.
MIN_STEPS = 3  # logged steps

ADVICE = (
    "Look at the layer nearest the output among these: ReLU units that never activate (try a lower "
    "learning rate, LeakyReLU or another initialisation) or a layer cut off from the loss "
    "(stop_gradient, an unused output)."
)


def check(stats: RunStats) -> tuple[findings.Finding | None, list[str]]:
    """Returns the `dead` finding of a run (or None) and notes on what was not checked."""
    # grad_norm_max is zero only if every step since the previous logged one
    # had no gradient, so it is the strictest evidence.
    stat, table = stats.first_of(metadata.GRAD_NORM_MAX, metadata.GRAD_NORM, metadata.GRAD_MAX_ABS)
    if table is None:
        return None, ["no gradient statistic recorded: dead layers not checked"]
    finite = np.isfinite(table.values)
    zero = finite & (table.values == 0)
    n_finite = finite.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        fraction = np.where(n_finite > 0, zero.sum(axis=0) / np.maximum(n_finite, 1), 0.0)
    flagged = (n_finite >= MIN_STEPS) & (fraction >= DEAD_FRACTION)
    if not flagged.any():
        return None, []
    columns = np.flatnonzero(flagged)
    layers = tuple(stats.layers[j] for j in columns)
    first_step = int(min(table.steps[np.argmax(zero[:, j])] for j in columns))
    message = "The gradient (%s) of %s is exactly zero on %s of its logged steps, from step %d." % (
        stat,
        findings.format_layers(layers),
        _percent_range(fraction[columns]),
        first_step,
    )
    if columns[0] == 0 and np.array_equal(columns, np.arange(len(columns))) and len(columns) < len(stats.layers):
        # A block from the input up: no gradient gets past its last layer.
        message += " No gradient passes %s, so the layers before it get none either." % layers[-1]
    evidence = {
        "zero_fraction": fraction[columns],
        "fraction_threshold": DEAD_FRACTION,
        "steps_judged": n_finite[columns].astype(float),
    }
    trend = loss.trend(stats.loss)
    if trend is not None:
        evidence.update(trend.evidence())
        message += " " + trend.sentence()
    return (
        findings.Finding(
            kind=findings.DEAD,
            layers=layers,
            first_step=first_step,
            severity=findings.CRITICAL if flagged.all() else findings.WARNING,
            evidence=evidence,
            message=message,
            advice=ADVICE,
        ),
        [],
    )


def _percent_range(fractions: np.ndarray) -> str:
    low, high = float(fractions.min()), float(fractions.max())
    if round(low * 100) == round(high * 100):
        return "%d%%" % round(high * 100)
    return "%d%% to %d%%" % (round(low * 100), round(high * 100))
