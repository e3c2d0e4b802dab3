"""This version's contract extensions read: layer sets merged into one series with 'not recorded' cells, kinds, params, run-level statistics."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tb_server import PLUGIN_ROUTE, json_float, strict_json, wsgi_client

from tb_gradhealth import diagnosis, metadata, plugin, reader
from tb_gradhealth.summary import GradientHealthFileWriter

RUN = "transfer"
WALL_TIME_0 = 1_700_000_000.0  # seconds since the epoch
STATS = (metadata.GRAD_NORM, metadata.WEIGHT_NORM)
# (first step, layers, kinds, params) of each phase: the head trained, then
# the base unfrozen with a new head, then the first set again.
PHASES = (
    (0, ("base/conv", "base/bn", "head"), ("conv", "normalization", "dense"), (864, 64, 330)),
    (5, ("base/bn", "head", "head_2"), ("normalization", "dense", "dense"), (64, 330, 11)),
    (10, ("base/conv", "base/bn", "head"), ("conv", "normalization", "dense"), (864, 64, 330)),
)
NUM_STEPS = 13
# The union in model order: the newest set (the plain tags, written last), with
# head_2 after its predecessor in the set that has it.
LAYERS = ["base/conv", "base/bn", "head", "head_2"]
KINDS = ["conv", "normalization", "dense", "dense"]
PARAMS = [864, 64, 330, 11]
NAN_CELL = (7, "head")  # a recorded non-finite value


def _phase(step):
    return max((phase for phase in PHASES if phase[0] <= step), key=lambda phase: phase[0])


def _value(stat, step, layer):
    if (step, layer) == NAN_CELL and stat == metadata.GRAD_NORM:
        return np.float32(np.nan)
    return np.float32((STATS.index(stat) + 1) * 100 + step + LAYERS.index(layer) / 8)


def _loss(step):
    return np.float32(2.0 / (step + 1))


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("layer_sets")
    with GradientHealthFileWriter(str(root / RUN)) as writer:
        for step in range(NUM_STEPS):
            _, layers, kinds, params = _phase(step)
            stats = {stat: [_value(stat, step, layer) for layer in layers] for stat in STATS}
            writer.write(
                step, stats, layers, wall_time=WALL_TIME_0 + step, loss=_loss(step), kinds=kinds, params=params
            )
    return root


@pytest.fixture(scope="module")
def client(logdir):
    return wsgi_client(str(logdir))


def get_json(client, path):
    response = client.get(PLUGIN_ROUTE + path)
    assert response.status_code == 200, response.get_data(as_text=True)
    return strict_json(response.get_data())


def _expected_cells(stat, steps):
    rows = []
    for step in steps:
        recorded = _phase(step)[1]
        rows.append([json_float(float(_value(stat, step, layer))) if layer in recorded else None for layer in LAYERS])
    return rows


def test_runs_lists_the_union_of_layers_with_kinds_params_and_run_level_statistics(client):
    assert get_json(client, "/runs")["runs"] == [
        {
            "run": RUN,
            "stats": list(STATS),
            "scalars": ["loss"],
            "layers": LAYERS,
            "kinds": KINDS,
            "params": PARAMS,
            "max_step": NUM_STEPS - 1,
            "last_wall_time": WALL_TIME_0 + NUM_STEPS - 1,
            "problems": [],
        }
    ]


@pytest.mark.parametrize("stat", STATS)
def test_series_merges_the_layer_sets_with_null_where_not_recorded(client, stat):
    body = get_json(client, "/series?run=%s&stat=%s" % (RUN, stat))
    steps = list(range(NUM_STEPS))
    assert body == {
        "run": RUN,
        "stat": stat,
        "scope": "layer",
        "layers": LAYERS,
        "kinds": KINDS,
        "params": PARAMS,
        "steps": steps,
        "wall_times": [WALL_TIME_0 + step for step in steps],
        "values": _expected_cells(stat, steps),
        "total_steps": NUM_STEPS,
        "max_points": plugin.DEFAULT_MAX_POINTS,
        "partial": False,
        "notices": [],
        "problems": [],
    }
    # Not recorded (null) and non-finite ("NaN") stay apart.
    if stat == metadata.GRAD_NORM:
        assert body["values"][NAN_CELL[0]][LAYERS.index(NAN_CELL[1])] == "NaN"
        assert body["values"][NAN_CELL[0]][0] is None


def test_a_run_level_statistic_is_served_as_one_column(client):
    body = get_json(client, "/series?run=%s&stat=loss" % RUN)
    assert (body["scope"], body["layers"], body["kinds"], body["params"]) == ("run", ["loss"], None, None)
    assert body["values"] == [[float(_loss(step))] for step in range(NUM_STEPS)]


def test_after_step_appends_rows_of_the_merged_series(client):
    body = get_json(client, "/series?run=%s&stat=grad_norm&after_step=8" % RUN)
    assert body["partial"] is True
    assert body["steps"] == list(range(9, NUM_STEPS))
    assert body["values"] == _expected_cells(metadata.GRAD_NORM, range(9, NUM_STEPS))
    assert body["layers"] == LAYERS and body["total_steps"] == NUM_STEPS


def test_the_diagnosis_gets_the_loss_and_the_recorded_mask(logdir, monkeypatch):
    seen = []
    real = diagnosis.diagnose

    def recording(series):
        seen.append(series)
        return real(series)

    monkeypatch.setattr(diagnosis, "diagnose", recording)
    # A fresh app: its diagnosis is not cached yet.
    body = get_json(wsgi_client(str(logdir)), "/health")
    assert body["runs"][0]["run"] == RUN
    (series,) = seen
    assert sorted(series) == sorted((*STATS, "loss"))
    np.testing.assert_array_equal(series["loss"].values[:, 0], [_loss(step) for step in range(NUM_STEPS)])
    expected = np.array([[layer in _phase(step)[1] for layer in LAYERS] for step in range(NUM_STEPS)])
    for stat in STATS:
        assert list(series[stat].layers) == LAYERS
        np.testing.assert_array_equal(series[stat].recorded, expected)
        assert np.isnan(series[stat].values[~expected]).all()


@settings(max_examples=200, deadline=None)
@given(
    orders=st.lists(st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=8, unique=True), min_size=1, max_size=4)
)
def test_merged_layer_order_keeps_the_newest_order_and_places_older_layers_after_their_predecessor(orders):
    merged = reader.merge_layer_orders(orders)
    assert sorted(merged) == sorted({name for order in orders for name in order})
    newest = orders[-1]
    assert [name for name in merged if name in newest] == newest
    placed = set(newest)
    for order in reversed(orders[:-1]):
        for index, name in enumerate(order):
            if name in placed:
                continue
            if index == 0:
                assert len(order) == 1 or merged.index(name) < merged.index(order[1])
            else:
                # Right after its predecessor, or after layers placed there before it.
                between = merged[merged.index(order[index - 1]) + 1 : merged.index(name)]
                assert all(layer not in newest for layer in between)
            placed.add(name)
