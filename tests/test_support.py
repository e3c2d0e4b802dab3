"""The test support package's own tests: its event reader reads back what the numpy writer wrote."""

from __future__ import annotations

import numpy as np
from support import events

from tb_gradhealth.summary import GradientHealthFileWriter

LAYERS = ("hidden", "output")


def test_reads_back_what_the_summary_api_wrote(tmp_path):
    steps = [0, 1, 2]
    values = np.array([[1.0, 2.0], [np.nan, 4.0], [5.0, np.inf]], dtype=np.float32)
    # Written out of order and across two files, as a flushing writer may;
    # the loss is left out of the per-layer statistics.
    with GradientHealthFileWriter(str(tmp_path / "train")) as writer:
        for step in (2, 0):
            writer.write(step, {"grad_norm": values[step], "nonfinite": np.zeros(2)}, LAYERS, loss=0.5)
    with GradientHealthFileWriter(str(tmp_path / "train")) as writer:
        writer.write(1, {"grad_norm": values[1], "nonfinite": np.zeros(2)}, LAYERS, loss=0.25)
    stats = events.read_gradient_health(tmp_path)
    assert set(stats) == {"grad_norm", "nonfinite"}
    read_layers, read_steps, read_values = stats["grad_norm"]
    assert read_layers == LAYERS and list(read_steps) == steps
    np.testing.assert_array_equal(read_values, values)
    content, loss_steps, loss_values = events.read_tags(tmp_path / "train")["gradient_health/loss"]
    assert content["scope"] == "run" and sorted(zip(loss_steps, loss_values[:, 0])) == [(0, 0.5), (1, 0.25), (2, 0.5)]


def test_other_tags_skip_gradient_health_and_decode_text(tmp_path):
    import tensorflow as tf

    directory = tmp_path / "train"
    with GradientHealthFileWriter(str(directory)) as writer:
        writer.write(0, {"grad_norm": [1.0, 2.0]}, LAYERS)
    summary_writer = tf.summary.create_file_writer(str(directory))
    with summary_writer.as_default():
        tf.summary.text("about", "héllo", step=0)
        tf.summary.scalar("epoch_loss", 0.5, step=0)
    summary_writer.close()
    tags = events.read_other_tags(directory)
    assert set(tags) == {"about", "epoch_loss"}
    assert tags["about"] == "héllo" and float(tags["epoch_loss"]) == 0.5
