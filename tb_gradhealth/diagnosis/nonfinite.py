"""Rule `nonfinite`: NaN or Inf gradient elements, from the first step they appear."""

from __future__ import annotations

import numpy as np

from tb_gradhealth import metadata
from tb_gradhealth.diagnosis import findings, loss
from tb_gradhealth.diagnosis.tables import RunStats

ADVICE = (
    "Lower the learning rate or clip gradients (e.g. clipnorm=1.0), and check the inputs and "
    "labels for NaN/Inf or extreme scales."
)


def _bad_entries(stats: RunStats) -> list[tuple[np.ndarray, np.ndarray]]:
    """Returns (steps, [n_steps, n_layers] bool) per statistic that shows non-finite gradients.

    `nonfinite` counts bad elements and `grad_max_abs` is non-finite only if
    an element is, so either tells element-level truth. A norm is also NaN
    only if an element is, but it is +Inf as soon as the sum of squares
    overflows float32 (elements above ~1e19), which is exploding rather
    than non-finite; an infinite norm counts only when neither element-level
    statistic was recorded. A layer not recorded at a step (NaN there) is
    never non-finite.
    """
    entries = []
    count = stats.tables.get(metadata.NONFINITE)
    if count is not None:
        entries.append((count.steps, ((count.values > 0) | np.isnan(count.values)) & count.recorded))
    max_abs = stats.tables.get(metadata.GRAD_MAX_ABS)
    if max_abs is not None:
        entries.append((max_abs.steps, ~np.isfinite(max_abs.values) & max_abs.recorded))
    element_level = bool(entries)
    for stat in (metadata.GRAD_NORM, metadata.GRAD_NORM_MAX):
        table = stats.tables.get(stat)
        if table is not None:
            bad = np.isnan(table.values) if element_level else ~np.isfinite(table.values)
            entries.append((table.steps, bad & table.recorded))
    return entries


def check(stats: RunStats) -> tuple[findings.Finding | None, list[str]]:
    """Returns the `nonfinite` finding of a run (or None) and notes on what was not checked."""
    entries = _bad_entries(stats)
    if not entries:
        return None, ["no gradient statistic recorded: non-finite gradients not checked"]
    steps = np.unique(np.concatenate([entry_steps for entry_steps, _ in entries]))
    bad = np.zeros((len(steps), len(stats.layers)), dtype=bool)
    for entry_steps, entry_bad in entries:
        bad[np.searchsorted(steps, entry_steps)] |= entry_bad
    bad_steps = bad.any(axis=1)
    if not bad_steps.any():
        return None, []
    first = int(np.argmax(bad_steps))
    first_step = int(steps[first])
    layers = tuple(stats.layers[j] for j in np.flatnonzero(bad[first]))
    weights = stats.tables.get(metadata.WEIGHT_NORM)
    weights_nonfinite = weights is not None and bool((~np.isfinite(weights.values) & weights.recorded).any())
    # Training is broken when the weights became NaN/Inf or the last logged
    # step is still non-finite; isolated steps that training got past (e.g.
    # skipped by a loss-scale optimizer) are a warning.
    broken = bool(bad_steps[-1]) or weights_nonfinite
    evidence = {
        "steps_nonfinite": int(bad_steps.sum()),
        "steps_logged": len(steps),
        "layers_nonfinite_ever": int(bad.any(axis=0).sum()),
        "weights_nonfinite": int(weights_nonfinite),
    }
    count = stats.tables.get(metadata.NONFINITE)
    if count is not None and first_step in count.steps:
        row = count.values[int(np.searchsorted(count.steps, first_step))]
        evidence["elements_at_first_step"] = [row[stats.layers.index(name)] for name in layers]
    loss_at_first = loss.at_step(stats.loss, first_step)
    if loss_at_first is not None:
        evidence["loss_at_first_step"] = loss_at_first
    loss_before = _last_finite_loss_before(stats, first_step)
    if loss_before is not None:
        evidence["loss_before"] = loss_before[1]
    if broken:
        outcome = "training did not recover (%s)." % (
            "the weights became non-finite" if weights_nonfinite else "the last logged step is non-finite"
        )
    else:
        outcome = "training recovered and the weights stayed finite."
    message = "NaN/Inf gradients from step %d in %s (%d of %d layers); %d of %d logged steps affected; %s" % (
        first_step,
        findings.format_layers(layers),
        len(layers),
        len(stats.layers),
        evidence["steps_nonfinite"],
        len(steps),
        outcome,
    )
    if loss_before is not None:
        message += " The loss was %s at step %d%s." % (
            findings.format_number(loss_before[1]),
            loss_before[0],
            "" if loss_at_first is None else " and %s at step %d" % (findings.format_number(loss_at_first), first_step),
        )
    return (
        findings.Finding(
            kind=findings.NONFINITE,
            layers=layers,
            first_step=first_step,
            severity=findings.CRITICAL if broken else findings.WARNING,
            evidence=evidence,
            message=message,
            advice=ADVICE,
        ),
        [],
    )


def is_broken(finding: findings.Finding | None) -> bool:
    """Whether a `nonfinite` finding says training did not recover (its severity is critical)."""
    return finding is not None and finding.severity == findings.CRITICAL


def _last_finite_loss_before(stats: RunStats, step: int) -> tuple[int, float] | None:
    """(step, loss) of the last finite loss before `step`, or None."""
    if stats.loss is None:
        return None
    before = (stats.loss.steps < step) & np.isfinite(stats.loss.values)
    if not before.any():
        return None
    row = int(np.flatnonzero(before)[-1])
    return int(stats.loss.steps[row]), float(stats.loss.values[row])
