"""Bounds on what the plugin reads: hostile metadata, tensors, names and steps are problems of their run, never a 5xx, never hide another run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import raw_events
from tb_server import PLUGIN_ROUTE, strict_json, wsgi_client
from tensorboard.compat.proto import summary_pb2

from tb_gradhealth import metadata, reader
from tb_gradhealth.summary import GradientHealthFileWriter

GOOD_RUN = "good"
BAD_RUN = "bad"
GOOD_LAYERS = ("dense", "dense_1")
GOOD_STEPS = 5
WALL_TIME_0 = 1_700_000_000.0  # seconds since the epoch
# The 4 KB file of the report: valid JSON nested 2,000 levels deep.
DEEP_CONTENT = raw_events.DEEP_CONTENT
EXAMPLES = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _good_values(step: int) -> np.ndarray:
    return np.float32([step + 1.0, 0.5 * step + 2.0])


def _write_good_run(root) -> None:
    with GradientHealthFileWriter(str(root / GOOD_RUN)) as writer:
        for step in range(GOOD_STEPS):
            writer.write(step, {"grad_norm": _good_values(step)}, GOOD_LAYERS, wall_time=WALL_TIME_0 + step)


def _metadata(content: bytes) -> summary_pb2.SummaryMetadata:
    result = metadata.create_summary_metadata("grad_norm", ["x"])
    result.plugin_data.content = content
    return result


ONE_VALUE = (np.float32([1.0]),)


def _write_bad_run(root, content: bytes, tensors=ONE_VALUE, tag="gradient_health/grad_norm", steps=None):
    raw = raw_events.RawWriter(str(root / BAD_RUN))
    for index, tensor in enumerate(tensors):
        step = index if steps is None else steps[index]
        raw.write(step, tag, raw_events.vector_tensor(tensor), _metadata(content))
    raw.close()


def _get(client, path):
    response = client.get(PLUGIN_ROUTE + path)
    assert response.status_code < 500, response.get_data(as_text=True)[:500]
    assert response.mimetype == "application/json"
    return response.status_code, strict_json(response.get_data())


def _assert_good_run_served(client):
    """The good run is listed, served exactly and diagnosed whatever its neighbour holds."""
    status, runs = _get(client, "/runs")
    assert status == 200
    good = next(run for run in runs["runs"] if run["run"] == GOOD_RUN)
    assert (good["stats"], good["layers"], good["problems"]) == (["grad_norm"], list(GOOD_LAYERS), [])
    status, series = _get(client, "/series?run=%s&stat=grad_norm" % GOOD_RUN)
    assert status == 200
    assert series["values"] == [_good_values(step).tolist() for step in range(GOOD_STEPS)]
    status, health = _get(client, "/health")
    assert status == 200
    assert GOOD_RUN in [run["run"] for run in health["runs"]]
    return runs, health


def _problems_of(body, run):
    return next(entry["problems"] for entry in body["runs"] if entry["run"] == run)


def test_deeply_nested_metadata_is_a_problem_of_its_run_only(tmp_path):
    _write_good_run(tmp_path)
    _write_bad_run(tmp_path, DEEP_CONTENT)
    client = wsgi_client(str(tmp_path))
    runs, health = _assert_good_run_served(client)
    (problem,) = _problems_of(runs, BAD_RUN)
    assert problem == {
        "tag": "gradient_health/grad_norm",
        "message": "skipped: gradient health metadata is nested 2001 levels deep; the limit is 4",
    }
    assert _problems_of(health, BAD_RUN) == [problem]
    assert next(run for run in health["runs"] if run["run"] == BAD_RUN)["verdict"] == "unreadable"


def _content(**fields) -> bytes:
    base = {"version": 1, "stat": "grad_norm", "layers": ["a"]}
    base.update(fields)
    return json.dumps({key: value for key, value in base.items() if value is not ...}).encode()


@pytest.mark.parametrize(
    "content, message",
    [
        (_content(version=True), "unknown gradient health content version true (this reader knows 1)"),
        (_content(version=1.0), "unknown gradient health content version 1.0 (this reader knows 1)"),
        (_content(version="1"), 'unknown gradient health content version "1" (this reader knows 1)'),
        (_content(version=...), "gradient health metadata has no version"),
        (_content(layers=["a", "b", "a"]), "layer names must be distinct; 'a' is given twice"),
        (_content(layers=["x" * 1_025]), "layer names have at most 1024 characters, got 1025: '%s'..." % ("x" * 200)),
        (_content(layers=["l%d" % i for i in range(100_001)]), "at most 100000 layers per summary, got 100001"),
        (_content(layers=[]), "needs a non-empty list of layer names"),
        (_content(layers=["a", 1]), "needs a non-empty list of layer names"),
        (_content(stat="Grad Norm"), "statistic name 'Grad Norm' is not 1 to 64 characters"),
        (_content(scope="step"), 'unknown scope "step" (this reader knows layer, run)'),
        (_content(kinds=["dense", "conv"]), "kinds must be a list of 1 strings, one per layer"),
        (_content(params=[-1]), "params must be a list of 1 non-negative integers, one per layer"),
        (_content(params=[True]), "params must be a list of 1 non-negative integers, one per layer"),
        (_content(pad=[[[[1]]]]), "nested 5 levels deep; the limit is 4"),
        (
            b'{"version":1,"stat":"grad_norm","layers":["' + b"x" * (8 * 2**20) + b'"]}',
            "over the limit of 8388608 bytes",
        ),
        (b"\xff\xfe", "not UTF-8 JSON"),
        (_content(stat="weight_norm"), "its metadata is of statistic 'weight_norm'"),
    ],
    ids=lambda value: value[:40].decode("ascii", "replace") if isinstance(value, bytes) else None,
)
def test_out_of_bounds_metadata_is_reported_with_the_reason(tmp_path, content, message):
    _write_good_run(tmp_path)
    _write_bad_run(tmp_path, content)
    runs, _ = _assert_good_run_served(wsgi_client(str(tmp_path)))
    (problem,) = _problems_of(runs, BAD_RUN)
    assert problem["tag"] == "gradient_health/grad_norm"
    assert message in problem["message"]
    assert len(problem["message"]) < 1_000


def test_known_optional_keys_are_read_and_unknown_keys_ignored():
    content = _content(
        layers=["a", "b"], kinds=["conv", "a kind of the future"], params=[10, 0], future={"x": [1, "y"]}
    )
    parsed = metadata.parse_plugin_metadata(content)
    assert (parsed.layers, parsed.kinds, parsed.params, parsed.scope) == (
        ("a", "b"),
        ("conv", "other"),
        (10, 0),
        "layer",
    )


def test_each_distinct_content_is_parsed_once(tmp_path):
    _write_good_run(tmp_path)
    # Unique content, so that no earlier test parsed it.
    _write_bad_run(tmp_path, _content(layers=["unique to %s" % tmp_path]))
    client = wsgi_client(str(tmp_path))
    before = metadata._parsed.parses
    for _ in range(5):
        _assert_good_run_served(client)
    # The good run's content and the bad run's, whatever the number of requests.
    assert metadata._parsed.parses - before <= 2


def test_negative_norms_are_a_problem_the_user_sees(tmp_path):
    values = np.float32([[1.0, 2.0], [1.0, -3.0], [-0.0, 2.0], [1.0, -4.0]])
    with GradientHealthFileWriter(str(tmp_path / BAD_RUN)) as writer:
        for step, row in enumerate(values):
            writer.write(step, {"grad_norm": row, "my_signed_stat": row}, GOOD_LAYERS, wall_time=WALL_TIME_0 + step)
    client = wsgi_client(str(tmp_path))
    message = (
        "2 value(s) below 0, first at step 1 in layer 'dense_1': grad_norm is never negative, so the "
        "writer is wrong (the values are kept and shown)"
    )
    expected = [{"tag": "gradient_health/grad_norm", "message": message}]
    status, series = _get(client, "/series?run=%s&stat=grad_norm" % BAD_RUN)
    assert (status, series["problems"]) == (200, expected)
    assert series["values"] == values.tolist()
    # A statistic of the user's own may be negative.
    assert _get(client, "/series?run=%s&stat=my_signed_stat" % BAD_RUN)[1]["problems"] == []
    _, health = _get(client, "/health")
    assert _problems_of(health, BAD_RUN) == expected


def test_steps_above_2_53_are_served_exactly_and_reported(tmp_path):
    steps = [2**53 - 1, 2**53 + 1, 2**62 + 3]
    _write_bad_run(tmp_path, _content(), [np.float32([step % 7]) for step in range(3)], steps=steps)
    client = wsgi_client(str(tmp_path))
    status, body = _get(client, "/series?run=%s&stat=grad_norm" % BAD_RUN)
    assert status == 200
    assert body["steps"] == steps  # exact in the JSON text
    message = (
        "2 step(s) above 2**53, the largest %d: a browser shows such steps rounded to a float64 "
        "(the data is kept and served exactly)" % steps[-1]
    )
    assert body["problems"] == [{"tag": "gradient_health/grad_norm", "message": message}]
    _, runs = _get(client, "/runs")
    assert _problems_of(runs, BAD_RUN) == [
        {"tag": "gradient_health/grad_norm", "message": message.replace("2 step(s)", "1 step(s)")}
    ]


# Generated metadata: any JSON value under any known key, deep or wide, and
# any name; tensors of any small shape.
_json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.text(max_size=30),
)
_json_values = st.recursive(
    _json_leaves, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
)
_names = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["<script>alert(1)</script>", "\u202eevil", "a" * 1_500, "", "x/y", "dup"]),
)
_contents = st.fixed_dictionaries(
    {},
    optional={
        "version": st.one_of(st.just(1), _json_values),
        "stat": st.one_of(st.just("grad_norm"), st.text(max_size=70)),
        "layers": st.one_of(st.lists(_names, min_size=1, max_size=5), _json_values),
        "scope": st.one_of(st.sampled_from(["layer", "run"]), _json_values),
        "kinds": st.one_of(st.lists(st.sampled_from(list(metadata.LAYER_KINDS) + ["bogus"]), max_size=5), _json_values),
        "params": st.one_of(st.lists(st.integers(-5, 2**64), max_size=5), _json_values),
        "layer_set": st.one_of(st.just("0123abcd"), _json_values),
        "future_key": _json_values,
    },
).map(lambda content: json.dumps(content).encode())
_raw_contents = st.one_of(
    _contents,
    st.integers(1, 3_000).map(lambda depth: b'{"version":1,"pad":' + b"[" * depth + b"]" * depth + b"}"),
    st.binary(max_size=50),
)
_tensors = st.lists(
    st.lists(st.floats(width=32), min_size=0, max_size=6).map(lambda row: np.float32(row)), min_size=1, max_size=3
)
_tags = st.sampled_from(["gradient_health/grad_norm", "gradient_health/grad_norm/0123abcd", "gradient_health/zz"])


@EXAMPLES
@given(content=_raw_contents, tensors=_tensors, tag=_tags)
def test_generated_metadata_and_tensors_never_fail_a_route(tmp_path_factory, content, tensors, tag):
    root = tmp_path_factory.mktemp("generated")
    _write_good_run(root)
    _write_bad_run(root, content, tensors, tag=tag)
    client = wsgi_client(str(root))
    runs, _ = _assert_good_run_served(client)
    bad = [run for run in runs["runs"] if run["run"] == BAD_RUN]
    for run in bad:
        for problem in run["problems"]:
            assert set(problem) == {"tag", "message"} and len(problem["message"]) < 5_000
        for stat in run["stats"] + run["scalars"]:
            status, body = _get(client, "/series?run=%s&stat=%s" % (BAD_RUN, stat))
            assert status in (200, 404)
            if status == 200:
                assert len(body["values"]) == len(body["steps"]) and all(
                    len(row) == len(body["layers"]) for row in body["values"]
                )
    assert _get(client, "/health?run=%s" % BAD_RUN)[0] in ((200,) if bad else (404,))


def test_a_tensor_of_another_shape_or_type_is_skipped_per_step(tmp_path):
    tensors = [np.float32([1.0]), np.float32([1.0, 2.0]), np.float32([math.inf])]
    _write_bad_run(tmp_path, _content(), tensors)
    status, body = _get(wsgi_client(str(tmp_path)), "/series?run=%s&stat=grad_norm" % BAD_RUN)
    assert status == 200
    assert (body["steps"], body["values"]) == ([0, 2], [[1.0], ["Infinity"]])
    assert body["problems"] == [
        {
            "tag": "gradient_health/grad_norm",
            "message": "skipped 1 step(s), first at step 1: tensor of shape (2,), expected (1,) for 1 layers",
        }
    ]


def test_reader_never_lets_a_recursion_error_escape():
    with pytest.raises(ValueError, match="nested"):
        metadata.parse_plugin_metadata(DEEP_CONTENT)
    # Deeper than the interpreter's recursion limit, and invalid JSON too.
    with pytest.raises(ValueError):
        metadata.parse_plugin_metadata(b"[" * 100_000)
    assert reader.MAX_EXACT_STEP == 2**53


def test_a_diagnosis_that_fails_costs_its_run_only(tmp_path, monkeypatch):
    from tb_gradhealth import diagnosis

    _write_good_run(tmp_path)
    with GradientHealthFileWriter(str(tmp_path / BAD_RUN)) as writer:
        writer.write(0, {"grad_norm": [1.0]}, ["a"])
    real = diagnosis.diagnose

    def failing_on_the_bad_run(series):
        if list(series["grad_norm"].layers) == ["a"]:
            raise ValueError("rules met data they do not expect")
        return real(series)

    monkeypatch.setattr(diagnosis, "diagnose", failing_on_the_bad_run)
    _, health = _assert_good_run_served(wsgi_client(str(tmp_path)))
    bad = next(run for run in health["runs"] if run["run"] == BAD_RUN)
    assert (bad["verdict"], bad["findings"]) == ("unreadable", [])
    assert bad["problems"] == [
        {
            "tag": "gradient_health",
            "message": "the diagnosis failed on this run's data (ValueError: rules met data they do not expect)",
        }
    ]
