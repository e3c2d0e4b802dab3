"""End to end: a real `tensorboard` process, under both ingestion backends, serves the tab and every logged step exactly."""

from __future__ import annotations

import http.client
import json
import math

import numpy as np
import pytest
from support import raw_events
from tb_server import HOST, PLUGIN_ROUTE, json_float, running_tensorboard, strict_json, wsgi_client
from tensorboard.compat.proto import tensor_pb2, tensor_shape_pb2, types_pb2

from tb_gradhealth import metadata, plugin
from tb_gradhealth.summary import GradientHealthFileWriter

RUN = "train"
LAYER_SETS_RUN = "transfer"
HOSTILE_RUN = "hostile"
CORRUPT_RUN = "corrupt"
GARBAGE_RUN = "garbage"
GARBAGE_RUN_STEPS = 6
BAD_TENSORS_RUN = "bad_tensors"
BAD_LAYERS = ("in", "hidden", "out")
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
    grad_norm = rng.random((NUM_STEPS, len(LAYERS))) * 10.0 ** rng.integers(-8, 9, (NUM_STEPS, len(LAYERS)))
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
            writer.write(
                step, {stat: rows[step] for stat, rows in VALUES.items()}, LAYERS, wall_time=WALL_TIME_0 + step
            )
    # A run whose event file ends in a truncated record (cut mid-record, as by
    # a crash) must neither fail nor disturb the good run.
    with GradientHealthFileWriter(str(root / CORRUPT_RUN)) as writer:
        writer.write(0, {"grad_norm": [1.0]}, ["only"], wall_time=WALL_TIME_0)
    (event_file,) = (root / CORRUPT_RUN).iterdir()
    data = event_file.read_bytes()
    event_file.write_bytes(data + data[: len(data) // 2])
    raw_events.age(event_file)
    garbage_file, _ = raw_events.write_run(root / GARBAGE_RUN, GARBAGE_RUN_STEPS)
    with open(garbage_file, "ab") as stream:
        stream.write(raw_events.GARBAGE)
    _write_bad_tensors(root / BAD_TENSORS_RUN)
    _write_hostile_metadata(root / HOSTILE_RUN)
    with GradientHealthFileWriter(str(root / LAYER_SETS_RUN)) as writer:
        for step in range(6):
            layers, kinds = (("base", "head"), ("conv", "dense")) if step % 3 else (("head", "head_2"), None)
            writer.write(
                step,
                {"grad_norm": [step + 1.0, 2.0]},
                layers,
                wall_time=WALL_TIME_0 + step,
                loss=1.0 / (step + 1),
                kinds=kinds,
            )
    return root


def _write_hostile_metadata(run_dir):
    """Metadata nested deeper than Python's decoder recurses, duplicate layers, a boolean version."""

    def with_content(content: bytes):
        result = metadata.create_summary_metadata("x", BAD_LAYERS)
        result.plugin_data.content = content
        return result

    duplicates = {"version": 1, "stat": "weight_norm", "layers": ["a", "a"]}
    boolean = {"version": True, "stat": "update_ratio", "layers": ["a"]}
    raw = raw_events.RawWriter(str(run_dir))
    raw.write(0, "gradient_health/grad_norm", _float_tensor([1.0]), with_content(raw_events.DEEP_CONTENT))
    raw.write(0, "gradient_health/weight_norm", _float_tensor([1, 2]), with_content(json.dumps(duplicates).encode()))
    raw.write(0, "gradient_health/update_ratio", _float_tensor([1]), with_content(json.dumps(boolean).encode()))
    raw.close()


def _float_tensor(values, content=None):
    values = np.asarray(values, dtype=np.float32)
    return tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=values.size)]),
        tensor_content=values.tobytes() if content is None else content,
    )


def _write_bad_tensors(run_dir):
    """Our tags with a wrong shape, undecodable bytes, bad JSON and an unknown content version."""

    def with_content(content: bytes):
        result = metadata.create_summary_metadata("x", BAD_LAYERS)
        result.plugin_data.content = content
        return result

    raw = raw_events.RawWriter(str(run_dir))
    for step in range(3):
        raw.write(step, "gradient_health/grad_norm", _float_tensor([step, 1, 2]))
        raw.write(step, "gradient_health/weight_norm", _float_tensor([1, 2] if step == 1 else [1, 2, 3]))
        raw.write(step, "gradient_health/update_ratio", _float_tensor([1, 2, 3], content=b"12345"))
        raw.write(step, "gradient_health/bad_json", _float_tensor([1, 2, 3]), with_content(b"{not json"))
        future = {"version": 99, "stat": "future", "layers": list(BAD_LAYERS)}
        raw.write(step, "gradient_health/future", _float_tensor([1, 2, 3]), with_content(json.dumps(future).encode()))
    raw.close()


def _problems_by_run(body):
    return {run["run"]: run["problems"] for run in body["runs"]}


def _expected_problems(logdir):
    """What the in-process multiplexer reading reports, which both backends must match."""
    client = wsgi_client(str(logdir))
    runs = strict_json(client.get(PLUGIN_ROUTE + "/runs").get_data())
    health = strict_json(client.get(PLUGIN_ROUTE + "/health").get_data())
    return _problems_by_run(runs), _problems_by_run(health)


def _expected_series(stat):
    negative = [
        (step, layer) for step in range(NUM_STEPS) for layer in range(len(LAYERS)) if VALUES[stat][step, layer] < 0
    ]
    problems = []
    if stat in metadata.NON_NEGATIVE_STATS and negative:
        # The planted -Inf: a norm is never negative.
        step, layer = negative[0]
        message = (
            "%d value(s) below 0, first at step %d in layer %r: %s is never negative, so the writer is wrong "
            "(the values are kept and shown)" % (len(negative), step, LAYERS[layer], stat)
        )
        problems.append({"tag": metadata.tag_for_stat(stat), "message": message})
    return {
        "run": RUN,
        "stat": stat,
        "scope": "layer",
        "layers": list(LAYERS),
        "kinds": None,
        "params": None,
        "steps": list(range(NUM_STEPS)),
        "wall_times": [WALL_TIME_0 + step for step in range(NUM_STEPS)],
        "values": [[json_float(float(value)) for value in row] for row in VALUES[stat]],
        "total_steps": NUM_STEPS,
        "max_points": plugin.DEFAULT_MAX_POINTS,
        "partial": False,
        "notices": [],
        "problems": problems,
    }


def _raw_get(port: int, raw_path: str):
    """GETs a path byte for byte, without any client-side normalisation; returns (status, headers, body)."""
    connection = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        connection.putrequest("GET", raw_path, skip_accept_encoding=True)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


# Traversal attempts as a browser or curl would never normalise them away.
RAW_UNSAFE_PATHS = (
    "/..%2f..%2fsetup.py",
    "/%2e%2e/%2e%2e/setup.py",
    "/%2E%2E%2F%2E%2E%2Fsetup.py",
    "/%252e%252e%252fsetup.py",
    "/..%5c..%5csetup.py",
    "/..\\..\\setup.py",
    "/../../setup.py",
    "/vendor/../../setup.py",
    "//etc/passwd",
    "/%2fetc%2fpasswd",
    "/index.js%00.png",
    "/.hidden.js",
)


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
        assert [run["run"] for run in runs] == [
            BAD_TENSORS_RUN,
            CORRUPT_RUN,
            GARBAGE_RUN,
            HOSTILE_RUN,
            RUN,
            LAYER_SETS_RUN,
        ]
        assert runs[-2] == {
            "run": RUN,
            "stats": [metadata.GRAD_NORM, CUSTOM_STAT],
            "scalars": [],
            "layers": list(LAYERS),
            "kinds": None,
            "params": None,
            "max_step": NUM_STEPS - 1,
            "last_wall_time": WALL_TIME_0 + NUM_STEPS - 1,
            "problems": [],
        }

        # Broken files and tags are reported, as the in-process reading does.
        # (The Rust data server may still be loading the small runs.)
        runs_problems, health_problems = _expected_problems(logdir)
        server.wait_until(
            lambda: _problems_by_run(server.get_json(PLUGIN_ROUTE + "/health")) == health_problems,
            DATA_LOAD_TIMEOUT_S,
            "the broken runs' problems to be reported",
        )
        assert _problems_by_run(server.get_json(PLUGIN_ROUTE + "/runs")) == runs_problems
        kinds = {run: [p["message"].split(":")[0] for p in problems] for run, problems in health_problems.items()}
        assert kinds == {
            # Metadata first, then each statistic's reading, in statistic order.
            BAD_TENSORS_RUN: ["skipped", "skipped", "skipped 1 step(s), first at step 1", "skipped"],
            CORRUPT_RUN: ["event file ends in an incomplete record"],
            GARBAGE_RUN: ["event file corrupt"],
            HOSTILE_RUN: ["skipped", "skipped", "skipped"],
            RUN: ["1 value(s) below 0, first at step 1999 in layer 'logits'"],
            LAYER_SETS_RUN: [],
        }
        # Layer sets and the loss read as the in-process reading reads them.
        in_process = wsgi_client(str(logdir))
        for stat in ("grad_norm", "loss"):
            path = "%s/series?run=%s&stat=%s" % (PLUGIN_ROUTE, LAYER_SETS_RUN, stat)
            expected = strict_json(in_process.get(path).get_data())
            assert server.get_json(path) == expected
        assert expected["scope"] == "run" and len(expected["steps"]) == 6
        transfer = strict_json(in_process.get(PLUGIN_ROUTE + "/runs").get_data())["runs"][-1]
        assert (transfer["layers"], transfer["scalars"]) == (["base", "head", "head_2"], ["loss"])
        assert runs[-1] == transfer
        hostile = next(run for run in server.get_json(PLUGIN_ROUTE + "/health")["runs"] if run["run"] == HOSTILE_RUN)
        assert hostile["verdict"] == "unreadable"
        assert [problem["message"] for problem in hostile["problems"]] == [
            "skipped: gradient health metadata is nested 2001 levels deep; the limit is 4",
            "skipped: unknown gradient health content version true (this reader knows 1)",
            "skipped: gradient health metadata: layer names must be distinct; 'a' is given twice",
        ]
        bad = server.get_json("%s/series?run=%s&stat=weight_norm" % (PLUGIN_ROUTE, BAD_TENSORS_RUN))
        assert bad["steps"] == [0, 2] and "tensor of shape (2,)" in bad["problems"][0]["message"]
        garbage = server.get_json("%s/series?run=%s&stat=grad_norm" % (PLUGIN_ROUTE, GARBAGE_RUN))
        assert garbage["total_steps"] == garbage["steps"][-1] + 1

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
        for raw_path in RAW_UNSAFE_PATHS:
            status, headers, body = _raw_get(server.port, PLUGIN_ROUTE + raw_path)
            assert status == 404, raw_path
            assert headers["Content-Type"] == "application/json" and headers["X-Content-Type-Options"] == "nosniff"
            assert strict_json(body) == {"error": {"code": 404, "message": "Not found: no such file"}}
        for path in (
            "/runs",
            "/series?run=%s&stat=grad_norm" % RUN,
            "/health",
            "/series?run=x",
            "/series?run=x&stat=y",
        ):
            status, headers, _ = server.get(PLUGIN_ROUTE + path)
            assert headers["Content-Type"] == "application/json", path
            assert headers["X-Content-Type-Options"] == "nosniff", path
        # The tab's page runs under TensorBoard's CSP: scripts only from the
        # server itself, so no inline script of ours could run.
        _, headers, _ = server.get("/data/plugin_entry.html?name=gradient_health")
        assert "script-src" in headers["Content-Security-Policy"]
        assert "'unsafe-inline'" not in headers["Content-Security-Policy"].split("script-src")[1].split(";")[0]
