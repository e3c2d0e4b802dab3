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

    Args:
      series: the run's statistics by name (see `tb_gradhealth.metadata`);
        any built-in one may be missing, the rules use what is there and say
        in `RunDiagnosis.notes` what they could not check.

    Returns:
      The findings, most severe kind first, and the notes.
    """
    stats = tables.collect(series)
    if not stats.tables:
        return RunDiagnosis(findings=[], notes=tuple(stats.notes))
    notes = list(stats.notes)
    dead_finding, dead_notes = dead.check(stats)
    nonfinite_finding, nonfinite_notes = nonfinite.check(stats)
    exploding_finding, exploding_notes = exploding.check(
        stats, nonfinite_finding.first_step if nonfinite_finding else None
    )
    vanishing_finding, vanishing_notes = vanishing.check(stats, set(dead_finding.layers) if dead_finding else set())
    for rule_notes in (nonfinite_notes, exploding_notes, vanishing_notes, dead_notes):
        notes.extend(note for note in rule_notes if note not in notes)
    found = [f for f in (nonfinite_finding, exploding_finding, vanishing_finding, dead_finding) if f]
    found.sort(key=lambda finding: (KINDS.index(finding.kind), finding.first_step))
    return RunDiagnosis(findings=found, notes=tuple(notes))
