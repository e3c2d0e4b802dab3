"""Comparison with a known good run: real recorded runs of one model, retrained, regressed and changed."""

from __future__ import annotations

import numpy as np
import pytest
from support import calibration

from tb_gradhealth import cli, metadata, reader
from tb_gradhealth.diagnosis import baseline, diagnose
from tb_gradhealth.series import StatSeries

STEPS = 100  # optimizer updates of each recorded run
LONGER_STEPS = 160
LEARNING_RATE = 1e-3


def _train(logdir: str, run: str, seed: int = 0, learning_rate: float = LEARNING_RATE, hidden=(64, 32), steps=STEPS):
    """An Adam-trained ReLU MLP whose layers `mlp` names (as two separate processes would: names match)."""
    import keras

    from tb_gradhealth import GradientHealthCallback

    keras.utils.set_random_seed(seed)
    x, y = calibration.image_data(steps * calibration.BATCH)
    layers = [calibration.dense(units, "relu") for units in hidden]
    model = calibration.mlp(calibration.IMAGE_SHAPE, *layers, calibration.dense(calibration.N_CLASSES, "softmax"))
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="categorical_crossentropy")
    callback = GradientHealthCallback("%s/%s" % (logdir, run), update_freq=1)
    model.fit(x, y, batch_size=calibration.BATCH, verbose=0, callbacks=[callback])


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict[str, StatSeries]]:
    """The recorded runs by name, read back through the reader."""
    logdir = str(tmp_path_factory.mktemp("baseline"))
    _train(logdir, "good")
    _train(logdir, "good_other_seed", seed=1)
    _train(logdir, "hot", learning_rate=3 * LEARNING_RATE)
    _train(logdir, "wider", hidden=(64, 32, 16))
    _train(logdir, "good_longer", steps=LONGER_STEPS)
    provider, ctx, experiment_id = cli.provider_for_logdir(logdir)
    names = ("good", "good_other_seed", "hot", "wider", "good_longer")
    return {name: reader.read_run(provider, ctx, experiment_id, name + "/train") for name in names}


def _levels(series, last_step: int) -> np.ndarray:
    """Independent numpy: per layer, the median of grad_norm / weight_norm over the steps up to `last_step`."""
    keep = series[metadata.GRAD_NORM].steps <= last_step
    return np.median(series[metadata.GRAD_NORM].values[keep] / series[metadata.WEIGHT_NORM].values[keep], axis=0)


@pytest.mark.slow
def test_a_run_against_itself_moved_nothing(runs):
    comparison = baseline.compare(runs["good"], runs["good"])
    assert not comparison.regressed
    assert [level.ratio for level in comparison.layers] == [1.0, 1.0, 1.0]
    assert (comparison.only_in_run, comparison.only_in_baseline, comparison.notes) == ((), (), ())


@pytest.mark.slow
def test_another_seed_is_no_regression(runs):
    comparison = baseline.compare(runs["good_other_seed"], runs["good"])
    assert not comparison.regressed
    expected = _levels(runs["good_other_seed"], STEPS - 1) / _levels(runs["good"], STEPS - 1)
    np.testing.assert_allclose([level.ratio for level in comparison.layers], expected, rtol=1e-6)
    assert all(1 / baseline.LEVEL_FACTOR < ratio < baseline.LEVEL_FACTOR for ratio in expected)


@pytest.mark.slow
def test_a_learning_rate_three_times_higher_is_a_regression_before_it_is_a_failure(runs):
    assert diagnose(runs["hot"]).verdict == "healthy"
    comparison = baseline.compare(runs["hot"], runs["good"])
    assert comparison.regressed
    assert comparison.measure == baseline.RELATIVE_LEVEL and comparison.last_step == STEPS - 1
    assert [level.layer for level in comparison.moved] == ["hidden_1", "hidden_2", "output"]
    np.testing.assert_allclose([level.level for level in comparison.moved], _levels(runs["hot"], STEPS - 1), rtol=1e-6)
    np.testing.assert_allclose(
        [level.baseline_level for level in comparison.moved], _levels(runs["good"], STEPS - 1), rtol=1e-6
    )
    assert all(level.ratio < 1 / baseline.LEVEL_FACTOR for level in comparison.moved)


@pytest.mark.slow
def test_layers_in_one_run_only_are_listed_not_failed(runs):
    comparison = baseline.compare(runs["wider"], runs["good"])
    assert comparison.only_in_run == ("hidden_3",)
    assert [level.layer for level in comparison.layers] == ["hidden_1", "hidden_2", "output"]
    reverse = baseline.compare(runs["good"], runs["wider"])
    assert (reverse.only_in_run, reverse.only_in_baseline) == ((), ("hidden_3",))
    assert "hidden_3" not in [level.layer for level in comparison.moved + reverse.moved]


@pytest.mark.slow
def test_only_the_steps_both_runs_have_are_compared(runs):
    # The longer baseline converged further: its later, smaller gradients are left out.
    comparison = baseline.compare(runs["good"], runs["good_longer"])
    assert comparison.last_step == STEPS - 1
    np.testing.assert_allclose(
        [level.baseline_level for level in comparison.layers], _levels(runs["good_longer"], STEPS - 1), rtol=1e-6
    )
    whole = np.median(
        runs["good_longer"][metadata.GRAD_NORM].values / runs["good_longer"][metadata.WEIGHT_NORM].values, axis=0
    )
    assert not np.allclose(whole, _levels(runs["good_longer"], STEPS - 1))


# --- hand-made series: the edge cases -------------------------------------------------

LAYERS = ("a", "b")
N_STEPS = 8


def _run(grad, weight=1.0, layers=LAYERS, steps=None) -> dict[str, StatSeries]:
    steps = np.arange(N_STEPS) if steps is None else np.asarray(steps)
    shape = (len(steps), len(layers))
    series = {metadata.GRAD_NORM: np.broadcast_to(np.asarray(grad, float), shape)}
    if weight is not None:
        series[metadata.WEIGHT_NORM] = np.broadcast_to(np.asarray(weight, float), shape)
    return {
        stat: StatSeries(stat, layers, steps.astype(np.int64), np.zeros(len(steps)), np.array(values))
        for stat, values in series.items()
    }


@pytest.mark.parametrize(
    "grad, moved",
    [
        ([1.0, 1.0], ()),
        ([baseline.LEVEL_FACTOR * 0.99, 1 / baseline.LEVEL_FACTOR * 1.01], ()),
        ([baseline.LEVEL_FACTOR * 1.01, 1.0], ("a",)),
        ([1.0, 1 / baseline.LEVEL_FACTOR * 0.99], ("b",)),
        ([0.0, 1.0], ("a",)),  # no gradient at all now
        ([np.nan, 1.0], ("a",)),  # no finite value now
    ],
)
def test_a_level_moves_beyond_the_factor_either_way(grad, moved):
    comparison = baseline.compare(_run(grad), _run(1.0))
    assert tuple(level.layer for level in comparison.moved) == moved
    assert comparison.regressed == bool(moved)


def test_levels_are_size_fair_relative_gradients():
    # Twice the weights and twice the gradient: the same relative gradient.
    assert not baseline.compare(_run(2.0, weight=2.0), _run(1.0)).regressed


def test_without_weight_norm_raw_norms_are_compared_with_a_note():
    comparison = baseline.compare(_run(100.0, weight=None), _run(1.0))
    assert comparison.measure == baseline.RAW_LEVEL and comparison.regressed
    assert comparison.notes == (
        "no weight_norm in both runs: compared raw gradient norms, which also move with layer size",
    )


def test_runs_without_common_steps_or_gradients_compare_nothing():
    apart = baseline.compare(_run(1.0, steps=np.arange(N_STEPS)), _run(1.0, steps=np.arange(N_STEPS) + 100))
    assert (apart.layers, apart.regressed, apart.notes) == (
        (),
        False,
        ("the runs share no range of steps: nothing compared",),
    )
    no_grad = baseline.compare({}, _run(1.0))
    assert no_grad.notes == ("no grad_norm in the run: nothing compared",)
    assert no_grad.only_in_baseline == LAYERS


def test_the_json_form_is_plain_python():
    result = baseline.compare(_run([np.nan, 50.0]), _run(1.0)).to_json()
    assert list(result) == [
        "measure",
        "factor",
        "last_step",
        "regressed",
        "moved",
        "only_in_run",
        "only_in_baseline",
        "notes",
    ]
    assert result["moved"][0]["layer"] == "a" and np.isnan(result["moved"][0]["level"])
    assert result["moved"][1] == {"layer": "b", "level": 50.0, "baseline_level": 1.0, "ratio": 50.0}
    assert type(result["last_step"]) is int


def test_a_factor_not_above_one_is_refused():
    with pytest.raises(ValueError, match="factor must be above 1"):
        baseline.compare(_run(1.0), _run(1.0), factor=1.0)
