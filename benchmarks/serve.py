"""Serving benchmark: a real `tensorboard` over big logdirs, Gradient Health against the Scalars plugin holding the same numbers.

For each logdir size (runs x layers x logged steps) and each `--load_fast`
value it starts `tensorboard`, measures the time until the tab's data is
complete, the latency of the tab's routes, the memory of the serving
processes (TensorBoard and, under `--load_fast=true`, its Rust data server),
and the event-file bytes per logged step. The anchor is TensorBoard's
Scalars plugin serving the same numbers written by `tf.summary.scalar`, one
tag per statistic and layer, with `--samples_per_plugin=scalars=<steps>` so
that it holds every step as we do. Configurations are interleaved over
repetitions; medians and GH/Scalars ratios are printed.

"Complete" is when `/runs` lists every run at its last step (Scalars: when
the tag each step writes last reaches the last step in every run). Latency:
the first request of each route after that (`first`), then round robin
`--requests` more: `/runs`, `/series` and `/health?run` of the same run
(answers the plugin may have cached), the same routes for each other run
once (answers it cannot have cached), and `/health` of all runs, which the
tab requests on every refresh. The Scalars anchor's equivalent of one
`/series` is one `scalars_multirun` request per layer, as its tab makes.

    python -m benchmarks.serve --sizes 1,10,50 --anchor-sizes 1,10
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
import urllib.parse
import urllib.request

from benchmarks import common, eventgen

# The tests' helpers start and stop a real `tensorboard`.
sys.path.insert(0, str(common.REPO / "tests"))
import tb_server

PLUGIN = "/data/plugin/gradient_health"
SCALARS = "/data/plugin/scalars"
STAT = "grad_norm"  # the statistic the tab shows first
POLL_INTERVAL_S = 0.5
# Each route is sampled at least this many times, then until its time
# budget is spent (a /health of 50 big runs can take tens of seconds).
MIN_SAMPLES = 3
WHOLE_STAT_ROUTE = "all layers of 1 stat (%d requests)"
ALL_RUNS_HEALTH = "/health"


def _post_json(server, path: str, form: dict):
    body = urllib.parse.urlencode(form, doseq=True).encode()
    request = urllib.request.Request(server.url + path, data=body)
    with urllib.request.urlopen(request, timeout=common.HTTP_TIMEOUT_S) as response:
        return tb_server.strict_json(response.read())


def _runs(spec: eventgen.LogdirSpec) -> list[str]:
    return [eventgen.run_name(index) for index in range(spec.runs)]


def _complete_gradient_health(server, spec: eventgen.LogdirSpec) -> bool:
    """True once /runs lists every run with its last step: the tab can show all the data."""
    runs = server.get_json(PLUGIN + "/runs")["runs"]
    done = [info for info in runs if info["max_step"] == spec.steps - 1 and len(info["stats"]) == len(eventgen.STATS)]
    return len(done) == spec.runs


def _complete_scalars(server, spec: eventgen.LogdirSpec) -> bool:
    """True once the tag each step writes last holds the last step in every run."""
    body = _post_json(server, SCALARS + "/scalars_multirun", {"tag": spec.last_scalar_tag, "runs": _runs(spec)})
    return all(body.get(run) and body[run][-1][1] == spec.steps - 1 for run in _runs(spec))


def _routes(spec: eventgen.LogdirSpec, base: str):
    """Returns [(route name, function(k) -> (seconds, status, bytes) or None)] of the layout's tab.

    `k` counts the requests of the route, 0 for the first after loading. A
    function returns None when it has no request left to make.
    """
    runs = _runs(spec)
    layers = eventgen.layer_names(spec.layers)

    def get(path):
        return lambda k: common.timed_request(base + path(k))

    def each_other_run(path):
        # Every other run once: requests the plugin cannot have cached.
        return lambda k: common.timed_request(base + path(runs[k + 1])) if k + 1 < len(runs) else None

    if spec.layout == eventgen.GRADIENT_HEALTH:
        series = lambda run: PLUGIN + "/series?run=%s&stat=%s" % (run, STAT)  # noqa: E731
        health = lambda run: PLUGIN + "/health?run=%s" % run  # noqa: E731
        return [
            ("/runs", get(lambda k: PLUGIN + "/runs")),
            ("/series (same run)", get(lambda k: series(runs[0]))),
            ("/series (each other run once)", each_other_run(series)),
            ("/health?run (same run)", get(lambda k: health(runs[0]))),
            ("/health?run (each other run once)", each_other_run(health)),
            # What the tab requests on every refresh: all runs.
            (ALL_RUNS_HEALTH, get(lambda k: PLUGIN + "/health")),
        ]

    def one_tag(k):
        tag = eventgen.scalar_tag(STAT, layers[k % len(layers)])
        return common.timed_request(base + SCALARS + "/scalars_multirun", {"tag": tag, "runs": [runs[k % len(runs)]]})

    def whole_stat(k):
        # The Scalars tab fetches each tag's card on its own: one statistic
        # of one run (what one /series serves) is one request per layer.
        total, statuses, size = 0.0, set(), 0
        for layer in layers:
            form = {"tag": eventgen.scalar_tag(STAT, layer), "runs": [runs[k % len(runs)]]}
            seconds, status, nbytes = common.timed_request(base + SCALARS + "/scalars_multirun", form)
            total += seconds
            statuses.add(status)
            size += nbytes
        return total, max(statuses), size

    return [
        ("/tags", get(lambda k: SCALARS + "/tags")),
        ("/scalars_multirun (1 tag)", one_tag),
        (WHOLE_STAT_ROUTE % spec.layers, whole_stat),
    ]


def _wait_complete(server, spec: eventgen.LogdirSpec, start: float, timeout_s: float) -> float:
    """Polls until the data is complete; returns the peak resident memory seen meanwhile (MiB)."""
    complete = _complete_gradient_health if spec.layout == eventgen.GRADIENT_HEALTH else _complete_scalars
    peak = 0.0
    while True:
        peak = max(peak, common.rss_mib(common.process_tree(server.process.pid)))
        try:
            if complete(server, spec):
                return peak
        except (OSError, ValueError, KeyError):
            pass  # not loaded far enough yet
        if server.process.poll() is not None:
            raise RuntimeError("tensorboard exited:\n" + server.log()[-3000:])
        if time.perf_counter() - start > timeout_s:
            raise TimeoutError("data of %s not complete after %ss" % (spec.name, timeout_s))
        time.sleep(POLL_INTERVAL_S)


def _sample_routes(routes, args) -> dict:
    """Times the first request of every route, then `args.requests` more, round robin, within each route's budget."""
    latencies = {}
    for name, call in routes:
        answer = call(0)
        if answer is None:
            continue
        seconds, status, nbytes = answer
        latencies[name] = {"first_s": seconds, "samples_s": [], "bytes": nbytes, "spent_s": seconds, "errors": []}
        if status != 200:
            latencies[name]["errors"].append("first: status %d after %.1fs" % (status, seconds))
    for k in range(1, args.requests + 1):
        for name, call in routes:
            entry = latencies.get(name)
            if entry is None or len(entry["errors"]) >= MIN_SAMPLES:
                continue
            if len(entry["samples_s"]) >= MIN_SAMPLES and entry["spent_s"] > args.route_budget_s:
                continue
            answer = call(k)
            if answer is None:
                continue
            seconds, status, _ = answer
            entry["spent_s"] += seconds
            if status == 200:
                entry["samples_s"].append(seconds)
            else:
                entry["errors"].append("request %d: status %d after %.1fs" % (k, status, seconds))
    return latencies


def _sample_latencies(server, spec: eventgen.LogdirSpec, args) -> dict:
    """Samples every route of the layout; `/health` of all runs last, as it fills the plugin's per-run cache."""
    routes = _routes(spec, server.url)
    latencies = _sample_routes([route for route in routes if route[0] != ALL_RUNS_HEALTH], args)
    latencies.update(_sample_routes([route for route in routes if route[0] == ALL_RUNS_HEALTH], args))
    return latencies


def measure(spec: eventgen.LogdirSpec, logdir, load_fast: bool, args) -> dict:
    """Starts tensorboard over `logdir` and measures one configuration."""
    extra = ["--load_fast=%s" % str(load_fast).lower()]
    if spec.layout == eventgen.SCALARS:
        extra.append("--samples_per_plugin=scalars=%d" % (args.anchor_samples or spec.steps))
    result = {"layout": spec.layout, "runs": spec.runs, "layers": spec.layers, "load_fast": load_fast, "args": extra}
    start = time.perf_counter()
    with tb_server.running_tensorboard(str(logdir), *extra, timeout_s=args.complete_timeout_s) as server:
        result["startup_s"] = time.perf_counter() - start
        peak_sampled = _wait_complete(server, spec, start, args.complete_timeout_s)
        result["complete_s"] = time.perf_counter() - start
        pids = common.process_tree(server.process.pid)
        result["cpu_to_complete_s"] = common.cpu_seconds(pids)
        result["rss_loaded_mib"] = common.rss_mib(pids)
        result["latency"] = _sample_latencies(server, spec, args)
        pids = common.process_tree(server.process.pid)
        peaks = common.peak_rss_mib(pids)
        result["peak_rss_mib_by_process"] = {
            "%s[%d]" % (common.process_name(pid), pid): mib for pid, mib in peaks.items()
        }
        # VmHWM per process: their sum bounds the peak of the two together.
        result["peak_rss_mib"] = sum(peaks.values())
        result["peak_rss_sampled_mib"] = max(peak_sampled, common.rss_mib(pids))
    return result


def _summarize(measurements: list[dict]) -> dict:
    """Medians over repetitions; latency samples of all repetitions pooled."""
    first = measurements[0]
    summary = {key: first[key] for key in ("layout", "runs", "layers", "load_fast")}
    for key in (
        "startup_s",
        "complete_s",
        "cpu_to_complete_s",
        "rss_loaded_mib",
        "peak_rss_mib",
        "peak_rss_sampled_mib",
    ):
        summary[key] = common.median([m[key] for m in measurements])
    summary["reps"] = len(measurements)
    summary["latency"] = {}
    for route in first["latency"]:
        samples = [s for m in measurements for s in m["latency"][route]["samples_s"]]
        summary["latency"][route] = dict(
            common.latency_summary(samples),
            first_ms=round(common.median([m["latency"][route]["first_s"] for m in measurements]) * 1e3, 1),
            response_kib=round(first["latency"][route]["bytes"] / 1024, 1),
            error_messages=[e for m in measurements for e in m["latency"][route]["errors"]],
        )
    return summary


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,10,50", help="numbers of runs of the Gradient Health logdirs")
    parser.add_argument(
        "--anchor-sizes", default="1,10", help="numbers of runs of the Scalars anchor logdirs ('' for none)"
    )
    parser.add_argument("--layers", type=int, default=100)
    parser.add_argument("--steps", type=int, default=10_000, help="logged steps per run")
    parser.add_argument("--load-fast", default="true,false", help="--load_fast values to run")
    parser.add_argument("--reps", type=int, default=1, help="interleaved repetitions of every configuration")
    parser.add_argument("--requests", type=int, default=10, help="timed requests per route (after one warm-up)")
    parser.add_argument("--route-budget-s", type=float, default=60.0, help="stop sampling a route after this long")
    parser.add_argument("--complete-timeout-s", type=float, default=3600.0)
    parser.add_argument("--anchor-samples", type=int, default=0, help="scalars samples kept per tag (0: every step)")
    parser.add_argument(
        "--anchor-python-max-runs",
        type=int,
        default=1,
        help="largest Scalars logdir run under --load_fast=false (its multiplexer takes ~9 GB and "
        "~17 min per run of 100 layers x 10,000 steps on 2 busy cores)",
    )
    parser.add_argument("--out-dir", default=str(common.OUT_DIR))
    args = parser.parse_args(argv)
    out_dir = pathlib.Path(args.out_dir)
    load_fast_values = [value.strip() == "true" for value in args.load_fast.split(",") if value.strip()]

    configs = []
    for runs in common.parse_int_list(args.sizes):
        configs.append(eventgen.LogdirSpec(eventgen.GRADIENT_HEALTH, runs, args.layers, args.steps))
    for runs in common.parse_int_list(args.anchor_sizes):
        configs.append(eventgen.LogdirSpec(eventgen.SCALARS, runs, args.layers, args.steps))
    configs.sort(key=lambda spec: (spec.runs, spec.layout))
    logdirs = {}
    bytes_per_step = {}
    for spec in configs:
        started = time.perf_counter()
        logdirs[spec] = eventgen.build_logdir(spec, out_dir)
        total = eventgen.logdir_bytes(logdirs[spec])
        bytes_per_step[spec.name] = total / (spec.runs * spec.steps)
        print(
            "logdir %s: %.1f MiB, %.0f bytes per logged step (ready in %.1fs)"
            % (spec.name, total / 2**20, bytes_per_step[spec.name], time.perf_counter() - started),
            flush=True,
        )

    plan = [
        (spec, load_fast)
        for spec in configs
        for load_fast in load_fast_values
        if load_fast or spec.layout != eventgen.SCALARS or spec.runs <= args.anchor_python_max_runs
    ]
    results = {
        "machine": common.machine("benchmarks.serve", argv),
        "args": vars(args),
        "bytes_per_logged_step": bytes_per_step,
        "skipped": [
            "%s load_fast=%s" % (spec.name, lf) for spec in configs for lf in load_fast_values if (spec, lf) not in plan
        ],
        "raw": [],
    }
    path = common.results_path("serve", out_dir)
    results["failed"] = []
    for rep in range(args.reps):
        for spec, load_fast in plan:
            print("rep %d: %s load_fast=%s ..." % (rep, spec.name, load_fast), flush=True)
            try:
                measured = measure(spec, logdirs[spec], load_fast, args)
            except (RuntimeError, TimeoutError, AssertionError, OSError) as error:
                # Keep what the other configurations measure (e.g. after an out-of-memory kill).
                print("  FAILED: %s" % str(error)[:2000], flush=True)
                results["failed"].append(
                    {"rep": rep, "config": "%s load_fast=%s" % (spec.name, load_fast), "error": str(error)[:4000]}
                )
                continue
            print(
                "  complete in %.1fs, cpu %.1fs, peak rss %.0f MiB"
                % (measured["complete_s"], measured["cpu_to_complete_s"], measured["peak_rss_mib"]),
                flush=True,
            )
            results["raw"].append(measured)
            common.write_results("serve", results, path=path)  # partial results survive a later crash

    summaries = []
    for spec, load_fast in plan:
        matching = [
            m for m in results["raw"] if (m["layout"], m["runs"], m["load_fast"]) == (spec.layout, spec.runs, load_fast)
        ]
        if not matching:
            continue
        summary = _summarize(matching)
        summary["bytes_per_step"] = bytes_per_step[spec.name]
        summaries.append(summary)
    results["summary"] = summaries
    results["ratios"] = _ratios(summaries)
    common.write_results("serve", results, path=path)
    _print_report(summaries, results["ratios"])
    for failure in results["failed"]:
        print("\nFAILED rep %d %s: %s" % (failure["rep"], failure["config"], failure["error"][:300]))
    if results["skipped"]:
        print("\nnot run: %s" % ", ".join(results["skipped"]))
    print("\nresults: %s" % path)
    return results


def _ratios(summaries: list[dict]) -> list[dict]:
    """Gradient Health / Scalars, for every size and backend measured in both layouts."""
    by_key = {(s["layout"], s["runs"], s["load_fast"]): s for s in summaries}
    ratios = []
    for (layout, runs, load_fast), ours in sorted(by_key.items()):
        anchor = by_key.get((eventgen.SCALARS, runs, load_fast))
        if layout != eventgen.GRADIENT_HEALTH or anchor is None:
            continue
        whole_stat = anchor["latency"][WHOLE_STAT_ROUTE % anchor["layers"]]["p50_ms"]
        series = ours["latency"]["/series (same run)"]
        ratios.append(
            {
                "runs": runs,
                "load_fast": load_fast,
                "complete_s": ours["complete_s"] / anchor["complete_s"],
                "cpu_to_complete_s": ours["cpu_to_complete_s"] / anchor["cpu_to_complete_s"],
                "rss_loaded_mib": ours["rss_loaded_mib"] / anchor["rss_loaded_mib"],
                "peak_rss_mib": ours["peak_rss_mib"] / anchor["peak_rss_mib"],
                "bytes_per_step": ours["bytes_per_step"] / anchor["bytes_per_step"],
                # One statistic of one run: our /series against one Scalars request per layer.
                "one_stat_first": series["first_ms"] / whole_stat,
                "one_stat_repeat": series["p50_ms"] / whole_stat if series["p50_ms"] else None,
            }
        )
    return ratios


def _print_report(summaries: list[dict], ratios: list[dict]) -> None:
    print("\n## Load and memory (medians over repetitions)\n")
    common.print_table(
        summaries,
        [
            "layout",
            "runs",
            "load_fast",
            "reps",
            "startup_s",
            "complete_s",
            "cpu_to_complete_s",
            "rss_loaded_mib",
            "peak_rss_mib",
            "bytes_per_step",
        ],
    )
    print("\n## Latency (ms; first = first request after loading)\n")
    rows = []
    for summary in summaries:
        for route, latency in summary["latency"].items():
            rows.append(
                dict(
                    latency,
                    layout=summary["layout"],
                    runs=summary["runs"],
                    load_fast=summary["load_fast"],
                    route=route,
                    errors=len(latency["error_messages"]),
                )
            )
    common.print_table(
        rows,
        [
            "layout",
            "runs",
            "load_fast",
            "route",
            "n",
            "p50_ms",
            "p95_ms",
            "max_ms",
            "first_ms",
            "response_kib",
            "errors",
        ],
    )
    if ratios:
        print("\n## Gradient Health / Scalars (same numbers; < 1 means we are cheaper)\n")
        common.print_table(
            ratios,
            [
                "runs",
                "load_fast",
                "complete_s",
                "cpu_to_complete_s",
                "rss_loaded_mib",
                "peak_rss_mib",
                "bytes_per_step",
                "one_stat_first",
                "one_stat_repeat",
            ],
        )


if __name__ == "__main__":
    main()
