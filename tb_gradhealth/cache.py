"""A thread-safe cache of computed responses: bounded in bytes, entries expire, and concurrent misses of one key compute once."""

from __future__ import annotations

import collections
import threading
import time
from typing import Callable, Hashable, TypeVar

Value = TypeVar("Value")


class ResponseCache:
    """LRU cache of values keyed by what they were computed from.

    Callers put the version of their inputs in the key (e.g. a tag's max
    step and wall time), so a changed input is a new key; `max_age_s`
    bounds how long a value can outlive a change the key does not show.
    Values larger than a quarter of `max_bytes` are computed but not kept.
    """

    def __init__(self, max_bytes: int, max_age_s: float, clock: Callable[[], float] = time.monotonic):
        self._max_bytes = max_bytes
        self._max_age_s = max_age_s
        self._clock = clock
        self._entries: collections.OrderedDict[Hashable, tuple[float, int, object]] = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        # One lock per key being computed: a burst of identical requests
        # (several viewers, the tab's parallel fetches) computes it once.
        self._computing: dict[Hashable, threading.Lock] = {}

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def _lookup(self, key: Hashable):
        """Returns (hit, value) under the lock; drops the entry if it expired."""
        entry = self._entries.get(key)
        if entry is None:
            return False, None
        created, size, value = entry
        if self._clock() - created > self._max_age_s:
            del self._entries[key]
            self._bytes -= size
            return False, None
        self._entries.move_to_end(key)
        return True, value

    def get_or_compute(self, key: Hashable, compute: Callable[[], Value], size: Callable[[Value], int]) -> Value:
        """Returns the cached value of `key`, or computes, keeps and returns it.

        Args:
          key: hashable; include the version of every input.
          compute: makes the value; what it raises is raised and nothing is kept.
          size: the value's size in bytes, for the bound.
        """
        with self._lock:
            hit, value = self._lookup(key)
            if hit:
                return value
            key_lock = self._computing.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                hit, value = self._lookup(key)
                if hit:
                    return value
            try:
                value = compute()
                self._keep(key, value, size(value))
            finally:
                with self._lock:
                    self._computing.pop(key, None)
            return value

    def _keep(self, key: Hashable, value, size: int) -> None:
        if size > self._max_bytes // 4:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._entries[key] = (self._clock(), size, value)
            self._bytes += size
            while self._bytes > self._max_bytes:
                _, (_, evicted_size, _) = self._entries.popitem(last=False)
                self._bytes -= evicted_size
