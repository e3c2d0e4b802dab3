"""A run's health: its verdict, findings, problems and notes, from the data read (shared by the plugin and the command line)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from tb_gradhealth import diagnosis, event_files, metadata, reader

# The verdict of a run none of whose statistics can be read, or whose data
# the diagnosis fails on (its `problems` say why); the diagnosis itself
# never returns it, and such a run is never called healthy.
UNREADABLE_VERDICT = "unreadable"

_logger = logging.getLogger(__name__)


def diagnose(data: reader.RunData) -> dict:
    """Returns `{"verdict", "findings", "problems", "notes"}` of one run's data (JSON-ready, floats may be NaN/Inf).

    `problems` are those met reading the run; `notes` say what the
    diagnosis could not check and why.
    """
    problems = [problem.to_json() for problem in data.problems]
    if not data.series:
        return {"verdict": UNREADABLE_VERDICT, "findings": [], "problems": problems, "notes": []}
    try:
        result = diagnosis.diagnose(data.series)
    except Exception as error:
        # Data the rules do not expect must cost this run its diagnosis,
        # never the answer for every other run.
        _logger.exception("diagnosis of run %r failed", data.run)
        # Of every tag of the run: the tag prefix names them all.
        failure = {
            "tag": metadata.PLUGIN_NAME,
            "message": "the diagnosis failed on this run's data (%s: %s)" % (type(error).__name__, str(error)[:500]),
        }
        return {"verdict": UNREADABLE_VERDICT, "findings": [], "problems": problems + [failure], "notes": []}
    verdict = result.to_json()
    return {
        "verdict": verdict["verdict"],
        "findings": verdict["findings"],
        "problems": problems,
        "notes": list(result.notes),
    }


def run_health(run: str, diagnosed: dict, file_problems: Sequence[event_files.FileProblem]) -> dict:
    """Returns one run's entry of `/health`: its diagnosis, with the problems of its event files after those of its data."""
    return {
        "run": run,
        "verdict": diagnosed["verdict"],
        "findings": diagnosed["findings"],
        "problems": diagnosed["problems"] + [problem.to_json() for problem in file_problems],
        "notes": diagnosed["notes"],
    }
