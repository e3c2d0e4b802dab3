"""Creates the capture side's own TensorFlow variables as plain, eager variables, whatever the caller's context."""

from __future__ import annotations

import concurrent.futures
from typing import Callable, TypeVar

T = TypeVar("T")


def create_plain(factory: Callable[[], T]) -> T:
    """Runs `factory` (which creates `tf.Variable`s) outside any tracing and strategy scope.

    A `tf.function` being traced and a `tf.distribute` strategy scope are
    both thread-local, so a fresh thread creates ordinary eager variables
    even when called while a train step is traced or inside
    `strategy.scope()`. The recorder updates them once per step itself
    (from a merge call under a strategy), so they must not be mirrored.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(factory).result()
