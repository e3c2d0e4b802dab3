"""The numpy-only summary writer: the data contract, the same contract as the Keras callback's files, and no TensorFlow needed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_file_loader
from tensorboard.compat.proto import summary_pb2, types_pb2

from tb_gradhealth import layer_sets, metadata, summary
from tb_gradhealth.summary import GradientHealthFileWriter, write_layer_stats

LAYERS = ("conv1", "block/fc", "head")
STEPS = (0, 5, 10)
WALL_TIME = 1_700_000_000.0


def _values(run_dir):
    """[(step, wall_time, Summary.Value)] of every event file in `run_dir`, in file order."""
    out = []
    for name in sorted(os.listdir(run_dir)):
        if "tfevents" not in name:
            continue
        for event in event_file_loader.EventFileLoader(os.path.join(run_dir, name)).Load():
            out.extend((event.step, event.wall_time, value) for value in event.summary.value)
    return out


def _write_example(logdir):
    rng = np.random.default_rng(0)
    table = {step: {stat: rng.random(len(LAYERS)) for stat in metadata.BUILTIN_STATS} for step in STEPS}
    with GradientHealthFileWriter(logdir) as writer:
        for step in STEPS:
            writer.write(step, table[step], LAYERS, wall_time=WALL_TIME + step)
    return table


def test_round_trip_values_steps_and_wall_times(tmp_path):
    table = _write_example(str(tmp_path))
    values = _values(str(tmp_path))
    assert len(values) == len(STEPS) * len(metadata.BUILTIN_STATS)
    for step, wall_time, value in values:
        stat = metadata.stat_for_tag(value.tag)
        assert wall_time == WALL_TIME + step
        assert value.tensor.dtype == types_pb2.DT_FLOAT
        assert [d.size for d in value.tensor.tensor_shape.dim] == [len(LAYERS)]
        got = np.frombuffer(value.tensor.tensor_content, "<f4")
        np.testing.assert_array_equal(got, table[step][stat].astype(np.float32))


def test_metadata_is_complete_and_on_the_first_value_of_each_tag_only(tmp_path):
    _write_example(str(tmp_path))
    seen = set()
    for _, _, value in _values(str(tmp_path)):
        if value.tag in seen:
            assert not value.HasField("metadata")
            continue
        seen.add(value.tag)
        assert value.metadata.plugin_data.plugin_name == "gradient_health"
        assert value.metadata.data_class == summary_pb2.DATA_CLASS_TENSOR
        content = json.loads(value.metadata.plugin_data.content.decode("utf-8"))
        assert content == {"version": 1, "stat": metadata.stat_for_tag(value.tag), "layers": list(LAYERS)}
    assert seen == {metadata.tag_for_stat(stat) for stat in metadata.BUILTIN_STATS}


def test_own_statistics_and_non_finite_values_are_kept(tmp_path):
    values = [np.nan, np.inf, -1.5]
    write_layer_stats(str(tmp_path), 3, {"my_stat": values}, LAYERS)
    ((step, _, value),) = _values(str(tmp_path))
    assert step == 3 and value.tag == "gradient_health/my_stat"
    np.testing.assert_array_equal(np.frombuffer(value.tensor.tensor_content, "<f4"), np.float32(values))


def test_rejects_bad_input(tmp_path):
    with GradientHealthFileWriter(str(tmp_path)) as writer:
        with pytest.raises(ValueError):
            writer.write(0, {"grad_norm": [1.0, 2.0]}, LAYERS)  # one value short
        with pytest.raises(ValueError):
            writer.write(0, {"Grad-Norm": [1.0, 2.0, 3.0]}, LAYERS)
        with pytest.raises(ValueError, match="given twice"):
            writer.write(0, {"grad_norm": [1.0, 2.0, 3.0]}, ("a", "b", "a"))
        with pytest.raises(ValueError, match="kinds"):
            writer.write(0, {"grad_norm": [1.0, 2.0, 3.0]}, LAYERS, kinds=["dense", "dense", "nope"])


def test_a_new_layer_set_goes_under_tags_of_its_own(tmp_path):
    other = ("a", "b")
    with GradientHealthFileWriter(str(tmp_path)) as writer:
        writer.write(0, {"grad_norm": [1.0, 2.0, 3.0]}, LAYERS, loss=0.5)
        writer.write(1, {"grad_norm": [4.0, 5.0]}, other, loss=0.25, kinds=["conv", "dense"], params=[10, 3])
        writer.write(2, {"grad_norm": [6.0, 7.0, 8.0]}, LAYERS)
    tags = [(step, value.tag, value.metadata.plugin_data.content) for step, _, value in _values(str(tmp_path))]
    other_tag = "gradient_health/grad_norm/" + metadata.layer_set_id(other)
    assert [(step, tag) for step, tag, _ in tags] == [
        (0, "gradient_health/grad_norm"),
        (0, "gradient_health/loss"),
        (1, other_tag),
        (1, "gradient_health/loss"),
        (2, "gradient_health/grad_norm"),
    ]
    contents = [json.loads(content) if content else None for _, _, content in tags]
    assert contents[1] == {"version": 1, "stat": "loss", "layers": ["loss"], "scope": "run"}
    assert contents[2] == {
        "version": 1,
        "stat": "grad_norm",
        "layers": list(other),
        "kinds": ["conv", "dense"],
        "params": [10, 3],
        "layer_set": metadata.layer_set_id(other),
    }
    # Metadata once per tag and file.
    assert contents[3] is None and contents[4] is None


def test_a_second_writer_keeps_the_plain_tags_of_the_directory(tmp_path):
    write_layer_stats(str(tmp_path), 0, {"grad_norm": [1.0, 2.0, 3.0]}, LAYERS)
    # Another process would find the plain tags' layers in the files.
    layer_sets._plain_layers_by_dir.clear()
    write_layer_stats(str(tmp_path), 1, {"grad_norm": [1.0]}, ["head"])
    write_layer_stats(str(tmp_path), 2, {"grad_norm": [1.0, 2.0, 3.0]}, LAYERS)
    tags = [value.tag for _, _, value in _values(str(tmp_path))]
    assert sorted(tags) == sorted(
        ["gradient_health/grad_norm", "gradient_health/grad_norm/" + metadata.layer_set_id(["head"])]
        + ["gradient_health/grad_norm"]
    )


def test_files_use_the_gradient_health_suffix(tmp_path):
    _write_example(str(tmp_path))
    (name,) = os.listdir(str(tmp_path))
    assert name.endswith(summary.FILENAME_SUFFIX)


_BLOCKED_TF_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["tensorflow"] = None  # any `import tensorflow` now raises ImportError
    import numpy as np
    from tb_gradhealth import GradientHealthFileWriter
    from tensorboard.backend.event_processing import event_file_loader
    import os
    logdir = sys.argv[1]
    with GradientHealthFileWriter(logdir) as writer:
        writer.write(7, {"grad_norm": np.array([1.0, 2.0])}, ["a", "b"])
    (name,) = os.listdir(logdir)
    events = [e for e in event_file_loader.EventFileLoader(os.path.join(logdir, name)).Load() if e.summary.value]
    assert [e.step for e in events] == [7], events
    assert sys.modules["tensorflow"] is None
    print("ok")
    """
)


def test_works_without_tensorflow(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-c", _BLOCKED_TF_SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.strip() == "ok"


_INSTALLED_TF_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    from tb_gradhealth import GradientHealthFileWriter
    logdir = sys.argv[1]
    with GradientHealthFileWriter(logdir + "/numpy") as writer:
        writer.write(7, {"grad_norm": np.array([1.0, 2.0])}, ["a", "b"])
    print("tensorflow imported:", "tensorflow" in sys.modules)
    # TensorBoard's I/O is left as it was: TensorFlow's own summaries still work.
    import tensorflow as tf
    with tf.summary.create_file_writer(logdir + "/tf").as_default():
        tf.summary.scalar("loss", 1.0, step=0)
    print("tf.summary works")
    """
)


def test_writing_imports_no_tensorflow_even_when_installed(tmp_path):
    pytest.importorskip("tensorflow")
    completed = subprocess.run(
        [sys.executable, "-c", _INSTALLED_TF_SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.splitlines() == ["tensorflow imported: False", "tf.summary works"]
    assert len(os.listdir(tmp_path / "numpy")) == 1 and len(os.listdir(tmp_path / "tf")) == 1


@pytest.mark.slow
def test_same_contract_as_the_keras_callback(tmp_path):
    keras = pytest.importorskip("keras")
    from support import sgd as support

    from tb_gradhealth import GradientHealthCallback

    model = support.make_mlp()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    x, y = support.make_data(2 * support.BATCH)
    model.fit(
        x,
        y,
        batch_size=support.BATCH,
        epochs=1,
        shuffle=False,
        verbose=0,
        callbacks=[GradientHealthCallback(str(tmp_path / "keras"), update_freq=1)],
    )
    callback_values = _values(str(tmp_path / "keras" / "train"))
    numpy_dir = str(tmp_path / "numpy")
    with GradientHealthFileWriter(numpy_dir) as writer:
        for step in (0, 1):
            writer.write(
                step,
                {stat: np.ones(3) for stat in metadata.BUILTIN_STATS},
                support.EXPECTED_LAYERS,
                loss=1.0,
                kinds=["dense"] * 3,
                params=[6 * 8 + 8, 8 * 5 + 5, 5 * 3 + 3],  # support.make_mlp's Dense layers
            )
    numpy_values = _values(numpy_dir)

    def contract(values):
        first_metadata, shapes = {}, set()
        for step, _, value in values:
            first_metadata.setdefault(value.tag, value.metadata.SerializeToString())
            shapes.add((value.tag, step, value.tensor.dtype, tuple(d.size for d in value.tensor.tensor_shape.dim)))
        return first_metadata, shapes

    assert contract(callback_values) == contract(numpy_values)
