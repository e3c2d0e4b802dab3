"""Calibration: small models trained with the Keras callback, read back from their event files, get their known verdict."""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import pytest

from tb_gradhealth import metadata, reader
from tb_gradhealth.diagnosis import diagnose, vanishing

pytestmark = pytest.mark.slow

# Keras (and TensorFlow) are imported inside the helpers, so that collecting
# this module for `make test-fast`, which deselects it, stays quick.

SEED = 0
IMAGE_SHAPE = (28, 28)
N_CLASSES = 10
BATCH = 32  # Keras's default batch size, as in the notebook
BLOB_FEATURES = 20
# One epoch of each case; runs that must show health over time are longer,
# those whose problem shows within the first steps short (2 shared cores).
LONG_STEPS = 200
SHORT_STEPS = 48


def _image_data(n: int, scale: float = 1.0):
    """MNIST-shaped generated data: per-class sparse prototypes in [0, 1] plus noise, one-hot labels."""
    import keras

    rng = np.random.default_rng(SEED)
    prototypes = rng.random((N_CLASSES, *IMAGE_SHAPE)) < 0.2
    labels = rng.integers(0, N_CLASSES, n)
    brightness = rng.uniform(0.5, 1.0, (n, *IMAGE_SHAPE))
    images = np.clip(prototypes[labels] * brightness + rng.normal(0, 0.15, (n, *IMAGE_SHAPE)), 0, 1)
    x = images.astype("float32")
    y = keras.utils.to_categorical(labels, N_CLASSES).astype("float32")
    return x * scale, y * scale


def _blob_data(n: int):
    """Well separated Gaussian blobs: an MLP fits them to almost zero loss."""
    import keras

    rng = np.random.default_rng(SEED)
    centers = rng.normal(0, 3, (N_CLASSES, BLOB_FEATURES))
    labels = rng.integers(0, N_CLASSES, n)
    x = (centers[labels] + rng.normal(0, 1, (n, BLOB_FEATURES))).astype("float32")
    return x, keras.utils.to_categorical(labels, N_CLASSES).astype("float32")


def _regression_data(n: int):
    rng = np.random.default_rng(SEED + 1)
    x = rng.normal(size=(n, BLOB_FEATURES)).astype("float32")
    return x, (x @ rng.normal(size=(BLOB_FEATURES, 1))).astype("float32")


def _mlp(input_shape, *layers):
    import keras

    return keras.Sequential([keras.Input(input_shape), keras.layers.Flatten(), *layers])


def _dense(units, activation=None, **kwargs):
    import keras

    return keras.layers.Dense(units, activation=activation, **kwargs)


def _constant(value):
    import keras

    return keras.initializers.Constant(value)


@dataclasses.dataclass(frozen=True)
class Case:
    """A model, its data and optimiser, and the diagnosis it must get."""

    build: Callable
    data: Callable
    optimizer: Callable
    loss: str
    steps: int
    verdict: str
    # Kinds of every finding, most severe first.
    kinds: tuple[str, ...]


def _sgd(learning_rate, **kwargs):
    def build():
        import keras

        return keras.optimizers.SGD(learning_rate, **kwargs)

    return build


def _adam(learning_rate):
    def build():
        import keras

        return keras.optimizers.Adam(learning_rate)

    return build


CASES = {
    # The notebook's baseline: Flatten, Dense(128, sigmoid), Dense(10, softmax), SGD.
    "healthy_sigmoid": Case(
        build=lambda: _mlp(IMAGE_SHAPE, _dense(128, "sigmoid"), _dense(N_CLASSES, "softmax")),
        data=_image_data,
        optimizer=_sgd(0.01),
        loss="categorical_crossentropy",
        steps=LONG_STEPS,
        verdict="healthy",
        kinds=(),
    ),
    # Adam drives the loss to ~0: gradient norms shrink by orders of magnitude.
    "healthy_relu_adam": Case(
        build=lambda: _mlp(IMAGE_SHAPE, _dense(64, "relu"), _dense(32, "relu"), _dense(N_CLASSES, "softmax")),
        data=_image_data,
        optimizer=_adam(1e-3),
        loss="categorical_crossentropy",
        steps=LONG_STEPS,
        verdict="healthy",
        kinds=(),
    ),
    # Converges on easy data: norms shrink and updates become small, but the
    # shrinking norms show it is learning, so it is not vanishing.
    "healthy_converging_momentum": Case(
        build=lambda: _mlp((BLOB_FEATURES,), _dense(32, "relu"), _dense(32, "relu"), _dense(N_CLASSES, "softmax")),
        data=_blob_data,
        optimizer=_sgd(0.05, momentum=0.9),
        loss="categorical_crossentropy",
        steps=LONG_STEPS,
        verdict="healthy",
        kinds=(),
    ),
    "vanishing_deep_sigmoid": Case(
        build=lambda: _mlp(IMAGE_SHAPE, *[_dense(32, "sigmoid") for _ in range(10)], _dense(N_CLASSES, "softmax")),
        data=_image_data,
        optimizer=_sgd(0.1),
        loss="categorical_crossentropy",
        steps=SHORT_STEPS,
        verdict="vanishing",
        kinds=("vanishing",),
    ),
    "vanishing_learning_rate_too_low": Case(
        build=lambda: _mlp(IMAGE_SHAPE, _dense(64, "relu"), _dense(N_CLASSES, "softmax")),
        data=_image_data,
        optimizer=_sgd(1e-5),
        loss="categorical_crossentropy",
        steps=SHORT_STEPS,
        verdict="vanishing",
        kinds=("vanishing",),
    ),
    # Plain SGD far above the stable step size for this regression.
    "exploding_learning_rate_too_high": Case(
        build=lambda: _mlp((BLOB_FEATURES,), _dense(32, "relu"), _dense(32, "relu"), _dense(1)),
        data=_regression_data,
        optimizer=_sgd(0.3),
        loss="mean_squared_error",
        steps=SHORT_STEPS,
        verdict="nonfinite",
        kinds=("nonfinite", "exploding"),
    ),
    # The notebook's "exploding" model: ReLU MLP on x*10 and y*10.
    "nonfinite_notebook_relu_10x": Case(
        build=lambda: _mlp(
            IMAGE_SHAPE,
            *[_dense(5, "relu", kernel_initializer="he_uniform") for _ in range(5)],
            _dense(N_CLASSES, "softmax"),
        ),
        data=lambda n: _image_data(n, scale=10.0),
        optimizer=_sgd(0.01),
        loss="categorical_crossentropy",
        steps=SHORT_STEPS,
        verdict="nonfinite",
        kinds=("nonfinite", "exploding"),
    ),
    # The second hidden layer's ReLUs never activate: no gradient reaches it
    # or the layer before it.
    "dead_relu_layer": Case(
        build=lambda: _mlp(
            IMAGE_SHAPE,
            _dense(32, "relu"),
            _dense(32, "relu", bias_initializer=_constant(-100.0)),
            _dense(32, "relu"),
            _dense(N_CLASSES, "softmax"),
        ),
        data=_image_data,
        optimizer=_sgd(0.05),
        loss="categorical_crossentropy",
        steps=SHORT_STEPS,
        verdict="dead",
        kinds=("dead",),
    ),
}


def train_case(name: str, logdir: str) -> str:
    """Trains one case with `GradientHealthCallback` into `<logdir>/<name>`; returns its run name."""
    import keras

    from tb_gradhealth import GradientHealthCallback

    case = CASES[name]
    keras.utils.set_random_seed(SEED)
    x, y = case.data(case.steps * BATCH)
    model = case.build()
    model.compile(optimizer=case.optimizer(), loss=case.loss)
    callback = GradientHealthCallback("%s/%s" % (logdir, name), update_freq=1)
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=True, verbose=0, callbacks=[callback])
    return "%s/train" % name


@pytest.fixture(scope="module")
def calibration_logdir(tmp_path_factory) -> str:
    logdir = str(tmp_path_factory.mktemp("calibration"))
    for name in CASES:
        train_case(name, logdir)
    return logdir


@pytest.fixture(scope="module")
def calibration(calibration_logdir):
    """{case: (series, diagnosis)} for every case, read back through the reader."""
    logdir = calibration_logdir
    runs = {name: "%s/train" % name for name in CASES}
    provider, ctx, experiment_id = reader.provider_for_logdir(logdir)
    listed = {info.run for info in reader.list_runs(provider, ctx, experiment_id)}
    assert listed == set(runs.values())
    result = {}
    for name, run in runs.items():
        series = reader.read_run(provider, ctx, experiment_id, run)
        result[name] = (series, diagnose(series))
    return result


@pytest.mark.parametrize("name", sorted(CASES))
def test_case_gets_its_verdict_and_findings(calibration, name):
    _, diagnosis = calibration[name]
    assert diagnosis.verdict == CASES[name].verdict, [f.message for f in diagnosis.findings]
    assert tuple(f.kind for f in diagnosis.findings) == CASES[name].kinds
    assert diagnosis.notes == ()


@pytest.mark.parametrize("name", [n for n, case in CASES.items() if case.verdict == "healthy"])
def test_healthy_cases_get_no_finding(calibration, name):
    _, diagnosis = calibration[name]
    assert diagnosis.to_json() == {"verdict": "healthy", "findings": []}


def _quarter_median_change(values: np.ndarray) -> float:
    """Median of the model's gradient norm over the last quarter of steps / the first quarter."""
    norms = np.sqrt(np.square(values).sum(axis=1))
    quarter = len(norms) // 4
    return float(np.median(norms[-quarter:]) / np.median(norms[:quarter]))


def test_converging_case_really_shrinks_its_gradients(calibration):
    """The healthy converging runs are what the rule must not confuse with vanishing."""
    for name in ("healthy_relu_adam", "healthy_converging_momentum"):
        series, _ = calibration[name]
        assert _quarter_median_change(series[metadata.GRAD_NORM].values) < 0.2, name
    series, _ = calibration["healthy_converging_momentum"]
    # Its updates are small too; only the shrinking norms tell it apart.
    assert np.median(series[metadata.UPDATE_RATIO].values) < 10 * vanishing.UPDATE_RATIO_TINY


def test_deep_sigmoid_vanishes_in_its_first_layers(calibration):
    series, diagnosis = calibration["vanishing_deep_sigmoid"]
    (finding,) = diagnosis.findings
    layers = series[metadata.GRAD_NORM].layers
    # Independent numpy: both size-fair measures of each layer over the
    # output layer's, median over steps, at or below the threshold.
    relative = series[metadata.GRAD_NORM].values / series[metadata.WEIGHT_NORM].values
    ratios = np.median(relative / relative[:, -1:], axis=0)
    max_abs = series[metadata.GRAD_MAX_ABS].values
    max_abs_ratios = np.median(max_abs / max_abs[:, -1:], axis=0)
    expected = tuple(
        name
        for name, ratio, max_abs_ratio in zip(layers, ratios, max_abs_ratios)
        if max(ratio, max_abs_ratio) <= vanishing.DEPTH_RATIO
    )
    assert finding.layers == expected
    # The first layers, from the input on, and not the last hidden ones.
    assert finding.layers == layers[: len(finding.layers)]
    assert 5 <= len(finding.layers) <= len(layers) - 3
    assert finding.first_step == 0
    np.testing.assert_allclose(finding.evidence["ratio_to_output"], ratios[: len(expected)], rtol=1e-6)


def test_learning_rate_too_low_is_flagged_on_every_layer(calibration):
    series, diagnosis = calibration["vanishing_learning_rate_too_low"]
    (finding,) = diagnosis.findings
    assert finding.layers == series[metadata.GRAD_NORM].layers
    assert "ratio_to_output" not in finding.evidence
    assert max(finding.evidence["update_ratio"]) <= vanishing.UPDATE_RATIO_TINY


def _first_nonfinite(series) -> tuple[int, tuple[str, ...]]:
    counts = series[metadata.NONFINITE]
    row = int(np.argmax((counts.values > 0).any(axis=1)))
    return int(counts.steps[row]), tuple(name for name, count in zip(counts.layers, counts.values[row]) if count > 0)


@pytest.mark.parametrize("name", ["exploding_learning_rate_too_high", "nonfinite_notebook_relu_10x"])
def test_explosion_comes_before_the_first_nonfinite_step(calibration, name):
    series, diagnosis = calibration[name]
    nonfinite, exploding = diagnosis.findings
    assert (nonfinite.first_step, nonfinite.layers) == _first_nonfinite(series)
    assert nonfinite.severity == "critical"
    assert exploding.first_step < nonfinite.first_step
    norms = np.sqrt(np.square(series[metadata.GRAD_NORM_MAX].values).sum(axis=1))
    steps = list(series[metadata.GRAD_NORM_MAX].steps)
    before = norms[: steps.index(exploding.first_step)]
    assert norms[steps.index(exploding.first_step)] >= 100 * np.min(norms[:3])
    assert (before < 100 * np.min(norms[:3])).all()


def test_dead_layer_and_the_layers_behind_it(calibration):
    series, diagnosis = calibration["dead_relu_layer"]
    (finding,) = diagnosis.findings
    layers = series[metadata.GRAD_NORM].layers
    assert finding.layers == layers[: 2 + 1]
    assert (series[metadata.GRAD_NORM_MAX].values[:, :3] == 0).all()
    assert (series[metadata.GRAD_NORM_MAX].values[:, 3:] > 0).all()
    assert finding.first_step == 0
    assert finding.evidence["zero_fraction"] == [1.0, 1.0, 1.0]
    assert "No gradient passes %s" % layers[2] in finding.message


def test_report_agrees_with_the_health_route_on_trained_runs(calibration_logdir, capsys):
    """`tb-gradhealth report --json` and its exit status against /health of TensorBoard's own app."""
    from tb_server import PLUGIN_ROUTE, strict_json, wsgi_client

    from tb_gradhealth import cli

    response = wsgi_client(calibration_logdir).get(PLUGIN_ROUTE + "/health")
    assert response.status_code == 200
    served = strict_json(response.get_data())
    status = cli.main(["report", calibration_logdir, "--json"])
    assert strict_json(capsys.readouterr().out) == served
    assert status == cli.EXIT_FINDINGS
    verdicts = {run["run"].split("/")[0]: run["verdict"] for run in served["runs"]}
    assert verdicts == {name: case.verdict for name, case in CASES.items()}
    for name, case in CASES.items():
        status = cli.main(["report", calibration_logdir, "--run", "%s/train" % name])
        capsys.readouterr()
        assert status == (cli.EXIT_HEALTHY if case.verdict == "healthy" else cli.EXIT_FINDINGS)
