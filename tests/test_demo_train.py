"""Tests of the demo's training: the models, and `run_all` on synthetic data read back from its event files."""

from __future__ import annotations

import math
import pathlib

import numpy as np
import pytest
from conftest import DEMO_EPOCHS
from support.events import read_gradient_health, read_other_tags

from demo import data, models, train
from tb_gradhealth import metadata

EPOCHS = 1
# Keras' fit keeps 10% for validation and steps through the rest in batches of 32.
STEPS = math.ceil(data.SYNTHETIC_TRAIN * (1 - train.VALIDATION_SPLIT) / train.BATCH_SIZE)
# The exploding run must turn non-finite "within its first steps" (measured: step 9 on
# the synthetic data, step 7 on Fashion-MNIST).
EXPLODING_NONFINITE_BY_STEP = 20
# Per-parameter gradient RMS of the output layer over the first layer: ~5e6
# measured for the deep sigmoid MLP, 2 to 15 for the other runs.
VANISHED_RATIO = 1e3
NOT_VANISHED_RATIO = 100.0


def _parameter_counts(model) -> dict[str, int]:
    return {
        layer.name: int(sum(np.prod(w.shape) for w in layer.trainable_weights))
        for layer in model.layers
        if layer.trainable_weights
    }


@pytest.fixture(scope="module")
def demo_logdir(demo_runs):
    """The four default runs, one short epoch each on synthetic data (trained once per session)."""
    assert EPOCHS == DEMO_EPOCHS
    return demo_runs.logdir, demo_runs.results, demo_runs.messages


def test_models_match_the_notebook():
    def describe(model):
        return [
            (
                type(layer).__name__,
                getattr(layer, "units", None),
                getattr(getattr(layer, "activation", None), "__name__", None),
            )
            for layer in model.layers
        ]

    assert describe(models.baseline()) == [("Flatten", None, None), ("Dense", 128, "sigmoid"), ("Dense", 10, "softmax")]
    assert describe(models.vanishing()) == [("Flatten", None, None)] + [("Dense", 5, "tanh")] * 5 + [
        ("Dense", 10, "softmax")
    ]
    exploding = models.exploding()
    assert describe(exploding) == [("Flatten", None, None)] + [("Dense", 5, "relu")] * 5 + [("Dense", 10, "softmax")]
    assert {type(layer.kernel_initializer).__name__ for layer in exploding.layers[1:-1]} == {"HeUniform"}
    assert models.SPECS[models.EXPLODING].scale == 10.0 and models.SPECS[models.BASELINE].scale == 1.0
    assert models.baseline().input_shape == (None, 28, 28)


def test_run_names_mark_synthetic_data():
    assert train.run_name("baseline", data.MNIST) == "baseline"
    assert train.run_name("baseline", data.FASHION_MNIST) == "baseline"
    assert train.run_name("baseline", data.SYNTHETIC) == "baseline-synthetic"


def test_prepare_scales_inputs_and_one_hot_targets():
    x, y = train.prepare(np.array([[[0, 255]]], np.uint8), np.array([3], np.uint8), scale=10.0)
    np.testing.assert_array_equal(x, [[[0.0, 10.0]]])
    np.testing.assert_array_equal(y, [[0, 0, 0, 10, 0, 0, 0, 0, 0, 0]])


def test_previous_demo_runs_are_replaced_but_foreign_folders_kept(tmp_path):
    ours = tmp_path / "baseline"
    (ours / "train").mkdir(parents=True)
    (ours / "train" / "events.out.tfevents.1").write_bytes(b"old")
    messages = []
    train._clear_run_dir(ours, messages.append)
    assert not ours.exists() and messages == ["Replacing the previous run in %s" % ours]
    foreign = tmp_path / "exploding"
    (foreign / "train").mkdir(parents=True)
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"notes\.txt"):
        train._clear_run_dir(foreign, messages.append)
    assert (foreign / "notes.txt").exists()


def test_run_all_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown model"):
        train.run_all(tmp_path, 1, models=["resnet"], dataset=data.SYNTHETIC)
    with pytest.raises(ValueError, match="epochs"):
        train.run_all(tmp_path, 0, dataset=data.SYNTHETIC)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_run_all_writes_one_labelled_run_per_model(demo_logdir):
    logdir, results, messages = demo_logdir
    expected = [name + "-synthetic" for name in models.MODEL_NAMES]
    assert [r.run for r in results] == expected
    assert sorted(p.name for p in logdir.iterdir()) == sorted(expected)
    assert messages[0].startswith("Data: SYNTHETIC from generated")
    for result in results:
        assert (result.dataset, result.epochs, result.steps) == (data.SYNTHETIC, EPOCHS, STEPS)
        assert sorted(p.name for p in pathlib.Path(result.path).iterdir()) == ["train", "validation"]
    summary = train.format_summary(results, logdir, 12.0)
    assert "Wrote 4 run(s) to %s in 12 s" % logdir in summary
    assert "SYNTHETIC data" in summary
    assert "tensorboard --logdir %s --host 127.0.0.1 --port 6006" % logdir in summary
    assert "tb-gradhealth report %s" % logdir in summary
    assert "  vanishing_sigmoid-synthetic    1 epochs,     %d steps, final loss " % STEPS in summary


@pytest.mark.slow
def test_every_run_records_every_step_of_every_layer(demo_logdir):
    _, results, _ = demo_logdir
    for result in results:
        stats = read_gradient_health(result.path)
        assert set(stats) == set(metadata.BUILTIN_STATS), result.run
        expected_layers = tuple(_parameter_counts(models.SPECS[result.model].build()))
        for stat, (layers, steps, values) in stats.items():
            assert layers == expected_layers, (result.run, stat)
            assert list(steps) == list(range(STEPS)), (result.run, stat)
            assert values.shape == (STEPS, len(layers))


@pytest.mark.slow
def test_the_usual_tensorboard_tabs_are_populated_too(demo_logdir):
    _, results, _ = demo_logdir
    for result in results:
        train_tags = read_other_tags(pathlib.Path(result.path) / "train")
        assert "epoch_loss" in train_tags and "demo/about" in train_tags, result.run
        assert any(tag.endswith("kernel/histogram") for tag in train_tags), result.run
        assert "epoch_loss" in read_other_tags(pathlib.Path(result.path) / "validation")
        about = train_tags["demo/about"]
        assert "SYNTHETIC" in about and result.run in about


@pytest.mark.slow
def test_baseline_gradients_are_finite(demo_logdir):
    _, results, _ = demo_logdir
    result = next(r for r in results if r.model == models.BASELINE)
    stats = read_gradient_health(result.path)
    assert not np.any(stats["nonfinite"][2])
    grad_norm = stats["grad_norm"][2]
    assert np.all(np.isfinite(grad_norm)) and np.all(grad_norm > 0)
    assert np.all(np.isfinite(stats["update_ratio"][2])) and math.isfinite(result.history["loss"][-1])


@pytest.mark.slow
def test_exploding_run_turns_nonfinite_within_its_first_steps(demo_logdir):
    _, results, _ = demo_logdir
    result = next(r for r in results if r.model == models.EXPLODING)
    stats = read_gradient_health(result.path)
    _, steps, nonfinite = stats["nonfinite"]
    first_bad = int(np.argmax(nonfinite.sum(axis=1) > 0))
    assert nonfinite[first_bad].sum() > 0 and steps[first_bad] <= EXPLODING_NONFINITE_BY_STEP
    # Before that, the total gradient norm grows by orders of magnitude.
    total = np.sqrt(np.sum(stats["grad_norm"][2][:first_bad].astype(np.float64) ** 2, axis=1))
    assert np.nanmax(total) > 100 * total[0]
    assert math.isnan(result.history["loss"][-1])


@pytest.mark.slow
def test_only_the_deep_sigmoid_run_has_vanishing_gradients(demo_logdir):
    _, results, _ = demo_logdir
    ratios = {}
    for result in results:
        if result.model == models.EXPLODING:
            continue
        counts = np.array(list(_parameter_counts(models.SPECS[result.model].build()).values()), dtype=np.float64)
        grad_norm = read_gradient_health(result.path)["grad_norm"][2].astype(np.float64)
        rms = grad_norm / np.sqrt(counts)
        ratios[result.model] = float(np.median(rms[:, -1] / rms[:, 0]))
    assert ratios[models.VANISHING_SIGMOID] > VANISHED_RATIO, ratios
    # The notebook's tanh model does not vanish (README "The demo").
    assert ratios[models.VANISHING] < NOT_VANISHED_RATIO, ratios
    assert ratios[models.BASELINE] < NOT_VANISHED_RATIO, ratios


@pytest.mark.slow
def test_the_diagnosis_names_each_runs_condition(demo_logdir):
    from tb_gradhealth import cli

    logdir, _, _ = demo_logdir
    report, unreadable = cli.health_report(str(logdir))
    findings = {run["run"]: {f["kind"] for f in run["findings"]} for run in report["runs"]}
    assert not unreadable
    assert findings == {
        "baseline-synthetic/train": set(),
        "vanishing-synthetic/train": set(),  # the notebook's tanh model: healthy, measured
        "vanishing_sigmoid-synthetic/train": {"vanishing"},
        "exploding-synthetic/train": {"nonfinite", "exploding"},
    }


def test_main_reports_missing_data_and_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setattr(data, "KERAS_TMP_HOME", tmp_path / "tmp_keras")
    assert train.main(["--dataset", "mnist", "--no-download", "--logdir", str(tmp_path / "logs")]) == 2
    assert "error: MNIST is not in the Keras cache" in capsys.readouterr().err
    assert not (tmp_path / "logs").exists()
    with pytest.raises(SystemExit):
        train.main(["--models", "resnet"])
