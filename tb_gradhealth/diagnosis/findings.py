"""What a diagnosis says: findings, a run's verdict and their JSON form."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Union

import numpy as np

NONFINITE = "nonfinite"
EXPLODING = "exploding"
VANISHING = "vanishing"
DEAD = "dead"
HEALTHY = "healthy"

# Most severe first: a run's verdict is the first of these it has a finding of.
KINDS = (NONFINITE, EXPLODING, VANISHING, DEAD)

# "critical": training is broken or a layer effectively does not train;
# "warning": a real problem that training survived or that may still resolve.
CRITICAL = "critical"
WARNING = "warning"
SEVERITIES = (CRITICAL, WARNING)

# Evidence values: a number, or one number per layer of the finding (aligned
# with `Finding.layers`). NaN and +-Inf are allowed.
Evidence = Mapping[str, Union[float, int, Sequence[float]]]


@dataclasses.dataclass(frozen=True)
class Finding:
    """One problem seen in a run.

    Attributes:
      kind: one of `KINDS`.
      layers: the layers concerned, in model order (input -> output).
      first_step: the first logged step at which it was seen.
      severity: one of `SEVERITIES`.
      evidence: the numbers behind it (see `Evidence`).
      message: what was seen, where and from which step.
      advice: one sentence on what usually helps.
    """

    kind: str
    layers: tuple[str, ...]
    first_step: int
    severity: str
    evidence: Evidence
    message: str
    advice: str

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError("unknown finding kind %r" % (self.kind,))
        if self.severity not in SEVERITIES:
            raise ValueError("unknown severity %r" % (self.severity,))
        if not self.layers:
            raise ValueError("a finding names at least one layer")
        # Plain Python numbers from here on, whatever numpy types the rules used.
        object.__setattr__(self, "layers", tuple(str(name) for name in self.layers))
        object.__setattr__(self, "first_step", int(self.first_step))
        object.__setattr__(self, "evidence", {str(k): _plain(v) for k, v in self.evidence.items()})

    def to_json(self) -> dict:
        """Returns the finding as plain Python types (floats may be NaN/Inf)."""
        return {
            "kind": self.kind,
            "layers": list(self.layers),
            "first_step": int(self.first_step),
            "severity": self.severity,
            "evidence": {
                key: (list(value) if isinstance(value, list) else value) for key, value in self.evidence.items()
            },
            "message": self.message,
            "advice": self.advice,
        }


@dataclasses.dataclass(frozen=True)
class RunDiagnosis:
    """The diagnosis of one run.

    Attributes:
      findings: most severe kind first, then by first step.
      notes: what could not be checked with the data at hand, and why
        (e.g. a statistic is missing); not part of the JSON form.
    """

    findings: list[Finding]
    notes: tuple[str, ...] = ()

    @property
    def verdict(self) -> str:
        """The most severe finding's kind, or `healthy`."""
        kinds = {finding.kind for finding in self.findings}
        return next((kind for kind in KINDS if kind in kinds), HEALTHY)

    def to_json(self) -> dict:
        """Returns `{"verdict": str, "findings": [Finding JSON, ...]}`."""
        return {"verdict": self.verdict, "findings": [finding.to_json() for finding in self.findings]}


def _plain(value):
    """Turns numpy scalars and arrays into ints, floats and lists of floats."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return [float(item) for item in value]
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    return float(value)


# Layer names spelled out in a message before the rest are only counted; the
# finding's `layers` always lists them all.
_LAYERS_IN_MESSAGE = 4


def format_layers(layers: Sequence[str]) -> str:
    """Returns e.g. `dense, dense_1, dense_2, dense_3 and 5 more`."""
    shown = ", ".join(layers[:_LAYERS_IN_MESSAGE])
    hidden = len(layers) - _LAYERS_IN_MESSAGE
    return shown + (" and %d more" % hidden if hidden > 0 else "")


def format_number(value: float) -> str:
    """Returns a number with 2 significant digits, as messages quote orders of magnitude."""
    return "%.2g" % value
