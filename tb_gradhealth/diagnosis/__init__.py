"""Diagnosis of a run's gradient health: numpy statistics in, explained findings out (no I/O)."""

from __future__ import annotations

from collections.abc import Mapping

from tb_gradhealth.diagnosis import dead, exploding, nonfinite, tables, vanishing
from tb_gradhealth.diagnosis.findings import (
    CRITICAL,
    DEAD,
    EXPLODING,
    HEALTHY,
    KINDS,
    NONFINITE,
    SEVERITIES,
    VANISHING,
    WARNING,
    Finding,
    RunDiagnosis,
)
from tb_gradhealth.series import StatSeries

__all__ = [
    "CRITICAL",
    "DEAD",
    "EXPLODING",
    "HEALTHY",
    "KINDS",
    "NONFINITE",
    "SEVERITIES",
    "VANISHING",
    "WARNING",
    "Finding",
    "RunDiagnosis",
    "diagnose",
]


def diagnose(series: Mapping[str, StatSeries]) -> RunDiagnosis:
    """Diagnoses one run from its statistics.

    A run that turned non-finite and did not recover is judged by the other
    rules on its steps up to the first non-finite one only: what follows is
    the wreck, not the model. A run whose gradients exploded beyond recovery
    is not judged for vanishing: an explosion saturates units and inflates
    weights, which shrinks the early layers' gradients as a consequence.

    Args:
      series: the run's statistics by name (see `tb_gradhealth.metadata`),
        optionally with the run-level `loss`; any built-in one may be
        missing, the rules use what is there and say in `RunDiagnosis.notes`
        what they could not check.

    Returns:
      The findings, most severe kind first, and the notes.
    """
    stats = tables.collect(series)
    if not stats.tables:
        return RunDiagnosis(findings=[], notes=tuple(stats.notes))
    notes = list(stats.notes)
    if stats.loss is None:
        notes.append(
            "no training loss recorded: findings do not show the loss trend, and 'not learning' is judged "
            "from the gradient norms"
        )
    nonfinite_finding, nonfinite_notes = nonfinite.check(stats)
    judged = stats
    if nonfinite.is_broken(nonfinite_finding):
        judged = stats.until(nonfinite_finding.first_step)
        notes.append(
            "judged on steps up to %d: the run is non-finite from there on and did not recover"
            % nonfinite_finding.first_step
        )
    exploding_finding, exploding_notes = exploding.check(
        judged, nonfinite_finding.first_step if nonfinite_finding else None
    )
    dead_finding, dead_notes = dead.check(judged)
    vanishing_finding, vanishing_notes = None, []
    if exploding_finding is not None and exploding_finding.severity == CRITICAL:
        notes.append(
            "vanishing gradients not judged: the gradients exploded from step %d" % exploding_finding.first_step
        )
    else:
        vanishing_finding, vanishing_notes = vanishing.check(
            judged, set(dead_finding.layers) if dead_finding else set()
        )
    for rule_notes in (nonfinite_notes, exploding_notes, vanishing_notes, dead_notes):
        notes.extend(note for note in rule_notes if note not in notes)
    found = [f for f in (nonfinite_finding, exploding_finding, vanishing_finding, dead_finding) if f]
    found.sort(key=lambda finding: (KINDS.index(finding.kind), finding.first_step))
    return RunDiagnosis(findings=found, notes=tuple(notes))
