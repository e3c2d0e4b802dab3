"""Smoke run of the browser interaction benchmark with tiny sizes: it measures what it says, against a real tensorboard (no timing assertions)."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

pytestmark = pytest.mark.slow

LAYERS = 14
STEPS = 30
MOVES = 3
PICKS = 2
# Two tensorboard start-ups and four visits, on a busy 2-core machine.
TIMEOUT_S = 600


def test_frontend_interact_smoke(tmp_path):
    pytest.importorskip("playwright.sync_api")
    from benchmarks import frontend_interact

    if not pathlib.Path(frontend_interact.CHROMIUM).exists():
        pytest.skip("no Chromium at %s (make chromium)" % frontend_interact.CHROMIUM)
    argv = ["--sizes", "%dx%d" % (LAYERS, STEPS), "--reps", "1", "--moves", str(MOVES), "--picks", str(PICKS)]
    # Its own process: Playwright's sync API runs one driver per thread, and the browser tests may hold one.
    subprocess.run(
        [sys.executable, "-m", "benchmarks.frontend_interact", *argv, "--out-dir", str(tmp_path)],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=TIMEOUT_S,
    )
    (path,) = tmp_path.glob("frontend_interact-*.json")
    results = json.loads(path.read_text())
    size = "%dx%d ." % (LAYERS, STEPS)
    baseline = "%dx%d ." % (frontend_interact.BASELINE_LAYERS, STEPS)
    assert set(results["summary"]) == {size, baseline}
    (visit,) = results["visits"][size]
    # One latency per input, none lost; the deep run draws its spread and a few lines, not all 14.
    assert visit["timed_out"] is None
    assert len(visit["hover_ms"]) == MOVES and len(visit["pick_ms"]) == PICKS and len(visit["log_scale_ms"]) == 2
    assert all(ms > 0 for ms in visit["hover_ms"] + visit["pick_ms"])
    assert 0 < visit["lines_drawn"] < LAYERS
    assert results["summary"][size]["hover_ratio"] > 0
    assert results["machine"]["command"].startswith("python -m benchmarks.frontend_interact --sizes")
