"""Memory and latency under a burst of mixed requests: a real `tensorboard` over one wide, long run (1,000 layers x 20,000 steps by default).

    python -m benchmarks.serve_memory
    python -m benchmarks.serve_memory --baseline 205e960   # the same against another revision of the plugin

Once the data is complete, one warm-up request per route (`/runs`,
`/series` of `grad_norm` at the tab's default size, `/health`) is made and
timed alone; then `--concurrency` requests of a mix (`/runs`, `/health`,
`/health?run`, `/series` of every statistic at every size the tab may ask
for) are released at once. Reported:

* the growth of the peak resident memory of `tensorboard` and its Rust data
  server together during the burst, over their resident memory after the
  warm-up (each process's peak is reset through `/proc/<pid>/clear_refs`
  after the warm-up; where that is not allowed, the memory is sampled);
* each response's time against the warm-up request of its route (its
  single-request time, a cold computation), the largest ratio first;
* errors (any status but 200).

The targets: growth at most `--max-growth-mib`, no response over
`--max-latency-ratio` times its single-request time.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import pathlib
import sys
import threading
import time

from benchmarks import common, eventgen
from benchmarks.open_run import code_dir

# The tests' helpers start and stop a real `tensorboard`.
sys.path.insert(0, str(common.REPO / "tests"))
import tb_server

PLUGIN = "/data/plugin/gradient_health"
RUN = eventgen.run_name(0)
SIZES = (512, 1_024, 2_048, 4_096, 8_192)  # what the tab asks, by chart width
SAMPLE_INTERVAL_S = 0.02
POLL_INTERVAL_S = 0.5
MAX_GROWTH_MIB = 500.0
MAX_LATENCY_RATIO = 10.0


def _wait_complete(server, steps: int, timeout_s: float) -> None:
    def complete():
        runs = server.get_json(PLUGIN + "/runs")["runs"]
        return any(run["max_step"] == steps - 1 and len(run["stats"]) == len(eventgen.STATS) for run in runs)

    server.wait_until(complete, timeout_s, "the run to load")


def _series(stat: str, max_points: int | None = None) -> str:
    path = "%s/series?run=%s&stat=%s" % (PLUGIN, RUN, stat)
    return path if max_points is None else path + "&max_points=%d" % max_points


def burst_paths(concurrency: int) -> list[tuple[str, str]]:
    """(route, path) of a mixed burst: mostly /series of every statistic and size, and the other routes."""
    others = [("/runs", PLUGIN + "/runs"), ("/health", PLUGIN + "/health"), ("/health", PLUGIN + "/health?run=" + RUN)]
    series = [("/series", _series(stat, size)) for size in SIZES for stat in eventgen.STATS]
    mix = []
    while len(mix) < concurrency:
        mix.append(others[len(mix) % len(others)] if len(mix) % 4 == 0 else series[(len(mix) * 7) % len(series)])
    return mix


def _reset_peaks(pids) -> bool:
    """Resets each process's peak resident memory (VmHWM); False where the kernel refuses."""
    try:
        for pid in pids:
            pathlib.Path("/proc/%d/clear_refs" % pid).write_text("5")
        return True
    except OSError:
        return False


class RssSampler(threading.Thread):
    """Samples the summed resident memory of some processes until stopped; keeps the largest."""

    def __init__(self, pids):
        super().__init__(daemon=True)
        self.pids = pids
        self.peak_mib = common.rss_mib(pids)
        self._done = threading.Event()

    def run(self):
        while not self._done.is_set():
            self.peak_mib = max(self.peak_mib, common.rss_mib(self.pids))
            time.sleep(SAMPLE_INTERVAL_S)

    def stop(self) -> float:
        self._done.set()
        self.join()
        return max(self.peak_mib, common.rss_mib(self.pids))


def _fire(base_url: str, paths: list[tuple[str, str]]) -> list[dict]:
    go = threading.Event()

    def one(route_path):
        route, path = route_path
        go.wait()
        seconds, status, nbytes = common.timed_request(base_url + path)
        return {"route": route, "path": path, "s": seconds, "status": status, "bytes": nbytes}

    with concurrent.futures.ThreadPoolExecutor(max_workers=len(paths)) as pool:
        futures = [pool.submit(one, route_path) for route_path in paths]
        go.set()
        return [future.result() for future in futures]


def measure(logdir: pathlib.Path, code: pathlib.Path | None, args) -> dict:
    flags = ["--load_fast=true"]
    if args.samples is not None:
        flags.append("--samples_per_plugin=gradient_health=%d" % args.samples)
    python_path = None if code is None else str(code)
    with tb_server.running_tensorboard(
        str(logdir), *flags, timeout_s=args.timeout_s, python_path=python_path
    ) as server:
        _wait_complete(server, args.steps, args.timeout_s)
        warmup = {}
        for route, path in (
            ("/runs", PLUGIN + "/runs"),
            ("/series", _series("grad_norm")),
            ("/health", PLUGIN + "/health"),
        ):
            seconds, status, nbytes = common.timed_request(server.url + path)
            warmup[route] = {"s": seconds, "status": status, "bytes": nbytes}
        pids = common.process_tree(server.process.pid)
        rss_after_warmup = common.rss_mib(pids)
        rss_after_warmup_by_process = {pid: common.rss_mib([pid]) for pid in pids}
        exact_peaks = _reset_peaks(pids)
        sampler = RssSampler(pids)
        sampler.start()
        responses = _fire(server.url, burst_paths(args.concurrency))
        sampled_peak = sampler.stop()
        peaks = common.peak_rss_mib(pids)
        peak = sum(peaks.values()) if exact_peaks else sampled_peak
        names = {pid: common.process_name(pid) for pid in pids}
    for response in responses:
        response["ratio"] = response["s"] / warmup[response["route"]]["s"]
    responses.sort(key=lambda response: -response["ratio"])
    return {
        "code": "this" if code is None else code.name,
        "warmup": warmup,
        "rss_after_warmup_mib": rss_after_warmup,
        "peak_mib": peak,
        "peak_by_process_mib": {"%s[%d]" % (names[pid], pid): mib for pid, mib in peaks.items()},
        "rss_after_warmup_by_process_mib": {
            "%s[%d]" % (names[pid], pid): mib for pid, mib in rss_after_warmup_by_process.items()
        },
        "peak_exact": exact_peaks,
        "growth_mib": peak - rss_after_warmup,
        "errors": [r for r in responses if r["status"] != 200],
        "max_ratio": responses[0]["ratio"],
        "slowest": responses[:5],
        "responses": responses,
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=1_000)
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument(
        "--samples",
        type=int,
        default=None,
        help="--samples_per_plugin=gradient_health=N (0: every step held); default: the plugin's loader's",
    )
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--baseline", default="", help="also measure this git revision of the plugin")
    parser.add_argument("--max-growth-mib", type=float, default=MAX_GROWTH_MIB)
    parser.add_argument("--max-latency-ratio", type=float, default=MAX_LATENCY_RATIO)
    parser.add_argument("--timeout-s", type=float, default=3_600.0)
    parser.add_argument("--out-dir", default=str(common.OUT_DIR))
    args = parser.parse_args(argv)
    out_dir = pathlib.Path(args.out_dir)
    started = time.perf_counter()
    logdir = eventgen.build_logdir(eventgen.LogdirSpec(eventgen.GRADIENT_HEALTH, 1, args.layers, args.steps), out_dir)
    print(
        "logdir %s: %.0f MiB (%.0fs)" % (logdir, eventgen.logdir_bytes(logdir) / 2**20, time.perf_counter() - started)
    )
    results = {"machine": common.machine("benchmarks.serve_memory", argv), "args": vars(args), "runs": []}
    path = common.results_path("serve_memory", out_dir)
    codes = [None] + ([code_dir(args.baseline, out_dir)] if args.baseline else [])
    for code in codes:
        measured = measure(logdir, code, args)
        measured["met"] = (
            not measured["errors"]
            and measured["growth_mib"] <= args.max_growth_mib
            and measured["max_ratio"] <= args.max_latency_ratio
        )
        results["runs"].append(measured)
        common.write_results("serve_memory", results, path=path)
    print("\n## %d concurrent mixed requests, %d layers x %d steps\n" % (args.concurrency, args.layers, args.steps))
    rows = []
    for measured in results["runs"]:
        rows.append(
            {
                "code": measured["code"],
                "rss_after_warmup_mib": measured["rss_after_warmup_mib"],
                "peak_mib": measured["peak_mib"],
                "growth_mib": measured["growth_mib"],
                "max_ratio": measured["max_ratio"],
                "errors": len(measured["errors"]),
                "warmup_series_s": measured["warmup"]["/series"]["s"],
                "warmup_health_s": measured["warmup"]["/health"]["s"],
                "met": measured["met"],
            }
        )
    common.print_table(rows, list(rows[0]))
    for measured in results["runs"]:
        print("\nslowest of %s (time / its route's single-request time):" % measured["code"])
        for response in measured["slowest"]:
            print("  %.1fx  %.2fs  %s  %d" % (response["ratio"], response["s"], response["path"], response["status"]))
    print("\nresults: %s" % path)
    return results


if __name__ == "__main__":
    main()
