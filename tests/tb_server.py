"""Test helpers: TensorBoard's own app in-process over a logdir, and a real `tensorboard` process on a free localhost port."""

from __future__ import annotations

import contextlib
import json
import math
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence

from tensorboard import program
from tensorboard.backend import application
from tensorboard.backend.event_processing import data_ingester
from tensorboard.plugins import base_plugin
from tensorboard.plugins.core import core_plugin
from werkzeug import test as werkzeug_test

from tb_gradhealth import metadata, plugin
from tb_gradhealth.loader import GradientHealthLoader

TENSORBOARD_BIN = pathlib.Path(sys.executable).parent / "tensorboard"
HOST = "127.0.0.1"
PLUGIN_ROUTE = "/data/plugin/gradient_health"
# TensorBoard imports TensorFlow at start-up: ~10 s on a busy 2-core machine.
STARTUP_TIMEOUT_S = 180
POLL_INTERVAL_S = 0.25
STOP_TIMEOUT_S = 15
HTTP_TIMEOUT_S = 60


def strict_json(body: bytes | str):
    """Parses JSON as a browser's JSON.parse does: bare NaN/Infinity are errors."""

    def refuse(constant):
        raise ValueError("invalid JSON constant %s" % constant)

    return json.loads(body, parse_constant=refuse)


def json_float(value: float):
    """Returns `value` as http_util.Respond writes it: non-finite floats become strings."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def negative_value_problems(stat: str, values, layers: Sequence[str]) -> list[dict]:
    """The problem /series reports for a statistic that cannot be negative and has negative values ([steps, layers])."""
    negative = [(step, layer) for step, row in enumerate(values) for layer, value in enumerate(row) if value < 0]
    if stat not in metadata.NON_NEGATIVE_STATS or not negative:
        return []
    step, layer = negative[0]
    message = (
        "%d value(s) below 0, first at step %d in layer %r: %s is never negative, so the writer is wrong "
        "(the values are kept and shown)" % (len(negative), step, layers[layer], stat)
    )
    return [{"tag": metadata.tag_for_stat(stat), "message": message}]


def expected_series(
    run: str,
    stat: str,
    layers: Sequence[str],
    steps: Sequence[int],
    wall_times: Sequence[float],
    values,
    *,
    total_steps: int | None = None,
    max_points: int = plugin.DEFAULT_MAX_POINTS,
    problems: list | None = None,
) -> dict:
    """The /series body of a run of unannotated layers (no kinds, no params) whose values `[steps, layers]` are served."""
    return {
        "run": run,
        "stat": stat,
        "scope": "layer",
        "layers": list(layers),
        "kinds": None,
        "params": None,
        "steps": [int(step) for step in steps],
        "wall_times": list(wall_times),
        "values": [[json_float(float(value)) for value in row] for row in values],
        "total_steps": len(steps) if total_steps is None else total_steps,
        "max_points": max_points,
        "partial": False,
        "notices": [],
        "problems": negative_value_problems(stat, values, layers) if problems is None else problems,
    }


def configured_flags(logdir: str, *argv: str):
    """Returns TensorBoard's flags for `--logdir logdir argv...`, fixed by every loader as `tensorboard` does."""
    tb = program.TensorBoard(plugins=[core_plugin.CorePluginLoader, GradientHealthLoader])
    tb.configure(argv=[None, "--logdir", logdir, *argv])
    return tb.flags


def wsgi_client(logdir: str, *argv: str) -> werkzeug_test.Client:
    """Returns a werkzeug test client over `TensorBoardWSGI([our plugin])` reading `logdir`.

    The data comes through TensorBoard's own multiplexer ingester, loaded
    once (blocking) with the flags `tensorboard` itself would use, so its
    load-time sampling is the real one.
    """
    flags = configured_flags(logdir, "--reload_interval", "0", "--reload_task", "blocking", *argv)
    ingester = data_ingester.LocalDataIngester(flags)
    ingester.start()
    context = base_plugin.TBContext(
        data_provider=ingester.data_provider,
        flags=flags,
        logdir=logdir,
        sampling_hints=flags.samples_per_plugin,
    )
    plugin = GradientHealthLoader().load(context)
    app = application.TensorBoardWSGI([plugin], data_provider=ingester.data_provider)
    return werkzeug_test.Client(app)


def free_port() -> int:
    """Returns a localhost TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class TensorBoardServer:
    """A running `tensorboard` process; see `running_tensorboard`."""

    def __init__(self, process: subprocess.Popen, port: int, log_path: pathlib.Path):
        self.process = process
        self.port = port
        self.url = "http://%s:%d" % (HOST, port)
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str, timeout: float = HTTP_TIMEOUT_S):
        """Returns (status, headers, body bytes) of GET `path`; errors are returned, not raised."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
                return response.status, response.headers, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.headers, error.read()

    def get_json(self, path: str):
        status, _, body = self.get(path)
        if status != 200:
            raise AssertionError("GET %s -> %d: %r" % (path, status, body[:500]))
        return strict_json(body)

    def wait_until(self, predicate, timeout_s: float, what: str):
        """Polls `predicate()` until it returns a truthy value, which is returned."""
        deadline = time.monotonic() + timeout_s
        last_error = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError("tensorboard exited with %s:\n%s" % (self.process.returncode, self.log()[-4000:]))
            try:
                result = predicate()
                if result:
                    return result
            except (OSError, AssertionError, ValueError) as error:
                last_error = error
            time.sleep(POLL_INTERVAL_S)
        raise AssertionError(
            "timed out after %ss waiting for %s (last error: %r)\n%s"
            % (timeout_s, what, last_error, self.log()[-4000:])
        )


def _stop(process: subprocess.Popen) -> None:
    """Stops the tensorboard process and, through its own process group, its data server."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=STOP_TIMEOUT_S)
    # The Rust data server exits when its stdin closes; make sure no member
    # of the group we created outlives the test.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


@contextlib.contextmanager
def running_tensorboard(
    logdir: str,
    *extra_args: str,
    timeout_s: float = STARTUP_TIMEOUT_S,
    python_path: str | None = None,
    path_prefix: str = "",
):
    """Runs `tensorboard --logdir logdir --host 127.0.0.1 --port <free> extra_args...` until the block ends.

    Yields a `TensorBoardServer` once `/data/plugins_listing` answers 200.
    The process runs in its own session so it and its data server are
    stopped together, by process group id. `python_path`, when given, is the
    process's PYTHONPATH (e.g. another version of the plugin); `path_prefix`
    its `--path_prefix` (the URLs of `server` do not include it).
    """
    port = free_port()
    log_dir = pathlib.Path(tempfile.mkdtemp(prefix="tb_server_log_"))
    log_path = log_dir / "tensorboard.log"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    if python_path is not None:
        env["PYTHONPATH"] = python_path
    command = [str(TENSORBOARD_BIN), "--logdir", str(logdir), "--host", HOST, "--port", str(port)]
    if path_prefix:
        command += ["--path_prefix", path_prefix]
    command += extra_args
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            command,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    server = TensorBoardServer(process, port, log_path)
    try:
        server.wait_until(
            lambda: server.get(path_prefix + "/data/plugins_listing", timeout=5)[0] == 200,
            timeout_s,
            "tensorboard to answer on port %d" % port,
        )
        yield server
    finally:
        _stop(process)
