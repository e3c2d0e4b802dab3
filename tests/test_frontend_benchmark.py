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


def _run_benchmark(module: str, argv: list[str], out_dir: pathlib.Path) -> dict:
    """Runs `python -m benchmarks.<module> argv` and returns the results it wrote into `out_dir`.

    Its own process: Playwright's sync API runs one driver per thread, and
    the browser tests may hold one.
    """
    pytest.importorskip("playwright.sync_api")
    from support import chromium

    if not pathlib.Path(chromium.CHROMIUM).exists():
        pytest.skip("no Chromium at %s (make chromium)" % chromium.CHROMIUM)
    subprocess.run(
        [sys.executable, "-m", "benchmarks." + module, *argv, "--out-dir", str(out_dir)],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=TIMEOUT_S,
    )
    (path,) = out_dir.glob("%s-*.json" % module)
    return json.loads(path.read_text())


def test_frontend_interact_smoke(tmp_path):
    argv = ["--sizes", "%dx%d" % (LAYERS, STEPS), "--reps", "1", "--moves", str(MOVES), "--picks", str(PICKS)]
    results = _run_benchmark("frontend_interact", argv, tmp_path)
    from benchmarks import frontend_interact

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


def test_frontend_refresh_smoke(tmp_path):
    argv = ["--layers", str(LAYERS), "--steps", str(STEPS), "--new-steps", "5", "--reps", "1"]
    results = _run_benchmark("frontend_refresh", argv, tmp_path)
    from benchmarks import frontend_refresh

    times = {way: visits[0] for way, visits in results["times"].items()}
    assert set(times) == set(frontend_refresh.WAYS)
    # Each way showed the (grown) run with no error: the grad_norm and the loss, each one /series request.
    assert all(t["errors"] == 0 and t["series_requests"] == 2 and t["task_ms"] > 0 for t in times.values())
    grown = sorted(times[way]["last_step"] for way in frontend_refresh.GROWING_WAYS)
    assert grown == [STEPS + 5 * k - 1 for k in (2, 3, 4)] and times["unchanged"]["last_step"] in grown
    # The refresh by new steps sends fewer bytes than the whole series, which a reopened page fetches too.
    assert times["after_step"]["series_decoded_kib"] < times["whole"]["series_decoded_kib"] / 2
    assert results["summary"]["whole"]["series_x"] > 1
