"""Live training: a process writes steps while a real `tensorboard` serves and a client polls like the tab does.

Run as a script, this module is that training process:
`python tests/test_reliability_live.py LOGDIR GO_FILE`.
"""

from __future__ import annotations

import pathlib
import sys
import time
import types

import live_support
import numpy as np
import pytest
from tb_server import PLUGIN_ROUTE, json_float

RUN = "live"
LAYERS = ("conv", "dense", "<b>out</b>")
STATS = ("grad_norm", "nonfinite", "my_stat")
NUM_STEPS = 60
STEP_INTERVAL_S = 0.15  # the writer's pace: ~9 s of writing, ~9 reloads
RELOAD_INTERVAL_S = 1  # tensorboard --reload_interval, seconds
# Both ingestion backends, each in its own tensorboard watching the same
# writer: the Rust data server (tensorboard's default; it loads in another
# process while the plugin answers) and the Python multiplexer (it loads in
# a thread of the serving process). One event file per run, so the Python
# loader's default of following the newest file loses nothing here.
LOADERS = {"rust": live_support.RUST, "python": live_support.PYTHON}
WALL_TIME_0 = 1_700_000_000.0  # seconds since the epoch
# The writer imports TensorFlow (through TensorBoard's writer) before it writes.
WRITER_TIMEOUT_S = 240
POLL_PAUSE_S = 0.05
# Distinct partial states the client must have seen, so the test proves it
# polled while the file grew (at ~9 reloads during writing, 3 is safe).
MIN_PARTIAL_STATES = 3


def values(step: int, stat_index: int) -> np.ndarray:
    """The float32 row written for `step`; NaN and both infinities appear in `grad_norm`."""
    row = np.array([(step + 1) * (layer + 1) * 10.0**-stat_index for layer in range(len(LAYERS))], dtype=np.float32)
    if stat_index == 0 and step % 17 == 5:
        row[step % len(LAYERS)] = (np.nan, np.inf, -np.inf)[step % 3]
    return row


def write_live_run(logdir: str, go_file: str) -> None:
    """Writes NUM_STEPS steps, flushing after each, once `go_file` exists.

    As a PyTorch or JAX user's process would: without TensorFlow (TensorBoard's
    `notf` marker makes its writer use the TensorFlow stub).
    """
    sys.modules["tensorboard.compat.notf"] = types.ModuleType("tensorboard.compat.notf")
    from tb_gradhealth.summary import GradientHealthFileWriter

    # A long flush interval: only our explicit flushes put data on disk.
    with GradientHealthFileWriter(str(pathlib.Path(logdir) / RUN), flush_secs=3600) as writer:
        print("ready", flush=True)
        while not pathlib.Path(go_file).exists():
            time.sleep(0.05)
        for step in range(NUM_STEPS):
            stats = {stat: values(step, index) for index, stat in enumerate(STATS)}
            writer.write(step, stats, LAYERS, wall_time=WALL_TIME_0 + step)
            writer.flush()
            time.sleep(STEP_INTERVAL_S)
    print("tensorflow %simported" % ("" if "tensorflow" in sys.modules else "not "), flush=True)


def _expected_series(stat: str, num_steps: int) -> dict:
    from tb_gradhealth import metadata, plugin

    index = STATS.index(stat)
    problems = []
    negative = [(step, layer) for step in range(num_steps) for layer, v in enumerate(values(step, index)) if v < 0]
    if stat in metadata.NON_NEGATIVE_STATS and negative:
        # The planted -Inf: a norm is never negative, which is reported.
        step, layer = negative[0]
        message = (
            "%d value(s) below 0, first at step %d in layer %r: %s is never negative, so the writer is wrong "
            "(the values are kept and shown)" % (len(negative), step, LAYERS[layer], stat)
        )
        problems.append({"tag": metadata.tag_for_stat(stat), "message": message})
    return {
        "run": RUN,
        "stat": stat,
        "scope": "layer",
        "layers": list(LAYERS),
        "kinds": None,
        "params": None,
        "steps": list(range(num_steps)),
        "wall_times": [WALL_TIME_0 + step for step in range(num_steps)],
        "values": [[json_float(float(v)) for v in values(step, index)] for step in range(num_steps)],
        "total_steps": num_steps,
        "max_points": plugin.DEFAULT_MAX_POINTS,
        "partial": False,
        "notices": [],
        "problems": problems,
    }


def _check_series(body: dict, stat: str) -> int:
    """Asserts that a /series body is internally consistent and a prefix of the written data; returns its steps."""
    steps, walls, rows = body["steps"], body["wall_times"], body["values"]
    assert len(steps) == len(walls) == len(rows) == body["total_steps"]
    assert all(len(row) == len(body["layers"]) for row in rows)
    assert all(a < b for a, b in zip(steps, steps[1:]))
    # Nothing is lost or invented on the way: exactly the first steps written.
    assert body == _expected_series(stat, len(steps))
    return len(steps)


def _check_runs(body: dict) -> dict | None:
    (run,) = body["runs"] or [None]
    if run is None:
        return None
    assert run["run"] == RUN and run["layers"] == list(LAYERS) and run["problems"] == []
    assert set(run["stats"]) <= set(STATS)
    return run


class _PollingClient:
    """The tab's requests against one server, remembering what it saw."""

    def __init__(self, server):
        self.server = server
        self.seen: dict[str, list[int]] = {stat: [0] for stat in STATS}
        self.max_steps = [-1]

    def poll(self) -> bool:
        """One round of the tab's requests; True once every stat is whole."""
        server = self.server
        run = _check_runs(server.get_json(PLUGIN_ROUTE + "/runs"))
        health = server.get_json(PLUGIN_ROUTE + "/health")
        if run is None:
            # /health answered later: it may already see the first steps.
            assert [entry["run"] for entry in health["runs"]] in ([], [RUN])
            return False
        assert run["max_step"] >= self.max_steps[-1]
        self.max_steps.append(run["max_step"])
        assert [entry["run"] for entry in health["runs"]] == [RUN]
        for stat in run["stats"]:
            count = _check_series(server.get_json("%s/series?run=%s&stat=%s" % (PLUGIN_ROUTE, RUN, stat)), stat)
            # Never goes back: a later response holds at least as much.
            assert count >= self.seen[stat][-1]
            self.seen[stat].append(count)
        return all(self.seen[stat][-1] == NUM_STEPS for stat in STATS)

    def partial_states(self) -> set[int]:
        return {count for counts in self.seen.values() for count in counts if 0 < count < NUM_STEPS}


@pytest.mark.slow
def test_polling_client_sees_consistent_growing_data_and_the_final_state(tmp_path):
    logdir = tmp_path / "logdir"
    logdir.mkdir()
    go_file = tmp_path / "go"
    flag_sets = live_support.with_reload_interval(LOADERS, RELOAD_INTERVAL_S)
    with live_support.writer_process(__file__, str(logdir), str(go_file)) as writer:
        with live_support.running_tensorboards(str(logdir), flag_sets) as servers:
            clients = live_support.start_and_poll(
                writer, go_file, servers, _PollingClient, WRITER_TIMEOUT_S, POLL_PAUSE_S
            )
            # The diagnosis polled during training is not stale at the end:
            # it equals one computed afresh from the finished files.
            live_support.assert_health_is_fresh(str(logdir), servers)
            for name, server in servers.items():
                assert _check_runs(server.get_json(PLUGIN_ROUTE + "/runs"))["max_step"] == NUM_STEPS - 1, name
    assert writer.returncode == 0
    assert writer.stdout.read().strip() == "tensorflow not imported"
    for name, client in clients.items():
        partial = client.partial_states()
        print("%s: polls: %d; partial step counts seen: %s" % (name, len(client.max_steps) - 1, sorted(partial)))
        assert len(partial) >= MIN_PARTIAL_STATES, (name, client.seen)


if __name__ == "__main__":
    write_live_run(*sys.argv[1:3])
