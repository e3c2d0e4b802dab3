"""Helpers of the test_reliability_live* modules: several real `tensorboard` processes, one per loader, over one logdir."""

from __future__ import annotations

import concurrent.futures
import contextlib
import pathlib
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Callable

from tb_server import PLUGIN_ROUTE, TensorBoardServer, running_tensorboard, strict_json, wsgi_client

# TensorBoard's ingestion backends, as flags: the Rust data server (the
# default where it is installed); the Python multiplexer as a user asks for
# it (plugins' fix_flags may still change its settings); and the Python
# multiplexer explicitly following only the newest event file of a run
# directory (TensorBoard's default) or polling every one of them.
RUST = ("--load_fast=true",)
PYTHON = ("--load_fast=false",)
PYTHON_LAST_FILE = ("--load_fast=false", "--reload_multifile=false")
PYTHON_MULTIFILE = ("--load_fast=false", "--reload_multifile=true")


@contextlib.contextmanager
def running_tensorboards(logdir: str, flag_sets: Mapping[str, Sequence[str]]) -> Iterator[dict[str, TensorBoardServer]]:
    """Runs one `tensorboard` per entry of `flag_sets` over `logdir` until the block ends.

    They start concurrently (each imports TensorFlow for ~10 s), so one
    training process can be watched by every loader at the cost of about
    one start-up.

    Yields:
      {name: TensorBoardServer}, in the order of `flag_sets`.
    """
    managers = {name: running_tensorboard(logdir, *flags) for name, flags in flag_sets.items()}
    with concurrent.futures.ThreadPoolExecutor(len(managers)) as pool:
        futures = {name: pool.submit(manager.__enter__) for name, manager in managers.items()}
    with contextlib.ExitStack() as stack:
        servers, errors = {}, []
        for name, future in futures.items():
            try:
                servers[name] = future.result()
            except Exception as error:
                errors.append(error)
            else:
                stack.push(managers[name].__exit__)
        if errors:
            raise errors[0]
        yield servers


def poll_all(clients: Mapping[str, object]) -> bool:
    """Runs one `poll()` of every client (each watches one server); True when all returned True.

    Every client polls in every round, so each sees the data grow; a failed
    check names the loader it failed on.
    """
    whole = True
    for name, client in clients.items():
        try:
            whole = client.poll() and whole
        except AssertionError as error:
            raise AssertionError("%s: %s" % (name, error)) from error
    return whole


def poll_until_exit(clients: Mapping[str, object], process, timeout_s: float, pause_s: float) -> None:
    """Polls every client (`poll_all`) until `process` has exited and every client saw the whole data.

    Fails when the process exits with an error or `timeout_s` passes; the
    message says what each client had seen (its `seen`) by then.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        whole = poll_all(clients)
        returncode = process.poll()
        if returncode is not None and whole:
            return
        seen = {name: getattr(client, "seen", None) for name, client in clients.items()}
        assert returncode in (None, 0), "the writing process failed with %s; seen %s" % (returncode, seen)
        assert time.monotonic() < deadline, "timed out; seen %s, writer rc %s" % (seen, returncode)
        time.sleep(pause_s)


def with_reload_interval(flag_sets: Mapping[str, Sequence[str]], seconds: float) -> dict[str, tuple]:
    """`flag_sets` with `--reload_interval seconds` added to each."""
    return {name: (*flags, "--reload_interval", str(seconds)) for name, flags in flag_sets.items()}


@contextlib.contextmanager
def writer_process(script: str, *args: str) -> Iterator[subprocess.Popen]:
    """Runs `python script args...` (a writer of the live tests) until the block ends; kills it if it still runs.

    The writer prints "ready" once set up and waits for its go file
    (`start_and_poll`); its stdout is a pipe the test may read.
    """
    process = subprocess.Popen([sys.executable, script, *args], stdout=subprocess.PIPE, text=True)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def start_and_poll(
    process,
    go_file: pathlib.Path,
    servers: Mapping[str, TensorBoardServer],
    make_client: Callable[[TensorBoardServer], object],
    timeout_s: float,
    pause_s: float,
) -> dict[str, object]:
    """Lets the ready writer `process` start (touches `go_file`) and polls one client per server until it exits.

    Returns the clients ({name: client}), with what each saw.
    """
    assert process.stdout.readline().strip() == "ready"
    go_file.touch()
    clients = {name: make_client(server) for name, server in servers.items()}
    poll_until_exit(clients, process, timeout_s, pause_s)
    return clients


def assert_health_is_fresh(logdir: str, servers: Mapping[str, TensorBoardServer]) -> None:
    """Every server's `/health` equals one computed afresh from the finished files: what was polled is not stale."""
    fresh = strict_json(wsgi_client(logdir).get(PLUGIN_ROUTE + "/health").get_data())
    for name, server in servers.items():
        assert server.get_json(PLUGIN_ROUTE + "/health") == fresh, name
