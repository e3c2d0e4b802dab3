"""Runs the capture's host code eagerly, outside any tracing and strategy scope, whatever the caller's context."""

from __future__ import annotations

import concurrent.futures
from typing import Callable, TypeVar

T = TypeVar("T")


def run_plain(work: Callable[[], T]) -> T:
    """Runs `work` (creating, reading or assigning the capture's own variables) eagerly and returns its result.

    A `tf.function` being traced and a `tf.distribute` strategy scope are
    both thread-local, so a fresh thread runs `work` eagerly and creates
    ordinary variables even when called while a train step is traced or
    inside `strategy.scope()`: an assignment does not become part of the
    traced step, and the variables are not mirrored (the recorder updates
    them once per step itself, from a merge call under a strategy).
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(work).result()
