"""The training loss over the steps a rule judged: whether the model learns, as evidence for or against a finding."""

from __future__ import annotations

import dataclasses

import numpy as np

from tb_gradhealth.diagnosis.findings import format_number
from tb_gradhealth.diagnosis.tables import Loss

# The loss's start and end are the medians of the first and last quarter of
# its finite values: one minibatch's loss is noisy, a quarter of the run
# averages the noise out and still sees a trend within the run.
QUARTER = 0.25  # of the judged steps

# Fewest finite loss values for a trend (a first and a last quarter).
MIN_STEPS = 4  # logged steps

# The loss is stalled when it fell by less than 5% of its start from the
# first quarter to the last: the healthy calibration runs' losses fall by
# 23% (a depthwise CNN on Adam) to 99.5% (an Adam MLP), those that do not
# learn by -1.2% (a learning rate of 1e-5) to 2.4% (a deep sigmoid MLP).
STALLED_FALL = 0.05  # fraction of the starting loss

# The model clearly learns when the loss fell by at least half: layers that
# barely train then hold the model back less than when nothing learns.
LEARNING_FALL = 0.5  # fraction of the starting loss


@dataclasses.dataclass(frozen=True)
class LossTrend:
    """How the loss moved over the judged steps.

    Attributes:
      start: median of the first quarter of the finite loss values.
      end: median of the last quarter.
      first_step: the first step of the first quarter.
      last_step: the last step of the last quarter.
    """

    start: float
    end: float
    first_step: int
    last_step: int

    @property
    def fall(self) -> float:
        """The fraction of its start the loss fell by (negative when it rose)."""
        if self.start == 0:
            return 0.0 if self.end == 0 else -np.inf
        return (self.start - self.end) / abs(self.start)

    @property
    def stalled(self) -> bool:
        return self.fall < STALLED_FALL

    @property
    def learning(self) -> bool:
        return self.fall >= LEARNING_FALL

    def evidence(self) -> dict:
        return {"loss_start": self.start, "loss_end": self.end, "loss_fall": self.fall}

    def sentence(self) -> str:
        """e.g. `The loss went from 2.4 to 2.3 over steps 0-47 (fell by 2.4%).`"""
        moved = "%s by %.1f%%" % ("fell" if self.fall >= 0 else "rose", 100 * abs(self.fall))
        return "The loss went from %s to %s over steps %d-%d (%s)." % (
            format_number(self.start),
            format_number(self.end),
            self.first_step,
            self.last_step,
            moved,
        )


def trend(loss: Loss | None) -> LossTrend | None:
    """Returns the trend of the finite loss values, or None with fewer than `MIN_STEPS` of them."""
    if loss is None:
        return None
    finite = np.isfinite(loss.values)
    steps, values = loss.steps[finite], loss.values[finite]
    if len(values) < MIN_STEPS:
        return None
    quarter = max(1, int(len(values) * QUARTER))
    return LossTrend(
        start=float(np.median(values[:quarter])),
        end=float(np.median(values[-quarter:])),
        first_step=int(steps[0]),
        last_step=int(steps[-1]),
    )


def at_step(loss: Loss | None, step: int) -> float | None:
    """The loss recorded at `step` (NaN/Inf as they are), or None when it was not recorded there."""
    if loss is None:
        return None
    row = int(np.searchsorted(loss.steps, step))
    if row < len(loss.steps) and loss.steps[row] == step:
        return float(loss.values[row])
    return None
