"""Two writers in one run directory while `tensorboard` serves: which loader loses the older file's new steps.

This is the situation of `GradientHealthCallback` next to
`keras.callbacks.TensorBoard` in `<log_dir>/train`: Keras opens a new event
file at every `fit` (in `set_model`), while our callback keeps its file open
across `fit` calls, so from the second `fit` on our file is the older one.

TensorBoard's Python loader (`--load_fast=false`) with
`--reload_multifile=false` (TensorBoard's own default; our loader turns it on
when the user sets nothing) reads a run directory through `DirectoryWatcher`
(tensorboard/backend/event_processing/directory_watcher.py): it reads one
file at a time, in name order, and once a file that sorts later exists it
reads the current file one last time and moves on for good, never reading an
earlier file again. Steps appended to the older file after that are not
served until `tensorboard` restarts. `--reload_multifile=true` (Python
`DirectoryLoader`) and the Rust data server poll every file.

The write order is fixed by the test, so the outcome is deterministic; one
tensorboard per loader watches the same writes.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from support import live as live_support
from tb_server import PLUGIN_ROUTE, strict_json, wsgi_client
from tensorboard import program
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.core import core_plugin
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from tb_gradhealth.summary import GradientHealthFileWriter

RUN = "train"
STAT = "grad_norm"
LAYERS = ("dense", "out")
FIRST_STEPS = range(0, 5)  # written before the other writer's file exists
LATER_STEPS = range(5, 10)  # appended to our (now older) file afterwards
OTHER_TAG = "epoch_loss"  # what the other writer (Keras's callback) logs
RELOAD_INTERVAL_S = 1  # tensorboard --reload_interval, seconds
VISIBLE_TIMEOUT_S = 60  # for data to show up, reloads on a busy 2-core machine
# The log line DirectoryWatcher._HasOOOWrite writes when an earlier file grew.
OUT_OF_ORDER_LOG = "updated even though the current file is"

# Each loader in its own tensorboard over the same logdir, and whether the
# steps appended to the older file reach the plugin.
# The last-file loader is asked for explicitly, so the test pins
# TensorBoard's behaviour whatever default our loader's fix_flags gives.
LOADERS = {
    "python_last_file": live_support.PYTHON_LAST_FILE,
    "python_multifile": live_support.PYTHON_MULTIFILE,
    "rust": live_support.RUST,
}
LATER_STEPS_SERVED = {"python_last_file": False, "python_multifile": True, "rust": True}


def _row(step: int) -> np.ndarray:
    return np.array([step + 0.5, -(step + 0.25)], dtype=np.float32)


def _scalar_event(step: int) -> event_pb2.Event:
    value = summary_pb2.Summary.Value(tag=OTHER_TAG, simple_value=1.0 / (step + 1))
    return event_pb2.Event(wall_time=time.time(), step=step, summary=summary_pb2.Summary(value=[value]))


def _wait_for_next_second() -> None:
    # Event file names start with the creation time in whole seconds: a file
    # created in a later second sorts after ours whatever else is in its name.
    start = int(time.time())
    while int(time.time()) == start:
        time.sleep(0.02)


def _series_steps(server) -> list[int]:
    body = server.get_json("%s/series?run=%s&stat=%s" % (PLUGIN_ROUTE, RUN, STAT))
    assert len(body["steps"]) == len(body["values"]) == len(body["wall_times"])
    assert body["layers"] == list(LAYERS)
    assert body["values"] == [_row(step).tolist() for step in body["steps"]]
    return body["steps"]


def _other_steps(server) -> list[int]:
    body = server.get_json("/data/plugin/scalars/scalars?run=%s&tag=%s" % (RUN, OTHER_TAG))
    return [step for _, step, _ in body]


def _wait_all(servers, read, expected, what: str) -> None:
    for name, server in servers.items():
        server.wait_until(lambda: read(server) == expected, VISIBLE_TIMEOUT_S, "%s: %s" % (name, what))


@pytest.mark.slow
def test_steps_appended_to_an_older_file_of_the_run_are_lost_by_the_python_loader_only(tmp_path):
    run_dir = tmp_path / RUN
    first, all_steps = list(FIRST_STEPS), list(FIRST_STEPS) + list(LATER_STEPS)
    ours = GradientHealthFileWriter(str(run_dir), flush_secs=3600)
    other = None
    try:
        for step in FIRST_STEPS:
            ours.write(step, {STAT: _row(step)}, LAYERS)
        ours.flush()
        (our_file,) = run_dir.iterdir()
        flag_sets = live_support.with_reload_interval(LOADERS, RELOAD_INTERVAL_S)
        with live_support.running_tensorboards(str(tmp_path), flag_sets) as servers:
            _wait_all(servers, _series_steps, first, "our first steps")
            # A later writer's file appears (Keras's at the next fit) ...
            _wait_for_next_second()
            other = EventFileWriter(str(run_dir), flush_secs=3600)
            other.add_event(_scalar_event(0))
            other.flush()
            files = sorted(run_dir.iterdir())
            assert len(files) == 2 and files[0] == our_file
            _wait_all(servers, _other_steps, [0], "the newer file")
            # ... then both keep writing, ours first.
            for step in LATER_STEPS:
                ours.write(step, {STAT: _row(step)}, LAYERS)
            ours.flush()
            other.add_event(_scalar_event(1))
            other.flush()
            # Seeing the newer file's step 1 proves a reload ran after our
            # append had reached the disk.
            _wait_all(servers, _other_steps, [0, 1], "the newer file to grow")
            for name, server in servers.items():
                if LATER_STEPS_SERVED[name]:
                    server.wait_until(lambda: _series_steps(server) == all_steps, VISIBLE_TIMEOUT_S, name)
                    assert OUT_OF_ORDER_LOG not in server.log(), name
            # Still missing after further reloads: lost for the life of the
            # process; TensorBoard only logs an error.
            time.sleep(2 * RELOAD_INTERVAL_S)
            for name, server in servers.items():
                if not LATER_STEPS_SERVED[name]:
                    assert _series_steps(server) == first, name
                    server.wait_until(lambda: OUT_OF_ORDER_LOG in server.log(), VISIBLE_TIMEOUT_S, name + ": the log")
            # The steps are on disk: a fresh load (a restarted tensorboard) reads them all.
            fresh = wsgi_client(str(tmp_path)).get("%s/series?run=%s&stat=%s" % (PLUGIN_ROUTE, RUN, STAT))
            assert strict_json(fresh.get_data())["steps"] == all_steps
    finally:
        ours.close()
        if other is not None:
            other.close()


@pytest.mark.parametrize(
    "argv, parsed",
    [((), None), (("--reload_multifile=false",), False), (("--reload_multifile=true",), True)],
)
def test_a_loader_can_tell_whether_the_user_set_reload_multifile(tmp_path, argv, parsed):
    # TensorBoard's own default is None, not False (core_plugin.py), and only
    # `not flags.reload_multifile` is read (data_ingester.py): a plugin's
    # `fix_flags` can turn it on when the user said nothing, and leave an
    # explicit false alone.
    tb = program.TensorBoard(plugins=[core_plugin.CorePluginLoader])
    tb.configure(argv=[None, "--logdir", str(tmp_path), *argv])
    assert tb.flags.reload_multifile is parsed
