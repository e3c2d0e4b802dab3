"""The reader: whole series through a data provider, and corrupt data skipped and reported, never fatal."""

from __future__ import annotations

import json

import numpy as np
import pytest
from support import raw_events
from tb_server import PLUGIN_ROUTE, strict_json, wsgi_client
from tensorboard import errors
from tensorboard.compat.proto import summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
from tensorboard.data import provider as tb_provider

from tb_gradhealth import cli, metadata, reader
from tb_gradhealth.summary import GradientHealthFileWriter

LAYERS = raw_events.LAYERS
# More than the multiplexer's default of 500 tensors per tag.
LONG_RUN_STEPS = 1_500
GOOD_RUN = "good"
BAD_RUN = "bad"
BROKEN_ONLY_RUN = "broken_only"
WALL_TIME_0 = raw_events.WALL_TIME_0


def _metadata_with_content(content: bytes) -> summary_pb2.SummaryMetadata:
    result = metadata.create_summary_metadata("x", LAYERS)
    result.plugin_data.content = content
    return result


def _good_values(num_steps):
    return np.arange(num_steps * len(LAYERS), dtype=np.float32).reshape(num_steps, len(LAYERS)) / 7


@pytest.fixture(scope="module")
def corrupt_logdir(tmp_path_factory):
    """A good run next to runs whose Gradient Health data is broken in every way we know."""
    root = tmp_path_factory.mktemp("corrupt")
    good = _good_values(5)
    with GradientHealthFileWriter(str(root / GOOD_RUN)) as writer:
        for step, row in enumerate(good):
            writer.write(step, {"grad_norm": row}, LAYERS, wall_time=WALL_TIME_0 + step)
    # Trailing garbage after the last record and an empty event file.
    (event_file,) = (root / GOOD_RUN).iterdir()
    with open(event_file, "ab") as stream:
        stream.write(b"\x00garbage that is no record")
    (root / GOOD_RUN / "events.out.tfevents.0.empty").write_bytes(b"")

    raw = raw_events.RawWriter(str(root / BAD_RUN))
    for step in range(4):
        raw.write(step, "gradient_health/grad_norm", raw_events.vector_tensor(good[step]))
        # Steps 1 and 3 have the wrong number of layers.
        raw.write(step, "gradient_health/weight_norm", raw_events.vector_tensor(good[step][: 2 if step % 2 else 3]))
        # Step 2 cannot be decoded at all (5 bytes for 3 floats).
        raw.write(
            step,
            "gradient_health/update_ratio",
            raw_events.vector_tensor(good[step], content=b"12345" if step == 2 else None),
        )
        raw.write(
            step, "gradient_health/bad_json", raw_events.vector_tensor(good[step]), _metadata_with_content(b"{not json")
        )
        raw.write(
            step,
            "gradient_health/future",
            raw_events.vector_tensor(good[step]),
            _metadata_with_content(json.dumps({"version": 99, "stat": "future", "layers": list(LAYERS)}).encode()),
        )
        raw.write(
            step,
            "gradient_health/strings",
            tensor_pb2.TensorProto(
                dtype=types_pb2.DT_STRING,
                tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=3)]),
                string_val=[b"a", b"b", b"c"],
            ),
        )
    raw.close()

    only = raw_events.RawWriter(str(root / BROKEN_ONLY_RUN))
    only.write(0, "gradient_health/grad_norm", raw_events.vector_tensor([1.0]), _metadata_with_content(b"[]"))
    only.close()
    return root


@pytest.fixture(scope="module")
def corrupt_provider(corrupt_logdir):
    return cli.provider_for_logdir(str(corrupt_logdir))


BAD_METADATA_PROBLEMS = [
    {
        "tag": "gradient_health/bad_json",
        "message": "skipped: gradient health metadata is not UTF-8 JSON: "
        "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
    },
    {
        "tag": "gradient_health/future",
        "message": "skipped: unknown gradient health content version 99 (this reader knows 1)",
    },
]
WRONG_SHAPE_MESSAGE = "skipped 2 step(s), first at step 1: tensor of shape (2,), expected (3,) for 3 layers"


def test_list_runs_reports_undecodable_metadata_and_keeps_the_rest(corrupt_provider):
    runs = {run: reader.run_info(tags) for run, tags in reader.list_run_tags(*corrupt_provider).items()}
    assert sorted(runs) == [BAD_RUN, BROKEN_ONLY_RUN, GOOD_RUN]
    assert runs[GOOD_RUN] == {
        "run": GOOD_RUN,
        "stats": ["grad_norm"],
        "scalars": [],
        "layers": list(LAYERS),
        "kinds": None,
        "params": None,
        "max_step": 4,
        "last_wall_time": WALL_TIME_0 + 4,
        "problems": [],
    }
    assert runs[BAD_RUN]["stats"] == ["grad_norm", "weight_norm", "update_ratio", "strings"]
    assert runs[BAD_RUN]["problems"] == BAD_METADATA_PROBLEMS
    assert runs[BROKEN_ONLY_RUN] == {
        "run": BROKEN_ONLY_RUN,
        "stats": [],
        "scalars": [],
        "layers": [],
        "kinds": None,
        "params": None,
        "max_step": 0,
        "last_wall_time": WALL_TIME_0,
        "problems": [
            {"tag": "gradient_health/grad_norm", "message": "skipped: gradient health metadata must be a JSON object"}
        ],
    }


def test_load_run_skips_bad_steps_and_tags_and_says_so(corrupt_provider):
    data = reader.load_run(*corrupt_provider, BAD_RUN)
    good = _good_values(5).astype(np.float64)
    assert list(data.series) == ["grad_norm", "weight_norm"]
    np.testing.assert_array_equal(data.series["grad_norm"].values, good[:4])
    np.testing.assert_array_equal(data.series["weight_norm"].steps, [0, 2])
    np.testing.assert_array_equal(data.series["weight_norm"].values, good[[0, 2]])
    messages = {problem.tag: problem.message for problem in data.problems}
    assert messages == {
        "gradient_health/bad_json": BAD_METADATA_PROBLEMS[0]["message"],
        "gradient_health/future": BAD_METADATA_PROBLEMS[1]["message"],
        "gradient_health/weight_norm": WRONG_SHAPE_MESSAGE,
        "gradient_health/update_ratio": "skipped: tensors cannot be decoded (ValueError: buffer size must be a multiple of element size)",
        "gradient_health/strings": "skipped 4 step(s), first at step 0: tensor of dtype object is not numeric",
    }


def test_read_run_of_a_good_run_survives_garbage_and_empty_files(corrupt_provider):
    series = reader.read_run(*corrupt_provider, GOOD_RUN)
    np.testing.assert_array_equal(series["grad_norm"].values, _good_values(5))
    np.testing.assert_array_equal(series["grad_norm"].wall_times, WALL_TIME_0 + np.arange(5))


def test_read_run_unknown_run_or_stat_is_not_found(corrupt_provider):
    with pytest.raises(errors.NotFoundError, match="no gradient health data for run 'nope'"):
        reader.read_run(*corrupt_provider, "nope")
    with pytest.raises(errors.NotFoundError, match="run 'good' has no readable statistic 'nope'"):
        reader.read_run(*corrupt_provider, GOOD_RUN, stats=["nope"])
    with pytest.raises(errors.NotFoundError, match=r"has no readable statistic 'update_ratio' .*cannot be decoded"):
        reader.read_run(*corrupt_provider, BAD_RUN, stats=["update_ratio"])


def test_routes_keep_serving_and_report_corrupt_data(corrupt_logdir):
    client = wsgi_client(str(corrupt_logdir))
    runs = strict_json(client.get(PLUGIN_ROUTE + "/runs").get_data())["runs"]
    assert [run["run"] for run in runs] == [BAD_RUN, BROKEN_ONLY_RUN, GOOD_RUN]
    response = client.get(PLUGIN_ROUTE + "/series?run=%s&stat=weight_norm" % BAD_RUN)
    assert response.status_code == 200
    body = strict_json(response.get_data())
    assert body["steps"] == [0, 2]
    assert body["problems"] == [{"tag": "gradient_health/weight_norm", "message": WRONG_SHAPE_MESSAGE}]
    response = client.get(PLUGIN_ROUTE + "/series?run=%s&stat=update_ratio" % BAD_RUN)
    assert response.status_code == 404
    assert "cannot be decoded" in strict_json(response.get_data())["error"]["message"]
    response = client.get(PLUGIN_ROUTE + "/series?run=%s&stat=grad_norm" % BROKEN_ONLY_RUN)
    assert response.status_code == 404
    assert "must be a JSON object" in strict_json(response.get_data())["error"]["message"]
    response = client.get(PLUGIN_ROUTE + "/health")
    assert response.status_code == 200
    health = {run["run"]: run for run in strict_json(response.get_data())["runs"]}
    assert sorted(health) == [BAD_RUN, BROKEN_ONLY_RUN, GOOD_RUN]
    assert {problem["tag"] for problem in health[BAD_RUN]["problems"]} == {
        "gradient_health/bad_json",
        "gradient_health/future",
        "gradient_health/weight_norm",
        "gradient_health/update_ratio",
        "gradient_health/strings",
    }
    # The good run's trailing garbage is reported as a problem of its file
    # (see test_reliability_corrupt.py); its data is all served.
    (event_file,) = [path.name for path in (corrupt_logdir / GOOD_RUN).iterdir() if path.stat().st_size]
    assert [(p["file"], p["message"].split(":")[0]) for p in health[GOOD_RUN]["problems"]] == [
        (event_file, "event file corrupt")
    ]
    assert health[BROKEN_ONLY_RUN]["problems"][0]["tag"] == "gradient_health/grad_norm"


def test_provider_for_logdir_keeps_every_step(tmp_path):
    values = np.random.default_rng(1).normal(size=(LONG_RUN_STEPS, len(LAYERS))).astype(np.float32)
    with GradientHealthFileWriter(str(tmp_path / "long")) as writer:
        for step, row in enumerate(values):
            writer.write(step * 3, {"grad_norm": row, "my_stat": -row}, LAYERS, wall_time=WALL_TIME_0 + step)
    provider = cli.provider_for_logdir(str(tmp_path))
    (info,) = [reader.run_info(tags) for tags in reader.list_run_tags(*provider).values()]
    assert (info["run"], info["stats"], info["layers"], info["max_step"]) == (
        "long",
        ["grad_norm", "my_stat"],
        list(LAYERS),
        3 * (LONG_RUN_STEPS - 1),
    )
    series = reader.read_run(*provider, "long")
    np.testing.assert_array_equal(series["grad_norm"].steps, 3 * np.arange(LONG_RUN_STEPS))
    np.testing.assert_array_equal(series["grad_norm"].values, values)
    np.testing.assert_array_equal(series["my_stat"].values, -values)
    assert list(reader.read_run(*provider, "long", stats=["my_stat"])) == ["my_stat"]


def _datum(step, wall_time, values):
    return tb_provider.TensorDatum(step=step, wall_time=wall_time, numpy=np.asarray(values, dtype=np.float32))


def test_series_from_tensors_sorts_steps_and_keeps_the_latest_write_of_a_step():
    # As a restarted run read by the Rust data server can deliver them.
    data = [_datum(5, 10.0, [5, 5]), _datum(6, 11.0, [6, 6]), _datum(5, 20.0, [50, 50]), _datum(1, 21.0, [1, 1])]
    series, problems = reader.series_from_tensors("s", "gradient_health/s", ("a", "b"), data)
    assert problems == []
    np.testing.assert_array_equal(series.steps, [1, 5, 6])
    np.testing.assert_array_equal(series.wall_times, [21.0, 20.0, 11.0])
    np.testing.assert_array_equal(series.values, [[1, 1], [50, 50], [6, 6]])


def test_order_stats_puts_builtins_first_in_capture_order():
    assert reader.order_stats(["zeta", "nonfinite", "alpha", "grad_norm", "grad_norm"]) == [
        "grad_norm",
        "nonfinite",
        "alpha",
        "zeta",
    ]


def test_sampling_is_tensorboards_own_with_the_users_value_respected(tmp_path):
    with GradientHealthFileWriter(str(tmp_path / "run")) as writer:
        for step in range(30):
            writer.write(step, {"grad_norm": [step, step, step]}, LAYERS)
    default = strict_json(wsgi_client(str(tmp_path)).get(PLUGIN_ROUTE + "/series?run=run&stat=grad_norm").get_data())
    assert default["steps"] == list(range(30))
    user = wsgi_client(str(tmp_path), "--samples_per_plugin", "gradient_health=5")
    limited = strict_json(user.get(PLUGIN_ROUTE + "/series?run=run&stat=grad_norm").get_data())
    assert len(limited["steps"]) == 5 and limited["steps"][-1] == 29
