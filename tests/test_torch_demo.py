"""The demo in PyTorch: the same models as the Keras runs, trained next to them, recorded under the same rows."""

from __future__ import annotations

import math
import pathlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from conftest import DEMO_EPOCHS
from support.events import read_gradient_health, read_other_tags, read_tags

from demo import data, models, models_torch, train, train_torch
from tb_gradhealth import cli, metadata
from tb_gradhealth.torch import GradientHealthMonitor

# Verdicts that name a gradient blow-up; which one a diverging run gets
# first depends on its random initial weights.
_BLOW_UP = {"exploding", "nonfinite"}


def _keras_layers(model) -> list[tuple]:
    return [(layer.name, layer.units, layer.activation.__name__) for layer in model.layers if layer.trainable_weights]


def _torch_layers(model) -> list[tuple]:
    return [
        (name, module.out_features, module.activation_name or "softmax")
        for name, module in model.named_children()
        if isinstance(module, models_torch.Dense)
    ]


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_each_torch_model_has_the_keras_model_s_layers_names_and_initialisation(name):
    keras_model = models.SPECS[name].build()
    torch_model = models_torch.SPECS[name].build()
    assert _torch_layers(torch_model) == _keras_layers(keras_model)
    assert models_torch.SPECS[name].scale == models.SPECS[name].scale
    for layer in keras_model.layers:
        if not layer.trainable_weights:
            continue
        kernel = layer.kernel.numpy()
        module = getattr(torch_model, layer.name)
        weight = module.weight.detach().numpy().T
        assert weight.shape == kernel.shape
        # Same distribution: U(-limit, limit) with Keras' limit for its initializer, zero bias.
        fan_in, fan_out = kernel.shape
        he = type(layer.kernel_initializer).__name__ == "HeUniform"
        limit = math.sqrt(6 / fan_in) if he else math.sqrt(6 / (fan_in + fan_out))
        for values in (kernel, weight):
            assert 0.8 * limit < np.abs(values).max() <= limit
        assert not module.bias.detach().numpy().any()


def test_run_all_refuses_an_unknown_framework(tmp_path):
    with pytest.raises(ValueError, match="frameworks must be some of keras, torch"):
        train.run_all(tmp_path, 1, dataset=data.SYNTHETIC, frameworks=["jax"])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_torch_runs_sit_next_to_their_keras_twins_with_the_same_rows_and_verdicts(demo_runs, tmp_path):
    messages = []
    results = train.run_all(
        tmp_path, DEMO_EPOCHS, dataset=data.SYNTHETIC, log=messages.append, frameworks=[train.TORCH]
    )
    assert [result.run for result in results] == ["%s-torch-synthetic" % name for name in models.MODEL_NAMES]
    keras_runs = {result.model: result for result in demo_runs.results}
    verdicts = {
        run["run"]: run["verdict"]
        for logdir in (demo_runs.logdir, tmp_path)
        for run in cli.health_report(str(logdir))[0]["runs"]
    }
    for result in results:
        twin = keras_runs[result.model]
        assert result.steps == twin.steps > 0
        steps = twin.steps
        ours, theirs = read_gradient_health(result.path), read_gradient_health(twin.path)
        assert set(metadata.BUILTIN_STATS) <= set(ours)
        for stat in metadata.BUILTIN_STATS:
            layers, steps_read, values = ours[stat]
            assert layers == theirs[stat][0]
            assert list(steps_read) == list(range(steps)) and values.shape == (steps, len(layers))
        loss_content, loss_steps, _ = read_tags(pathlib.Path(result.path) / "train")[
            metadata.tag_for_stat(metadata.LOSS)
        ]
        assert loss_content["scope"] == metadata.SCOPE_RUN and loss_steps == list(range(steps))
        tags = read_other_tags(tmp_path / result.run / "train")
        # SummaryWriter.add_text names its tag `<tag>/text_summary`.
        assert "demo/about/text_summary" in tags and "epoch_loss" in tags
        pair = [verdicts[result.run + "/train"], verdicts[twin.run + "/train"]]
        if result.model == models.EXPLODING:
            assert set(pair) <= _BLOW_UP, pair
        else:
            assert pair[0] == pair[1], (result.model, pair)


def _same_start(steps: int):
    """The exploding model in Keras and in PyTorch with the same initial weights, and its first batches (synthetic data)."""
    import keras

    keras.utils.set_random_seed(0)
    keras_model = models.exploding()
    keras_model.compile(loss="categorical_crossentropy", optimizer="sgd")
    torch_model = models_torch.exploding()
    with torch.no_grad():
        for layer in keras_model.layers:
            if layer.trainable_weights:
                getattr(torch_model, layer.name).weight.copy_(torch.from_numpy(layer.kernel.numpy().T))
                getattr(torch_model, layer.name).bias.copy_(torch.from_numpy(layer.bias.numpy()))
    dataset = data.synthetic()
    scale = models.SPECS[models.EXPLODING].scale
    images, labels = dataset.x_train[: steps * train.BATCH_SIZE], dataset.y_train[: steps * train.BATCH_SIZE]
    return keras_model, torch_model, train.prepare(images, labels, scale), train_torch.prepare(images, labels, scale)


@pytest.mark.slow
def test_from_the_same_weights_and_batches_both_frameworks_record_the_same_explosion(tmp_path):
    from tb_gradhealth import GradientHealthCallback

    steps = 12
    keras_model, torch_model, (x, y), (x_torch, y_torch) = _same_start(steps)
    keras_model.fit(
        x,
        y,
        batch_size=train.BATCH_SIZE,
        shuffle=False,
        verbose=0,
        callbacks=[GradientHealthCallback(tmp_path / "keras", update_freq=1)],
    )
    optimizer = torch.optim.SGD(torch_model.parameters(), lr=train_torch.LEARNING_RATE)
    with GradientHealthMonitor(torch_model, optimizer, tmp_path / "torch" / "train") as monitor:
        for start in range(0, len(x_torch), train.BATCH_SIZE):
            optimizer.zero_grad()
            loss = train_torch._loss(
                torch_model(x_torch[start : start + train.BATCH_SIZE]), y_torch[start : start + train.BATCH_SIZE]
            )
            monitor.record_loss(loss)
            loss.backward()
            optimizer.step()
    keras_stats, torch_stats = read_gradient_health(tmp_path / "keras"), read_gradient_health(tmp_path / "torch")
    for stat in metadata.BUILTIN_STATS:
        assert torch_stats[stat][0] == keras_stats[stat][0]
        assert list(torch_stats[stat][1]) == list(keras_stats[stat][1]) == list(range(steps))
    keras_norm, torch_norm = keras_stats[metadata.GRAD_NORM][2], torch_stats[metadata.GRAD_NORM][2]
    finite = np.isfinite(keras_norm).all(axis=1)
    assert not finite.all(), "the run was meant to blow up within %d steps" % steps
    # Until the blow-up the two frameworks agree to float32 rounding, amplified a little each step.
    np.testing.assert_allclose(torch_norm[finite], keras_norm[finite], rtol=1e-3)
    np.testing.assert_array_equal(np.isfinite(torch_norm), np.isfinite(keras_norm))
    verdicts = {run["run"]: run["verdict"] for run in cli.health_report(str(tmp_path))[0]["runs"]}
    assert verdicts["torch/train"] == verdicts["keras/train"] == "nonfinite"
