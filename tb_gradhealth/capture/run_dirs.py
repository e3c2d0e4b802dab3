"""What the writers of this process know about each run directory: the next free step number and the buffers writing it."""

from __future__ import annotations

import os
import threading
import weakref

_lock = threading.Lock()
# {key(run_dir): the smallest step number no writer of this process has used there}
_next_free: dict[str, int] = {}
# {key(run_dir): step buffers with a writer attached}
_buffers: dict[str, weakref.WeakSet] = {}


def key(run_dir: str) -> str:
    """The same string for every spelling of one directory."""
    return os.path.realpath(os.fspath(run_dir))


def next_free_step(run_dir: str) -> int:
    with _lock:
        return _next_free.get(key(run_dir), 0)


def note_next_free_step(run_dir: str, step: int) -> None:
    """A writer of `run_dir` will not use numbers below `step` again."""
    with _lock:
        _next_free[key(run_dir)] = max(_next_free.get(key(run_dir), 0), int(step))


def register(run_dir: str, buffer) -> None:
    with _lock:
        _buffers.setdefault(key(run_dir), weakref.WeakSet()).add(buffer)


def unregister(run_dir: str, buffer) -> None:
    with _lock:
        _buffers.get(key(run_dir), weakref.WeakSet()).discard(buffer)


def flush_all(run_dir: str) -> None:
    """Writes what every buffer of `run_dir` holds (e.g. left by a fit that raised), last steps included."""
    with _lock:
        buffers = list(_buffers.get(key(run_dir), ()))
    for buffer in buffers:
        buffer.write_out()
