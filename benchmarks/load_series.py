"""Load driver: many concurrent /series requests against a real `tensorboard` on localhost; counts errors, reports latency percentiles.

    python -m benchmarks.load_series --requests 200 --concurrency 200 --load-fast false,true

Each request opens its own connection (as the tab's parallel fetches of
several runs do), all threads start together, and every body is checked
against the data written. Latency is from sending the request to having
read and parsed the whole body.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import gzip
import json
import math
import pathlib
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
import tb_server

from tb_gradhealth import plugin
from tb_gradhealth.summary import GradientHealthFileWriter

STATS = ("grad_norm", "update_ratio")
WALL_TIME_0 = 1_700_000_000.0  # seconds since the epoch
REQUEST_TIMEOUT_S = 120
DATA_LOAD_TIMEOUT_S = 300  # the Rust data server loads after TensorBoard answers
PERCENTILES = (50, 90, 99)


@dataclasses.dataclass(frozen=True)
class LogdirShape:
    runs: int
    layers: int
    steps: int


def run_name(index: int) -> str:
    return "run_%02d/train" % index


def layer_names(n_layers: int) -> list[str]:
    return ["dense_%d" % index for index in range(n_layers)]


def run_values(run_index: int, stat_index: int, shape: LogdirShape) -> np.ndarray:
    """The float32 `[steps, layers]` table written for one run and statistic (with a NaN and an Inf)."""
    rng = np.random.default_rng(1_000 * run_index + stat_index)
    values = rng.lognormal(mean=-2.0, sigma=1.5, size=(shape.steps, shape.layers)).astype(np.float32)
    values[shape.steps // 3, 0] = np.nan
    values[shape.steps // 2, shape.layers - 1] = np.inf
    return values


def build_logdir(root: pathlib.Path, shape: LogdirShape) -> pathlib.Path:
    """Writes the runs with our own summary API."""
    layers = layer_names(shape.layers)
    for run_index in range(shape.runs):
        tables = [run_values(run_index, stat_index, shape) for stat_index in range(len(STATS))]
        with GradientHealthFileWriter(str(root / run_name(run_index))) as writer:
            for step in range(shape.steps):
                stats = {stat: table[step] for stat, table in zip(STATS, tables)}
                writer.write(step, stats, layers, wall_time=WALL_TIME_0 + step)
    return root


def series_path(run: str, stat: str) -> str:
    return "%s/series?run=%s&stat=%s" % (tb_server.PLUGIN_ROUTE, run, stat)


def expected_bodies(shape: LogdirShape) -> dict[str, dict]:
    """{path: the /series body that must come back}, computed from the written tables."""
    layers = layer_names(shape.layers)
    bodies = {}
    for run_index in range(shape.runs):
        for stat_index, stat in enumerate(STATS):
            table = run_values(run_index, stat_index, shape)
            bodies[series_path(run_name(run_index), stat)] = {
                "run": run_name(run_index),
                "stat": stat,
                "scope": "layer",
                "layers": layers,
                "kinds": None,
                "params": None,
                "steps": list(range(shape.steps)),
                "wall_times": [WALL_TIME_0 + step for step in range(shape.steps)],
                "values": [[tb_server.json_float(float(v)) for v in row] for row in table],
                "total_steps": shape.steps,
                "max_points": plugin.DEFAULT_MAX_POINTS,
                "partial": False,
                "notices": [],
                "problems": [],
            }
    return bodies


@dataclasses.dataclass
class LoadResult:
    """Outcome of one burst: latencies of the good responses, and every failure."""

    latencies_s: list[float]
    failures: list[str]
    wall_s: float

    def summary(self) -> dict:
        result = {
            "requests": len(self.latencies_s) + len(self.failures),
            "errors": len(self.failures),
            "wall_s": self.wall_s,
        }
        if self.latencies_s:
            samples = np.asarray(self.latencies_s)
            for q in PERCENTILES:
                result["p%d_ms" % q] = float(np.percentile(samples, q)) * 1e3
            result["max_ms"] = float(samples.max()) * 1e3
        return result


def fire(base_url: str, paths: list[str], expected: dict[str, dict], concurrency: int) -> LoadResult:
    """GETs every path in `paths` from `concurrency` threads started together; checks each body.

    Requests accept gzip, as browsers do. A latency is the time to the last
    byte of the body; bodies are decoded and checked after the burst, so the
    client's own JSON parsing does not compete with the server for the CPUs.
    Only loopback URLs are accepted: this is a load generator.
    """
    if not base_url.startswith("http://%s:" % tb_server.HOST):
        raise ValueError("load is only ever sent to %s, got %s" % (tb_server.HOST, base_url))
    go = threading.Event()
    lock = threading.Lock()
    result = LoadResult([], [], 0.0)
    received: list[tuple[str, str | None, bytes]] = []

    def one(path: str) -> None:
        go.wait()
        began = time.perf_counter()
        request = urllib.request.Request(base_url + path, headers={"Accept-Encoding": "gzip"})
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
                raw = response.read()
                encoding = response.headers.get("Content-Encoding")
        except (OSError, urllib.error.HTTPError) as error:
            with lock:
                result.failures.append("%s: %r" % (path, error))
            return
        elapsed = time.perf_counter() - began
        with lock:
            result.latencies_s.append(elapsed)
            received.append((path, encoding, raw))

    with concurrent.futures.ThreadPoolExecutor(max_workers=concurrency) as pool:
        # Every thread exists and waits before the first request is sent.
        futures = [pool.submit(one, path) for path in paths]
        began = time.perf_counter()
        go.set()
        for future in futures:
            future.result()
    result.wall_s = time.perf_counter() - began
    verified: set[tuple[str, str | None, bytes]] = set()
    for path, encoding, raw in received:
        if (path, encoding, raw) in verified:
            continue
        try:
            body = tb_server.strict_json(gzip.decompress(raw) if encoding == "gzip" else raw)
            base, _, max_points = path.partition("&max_points=")
            wanted = dict(expected[base])
            if max_points:
                wanted["max_points"] = plugin.normalized_max_points(int(max_points))
            if body != wanted:
                raise AssertionError("wrong body")
        except (OSError, ValueError, AssertionError) as error:
            result.failures.append("%s: %r" % (path, error))
            continue
        verified.add((path, encoding, raw))
    return result


def wait_fully_loaded(server: tb_server.TensorBoardServer, shape: LogdirShape) -> None:
    """Waits until /runs shows every run's last step (no /series is requested, so no response is cached)."""

    def loaded():
        runs = server.get_json(tb_server.PLUGIN_ROUTE + "/runs")["runs"]
        return len(runs) == shape.runs and all(run["max_step"] == shape.steps - 1 for run in runs)

    server.wait_until(loaded, DATA_LOAD_TIMEOUT_S, "every run to load")


# The bursts of one load test, in order.
BURSTS = (
    # Nothing cached yet: the first request of each path computes it, the
    # others wait for that one.
    "cold",
    # The same paths again, served from the plugin's cache.
    "warm",
    # Every request a distinct max_points (all above the step count, so the
    # same values): the server normalises them to a few sizes, so few are
    # computed.
    "sizes",
)


def load_test(logdir: pathlib.Path, shape: LogdirShape, load_fast: str, requests: int, concurrency: int) -> list[dict]:
    """Starts tensorboard over `logdir` and fires each burst of `requests` /series requests over every run and stat."""
    expected = expected_bodies(shape)
    ordered = sorted(expected)
    shared = [ordered[index % len(ordered)] for index in range(requests)]
    unique = ["%s&max_points=%d" % (path, shape.steps + index) for index, path in enumerate(shared)]
    summaries = []
    with tb_server.running_tensorboard(str(logdir), "--load_fast=%s" % load_fast) as server:
        wait_fully_loaded(server, shape)
        for burst in BURSTS:
            result = fire(server.url, unique if burst == "sizes" else shared, expected, concurrency)
            if server.process.poll() is not None:
                result.failures.append("tensorboard exited with %s" % server.process.returncode)
            summary = {"load_fast": load_fast, "burst": burst, "concurrency": concurrency, **dataclasses.asdict(shape)}
            summary.update(result.summary())
            summary["body_kib"] = math.ceil(len(json.dumps(expected[ordered[0]])) / 1024)
            summary["failures"] = result.failures[:5]
            summaries.append(summary)
    return summaries


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=200, help="threads, each one connection at a time")
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--layers", type=int, default=20)
    parser.add_argument("--steps", type=int, default=1_000, help="logged steps per run")
    parser.add_argument("--load-fast", default="false,true", help="comma-separated --load_fast values")
    args = parser.parse_args(argv)
    shape = LogdirShape(args.runs, args.layers, args.steps)
    summaries = []
    with tempfile.TemporaryDirectory(prefix="load_series_") as tmp:
        logdir = build_logdir(pathlib.Path(tmp), shape)
        for load_fast in args.load_fast.split(","):
            for summary in load_test(logdir, shape, load_fast, args.requests, args.concurrency):
                summaries.append(summary)
                print(format_summary(summary), flush=True)
    return summaries


def format_summary(summary: dict) -> str:
    keys = (
        "load_fast",
        "burst",
        "requests",
        "concurrency",
        "errors",
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "max_ms",
        "wall_s",
        "body_kib",
    )
    cells = []
    for key in keys:
        value = summary.get(key)
        cells.append("%s=%s" % (key, "%.1f" % value if isinstance(value, float) else value))
    text = "  ".join(cells) + "  (%(runs)d runs x %(layers)d layers x %(steps)d steps)" % summary
    if summary["failures"]:
        text += "\n  first failures: %s" % "; ".join(summary["failures"])
    return text


if __name__ == "__main__":
    sys.exit(1 if any(summary["errors"] for summary in main()) else 0)
