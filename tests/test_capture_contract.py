"""The callback's event files against the data contract: tags, metadata on the first value only, float32 [n_layers] tensors."""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import pytest
from support import events, sgd
from tensorboard.backend.event_processing import plugin_event_accumulator, plugin_event_multiplexer
from tensorboard.compat.proto import summary_pb2, types_pb2

from tb_gradhealth import GradientHealthCallback, metadata

N_STEPS = 6


@pytest.fixture(scope="module")
def callback_run(tmp_path_factory):
    """A log_dir written by the callback: 6 steps of the support MLP, every step logged."""
    logdir = str(tmp_path_factory.mktemp("callback"))
    model = sgd.make_mlp()
    model.compile(optimizer=keras.optimizers.SGD(sgd.LEARNING_RATE), loss="mse")
    x, y = sgd.make_data(N_STEPS * sgd.BATCH)
    model.fit(
        x,
        y,
        batch_size=sgd.BATCH,
        epochs=1,
        shuffle=False,
        verbose=0,
        callbacks=[GradientHealthCallback(logdir, update_freq=1)],
    )
    return logdir


STATS = metadata.BUILTIN_STATS + (metadata.LOSS,)


def test_one_tag_per_builtin_statistic_and_the_loss(callback_run):
    by_tag = events.values_by_tag(os.path.join(callback_run, "train"))
    assert sorted(by_tag) == sorted(metadata.tag_for_stat(stat) for stat in STATS)


def test_metadata_on_the_first_value_of_each_tag_only(callback_run):
    by_tag = events.values_by_tag(os.path.join(callback_run, "train"))
    for tag, values in by_tag.items():
        first = values[0][1].metadata
        assert first.plugin_data.plugin_name == "gradient_health"
        assert first.data_class == summary_pb2.DATA_CLASS_TENSOR
        content = json.loads(first.plugin_data.content.decode("utf-8"))
        stat = metadata.stat_for_tag(tag)
        if stat == metadata.LOSS:
            assert content == {"version": 1, "stat": "loss", "layers": ["loss"], "scope": "run"}
        else:
            assert content == {
                "version": 1,
                "stat": stat,
                "layers": list(sgd.EXPECTED_LAYERS),
                "kinds": ["dense", "dense", "dense"],
                # Dense(8) on 6 inputs, Dense(5) on 8, Dense(3) on 5: kernel and bias.
                "params": [6 * 8 + 8, 8 * 5 + 5, 5 * 3 + 3],
            }
        assert all(not value.metadata.plugin_data.plugin_name for _, value in values[1:])


def test_each_step_is_one_float32_vector_per_statistic(callback_run):
    by_tag = events.values_by_tag(os.path.join(callback_run, "train"))
    for tag, values in by_tag.items():
        assert [step for step, _ in values] == list(range(N_STEPS))
        width = 1 if tag == metadata.tag_for_stat(metadata.LOSS) else len(sgd.EXPECTED_LAYERS)
        for _, value in values:
            assert value.tensor.dtype == types_pb2.DT_FLOAT
            assert [d.size for d in value.tensor.tensor_shape.dim] == [width]


def test_python_multiplexer_lists_and_reads_the_plugin_data(callback_run):
    mux = plugin_event_multiplexer.EventMultiplexer(size_guidance={plugin_event_accumulator.TENSORS: 0})
    mux.AddRunsFromDirectory(callback_run)
    mux.Reload()
    content = mux.PluginRunToTagToContent("gradient_health")
    assert set(content) == {"train"}
    assert set(content["train"]) == {metadata.tag_for_stat(stat) for stat in STATS}
    for tag, raw in content["train"].items():
        parsed = metadata.parse_plugin_metadata(raw)
        layers = ("loss",) if parsed.stat == metadata.LOSS else sgd.EXPECTED_LAYERS
        assert parsed.layers == layers and parsed.stat == metadata.stat_for_tag(tag)
        assert mux.SummaryMetadata("train", tag).data_class == summary_pb2.DATA_CLASS_TENSOR
    tensors = mux.Tensors("train", metadata.tag_for_stat(metadata.GRAD_NORM))
    assert [e.step for e in tensors] == list(range(N_STEPS))
    assert all(np.isfinite(events.read_run(os.path.join(callback_run, "train")).values[metadata.GRAD_NORM]).ravel())


@pytest.mark.slow
def test_the_plugins_reader_reads_what_the_multiplexer_reads(callback_run):
    from tb_gradhealth import cli, reader

    run = events.read_run(os.path.join(callback_run, "train"))
    provider, ctx, experiment_id = cli.provider_for_logdir(callback_run)
    (run_tags,) = reader.list_run_tags(provider, ctx, experiment_id).values()
    run_info = reader.run_info(run_tags)
    assert tuple(run_info["stats"]) == metadata.BUILTIN_STATS and run_info["scalars"] == [metadata.LOSS]
    assert tuple(run_info["layers"]) == sgd.EXPECTED_LAYERS
    assert run_info["run"] == "train" and run_info["problems"] == [] and run_info["max_step"] == N_STEPS - 1
    series = reader.read_run(provider, ctx, experiment_id, "train")
    for stat in metadata.BUILTIN_STATS:
        assert series[stat].layers == sgd.EXPECTED_LAYERS
        np.testing.assert_array_equal(series[stat].steps, run.steps[stat])
        np.testing.assert_array_equal(series[stat].values, run.values[stat])
