"""GradientHealthCallback under MirroredStrategy on two logical CPUs: the recorded gradient is the cross-replica sum."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import test_capture_support as support

from tb_gradhealth import metadata

# Logical devices must be configured before TensorFlow initialises, which
# the test process has long done: the training runs in a fresh interpreter.
_TRAIN_SCRIPT = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import test_capture_support as support
    from tb_gradhealth import GradientHealthCallback

    logdir, out = sys.argv[1], sys.argv[2]
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    x, y = support.make_data(48)
    recorder = support.weight_recorder()
    # fit inside the scope too: the callback's own variables must still be plain.
    with strategy.scope():
        model = support.make_mlp()
        model.compile(optimizer=keras.optimizers.SGD(support.LEARNING_RATE), loss="mse")
        model.fit(x, y, batch_size=support.BATCH, epochs=2, shuffle=False, verbose=0,
                  callbacks=[GradientHealthCallback(logdir), recorder])
    snapshots = recorder.snapshots
    np.savez(out, sizes=np.array(support.group_sizes(model)),
             **{"w%d_%d" % (i, j): w for i, ws in enumerate(snapshots) for j, w in enumerate(ws)},
             n_steps=len(snapshots), n_vars=len(snapshots[0]))
    """
)


@pytest.mark.slow
def test_mirrored_strategy_records_the_summed_gradient(tmp_path):
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    out = str(tmp_path / "weights.npz")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([tests_dir, os.environ.get("PYTHONPATH", "")]))
    completed = subprocess.run(
        [sys.executable, "-c", _TRAIN_SCRIPT, str(tmp_path), out],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    saved = np.load(out)
    snapshots = [[saved["w%d_%d" % (i, j)] for j in range(int(saved["n_vars"]))] for i in range(int(saved["n_steps"]))]
    run = support.read_run(os.path.join(str(tmp_path), "train"))
    assert run.layers == support.EXPECTED_LAYERS
    reference = support.reference_stats(snapshots, list(saved["sizes"]))
    support.assert_matches_reference(run, reference)
    np.testing.assert_array_equal(run.steps[metadata.GRAD_NORM], np.arange(12))
    # Each replica's loss is its share of the batch's; the loss recorded is
    # the whole batch's.
    x, y = support.make_data(48)
    expected_loss = support.mlp_losses(snapshots, np.concatenate([x, x]), np.concatenate([y, y]))
    np.testing.assert_allclose(run.values[metadata.LOSS][:, 0], expected_loss, rtol=support.REL_TOL)
