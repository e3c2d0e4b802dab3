"""Thread-safe reuse of computed responses: concurrent calls of one key compute once, and a cache bounded in bytes, revalidated in the background after an age."""

from __future__ import annotations

import collections
import itertools
import logging
import queue
import threading
import time
from collections.abc import Hashable
from typing import Callable, TypeVar

Value = TypeVar("Value")
Job = Callable[[], None]

_logger = logging.getLogger(__name__)


class BackgroundWorker:
    """Runs submitted jobs one at a time on a daemon thread, started at the first job.

    One thread: a revalidation must not take more than one core away from
    the requests being served, and a daemon never delays TensorBoard's exit.
    """

    def __init__(self):
        self._jobs: queue.Queue[Job] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, job: Job) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="tb_gradhealth-revalidate", daemon=True)
                self._thread.start()
        self._jobs.put(job)

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                job()
            except Exception:
                _logger.exception("background job failed")


class _Pending:
    """The outcome of one computation, for the callers waiting on it."""

    def __init__(self):
        self._done = threading.Event()
        self._value = None
        self._error: BaseException | None = None

    def finish(self, value=None, error: BaseException | None = None) -> None:
        self._value, self._error = value, error
        self._done.set()

    def wait(self):
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value


class SingleFlight:
    """Concurrent calls with one key run one computation; every caller gets its value, or its exception.

    Nothing is kept once the computation is done: a call after it computes
    afresh. A burst of identical requests (several viewers, the tab's
    parallel fetches, connections released at once) costs one computation
    and the memory of one, whatever the size of its result.
    """

    def __init__(self):
        self._pending: dict[Hashable, _Pending] = {}
        self._lock = threading.Lock()

    def run(self, key: Hashable, compute: Callable[[], Value]) -> Value:
        with self._lock:
            pending = self._pending.get(key)
            owner = pending is None
            if owner:
                pending = self._pending[key] = _Pending()
        if not owner:
            return pending.wait()
        try:
            value = compute()
        except BaseException as error:
            pending.finish(error=error)
            raise
        else:
            pending.finish(value)
            return value
        finally:
            with self._lock:
                del self._pending[key]


class Workers:
    """Runs jobs on a fixed set of threads, urgent jobs first; the caller waits for its job's value (or exception).

    Heavy work (reading a statistic, encoding a body, diagnosing a run) runs
    on a few long-lived threads instead of the threads of the requests:
    that bounds how much runs at once, and the memory such work frees stays
    with those threads for their next job (the C allocator keeps memory per
    thread that allocated it; every request thread would grow a pool of
    its own). The tab waits on a chart (`/series`) while a diagnosis of
    every run (`/health`) may read statistic after statistic: the chart's
    job is marked urgent and goes next.
    """

    def __init__(self, threads: int, name: str):
        self._threads = threads
        self._name = name
        self._jobs: queue.PriorityQueue = queue.PriorityQueue()
        self._order = itertools.count()
        self._started = False
        self._lock = threading.Lock()

    def run(self, job: Callable[[], Value], urgent: bool = False) -> Value:
        with self._lock:
            if not self._started:
                for index in range(self._threads):
                    name = "tb_gradhealth-%s-%d" % (self._name, index)
                    threading.Thread(target=self._work, name=name, daemon=True).start()
                self._started = True
        pending = _Pending()
        self._jobs.put((0 if urgent else 1, next(self._order), job, pending))
        return pending.wait()

    def _work(self) -> None:
        while True:
            _, _, job, pending = self._jobs.get()
            try:
                value = job()
            except BaseException as error:
                pending.finish(error=error)
            else:
                pending.finish(value)


class ResponseCache:
    """LRU cache of values keyed by what they were computed from.

    Callers put the version of their inputs in the key (e.g. each tag's max
    step and wall time), so changed data is a new key and a value stays
    valid as long as its key. An entry older than `revalidate_after_s` is
    still answered, and recomputed once in the background (its first
    request after that age gets the old value, later ones the new once
    recomputed): this bounds how long a value can outlive a change the key
    does not show, without ever making a request wait for a recomputation
    of unchanged data.
    Values larger than `max_value_bytes` (default: a quarter of
    `max_bytes`) are computed but not kept; concurrent requests of one key
    still share one computation of them.
    """

    def __init__(
        self,
        max_bytes: int,
        revalidate_after_s: float,
        clock: Callable[[], float] = time.monotonic,
        background: Callable[[Job], None] | None = None,
        max_value_bytes: int | None = None,
    ):
        """Creates an empty cache.

        Args:
          max_bytes: bound on the summed sizes of the kept values.
          revalidate_after_s: age in seconds after which a hit is recomputed
            in the background.
          clock: monotonic seconds (for tests).
          background: runs a revalidation job; defaults to a `BackgroundWorker`.
          max_value_bytes: largest value kept.
        """
        self._max_bytes = max_bytes
        self._max_value_bytes = max_bytes // 4 if max_value_bytes is None else max_value_bytes
        self._revalidate_after_s = revalidate_after_s
        self._clock = clock
        self._background = background if background is not None else BackgroundWorker().submit
        self._entries: collections.OrderedDict[Hashable, tuple[float, int, object]] = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._misses = SingleFlight()
        self._revalidating: set[Hashable] = set()
        self._computations = 0

    @property
    def size_bytes(self) -> int:
        return self._bytes

    @property
    def computations(self) -> int:
        """How many times a value was computed, on a miss or to revalidate."""
        return self._computations

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def get_or_compute(self, key: Hashable, compute: Callable[[], Value], size: Callable[[Value], int]) -> Value:
        """Returns the cached value of `key`, or computes, keeps and returns it.

        Args:
          key: hashable; include the version of every input.
          compute: makes the value; what it raises is raised and nothing is
            kept. It may also run later on a background thread, to revalidate.
          size: the value's size in bytes, for the bound.
        """
        with self._lock:
            hit, value, stale = self._lookup(key)
            if hit:
                if stale and key not in self._revalidating:
                    self._revalidating.add(key)
                else:
                    stale = False
        if hit:
            if stale:
                self._background(lambda: self._revalidate(key, compute, size))
            return value

        def compute_and_keep():
            with self._lock:
                # Kept by a computation that ended since the lookup above.
                hit, value, _ = self._lookup(key)
            if hit:
                return value
            value = self._compute(compute)
            self._keep(key, value, size(value))
            return value

        return self._misses.run(key, compute_and_keep)

    def _lookup(self, key: Hashable):
        """Returns (hit, value, stale) under the lock."""
        entry = self._entries.get(key)
        if entry is None:
            return False, None, False
        created, _, value = entry
        self._entries.move_to_end(key)
        return True, value, self._clock() - created > self._revalidate_after_s

    def _compute(self, compute: Callable[[], Value]) -> Value:
        with self._lock:
            self._computations += 1
        return compute()

    def _revalidate(self, key: Hashable, compute: Callable[[], Value], size: Callable[[Value], int]) -> None:
        try:
            value = self._compute(compute)
        except Exception:
            _logger.debug("revalidating %r failed; entry dropped", key, exc_info=True)
            with self._lock:
                self._drop(key)
        else:
            self._keep(key, value, size(value))
        finally:
            with self._lock:
                self._revalidating.discard(key)

    def _drop(self, key: Hashable) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= old[1]

    def _keep(self, key: Hashable, value, size: int) -> None:
        with self._lock:
            self._drop(key)
            if size > self._max_value_bytes:
                return
            self._entries[key] = (self._clock(), size, value)
            self._bytes += size
            while self._bytes > self._max_bytes:
                _, (_, evicted_size, _) = self._entries.popitem(last=False)
                self._bytes -= evicted_size
