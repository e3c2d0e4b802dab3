"""Load: 200 concurrent /series requests against a real `tensorboard` all succeed with the exact data (latency is printed, not asserted)."""

from __future__ import annotations

import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from benchmarks import load_series

# Smaller bodies than the benchmark's (benchmarks/README.md, "Load"),
# so the bursts stay short on 2 shared cores.
SHAPE = load_series.LogdirShape(runs=4, layers=10, steps=300)
REQUESTS = 200
CONCURRENCY = 200


@pytest.mark.slow
def test_200_concurrent_series_requests_all_succeed_with_the_written_data(tmp_path):
    logdir = load_series.build_logdir(tmp_path, SHAPE)
    # The Rust data server is what `tensorboard` uses by default.
    summaries = load_series.load_test(logdir, SHAPE, "true", REQUESTS, CONCURRENCY)
    for summary in summaries:
        print(load_series.format_summary(summary))
    assert [summary["burst"] for summary in summaries] == list(load_series.BURSTS)
    for summary in summaries:
        assert summary["requests"] == REQUESTS
        assert summary["errors"] == 0, summary["failures"]


@pytest.mark.slow
def test_memory_benchmark_runs_end_to_end(tmp_path):
    """`benchmarks.serve_memory` at a tiny size: every request of the burst answered, the numbers measured (not judged)."""
    from benchmarks import serve_memory

    results = serve_memory.main(
        ["--layers", "20", "--steps", "200", "--concurrency", "8", "--timeout-s", "300", "--out-dir", str(tmp_path)]
    )
    (measured,) = results["runs"]
    assert measured["errors"] == []
    assert len(measured["responses"]) == 8
    assert {response["route"] for response in measured["responses"]} == {"/runs", "/series", "/health"}
    assert measured["peak_mib"] > 0 and measured["rss_after_warmup_mib"] > 0
    assert set(measured["warmup"]) == {"/runs", "/series", "/health"}


@pytest.mark.slow
def test_open_run_benchmark_runs_end_to_end(tmp_path):
    """`benchmarks.open_run` at a tiny size, this code only: a refresh of the growing run is partial."""
    from benchmarks import open_run

    results = open_run.main(
        [
            *("--layers", "5", "--steps", "300", "--growing-steps", "100", "--new-steps", "5"),
            *("--reps", "1", "--load-fast", "true", "--baseline", "", "--out-dir", str(tmp_path)),
        ]
    )
    (measured,) = results["raw"]
    assert measured["code"] == open_run.THIS_CODE
    # 5 new rows of 5 layers against the 105 of the whole series.
    assert measured["refresh"]["kib"] < measured["first_kib"] / 5
