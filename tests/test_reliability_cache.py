"""The response caches: bounded in bytes, valid until the data changes, revalidated in the background, a burst of identical misses computes once, failures are not kept; and the plugin's diagnoses over real event files."""

from __future__ import annotations

import collections
import threading
import time

import numpy as np
import pytest
from tb_server import PLUGIN_ROUTE, strict_json
from tensorboard import context as tb_context
from tensorboard.backend import application
from tensorboard.backend.event_processing import data_provider as multiplexer_data_provider
from tensorboard.backend.event_processing import plugin_event_multiplexer, tag_types
from tensorboard.plugins import base_plugin
from werkzeug import test as werkzeug_test

from tb_gradhealth import cache, diagnosis, metadata, plugin, reader
from tb_gradhealth.cache import BackgroundWorker, ResponseCache
from tb_gradhealth.summary import GradientHealthFileWriter

MAX_BYTES = 1_000
REVALIDATE_AFTER_S = 10.0
THREADS = 16
SLOW_COMPUTE_S = 0.3
WAIT_S = 30.0  # for a background thread, on a busy machine
POLL_S = 0.02

# A small logdir of healthy runs, written by our own API.
RUNS = ("run_a", "run_b", "run_c")
LAYERS = ("dense", "dense_1", "dense_2")
NUM_STEPS = 30
WALL_TIME_0 = 1_700_000_000.0  # seconds since the epoch
GROWN_STEPS = 5  # steps appended to one run to change its data


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


class Jobs(list):
    """Collects background jobs, for a test to run them when it chooses."""

    def run_all(self):
        while self:
            self.pop(0)()


def wait_for(predicate, what: str):
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for %s" % what)
        time.sleep(POLL_S)


def test_a_key_is_computed_once_and_a_new_version_is_a_new_key():
    cache = ResponseCache(MAX_BYTES, REVALIDATE_AFTER_S, background=Jobs().append)
    compute = Counter()
    for _ in range(3):
        assert cache.get_or_compute(("series", "run", 5), compute, len) == compute.value
    assert compute.calls == 1
    cache.get_or_compute(("series", "run", 6), compute, len)
    assert compute.calls == 2 == cache.computations
    assert (len(cache), cache.size_bytes) == (2, 200)


def test_an_old_entry_is_answered_at_once_and_revalidated_once_in_the_background():
    clock, jobs = FakeClock(), Jobs()
    cache = ResponseCache(MAX_BYTES, REVALIDATE_AFTER_S, clock=clock, background=jobs.append)
    old, new = Counter(b"old"), Counter(b"new")
    cache.get_or_compute("k", old, len)
    clock.now = REVALIDATE_AFTER_S
    assert cache.get_or_compute("k", new, len) == b"old" and jobs == []
    clock.now = REVALIDATE_AFTER_S + 0.001
    # Every request meanwhile gets the old value at once; one revalidation is queued.
    for _ in range(3):
        assert cache.get_or_compute("k", new, len) == b"old"
    assert len(jobs) == 1 and new.calls == 0
    jobs.run_all()
    assert new.calls == 1 and cache.computations == 2
    assert cache.get_or_compute("k", new, len) == b"new"
    # Revalidated now: fresh for another REVALIDATE_AFTER_S.
    clock.now += REVALIDATE_AFTER_S
    assert cache.get_or_compute("k", new, len) == b"new" and jobs == []
    assert (len(cache), cache.size_bytes) == (1, 3)


def test_a_failed_revalidation_drops_the_entry_so_the_next_request_raises():
    clock, jobs = FakeClock(), Jobs()
    cache = ResponseCache(MAX_BYTES, REVALIDATE_AFTER_S, clock=clock, background=jobs.append)
    cache.get_or_compute("k", Counter(b"old"), len)
    clock.now = 2 * REVALIDATE_AFTER_S

    def run_deleted():
        raise LookupError("no such run")

    assert cache.get_or_compute("k", run_deleted, len) == b"old"
    jobs.run_all()
    assert "k" not in cache and cache.size_bytes == 0
    with pytest.raises(LookupError, match="no such run"):
        cache.get_or_compute("k", run_deleted, len)


def test_the_background_worker_revalidates_off_the_request_thread():
    clock = FakeClock()
    cache = ResponseCache(MAX_BYTES, REVALIDATE_AFTER_S, clock=clock, background=BackgroundWorker().submit)
    threads = []

    def compute():
        threads.append(threading.current_thread())
        return b"v%d" % len(threads)

    assert cache.get_or_compute("k", compute, len) == b"v1"
    clock.now = 2 * REVALIDATE_AFTER_S
    assert cache.get_or_compute("k", compute, len) == b"v1"
    wait_for(lambda: cache.get_or_compute("k", compute, len) == b"v2", "the background revalidation")
    assert threads[0] is threading.current_thread()
    assert threads[1] is not threading.current_thread() and threads[1].daemon
    assert cache.computations == 2


def test_least_recently_used_entries_go_first_and_oversized_values_are_not_kept():
    cache = ResponseCache(MAX_BYTES, REVALIDATE_AFTER_S, background=Jobs().append)
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
    cache = ResponseCache(MAX_BYTES, REVALIDATE_AFTER_S, background=Jobs().append)
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
    cache = ResponseCache(MAX_BYTES, REVALIDATE_AFTER_S, background=Jobs().append)
    calls = []

    def failing():
        calls.append(1)
        raise LookupError("no such run")

    for _ in range(2):
        with pytest.raises(LookupError, match="no such run"):
            cache.get_or_compute("k", failing, len)
    assert len(calls) == 2 and len(cache) == 0
    assert cache.get_or_compute("k", Counter(), len) == b"x" * 100


# The plugin over real event files and TensorBoard's own multiplexer data
# provider (what `--load_fast=false` serves), reloaded by the test when it
# has written new data.


def _healthy_values(step: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([seed, step])
    norms = rng.uniform(0.5, 1.5, size=len(LAYERS)).astype(np.float32)
    return {
        metadata.GRAD_NORM: norms,
        metadata.GRAD_NORM_MAX: norms * np.float32(1.1),
        metadata.GRAD_MAX_ABS: norms / np.float32(4),
        metadata.NONFINITE: np.zeros(len(LAYERS), dtype=np.float32),
        metadata.WEIGHT_NORM: np.full(len(LAYERS), 10.0, dtype=np.float32),
        metadata.UPDATE_RATIO: np.full(len(LAYERS), 1e-2, dtype=np.float32),
    }


def _nonfinite_values(step: int, seed: int) -> dict[str, np.ndarray]:
    values = _healthy_values(step, seed)
    values[metadata.GRAD_NORM] = np.full(len(LAYERS), np.nan, dtype=np.float32)
    values[metadata.NONFINITE] = np.full(len(LAYERS), 7.0, dtype=np.float32)
    return values


def _wall_time(step: int) -> float:
    return WALL_TIME_0 + step


class Served:
    """Our plugin in TensorBoard's WSGI app over `logdir`, and the multiplexer it reads."""

    def __init__(self, logdir):
        self.multiplexer = plugin_event_multiplexer.EventMultiplexer(
            size_guidance={tag_types.TENSORS: 1}, tensor_size_guidance={metadata.PLUGIN_NAME: 0}
        )
        self.multiplexer.AddRunsFromDirectory(str(logdir))
        self.multiplexer.Reload()
        self.provider = multiplexer_data_provider.MultiplexerDataProvider(self.multiplexer, str(logdir))
        self.plugin = plugin.GradientHealthPlugin(
            base_plugin.TBContext(data_provider=self.provider, logdir=str(logdir))
        )
        self.client = werkzeug_test.Client(application.TensorBoardWSGI([self.plugin], data_provider=self.provider))

    def run_version(self, run: str) -> tuple:
        return reader.list_run_tags(self.provider, tb_context.RequestContext(), "", run)[run].version

    def get_json(self, path: str):
        response = self.client.get(PLUGIN_ROUTE + path)
        assert response.status_code == 200, response.get_data(as_text=True)
        return strict_json(response.get_data())

    def verdicts(self) -> dict[str, str]:
        return {entry["run"]: entry["verdict"] for entry in self.get_json("/health")["runs"]}


@pytest.fixture
def reads(monkeypatch):
    """Counts the plugin's reads of whole runs, by (run, stats); the reads themselves are real."""
    counted = collections.Counter()
    lock = threading.Lock()
    real_load_run = reader.load_run

    def counting_load_run(provider, ctx, experiment_id, run, stats=None, **kwargs):
        with lock:
            counted[(run, None if stats is None else tuple(stats))] += 1
        return real_load_run(provider, ctx, experiment_id, run, stats, **kwargs)

    monkeypatch.setattr(reader, "load_run", counting_load_run)
    return counted


@pytest.fixture
def logdir(tmp_path):
    for seed, run in enumerate(RUNS):
        with GradientHealthFileWriter(str(tmp_path / run)) as writer:
            for step in range(NUM_STEPS):
                writer.write(step, _healthy_values(step, seed), LAYERS, wall_time=_wall_time(step))
    return tmp_path


def _health_reads(reads) -> dict[str, int]:
    return {run: count for (run, stats), count in reads.items() if stats is None}


def test_a_diagnosis_is_computed_once_and_again_only_for_the_run_with_new_data(logdir, reads):
    served = Served(logdir)
    assert served.verdicts() == dict.fromkeys(RUNS, diagnosis.HEALTHY)
    for _ in range(3):
        assert served.verdicts() == dict.fromkeys(RUNS, diagnosis.HEALTHY)
        assert served.get_json("/health?run=%s" % RUNS[0])["runs"][0]["verdict"] == diagnosis.HEALTHY
    assert _health_reads(reads) == dict.fromkeys(RUNS, 1)

    # run_b's gradients turn NaN in new steps, written to a new event file.
    with GradientHealthFileWriter(str(logdir / RUNS[1])) as writer:
        for step in range(NUM_STEPS, NUM_STEPS + GROWN_STEPS):
            writer.write(step, _nonfinite_values(step, 1), LAYERS, wall_time=_wall_time(step))
    assert served.verdicts() == dict.fromkeys(RUNS, diagnosis.HEALTHY)  # not loaded yet
    served.multiplexer.Reload()
    health = {entry["run"]: entry for entry in served.get_json("/health")["runs"]}
    assert health[RUNS[1]]["verdict"] == diagnosis.NONFINITE
    assert health[RUNS[1]]["findings"][0]["kind"] == diagnosis.NONFINITE
    assert health[RUNS[1]]["findings"][0]["first_step"] == NUM_STEPS
    assert served.verdicts()[RUNS[1]] == diagnosis.NONFINITE
    assert _health_reads(reads) == {RUNS[0]: 1, RUNS[1]: 2, RUNS[2]: 1}


def test_diagnoses_survive_many_big_series_requests(logdir, reads, monkeypatch):
    ctx = tb_context.RequestContext()
    body_bytes = len(Served(logdir).plugin.series_body(ctx, "", RUNS[0], metadata.GRAD_NORM, NUM_STEPS))
    # Room for 4 bodies, so the 18 statistics of 3 runs evict each other.
    monkeypatch.setattr(plugin, "SERIES_CACHE_MAX_BYTES", 4 * body_bytes + body_bytes // 2)
    served = Served(logdir)
    reads.clear()
    served.verdicts()
    for _ in range(3):
        for run in RUNS:
            for stat in metadata.BUILTIN_STATS:
                body = served.get_json("/series?run=%s&stat=%s" % (run, stat))
                assert body["total_steps"] == NUM_STEPS
    series_reads = sum(count for (_, stats), count in reads.items() if stats is not None)
    assert series_reads == 3 * len(RUNS) * len(metadata.BUILTIN_STATS)  # every one evicted before its repeat
    assert served.verdicts() == dict.fromkeys(RUNS, diagnosis.HEALTHY)
    assert _health_reads(reads) == dict.fromkeys(RUNS, 1)


def test_concurrent_cold_health_requests_read_each_run_once(logdir, reads):
    served = Served(logdir)
    start = threading.Barrier(THREADS)
    answers = []

    def request():
        client = werkzeug_test.Client(served.client.application)
        start.wait()
        answers.append(strict_json(client.get(PLUGIN_ROUTE + "/health").get_data()))

    threads = [threading.Thread(target=request) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(answers) == THREADS and all(answer == answers[0] for answer in answers)
    assert [entry["run"] for entry in answers[0]["runs"]] == list(RUNS)
    assert _health_reads(reads) == dict.fromkeys(RUNS, 1)


def test_a_change_the_key_cannot_see_shows_after_the_revalidation_bound(logdir, monkeypatch):
    # Every hit is old at once: each request revalidates in the background.
    monkeypatch.setattr(plugin, "CACHE_REVALIDATE_AFTER_S", 0.0)
    served = Served(logdir)
    assert served.verdicts() == dict.fromkeys(RUNS, diagnosis.HEALTHY)
    # The last step again, same wall time, NaN values: no tag's max step or
    # max wall time changes, so the cache key does not either.
    last = NUM_STEPS - 1
    with GradientHealthFileWriter(str(logdir / RUNS[2])) as writer:
        writer.write(last, _nonfinite_values(last, 2), LAYERS, wall_time=_wall_time(last))
    version = served.run_version(RUNS[2])
    served.multiplexer.Reload()
    assert served.run_version(RUNS[2]) == version
    wait_for(lambda: served.verdicts()[RUNS[2]] == diagnosis.NONFINITE, "the revalidated diagnosis")
    assert served.verdicts() == {RUNS[0]: diagnosis.HEALTHY, RUNS[1]: diagnosis.HEALTHY, RUNS[2]: diagnosis.NONFINITE}


# Bounded work per request: identical requests share one computation
# whatever its size, sizes are normalised, wide runs are capped, and heavy
# computations run a few at a time.

WIDE_LAYERS = tuple("layer_%d" % index for index in range(3))
WIDE_STEPS = 100


class Calls:
    """Wraps a function of a module: counts its calls and the most that ran at once."""

    def __init__(self, monkeypatch, module, name: str, delay_s: float = 0.0):
        self.calls = 0
        self.running = 0
        self.most_at_once = 0
        self._lock = threading.Lock()
        real = getattr(module, name)

        def counted(*args, **kwargs):
            with self._lock:
                self.calls += 1
                self.running += 1
                self.most_at_once = max(self.most_at_once, self.running)
            try:
                time.sleep(delay_s)
                return real(*args, **kwargs)
            finally:
                with self._lock:
                    self.running -= 1

        monkeypatch.setattr(module, name, counted)


def _burst(served: Served, paths: list[str]) -> list:
    """GETs every path from its own thread, all released at once; returns the decoded bodies."""
    start = threading.Barrier(len(paths))
    answers = [None] * len(paths)

    def request(index):
        client = werkzeug_test.Client(served.client.application)
        start.wait()
        response = client.get(PLUGIN_ROUTE + paths[index])
        assert response.status_code == 200, response.get_data(as_text=True)
        answers[index] = strict_json(response.get_data())

    threads = [threading.Thread(target=request, args=(index,)) for index in range(len(paths))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def test_identical_concurrent_series_requests_compute_once_even_when_too_big_to_keep(logdir, monkeypatch):
    # Nothing fits the stores: each body and each statistic read is too big to keep.
    monkeypatch.setattr(plugin, "SERIES_CACHE_MAX_BYTES", 4)
    monkeypatch.setattr(plugin, "STAT_CACHE_MAX_VALUE_BYTES", 1)
    served = Served(logdir)
    # The read goes on only once every request has reached the store (a
    # busy machine can start threads far apart).
    arrived = []
    series_cache = served.plugin._series_cache
    real_get = series_cache.get_or_compute

    def counting_get(*args, **kwargs):
        arrived.append(1)
        return real_get(*args, **kwargs)

    monkeypatch.setattr(series_cache, "get_or_compute", counting_get)
    real_read = reader.read_stat

    def read_when_all_arrived(*args, **kwargs):
        wait_for(lambda: len(arrived) >= THREADS, "every request to arrive")
        time.sleep(SLOW_COMPUTE_S)  # for the last to start waiting
        return real_read(*args, **kwargs)

    monkeypatch.setattr(reader, "read_stat", read_when_all_arrived)
    reads = Calls(monkeypatch, reader, "read_stat")
    encodes = Calls(monkeypatch, plugin, "gzipped_series")
    answers = _burst(served, ["/series?run=%s&stat=grad_norm" % RUNS[0]] * THREADS)
    assert all(answer == answers[0] for answer in answers) and answers[0]["total_steps"] == NUM_STEPS
    assert (reads.calls, encodes.calls) == (1, 1)
    # Not kept: the next request computes again.
    arrived.clear()
    arrived.extend([1] * THREADS)
    served.get_json("/series?run=%s&stat=grad_norm" % RUNS[0])
    assert (reads.calls, encodes.calls) == (2, 2)


def test_any_max_points_falls_on_a_few_cached_bodies_from_one_read(logdir, monkeypatch):
    reads = Calls(monkeypatch, reader, "read_stat")
    encodes = Calls(monkeypatch, plugin, "gzipped_series")
    served = Served(logdir)
    requested = list(range(2, 12_000, 600))
    served_sizes = set()
    for max_points in requested:
        body = served.get_json("/series?run=%s&stat=grad_norm&max_points=%d" % (RUNS[0], max_points))
        assert body["max_points"] in plugin.MAX_POINTS_SIZES and body["max_points"] >= min(
            max_points, plugin.MAX_POINTS_SIZES[-1]
        )
        served_sizes.add(body["max_points"])
    assert encodes.calls == len(served_sizes) <= len(plugin.MAX_POINTS_SIZES) < len(requested)
    assert reads.calls == 1


def _wide_logdir(root, nonfinite_rows=(), steps=WIDE_STEPS):
    values = np.random.default_rng(5).uniform(1.0, 2.0, size=(steps, len(WIDE_LAYERS))).astype(np.float32)
    values[list(nonfinite_rows), 0] = np.nan
    with GradientHealthFileWriter(str(root / "wide")) as writer:
        for step in range(steps):
            writer.write(step, {metadata.GRAD_NORM: values[step]}, WIDE_LAYERS, wall_time=_wall_time(step))
    return values


def test_a_wide_run_is_capped_in_values_and_says_so(tmp_path, monkeypatch):
    # 1,700 values of 3 layers: 566 rows fit, so the largest size that fits, 512, is served.
    monkeypatch.setattr(plugin, "MAX_VALUES_PER_RESPONSE", 1_700)
    encodes = Calls(monkeypatch, plugin, "gzipped_series")
    values = _wide_logdir(tmp_path, steps=2_000)
    served = Served(tmp_path)
    body = served.get_json("/series?run=wide&stat=grad_norm")
    rows = len(body["steps"])
    assert (body["max_points"], body["total_steps"]) == (512, 2_000)
    assert 512 <= rows and rows * len(WIDE_LAYERS) <= 1_700
    assert body["notices"] == [
        "3 layers: at most 1700 values are served per response, so no more than 512 of the 2000 steps are "
        "shown, each layer's extremes and the non-finite steps first"
    ]
    # The promise still holds within the cap: each layer's extremes are there.
    kept = set(body["steps"])
    assert set(values.argmin(axis=0).tolist()) | set(values.argmax(axis=0).tolist()) <= kept
    assert body["values"] == values[body["steps"]].tolist()
    # Every size over the cap is the same body, computed once.
    for size in plugin.MAX_POINTS_SIZES[1:]:
        assert served.get_json("/series?run=wide&stat=grad_norm&max_points=%d" % size) == body
    assert encodes.calls == 1


def test_a_cap_too_small_for_every_nonfinite_step_says_which_it_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(plugin, "MAX_VALUES_PER_RESPONSE", 60)
    nonfinite_rows = list(range(30, 60))
    _wide_logdir(tmp_path, nonfinite_rows)
    body = Served(tmp_path).get_json("/series?run=wide&stat=grad_norm")
    assert len(body["steps"]) == 20
    assert {0, WIDE_STEPS - 1, nonfinite_rows[0]} <= set(body["steps"])
    assert body["notices"][1].startswith("not every step that matters fits: 20 of the ")


def test_reads_of_the_data_provider_run_one_at_a_time(logdir, monkeypatch):
    reads = Calls(monkeypatch, reader, "read_stat", delay_s=SLOW_COMPUTE_S / 3)
    served = Served(logdir)
    paths = ["/series?run=%s&stat=%s" % (run, stat) for run in RUNS for stat in metadata.BUILTIN_STATS[:4]]
    _burst(served, paths)
    assert reads.calls == len(paths)
    assert reads.most_at_once == plugin.MAX_CONCURRENT_READS


def test_concurrent_runs_requests_parse_each_content_once(logdir):
    served = Served(logdir)
    before = metadata._parsed.parses
    answers = _burst(served, ["/runs"] * THREADS)
    assert all(answer == answers[0] for answer in answers)
    # One content per statistic, the same in every run (the same layers).
    assert metadata._parsed.parses - before <= len(metadata.BUILTIN_STATS)


def test_urgent_jobs_go_first_and_run_on_the_workers_own_threads():
    workers = cache.Workers(1, "test")
    order, threads = [], set()
    holding, release = threading.Event(), threading.Event()

    def job(name, block=False):
        def run():
            threads.add(threading.current_thread().name)
            order.append(name)
            if block:
                holding.set()
                release.wait()
            return name

        return run

    callers = [threading.Thread(target=workers.run, args=(job("first", block=True),))]
    callers[0].start()
    holding.wait()
    for index in range(3):
        callers.append(threading.Thread(target=workers.run, args=(job("diagnosis %d" % index),)))
        callers[-1].start()
    wait_for(lambda: workers._jobs.qsize() == 3, "the diagnoses to queue")
    callers.append(threading.Thread(target=workers.run, args=(job("chart"),), kwargs={"urgent": True}))
    callers[-1].start()
    wait_for(lambda: workers._jobs.qsize() == 4, "the chart to queue")
    release.set()
    for thread in callers:
        thread.join()
    assert order == ["first", "chart", "diagnosis 0", "diagnosis 1", "diagnosis 2"]
    assert threads == {"tb_gradhealth-test-0"}
    with pytest.raises(LookupError, match="raised on the worker"):
        workers.run(lambda: (_ for _ in ()).throw(LookupError("raised on the worker")))
