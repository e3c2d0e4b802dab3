"""Load: 200 concurrent /series requests against a real `tensorboard` all succeed with the exact data (latency is printed, not asserted)."""

from __future__ import annotations

import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from benchmarks import load_series

# Smaller bodies than the benchmark's (benchmarks/README.md, "Load (issue 8)"),
# so the uncached burst stays short on 2 shared cores.
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
