"""End to end: a real `tensorboard` process, under both ingestion backends, serves the tab and every logged step exactly."""

from __future__ import annotations

import http.client
import math

import numpy as np
import pytest

from tb_gradhealth import metadata
from tb_gradhealth.summary import GradientHealthFileWriter

from tb_server import HOST, PLUGIN_ROUTE, json_float, running_tensorboard, strict_json

RUN = "train"
CORRUPT_RUN = "corrupt"
LAYERS = ("conv", "dense", "dense_1", "logits")
CUSTOM_STAT = "grad_rms"
NUM_STEPS = 2_000  # logged steps; far above TensorBoard's default of 10 / 100 samples
WALL_TIME_0 = 1_700_000_000.0  # seconds since the epoch
# (step, layer index) -> planted non-finite grad_norm value.
NON_FINITE = {(111, 0): math.nan, (1_234, 2): math.inf, (1_999, 3): -math.inf}
# The Rust data server loads in the background after TensorBoard answers.
DATA_LOAD_TIMEOUT_S = 120


def _values():
    rng = np.random.default_rng(42)
    # Magnitudes from 1e-8 to 1e8, so any lossy float handling shows.
    grad_norm = (rng.random((NUM_STEPS, len(LAYERS))) * 10.0 ** rng.integers(-8, 9, (NUM_STEPS, len(LAYERS))))
    grad_norm = grad_norm.astype(np.float32)
    for (step, layer), value in NON_FINITE.items():
        grad_norm[step, layer] = value
    custom = rng.normal(size=(NUM_STEPS, len(LAYERS))).astype(np.float32)
    return {metadata.GRAD_NORM: grad_norm, CUSTOM_STAT: custom}


VALUES = _values()


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e_logdir")
    with GradientHealthFileWriter(str(root / RUN)) as writer:
        for step in range(NUM_STEPS):
            writer.write(step, {stat: rows[step] for stat, rows in VALUES.items()}, LAYERS, wall_time=WALL_TIME_0 + step)
    # A run whose event file ends in a truncated record (cut mid-record, as by
    # a crash) must neither fail nor disturb the good run.
    with GradientHealthFileWriter(str(root / CORRUPT_RUN)) as writer:
        writer.write(0, {"grad_norm": [1.0]}, ["only"], wall_time=WALL_TIME_0)
    (event_file,) = (root / CORRUPT_RUN).iterdir()
    data = event_file.read_bytes()
    event_file.write_bytes(data + data[: len(data) // 2])
    return root


def _expected_series(stat):
    return {
        "run": RUN,
        "stat": stat,
        "layers": list(LAYERS),
        "steps": list(range(NUM_STEPS)),
        "wall_times": [WALL_TIME_0 + step for step in range(NUM_STEPS)],
        "values": [[json_float(float(value)) for value in row] for row in VALUES[stat]],
        "total_steps": NUM_STEPS,
        "problems": [],
    }


def _raw_get_status(port: int, raw_path: str) -> int:
    """GETs a path byte for byte, without any client-side normalisation."""
    connection = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        connection.putrequest("GET", raw_path, skip_accept_encoding=True)
        connection.endheaders()
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


@pytest.mark.slow
@pytest.mark.parametrize("load_fast", ["false", "true"])
def test_real_tensorboard_serves_the_tab_and_every_step(logdir, load_fast):
    with running_tensorboard(str(logdir), "--load_fast=%s" % load_fast) as server:
        series_path = "%s/series?run=%s&stat=%s" % (PLUGIN_ROUTE, RUN, metadata.GRAD_NORM)

        def fully_loaded():
            body = server.get_json(series_path)
            return body if body["total_steps"] == NUM_STEPS else None

        body = server.wait_until(fully_loaded, DATA_LOAD_TIMEOUT_S, "all %d steps to load" % NUM_STEPS)
        assert body == _expected_series(metadata.GRAD_NORM)
        assert server.get_json("%s/series?run=%s&stat=%s" % (PLUGIN_ROUTE, RUN, CUSTOM_STAT)) == _expected_series(
            CUSTOM_STAT
        )

        listing = server.get_json("/data/plugins_listing")[metadata.PLUGIN_NAME]
        assert listing["enabled"] is True
        assert listing["tab_name"] == "Gradient Health"

        runs = server.get_json(PLUGIN_ROUTE + "/runs")["runs"]
        assert [run["run"] for run in runs] == [CORRUPT_RUN, RUN]
        assert runs[1] == {
            "run": RUN,
            "stats": [metadata.GRAD_NORM, CUSTOM_STAT],
            "layers": list(LAYERS),
            "max_step": NUM_STEPS - 1,
            "last_wall_time": WALL_TIME_0 + NUM_STEPS - 1,
            "problems": [],
        }

        status, headers, page = server.get("/data/plugin_entry.html?name=gradient_health")
        assert status == 200 and b'import("./index.js")' in page
        status, headers, script = server.get(PLUGIN_ROUTE + "/index.js")
        assert status == 200
        assert headers["Content-Type"] == "text/javascript; charset=utf-8"
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert b"export" in script

        status, headers, error = server.get(PLUGIN_ROUTE + "/series?run=nope&stat=grad_norm")
        assert status == 404 and headers["Content-Type"] == "application/json"
        assert strict_json(error)["error"]["code"] == 404
        status, _, error = server.get(PLUGIN_ROUTE + "/series?run=%s&stat=grad_norm&max_points=x" % RUN)
        assert status == 400 and "max_points" in strict_json(error)["error"]["message"]
        for raw_path in ("/..%2f..%2fsetup.py", "/%2e%2e/%2e%2e/setup.py", "/..%5c..%5csetup.py", "/../../setup.py"):
            assert _raw_get_status(server.port, PLUGIN_ROUTE + raw_path) == 404, raw_path
