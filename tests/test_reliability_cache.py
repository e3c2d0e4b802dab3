"""The response cache: bounded in bytes, entries expire, a burst of identical misses computes once, failures are not kept."""

from __future__ import annotations

import threading
import time

import pytest

from tb_gradhealth.cache import ResponseCache

MAX_BYTES = 1_000
MAX_AGE_S = 10.0
THREADS = 16
SLOW_COMPUTE_S = 0.3


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Counter:
    """A compute function that counts its calls and returns `value`."""

    def __init__(self, value=b"x" * 100, delay_s: float = 0.0):
        self.value = value
        self.delay_s = delay_s
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self):
        with self._lock:
            self.calls += 1
        time.sleep(self.delay_s)
        return self.value


def test_a_key_is_computed_once_and_a_new_version_is_a_new_key():
    cache = ResponseCache(MAX_BYTES, MAX_AGE_S)
    compute = Counter()
    for _ in range(3):
        assert cache.get_or_compute(("series", "run", 5), compute, len) == compute.value
    assert compute.calls == 1
    cache.get_or_compute(("series", "run", 6), compute, len)
    assert compute.calls == 2
    assert (len(cache), cache.size_bytes) == (2, 200)


def test_entries_expire_after_max_age():
    clock = FakeClock()
    cache = ResponseCache(MAX_BYTES, MAX_AGE_S, clock=clock)
    compute = Counter()
    cache.get_or_compute("k", compute, len)
    clock.now = MAX_AGE_S
    cache.get_or_compute("k", compute, len)
    assert compute.calls == 1
    clock.now = MAX_AGE_S + 0.001
    cache.get_or_compute("k", compute, len)
    assert compute.calls == 2
    assert (len(cache), cache.size_bytes) == (1, 100)


def test_least_recently_used_entries_go_first_and_oversized_values_are_not_kept():
    cache = ResponseCache(MAX_BYTES, MAX_AGE_S)
    computes = {key: Counter(bytes(200)) for key in range(6)}
    for key in range(5):
        cache.get_or_compute(key, computes[key], len)
    cache.get_or_compute(0, computes[0], len)  # 0 is now the most recent
    cache.get_or_compute(5, computes[5], len)  # evicts 1, the least recent
    assert cache.size_bytes == MAX_BYTES and len(cache) == 5
    for key in (0, 2, 3, 4, 5):
        cache.get_or_compute(key, computes[key], len)
    assert [computes[key].calls for key in range(6)] == [1, 1, 1, 1, 1, 1]
    cache.get_or_compute(1, computes[1], len)
    assert computes[1].calls == 2
    big = Counter(bytes(MAX_BYTES // 4 + 1))
    cache.get_or_compute("big", big, len)
    cache.get_or_compute("big", big, len)
    assert big.calls == 2 and cache.size_bytes <= MAX_BYTES


def test_a_burst_of_identical_misses_computes_once():
    cache = ResponseCache(MAX_BYTES, MAX_AGE_S)
    compute = Counter(delay_s=SLOW_COMPUTE_S)
    start = threading.Barrier(THREADS)
    results = []

    def request():
        start.wait()
        results.append(cache.get_or_compute("series", compute, len))

    threads = [threading.Thread(target=request) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert compute.calls == 1
    assert results == [compute.value] * THREADS


def test_a_failure_is_raised_and_not_kept():
    cache = ResponseCache(MAX_BYTES, MAX_AGE_S)
    calls = []

    def failing():
        calls.append(1)
        raise LookupError("no such run")

    for _ in range(2):
        with pytest.raises(LookupError, match="no such run"):
            cache.get_or_compute("k", failing, len)
    assert len(calls) == 2 and len(cache) == 0
    assert cache.get_or_compute("k", Counter(), len) == b"x" * 100
