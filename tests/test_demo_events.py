"""Event-file reading for the demo tests, independent of the plugin's reader, and its own tests."""

from __future__ import annotations

import os
import pathlib

import numpy as np
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.util import tensor_util

from tb_gradhealth import metadata
from tb_gradhealth.summary import GradientHealthFileWriter

LAYERS = ("hidden", "output")


def _events(directory: pathlib.Path):
    for path in sorted(directory.iterdir()):
        if path.name.startswith("events.out.tfevents."):
            yield from EventFileLoader(str(path)).Load()


def read_gradient_health(run_dir: str | os.PathLike) -> dict[str, tuple[tuple[str, ...], np.ndarray, np.ndarray]]:
    """Returns {stat: (layers, steps, values [n_steps, n_layers])} of `<run_dir>/train`, in step order."""
    layers: dict[str, tuple[str, ...]] = {}
    rows: dict[str, list[tuple[int, np.ndarray]]] = {}
    for event in _events(pathlib.Path(run_dir) / "train"):
        for value in event.summary.value:
            stat = metadata.stat_for_tag(value.tag)
            if stat is None:
                continue
            if value.HasField("metadata"):
                layers.setdefault(stat, metadata.parse_plugin_metadata(value.metadata.plugin_data.content).layers)
            rows.setdefault(stat, []).append((event.step, tensor_util.make_ndarray(value.tensor)))
    result = {}
    for stat, stat_rows in rows.items():
        stat_rows.sort(key=lambda row: row[0])
        result[stat] = (
            layers[stat],
            np.array([step for step, _ in stat_rows]),
            np.stack([vector for _, vector in stat_rows]),
        )
    return result


def read_other_tags(directory: str | os.PathLike) -> dict[str, object]:
    """Returns {tag: first value} of the non-Gradient-Health tags in `directory`; text is decoded."""
    found: dict[str, object] = {}
    for event in _events(pathlib.Path(directory)):
        for value in event.summary.value:
            if metadata.stat_for_tag(value.tag) is not None or value.tag in found:
                continue
            array = tensor_util.make_ndarray(value.tensor)
            found[value.tag] = array.item().decode("utf-8") if array.dtype == object else array
    return found


def test_reads_back_what_the_summary_api_wrote(tmp_path):
    steps = [0, 1, 2]
    values = np.array([[1.0, 2.0], [np.nan, 4.0], [5.0, np.inf]], dtype=np.float32)
    # Written out of order and across two files, as a flushing writer may.
    with GradientHealthFileWriter(str(tmp_path / "train")) as writer:
        for step in (2, 0):
            writer.write(step, {"grad_norm": values[step], "nonfinite": np.zeros(2)}, LAYERS)
    with GradientHealthFileWriter(str(tmp_path / "train")) as writer:
        writer.write(1, {"grad_norm": values[1], "nonfinite": np.zeros(2)}, LAYERS)
    stats = read_gradient_health(tmp_path)
    assert set(stats) == {"grad_norm", "nonfinite"}
    read_layers, read_steps, read_values = stats["grad_norm"]
    assert read_layers == LAYERS and list(read_steps) == steps
    np.testing.assert_array_equal(read_values, values)


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
    tags = read_other_tags(directory)
    assert set(tags) == {"about", "epoch_loss"}
    assert tags["about"] == "héllo" and float(tags["epoch_loss"]) == 0.5
