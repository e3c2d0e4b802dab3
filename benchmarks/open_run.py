"""Opening a long run in the tab, server side: this code against a baseline revision of the plugin, in the same run, under each `--load_fast`.

    python -m benchmarks.open_run --baseline 205e960 --reps 3

For each code version (this checkout, and the plugin of `--baseline` taken
from git into `benchmarks/out/code-<rev>/`) and each `--load_fast` value, a
real `tensorboard` is started over a run of `--layers` x `--steps` logged
steps (six statistics, `eventgen`'s layout), and once its data is complete:

* `cold`: the first `/series` of `grad_norm` at the tab's `max_points`,
  from sending the request to the last byte of the (gzipped) body;
* `warm`: the same request again;
* `other_size`: `/series` at half the points (another chart width);
* `refresh`: a second, growing run (`--growing-steps`, then `--new-steps`
  more written while TensorBoard runs): the refresh the tab makes after
  the new steps, `after_step=<the last step it has>` (a baseline without
  it answers the whole series), its time and bytes.

Configurations are interleaved over repetitions; medians are printed with
this code's ratio to the baseline. `--breakdown` also times the stages of a
cold `/series` of this code in-process (data provider read, decoding, row
selection and the fields of the body, JSON and gzip apart and as the
plugin streams them together), under both data providers.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

from benchmarks import common, eventgen

# The tests' helpers start and stop a real `tensorboard`.
sys.path.insert(0, str(common.REPO / "tests"))
import tb_server

PLUGIN = "/data/plugin/gradient_health"
STAT = "grad_norm"
RUN = eventgen.run_name(0)
POLL_INTERVAL_S = 0.25
# The data server and the multiplexer both poll the logdir; a short interval
# makes the growing run's new steps show soon.
RELOAD_INTERVAL_S = 1
THIS_CODE = "this"


def snapshot_of_this_code(out_dir: pathlib.Path) -> pathlib.Path:
    """Returns a copy of this checkout's plugin package, so that edits during a long run do not mix in."""
    target = pathlib.Path(tempfile.mkdtemp(prefix="code-this-", dir=out_dir))
    shutil.copytree(common.REPO / "tb_gradhealth", target / "tb_gradhealth")
    return target


def code_dir(revision: str, out_dir: pathlib.Path) -> pathlib.Path:
    """Returns a directory holding the plugin package at `revision` (extracted from git once)."""
    target = out_dir / ("code-%s" % revision)
    if not (target / "tb_gradhealth" / "__init__.py").exists():
        target.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "-C", str(common.REPO), "archive", revision, "tb_gradhealth"], capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


GROWING_RUN = "growing"


def _series_url(server, run: str, max_points: int, after_step: int | None = None) -> str:
    url = "%s%s/series?run=%s&stat=%s&max_points=%d" % (server.url, PLUGIN, run, STAT, max_points)
    return url if after_step is None else url + "&after_step=%d" % after_step


def _wait_for_steps(server, last_steps: dict[str, int], n_stats: int, timeout_s: float) -> None:
    def complete():
        runs = {run["run"]: run for run in server.get_json(PLUGIN + "/runs")["runs"]}
        return all(
            run in runs and runs[run]["max_step"] == last and len(runs[run]["stats"]) == n_stats
            for run, last in last_steps.items()
        )

    server.wait_until(complete, timeout_s, "steps %s of every statistic" % last_steps)


def _request(url: str) -> dict:
    seconds, status, nbytes = common.timed_request(url)
    if status != 200:
        raise RuntimeError("GET %s: status %d" % (url, status))
    return {"ms": seconds * 1e3, "kib": nbytes / 1024}


def measure(code: pathlib.Path, load_fast: bool, long_run: pathlib.Path, growing_run: pathlib.Path, args) -> dict:
    """One `tensorboard` over the long run (hard-linked) and a copy of the growing run, which grows while it runs."""
    from tb_gradhealth.summary import GradientHealthFileWriter

    with tempfile.TemporaryDirectory(prefix="open_run_") as tmp:
        logdir = pathlib.Path(tmp)
        (logdir / RUN).mkdir()
        for source in long_run.iterdir():
            os.link(source, logdir / RUN / source.name)
        shutil.copytree(growing_run, logdir / GROWING_RUN)
        flags = ["--load_fast=%s" % str(load_fast).lower(), "--reload_interval=%d" % RELOAD_INTERVAL_S]
        with tb_server.running_tensorboard(str(logdir), *flags, python_path=str(code)) as server:
            last = args.growing_steps - 1
            _wait_for_steps(server, {RUN: args.steps - 1, GROWING_RUN: last}, len(eventgen.STATS), args.timeout_s)
            result = {"cold": _request(_series_url(server, RUN, args.max_points))}
            result["warm"] = _request(_series_url(server, RUN, args.max_points))
            result["other_size"] = _request(_series_url(server, RUN, args.max_points // 2))
            first = _request(_series_url(server, GROWING_RUN, args.max_points))
            layers = eventgen.layer_names(args.layers)
            values = eventgen.run_values(0, args.new_steps, args.layers, first_step=args.growing_steps)
            with GradientHealthFileWriter(str(logdir / GROWING_RUN)) as writer:
                for row, step in enumerate(range(args.growing_steps, args.growing_steps + args.new_steps)):
                    stats = {stat: values[row, index] for index, stat in enumerate(eventgen.STATS)}
                    writer.write(step, stats, layers, wall_time=eventgen.wall_time(0, step))
            _wait_for_steps(server, {GROWING_RUN: last + args.new_steps}, len(eventgen.STATS), args.timeout_s)
            result["refresh"] = _request(_series_url(server, GROWING_RUN, args.max_points, after_step=last))
            result["first_kib"] = first["kib"]
    return result


def breakdown(logdir: pathlib.Path, args) -> list[dict]:
    """Times each stage of a cold /series of this code in-process, under both data providers."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_ingester
    from tensorboard.data import server_ingester
    from tensorboard.util import grpc_util

    from tb_gradhealth import plugin, reader

    rows = []
    ctx = context.RequestContext()
    for load_fast in (True, False):
        flags = tb_server.configured_flags(
            str(logdir),
            "--load_fast=%s" % str(load_fast).lower(),
            "--reload_interval",
            "0",
            "--reload_task",
            "blocking",
        )
        if load_fast:
            ingester = server_ingester.SubprocessServerDataIngester(
                server_ingester.get_server_binary(),
                str(logdir),
                reload_interval=0,
                channel_creds_type=grpc_util.ChannelCredsType.LOCAL,
                samples_per_plugin=flags.samples_per_plugin,
            )
        else:
            ingester = data_ingester.LocalDataIngester(flags)
        ingester.start()
        provider = ingester.data_provider
        deadline = time.monotonic() + args.timeout_s
        while True:
            listing = reader.list_run_tags(provider, ctx, "")
            tags = listing.get(RUN)
            if tags is not None and tags.max_step == args.steps - 1 and len(tags.stats) == len(eventgen.STATS):
                break
            if time.monotonic() > deadline:
                raise TimeoutError("data not loaded")
            time.sleep(POLL_INTERVAL_S)
        times = {}
        started = time.perf_counter()
        listing = reader.list_run_tags(provider, ctx, "", RUN)
        stat_tags = listing[RUN].stats[STAT]
        times["list_ms"] = time.perf_counter() - started
        started = time.perf_counter()
        data, _ = reader._read_tags(provider, ctx, "", RUN, [info.tag for info in stat_tags.tags])
        times["provider_read_ms"] = time.perf_counter() - started
        started = time.perf_counter()
        info = stat_tags.tags[0]
        series, _ = reader.series_from_tensors(STAT, info.tag, info.content.layers, data[info.tag])
        times["decode_ms"] = time.perf_counter() - started
        started = time.perf_counter()
        fields, values, recorded = plugin.series_response(RUN, stat_tags, series, [], args.max_points)
        times["select_rows_ms"] = time.perf_counter() - started
        # JSON and gzip apart, as the plugin's streamed encoding does them together.
        started = time.perf_counter()
        text = json.dumps(dict(fields, values=plugin._json_floats(values, recorded)), allow_nan=False).encode("ascii")
        times["json_ms"] = time.perf_counter() - started
        started = time.perf_counter()
        gzip.compress(text, compresslevel=1, mtime=0)
        times["gzip_ms"] = time.perf_counter() - started
        started = time.perf_counter()
        plugin.gzipped_series(fields, values, recorded)
        times["streamed_json_and_gzip_ms"] = time.perf_counter() - started
        row = {key: round(value * 1e3, 1) for key, value in times.items()}
        row.update(load_fast=load_fast, rows=len(fields["steps"]), json_mib=round(len(text) / 2**20, 2))
        row["total_ms"] = round(
            sum(value for key, value in row.items() if key.endswith("_ms") and not key.startswith("streamed")), 1
        )
        rows.append(row)
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--baseline", default="205e960", help="git revision of the plugin to compare with ('' for none)"
    )
    parser.add_argument("--layers", type=int, default=100)
    parser.add_argument("--steps", type=int, default=10_000, help="logged steps of the run opened")
    parser.add_argument("--growing-steps", type=int, default=2_000, help="logged steps of the growing run")
    parser.add_argument("--new-steps", type=int, default=40, help="steps the growing run gains")
    parser.add_argument("--max-points", type=int, default=2_048, help="what the tab asks (a 2,048-pixel chart)")
    parser.add_argument("--load-fast", default="true,false")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--breakdown", action="store_true", help="also time this code's stages in-process")
    parser.add_argument("--timeout-s", type=float, default=600.0)
    parser.add_argument("--out-dir", default=str(common.OUT_DIR))
    args = parser.parse_args(argv)
    out_dir = pathlib.Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    codes = {THIS_CODE: snapshot_of_this_code(out_dir)}
    if args.baseline:
        codes[args.baseline] = code_dir(args.baseline, out_dir)
    load_fast_values = [value.strip() == "true" for value in args.load_fast.split(",") if value.strip()]
    logdir = eventgen.build_logdir(eventgen.LogdirSpec(eventgen.GRADIENT_HEALTH, 1, args.layers, args.steps), out_dir)
    growing = eventgen.build_logdir(
        eventgen.LogdirSpec(eventgen.GRADIENT_HEALTH, 1, args.layers, args.growing_steps), out_dir
    )
    results = {"machine": common.machine("benchmarks.open_run", argv), "args": vars(args), "raw": []}
    path = common.results_path("open_run", out_dir)
    if args.breakdown:
        # First: it imports this checkout's code as it is now.
        results["breakdown"] = breakdown(logdir, args)
    for rep in range(args.reps):
        for load_fast in load_fast_values:
            # Alternate which code goes first, so neither always meets a warmer machine.
            order = list(codes) if rep % 2 == 0 else list(reversed(codes))
            for name in order:
                print("rep %d: %s load_fast=%s ..." % (rep, name, load_fast), flush=True)
                measured = measure(codes[name], load_fast, logdir / RUN, growing / RUN, args)
                measured.update(code=name, load_fast=load_fast, rep=rep)
                results["raw"].append(measured)
                common.write_results("open_run", results, path=path)
    summary = _summarize(results["raw"], codes, load_fast_values)
    results["summary"] = summary
    common.write_results("open_run", results, path=path)
    print(
        "\n## Opening a run of %d layers x %d steps, and refreshing a growing one (medians, ms / KiB)\n"
        % (args.layers, args.steps)
    )
    common.print_table(
        summary,
        [
            "load_fast",
            "code",
            "reps",
            "cold_ms",
            "cold_kib",
            "warm_ms",
            "other_size_ms",
            "refresh_ms",
            "refresh_kib",
            "first_kib",
            "cold_ratio",
            "refresh_kib_ratio",
        ],
    )
    if args.breakdown:
        print("\n## Where a cold /series of this code goes (in-process, ms)\n")
        common.print_table(
            results["breakdown"],
            [
                "load_fast",
                "rows",
                "list_ms",
                "provider_read_ms",
                "decode_ms",
                "select_rows_ms",
                "json_ms",
                "gzip_ms",
                "streamed_json_and_gzip_ms",
                "total_ms",
                "json_mib",
            ],
        )
    print("\nresults: %s" % path)
    return results


def _summarize(raw: list[dict], codes: dict, load_fast_values: list[bool]) -> list[dict]:
    rows = []
    for load_fast in load_fast_values:
        by_code = {}
        for name in codes:
            matching = [m for m in raw if m["code"] == name and m["load_fast"] == load_fast]
            if not matching:
                continue
            by_code[name] = {
                "load_fast": load_fast,
                "code": name,
                "reps": len(matching),
                "cold_ms": common.median([m["cold"]["ms"] for m in matching]),
                "cold_kib": common.median([m["cold"]["kib"] for m in matching]),
                "warm_ms": common.median([m["warm"]["ms"] for m in matching]),
                "other_size_ms": common.median([m["other_size"]["ms"] for m in matching]),
                "refresh_ms": common.median([m["refresh"]["ms"] for m in matching]),
                "refresh_kib": common.median([m["refresh"]["kib"] for m in matching]),
                "first_kib": common.median([m["first_kib"] for m in matching]),
            }
        baseline = next((row for name, row in by_code.items() if name != THIS_CODE), None)
        this = by_code.get(THIS_CODE)
        if this is not None and baseline is not None:
            this["cold_ratio"] = this["cold_ms"] / baseline["cold_ms"]
            this["refresh_kib_ratio"] = this["refresh_kib"] / baseline["refresh_kib"]
        rows.extend(by_code.values())
    return rows


if __name__ == "__main__":
    main()
