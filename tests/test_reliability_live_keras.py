"""Live Keras training: `model.fit` with GradientHealthCallback and Keras's TensorBoard callback writes while a real `tensorboard` serves and a client polls.

Run as a script, this module is that training process:
`python tests/test_reliability_live_keras.py LOGDIR GO_FILE WEIGHTS_NPZ`.
"""

from __future__ import annotations

import pathlib
import sys
import time

import numpy as np
import pytest
from support import live as live_support
from support import sgd as support
from tb_server import PLUGIN_ROUTE

from tb_gradhealth import metadata, summary

RUN = "train"  # <log_dir>/train, shared by both callbacks
EPOCHS = 4
N_SAMPLES = 48  # 6 steps per epoch at batch support.BATCH
TOTAL_STEPS = EPOCHS * N_SAMPLES // support.BATCH
# A small buffer: the host writes every 4 steps and at each epoch end, so
# the file grows many times while the server polls.
BUFFER_STEPS = 4
# A pause after each batch spreads the ~1 ms steps of the tiny model over
# ~6 s, so several reloads happen during training.
STEP_PAUSE_S = 0.25
RELOAD_INTERVAL_S = 1  # tensorboard --reload_interval, seconds
# The trainer imports TensorFlow and traces the train step.
TRAINER_TIMEOUT_S = 240
POLL_PAUSE_S = 0.05
# Distinct partial step counts the client must have seen, so the test
# proves it polled while the files grew (~6 reloads during training).
MIN_PARTIAL_STATES = 2

# Each loader in its own tensorboard, all watching the same training: the
# Rust data server and the Python multiplexer as a user asks for it. Two
# writers share the run directory; the plugin's loader turns on
# --reload_multifile so the Python one polls both files (see
# test_reliability_live_multifile for what happens without it).
LOADERS = {"rust": live_support.RUST, "python": live_support.PYTHON}


def train_live(logdir: str, go_file: str, weights_path: str) -> None:
    """Trains `support.make_mlp` with both callbacks once `go_file` exists; saves the weight trajectory."""
    import keras

    from tb_gradhealth import GradientHealthCallback

    class Pace(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            time.sleep(STEP_PAUSE_S)

    model = support.make_mlp()
    model.compile(optimizer=keras.optimizers.SGD(support.LEARNING_RATE), loss="mse")
    x, y = support.make_data(N_SAMPLES)
    recorder = support.weight_recorder()
    # As users write it: Keras's callback first, ours next to it.
    callbacks = [
        keras.callbacks.TensorBoard(logdir),
        GradientHealthCallback(logdir, buffer_steps=BUFFER_STEPS, update_freq=1),
        recorder,
        Pace(),
    ]
    print("ready", flush=True)
    while not pathlib.Path(go_file).exists():
        time.sleep(0.05)
    model.fit(x, y, batch_size=support.BATCH, epochs=EPOCHS, shuffle=False, verbose=0, callbacks=callbacks)
    trajectory = {
        "v%d" % i: np.stack([snap[i] for snap in recorder.snapshots]) for i in range(len(recorder.snapshots[0]))
    }
    np.savez(weights_path, sizes=np.array(support.group_sizes(model)), **trajectory)


def read_event_files(run_dir: pathlib.Path) -> dict:
    """Reads our tags straight from the event files with TensorFlow's own reader: {stat: (steps, wall_times, values)}."""
    import tensorflow as tf
    from tensorboard.compat.proto import types_pb2

    found: dict[str, list] = {}
    paths = sorted(path for path in run_dir.iterdir() if path.name.endswith(summary.FILENAME_SUFFIX))
    assert len(paths) == 1, paths
    for event in tf.compat.v1.train.summary_iterator(str(paths[0])):
        for value in event.summary.value:
            stat = metadata.stat_for_tag(value.tag)
            if stat is None or stat == metadata.LOSS:
                continue
            tensor = value.tensor
            assert tensor.dtype == types_pb2.DT_FLOAT
            assert [dim.size for dim in tensor.tensor_shape.dim] == [len(support.EXPECTED_LAYERS)]
            row = np.frombuffer(tensor.tensor_content, dtype="<f4")
            found.setdefault(stat, []).append((event.step, event.wall_time, row))
    return {
        stat: (
            [step for step, _, _ in rows],
            [wall for _, wall, _ in rows],
            np.stack([row for _, _, row in rows]),
        )
        for stat, rows in found.items()
    }


def _check_series(body: dict, stat: str) -> int:
    """Asserts that a polled /series body is internally consistent; returns its number of steps."""
    steps, walls, rows = body["steps"], body["wall_times"], body["values"]
    assert body["run"] == RUN and body["stat"] == stat and body["problems"] == []
    assert body["layers"] == list(support.EXPECTED_LAYERS)
    assert len(steps) == len(walls) == len(rows) == body["total_steps"]
    assert all(len(row) == len(body["layers"]) for row in rows)
    # Every step is logged (update_freq=1) and written in order: a prefix.
    assert steps == list(range(len(steps)))
    return len(steps)


class _PollingClient:
    """The tab's requests against one server, keeping every /series body it got."""

    def __init__(self, server):
        self.server = server
        self.polled: dict[str, list[dict]] = {stat: [] for stat in metadata.BUILTIN_STATS}
        self.max_steps = [-1]

    def poll(self) -> bool:
        """One round of the tab's requests; True once every stat is whole."""
        server = self.server
        runs = server.get_json(PLUGIN_ROUTE + "/runs")["runs"]
        health = server.get_json(PLUGIN_ROUTE + "/health")
        if not runs:
            return False
        (run,) = runs
        assert run["run"] == RUN and run["layers"] == list(support.EXPECTED_LAYERS)
        assert run["problems"] == [] and set(run["stats"]) <= set(metadata.BUILTIN_STATS)
        assert run["max_step"] >= self.max_steps[-1]
        self.max_steps.append(run["max_step"])
        assert [entry["run"] for entry in health["runs"]] == [RUN]
        for stat in run["stats"]:
            body = server.get_json("%s/series?run=%s&stat=%s" % (PLUGIN_ROUTE, RUN, stat))
            count = _check_series(body, stat)
            # Never goes back: a later response holds at least as much.
            assert not self.polled[stat] or count >= len(self.polled[stat][-1]["steps"])
            self.polled[stat].append(body)
        return all(bodies and len(bodies[-1]["steps"]) == TOTAL_STEPS for bodies in self.polled.values())

    def partial_states(self) -> set[int]:
        return {len(body["steps"]) for bodies in self.polled.values() for body in bodies} - {0, TOTAL_STEPS}


@pytest.mark.slow
def test_fit_with_both_callbacks_is_served_consistently_while_it_trains(tmp_path):
    logdir = tmp_path / "logdir"
    logdir.mkdir()
    go_file = tmp_path / "go"
    weights_path = tmp_path / "weights.npz"
    flag_sets = live_support.with_reload_interval(LOADERS, RELOAD_INTERVAL_S)
    with live_support.writer_process(__file__, str(logdir), str(go_file), str(weights_path)) as trainer:
        with live_support.running_tensorboards(str(logdir), flag_sets) as servers:
            clients = live_support.start_and_poll(
                trainer, go_file, servers, _PollingClient, TRAINER_TIMEOUT_S, POLL_PAUSE_S
            )
            # The diagnosis polled during training is not stale at the end.
            live_support.assert_health_is_fresh(str(logdir), servers)
    assert trainer.returncode == 0

    written = read_event_files(logdir / RUN)
    assert set(written) == set(metadata.BUILTIN_STATS)
    for name, client in clients.items():
        for stat, bodies in client.polled.items():
            steps, walls, values = written[stat]
            # The final state equals what the callback wrote, read independently ...
            final = bodies[-1]
            assert final["steps"] == steps == list(range(TOTAL_STEPS)), (name, stat)
            assert final["wall_times"] == walls, (name, stat)
            np.testing.assert_array_equal(np.array(final["values"], np.float32), values, err_msg=name + stat)
            # ... and every polled response was a prefix of it.
            for body in bodies:
                n = len(body["steps"])
                assert body["wall_times"] == walls[:n], (name, stat)
                got = np.array(body["values"], np.float32).reshape(n, -1)
                np.testing.assert_array_equal(got, values[:n], err_msg=name + stat)

    # What the callback wrote is the gradient plain SGD applied, by numpy from the weights.
    with np.load(weights_path) as saved:
        sizes = saved["sizes"].tolist()
        trajectory = [saved["v%d" % i] for i in range(sum(sizes))]
    snapshots = [[variable[k] for variable in trajectory] for k in range(TOTAL_STEPS + 1)]
    reference = support.reference_stats(snapshots, sizes)
    for stat, expected in reference.items():
        np.testing.assert_allclose(written[stat][2], expected, rtol=support.REL_TOL, err_msg=stat)
    np.testing.assert_array_equal(written[metadata.GRAD_NORM_MAX][2], written[metadata.GRAD_NORM][2])
    np.testing.assert_array_equal(written[metadata.NONFINITE][2], 0)

    for name, client in clients.items():
        partial = client.partial_states()
        print("%s: polls: %d; partial step counts seen: %s" % (name, len(client.max_steps) - 1, sorted(partial)))
        assert len(partial) >= MIN_PARTIAL_STATES, (name, sorted(partial))


if __name__ == "__main__":
    train_live(*sys.argv[1:4])
