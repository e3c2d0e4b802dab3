"""In-process tests of the plugin's JSON routes over a real logdir written by our own summary API."""

from __future__ import annotations

import gzip
import json
import math
import pathlib

import numpy as np
import pytest
import tb_server
from tb_server import PLUGIN_ROUTE, json_float, negative_value_problems, strict_json, wsgi_client
from tensorboard.backend import json_util
from tensorboard.backend.event_processing import event_file_loader
from tensorboard.compat.proto import event_pb2
from tensorboard.util import tensor_util

from tb_gradhealth import cli, diagnosis, metadata, plugin, reader
from tb_gradhealth.summary import GradientHealthFileWriter

RUN = "mlp"
SCALARS_ONLY_RUN = "scalars_only"
# Hostile and non-ASCII names must travel as plain JSON strings.
LAYERS = ("dense", "dense_1", "<b>ünïcode</b>")
CUSTOM_STAT = "grad_rms"
STATS = metadata.BUILTIN_STATS + (CUSTOM_STAT,)
# More than TensorBoard's default of 10 samples per third-party tag, so the
# loader's default is what keeps them all.
NUM_STEPS = 40
WALL_TIME_0 = 1_700_000_000.25  # seconds since the epoch
WALL_TIME_STEP = 0.5  # seconds between logged steps
# (step, layer index) -> value planted into grad_norm.
NON_FINITE = {(7, 1): math.nan, (12, 2): math.inf, (13, 0): -math.inf}
JSON_CONTENT_TYPE = "application/json"


def _values():
    """Returns {stat: float32 [NUM_STEPS, n_layers]}, the data the fixture writes."""
    rng = np.random.default_rng(0)
    values = {stat: rng.lognormal(size=(NUM_STEPS, len(LAYERS))).astype(np.float32) for stat in STATS}
    values[metadata.NONFINITE] = np.zeros((NUM_STEPS, len(LAYERS)), dtype=np.float32)
    for (step, layer), value in NON_FINITE.items():
        values[metadata.GRAD_NORM][step, layer] = value
        values[metadata.NONFINITE][step, layer] = 1
    return values


VALUES = _values()


def _wall_time(step: int) -> float:
    return WALL_TIME_0 + step * WALL_TIME_STEP


def _write_scalars(run_dir: str, num_steps: int) -> None:
    """Writes another plugin's data the way a user does: `tf.summary.scalar`."""
    import tensorflow as tf

    writer = tf.summary.create_file_writer(run_dir, filename_suffix=".scalars")
    with writer.as_default():
        for step in range(num_steps):
            tf.summary.scalar("loss", 1.0 / (step + 1), step=step)
    writer.close()


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("logdir")
    with GradientHealthFileWriter(str(root / RUN)) as writer:
        for step in range(NUM_STEPS):
            writer.write(step, {stat: VALUES[stat][step] for stat in STATS}, LAYERS, wall_time=_wall_time(step))
    # Another plugin's data, in our run and in a run of its own.
    _write_scalars(str(root / RUN), NUM_STEPS)
    _write_scalars(str(root / SCALARS_ONLY_RUN), NUM_STEPS)
    return root


@pytest.fixture(scope="module")
def client(logdir):
    return wsgi_client(str(logdir))


def get_json(client, path, expected_status=200):
    response = client.get(PLUGIN_ROUTE + path)
    assert response.status_code == expected_status, response.get_data(as_text=True)
    assert response.mimetype == JSON_CONTENT_TYPE
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    return strict_json(response.get_data())


def expected_problems(stat):
    """A statistic that cannot be negative, with a negative value (here the planted -Inf), is reported."""
    return negative_value_problems(stat, VALUES[stat], LAYERS)


def expected_series(stat, rows=None, max_points=plugin.DEFAULT_MAX_POINTS):
    rows = np.arange(NUM_STEPS) if rows is None else np.asarray(rows, dtype=int)
    return tb_server.expected_series(
        RUN,
        stat,
        LAYERS,
        rows,
        [_wall_time(int(step)) for step in rows],
        VALUES[stat][rows],
        total_steps=NUM_STEPS,
        max_points=max_points,
        problems=expected_problems(stat),
    )


def test_runs_lists_our_run_with_every_stat_and_excludes_foreign_data(client):
    assert get_json(client, "/runs") == {
        "runs": [
            {
                "run": RUN,
                "stats": list(metadata.BUILTIN_STATS) + [CUSTOM_STAT],
                "scalars": [],
                "layers": list(LAYERS),
                "kinds": None,
                "params": None,
                "max_step": NUM_STEPS - 1,
                "last_wall_time": _wall_time(NUM_STEPS - 1),
                "problems": [],
            }
        ]
    }


@pytest.mark.parametrize("stat", STATS)
def test_series_serves_every_step_exactly(client, stat):
    assert get_json(client, "/series?run=%s&stat=%s" % (RUN, stat)) == expected_series(stat)


def test_series_keeps_nan_and_both_infinities_apart(client):
    body = get_json(client, "/series?run=%s&stat=grad_norm" % RUN)
    for (step, layer), value in NON_FINITE.items():
        assert body["values"][step][layer] == json_float(value)
    assert {body["values"][7][1], body["values"][12][2], body["values"][13][0]} == {"NaN", "Infinity", "-Infinity"}


def test_a_body_encoded_a_row_at_a_time_is_the_same_text(client, monkeypatch):
    # One value per part: every join between parts is exercised.
    monkeypatch.setattr(plugin, "_VALUES_ENCODED_AT_ONCE", 1)
    response = client.get(
        PLUGIN_ROUTE + "/series?run=%s&stat=grad_norm&after_step=-1" % RUN, headers={"Accept-Encoding": "gzip"}
    )
    expected = dict(expected_series(metadata.GRAD_NORM), partial=True)
    assert gzip.decompress(response.get_data()).decode("ascii") == json.dumps(json_util.Cleanse(expected))


@pytest.mark.parametrize("accept_gzip", [True, False])
def test_series_body_is_the_json_tensorboard_itself_writes(client, accept_gzip):
    # Byte for byte what http_util.Respond makes of the same numbers
    # (json_util.Cleanse, then json.dumps): the fast encoder changes nothing
    # a client sees, NaN and infinities included.
    headers = {"Accept-Encoding": "gzip"} if accept_gzip else {}
    response = client.get(PLUGIN_ROUTE + "/series?run=%s&stat=grad_norm" % RUN, headers=headers)
    assert response.status_code == 200
    assert response.headers.get("Content-Encoding") == ("gzip" if accept_gzip else None)
    body = gzip.decompress(response.get_data()) if accept_gzip else response.get_data()
    assert body.decode("ascii") == json.dumps(json_util.Cleanse(expected_series(metadata.GRAD_NORM)))


def test_series_with_max_points_above_the_step_count_is_whole(client):
    body = get_json(client, "/series?run=%s&stat=grad_norm&max_points=%d" % (RUN, NUM_STEPS))
    assert body == expected_series(metadata.GRAD_NORM, max_points=plugin.MAX_POINTS_SIZES[0])


@pytest.mark.parametrize(
    "requested, served",
    [
        ("2", plugin.MAX_POINTS_SIZES[0]),
        (str(plugin.MAX_POINTS_SIZES[0]), plugin.MAX_POINTS_SIZES[0]),
        (str(plugin.MAX_POINTS_SIZES[0] + 1), plugin.MAX_POINTS_SIZES[1]),
        (str(plugin.MAX_POINTS_SIZES[-1] + 1), plugin.MAX_POINTS_SIZES[-1]),
        ("9" * 18, plugin.MAX_POINTS_SIZES[-1]),
    ],
)
def test_max_points_is_normalised_to_a_few_sizes(client, requested, served):
    body = get_json(client, "/series?run=%s&stat=grad_norm&max_points=%s" % (RUN, requested))
    assert body["max_points"] == served
    assert body == expected_series(metadata.GRAD_NORM, max_points=served)


@pytest.mark.parametrize("after_step", [-1, 0, 12, NUM_STEPS - 2, NUM_STEPS - 1, 10**6])
def test_after_step_serves_only_the_later_rows_of_a_whole_series(client, after_step):
    body = get_json(client, "/series?run=%s&stat=grad_norm&after_step=%d" % (RUN, after_step))
    rows = [step for step in range(NUM_STEPS) if step > after_step]
    assert body == dict(expected_series(metadata.GRAD_NORM, rows=rows), partial=True)


@pytest.mark.parametrize(
    "query, message",
    [
        ("stat=grad_norm", "missing parameter 'run'"),
        ("run=%s" % RUN, "missing parameter 'stat'"),
        ("run=&stat=grad_norm", "parameter 'run' is empty"),
        ("run=%s&run=%s&stat=grad_norm" % (RUN, RUN), "parameter 'run' given 2 times"),
        ("run=%s&stat=grad_norm&max_points=abc" % RUN, "max_points must be an integer"),
        ("run=%s&stat=grad_norm&max_points=1" % RUN, "max_points must be an integer"),
        ("run=%s&stat=grad_norm&max_points=-5" % RUN, "max_points must be an integer"),
        ("run=%s&stat=grad_norm&max_points=1e3" % RUN, "max_points must be an integer"),
        ("run=%s&stat=grad_norm&max_points=%%D9%%A1%%D9%%A2" % RUN, "max_points must be an integer"),
        ("run=%s&stat=grad_norm&max_points=%s" % (RUN, "9" * 40), "max_points must be an integer"),
        ("run=%s&stat=grad_norm&after_step=x" % RUN, "after_step must be a step"),
        ("run=%s&stat=grad_norm&after_step=1.5" % RUN, "after_step must be a step"),
        ("run=%s&stat=grad_norm&after_step=%d" % (RUN, 2**63), "after_step must be a step"),
        ("run=%s&stat=grad_norm&after_step=0&after_step=1" % RUN, "parameter 'after_step' given 2 times"),
    ],
)
def test_series_bad_request_is_400_with_json_message(client, query, message):
    body = get_json(client, "/series?" + query, expected_status=400)
    assert body["error"]["code"] == 400
    assert message in body["error"]["message"]


def test_health_repeated_run_is_400(client):
    body = get_json(client, "/health?run=a&run=b", expected_status=400)
    assert "parameter 'run' given 2 times" in body["error"]["message"]


@pytest.mark.parametrize(
    "path, message",
    [
        ("/series?run=nope&stat=grad_norm", "no gradient health data for run 'nope'"),
        ("/series?run=%s&stat=grad_norm" % SCALARS_ONLY_RUN, "no gradient health data for run 'scalars_only'"),
        ("/series?run=%s&stat=nope" % RUN, "run 'mlp' has no readable statistic 'nope'"),
        # Another plugin's tag in our run is not one of our statistics.
        ("/series?run=%s&stat=../loss" % RUN, "run 'mlp' has no readable statistic '../loss'"),
        ("/health?run=nope", "no gradient health data for run 'nope'"),
        # A huge name is cut in the message, not echoed whole.
        ("/series?run=%s&stat=grad_norm" % ("x" * 5_000), "run '%s'..." % ("x" * 200)),
        ("/nope", "no such file"),
    ],
)
def test_unknown_run_stat_or_route_is_404_with_json_message(client, path, message):
    body = get_json(client, path, expected_status=404)
    assert body["error"]["code"] == 404
    assert message in body["error"]["message"]
    assert len(body["error"]["message"]) < 1_000


def test_plugins_listing_enables_the_tab_with_its_label(client):
    response = client.get("/data/plugins_listing")
    assert response.status_code == 200
    listing = strict_json(response.get_data())
    assert listing[metadata.PLUGIN_NAME]["enabled"] is True
    assert listing[metadata.PLUGIN_NAME]["tab_name"] == "Gradient Health"
    assert listing[metadata.PLUGIN_NAME]["loading_mechanism"] == {
        "type": "IFRAME",
        "module_path": PLUGIN_ROUTE + "/index.js",
    }


def test_tab_is_disabled_without_our_data(tmp_path):
    _write_scalars(str(tmp_path / SCALARS_ONLY_RUN), 3)
    client = wsgi_client(str(tmp_path))
    listing = strict_json(client.get("/data/plugins_listing").get_data())
    assert listing[metadata.PLUGIN_NAME]["enabled"] is False
    assert get_json(client, "/runs") == {"runs": []}


def _as_served(value):
    """What `value` becomes through http_util.Respond and a strict JSON parser."""
    return strict_json(json.dumps(json_util.Cleanse(value)))


def _expected_health(logdir, runs):
    """The /health body computed by calling the diagnosis on an independent in-process read."""
    provider = cli.provider_for_logdir(str(logdir))
    results = []
    for run in runs:
        diagnosed = diagnosis.diagnose(reader.read_run(*provider, run))
        verdict = diagnosed.to_json()
        results.append(
            {
                "run": run,
                "verdict": verdict["verdict"],
                "findings": verdict["findings"],
                "problems": [p for stat in STATS for p in expected_problems(stat)] if run == RUN else [],
                "notes": list(diagnosed.notes),
            }
        )
    return _as_served({"runs": results})


def test_health_diagnoses_every_run(client, logdir):
    body = get_json(client, "/health")
    assert body == _expected_health(logdir, [RUN])
    (run,) = body["runs"]
    # Independent of the diagnosis internals: the planted NaN is the first.
    assert run["verdict"] == "nonfinite"
    assert run["findings"][0]["kind"] == "nonfinite"
    assert run["findings"][0]["first_step"] == min(step for step, _ in NON_FINITE)
    assert run["findings"][0]["layers"][0] == LAYERS[1]


def test_health_of_one_run(client, logdir):
    assert get_json(client, "/health?run=%s" % RUN) == _expected_health(logdir, [RUN])


KERAS_LOG_DIR = "keras"
KERAS_RUN = "keras/train"
KERAS_LAYERS = ["hidden", "logits"]
KERAS_EPOCHS = 3
KERAS_BATCHES_PER_EPOCH = 8  # 24 logged steps: more than TensorBoard's default 10


@pytest.fixture(scope="module")
def keras_logdir(tmp_path_factory):
    """A run recorded by the Keras callback next to keras.callbacks.TensorBoard's own data."""
    import keras

    from tb_gradhealth import GradientHealthCallback

    root = tmp_path_factory.mktemp("keras_logdir")
    rng = np.random.default_rng(0)
    batch_size = 8
    x = rng.normal(size=(KERAS_BATCHES_PER_EPOCH * batch_size, 4)).astype("float32")
    y = rng.integers(0, 3, len(x))
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(8, activation="relu", name=KERAS_LAYERS[0]),
            keras.layers.Dense(3, name=KERAS_LAYERS[1]),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    log_dir = str(root / KERAS_LOG_DIR)
    model.fit(
        x,
        y,
        batch_size=batch_size,
        epochs=KERAS_EPOCHS,
        verbose=0,
        callbacks=[GradientHealthCallback(log_dir, update_freq=1), keras.callbacks.TensorBoard(log_dir)],
    )
    return root


def _raw_gradient_health(run_dir: pathlib.Path):
    """Reads our tags straight from the event files: {stat: (steps, wall_times, values, content JSON)}."""
    rows, contents = {}, {}
    for path in sorted(run_dir.iterdir()):
        for record in event_file_loader.RawEventFileLoader(str(path)).Load():
            event = event_pb2.Event.FromString(record)
            for value in event.summary.value:
                stat = metadata.stat_for_tag(value.tag)
                if stat is not None:
                    array = tensor_util.make_ndarray(value.tensor).astype(np.float64)
                    rows.setdefault(stat, {})[event.step] = (event.wall_time, array)
                    if value.metadata.plugin_data.content:
                        contents.setdefault(stat, json.loads(value.metadata.plugin_data.content))
    result = {}
    for stat, by_step in rows.items():
        steps = sorted(by_step)
        result[stat] = (
            steps,
            [by_step[step][0] for step in steps],
            [by_step[step][1] for step in steps],
            contents[stat],
        )
    return result


@pytest.mark.slow
def test_keras_callback_run_is_served_whole_and_exact(keras_logdir):
    client = wsgi_client(str(keras_logdir))
    raw = _raw_gradient_health(keras_logdir / KERAS_RUN)
    layer_stats = [stat for stat in raw if raw[stat][3].get("scope", "layer") == "layer"]
    assert sorted(layer_stats) == sorted(metadata.BUILTIN_STATS)
    all_steps = sorted({step for steps, _, _, _ in raw.values() for step in steps})
    assert len(all_steps) == KERAS_EPOCHS * KERAS_BATCHES_PER_EPOCH
    grad_norm_content = raw[metadata.GRAD_NORM][3]
    assert get_json(client, "/runs") == {
        "runs": [
            {
                "run": KERAS_RUN,
                "stats": list(metadata.BUILTIN_STATS),
                "scalars": sorted(set(raw) - set(layer_stats)),
                "layers": KERAS_LAYERS,
                "kinds": grad_norm_content.get("kinds"),
                "params": grad_norm_content.get("params"),
                "max_step": all_steps[-1],
                "last_wall_time": max(max(wall_times) for _, wall_times, _, _ in raw.values()),
                "problems": [],
            }
        ]
    }
    for stat, (steps, wall_times, values, content) in raw.items():
        assert get_json(client, "/series?run=%s&stat=%s" % (KERAS_RUN, stat)) == _as_served(
            {
                "run": KERAS_RUN,
                "stat": stat,
                "scope": content.get("scope", "layer"),
                "layers": content["layers"],
                "kinds": content.get("kinds"),
                "params": content.get("params"),
                "steps": steps,
                "wall_times": wall_times,
                "values": [row.tolist() for row in values],
                "total_steps": len(steps),
                "max_points": plugin.DEFAULT_MAX_POINTS,
                "partial": False,
                "notices": [],
                "problems": [],
            }
        )
    body = get_json(client, "/health")
    assert body == _expected_health(keras_logdir, [KERAS_RUN])
    assert body["runs"][0]["verdict"] == diagnosis.HEALTHY
