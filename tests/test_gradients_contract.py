"""The callback's event files read through the plugin's own reader (provider_for_logdir / read_run) give what TensorBoard's multiplexer gives.

The contract itself (tags, metadata, float32 [n_layers] tensors, the numpy
writer's equal contract, no TensorFlow needed) is tested in
test_capture_contract.py and test_summary_api.py.
"""

from __future__ import annotations

import gradients_support as support
import numpy as np
import pytest

from tb_gradhealth import GradientHealthCallback, metadata, reader

CALLBACK_STEPS = 2


@pytest.fixture(scope="module")
def callback_run(tmp_path_factory):
    """A two-step fit recorded by the callback: its log_dir."""
    logdir = tmp_path_factory.mktemp("callback")
    x, y = support.make_data(CALLBACK_STEPS * support.BATCH_SIZE)
    model = support.compile_sgd(support.build_mlp())
    model.fit(
        x,
        y,
        batch_size=support.BATCH_SIZE,
        epochs=1,
        shuffle=False,
        verbose=0,
        callbacks=[GradientHealthCallback(str(logdir))],
    )
    return logdir


@pytest.mark.slow
def test_plugin_reader_reads_what_the_multiplexer_reads(callback_run):
    layers, stats = support.read_stats(callback_run)
    assert layers == support.LAYERS and set(stats) == set(metadata.BUILTIN_STATS)
    provider, ctx, experiment_id = reader.provider_for_logdir(str(callback_run))
    (run_info,) = reader.list_runs(provider, ctx, experiment_id)
    # Only the per-layer statistics are compared here: where a reader puts
    # the run-level loss is its own business.
    layer_stats = tuple(stat for stat in run_info.stats if stat != metadata.LOSS)
    assert run_info.run == support.TRAIN_RUN and layer_stats == metadata.BUILTIN_STATS
    assert tuple(name for name in run_info.layers if name != metadata.LOSS) == support.LAYERS
    assert run_info.problems == ()
    assert run_info.max_step == CALLBACK_STEPS - 1
    series = reader.read_run(provider, ctx, experiment_id, support.TRAIN_RUN)
    assert set(series) - {metadata.LOSS} == set(metadata.BUILTIN_STATS)
    for stat, (steps, values) in stats.items():
        assert series[stat].layers == support.LAYERS
        np.testing.assert_array_equal(series[stat].steps, np.arange(CALLBACK_STEPS))
        np.testing.assert_array_equal(series[stat].steps, steps)
        np.testing.assert_array_equal(series[stat].values, values)
