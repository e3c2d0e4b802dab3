"""Frontend benchmark: time from navigation until the tab has drawn its heatmap and trend chart, in headless Chromium.

Real `tensorboard` processes serve one run each: the measured one (100
layers x 2,000 logged steps by default) and a tiny baseline (3 layers x 10
steps), so the ratio shows what drawing the big run costs over the tab's
fixed cost. Each repetition opens the tab's page
(`data/plugin_entry.html?name=gradient_health`) in a fresh browser context,
alternating between the runs. An init script in the page records
`performance.now()` (ms since navigation start) two animation frames after
the tab says its charts are drawn (`body[data-charts=drawn]`; a version of
the tab before it said so draws them in the task that adds their canvases)
with a heatmap canvas and a trend canvas in place, i.e. once that frame has
been painted.
The diagnosis (/health) is not waited for. Resource timings split the time
from the first /series request to the painted charts into the server's part
(until the last /series response arrived) and the browser's part (decode,
layout, canvases, paint: `browser_ms`).

Each version of `--refs` (git commits; `.` is the working tree) is served
from its own exported copy of the package and frontend, one after the other,
so a version before a change and after it are measured in one invocation.

The tab asks /series for about as many steps as its plots have device
pixels across (`max_points`, 2,048 in this 1,600-pixel-wide viewport).
`--full-series` adds a visit `measured_full`: the measured run with
`max_points` dropped from the tab's /series requests, so the server sends
every step.

    python -m benchmarks.frontend_draw --layers 100 --steps 10000 --reps 5 --refs .,205e960
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import pathlib
import sys
import tempfile
import urllib.parse

from benchmarks import common, eventgen, frontend_interact

# tests/tb_server.py starts and stops a real `tensorboard`, as in the end-to-end tests.
sys.path.insert(0, str(common.REPO / "tests"))
import tb_server
from support import chromium
from support.chromium import ENTRY, VIEWPORT

LOAD_TIMEOUT_MS = 300_000
BASELINE_LAYERS = 3
BASELINE_STEPS = 10
DRAWN_SELECTORS = (".heatmap canvas.heatmap-canvas", ".trend-plot canvas")

# Runs before the tab's scripts: watches for the ready state with both
# canvases present, then waits two frames so the drawing has been painted.
_INIT_SCRIPT = """
(() => {
  // A version of the tab that does not say when its charts are drawn draws them in the task that
  // adds their canvases.
  const drawn = () => document.body && document.body.dataset.charts !== 'loading' &&
      %s;
  const observer = new MutationObserver(() => {
    if (window.__ghDrawnAt !== undefined || !drawn()) return;
    window.__ghDrawnAt = null;
    observer.disconnect();
    requestAnimationFrame(() => requestAnimationFrame(() => { window.__ghDrawnAt = performance.now(); }));
  });
  observer.observe(document, {subtree: true, childList: true, attributes: true, attributeFilter: ['data-state', 'data-charts']});
})();
""" % " && ".join("document.querySelector(%r)" % selector for selector in DRAWN_SELECTORS)

# Reads the timings once drawn: total, data arrival, and what was drawn.
_RESULT_SCRIPT = """
() => {
  const routes = {};
  let seriesStart = Infinity;
  let seriesEnd = 0;
  for (const entry of performance.getEntriesByType('resource')) {
    const name = new URL(entry.name).pathname.split('/').pop();
    if (!['runs', 'health', 'series'].includes(name)) continue;
    routes[name] = {end: entry.responseEnd, bytes: entry.encodedBodySize, query: new URL(entry.name).search};
    if (name === 'series' && entry.responseEnd <= window.__ghDrawnAt) {
      seriesStart = Math.min(seriesStart, entry.startTime);
      seriesEnd = Math.max(seriesEnd, entry.responseEnd);
    }
  }
  const reduced = document.querySelector('.reduced-note');
  const heatmap = document.querySelector('.heatmap canvas.heatmap-canvas');
  let painted = 0;
  const data = heatmap.getContext('2d').getImageData(0, 0, heatmap.width, heatmap.height).data;
  for (let i = 3; i < data.length; i += 4) if (data[i] > 0) painted += 1;
  return {drawn_ms: window.__ghDrawnAt, routes, heatmap_pixels: painted, series_start: seriesStart, series_end: seriesEnd,
          trend_canvases: document.querySelectorAll('.trend-plot canvas').length,
          rows_shown: reduced ? Number(reduced.dataset.shown) : null};
}
"""


def _without_max_points(route) -> None:
    """Sends a /series request of the tab on without its `max_points`: the server then sends every step."""
    url = urllib.parse.urlsplit(route.request.url)
    query = [(key, value) for key, value in urllib.parse.parse_qsl(url.query) if key != "max_points"]
    route.continue_(url=urllib.parse.urlunsplit(url._replace(query=urllib.parse.urlencode(query))))


def open_once(browser, url: str, full_series: bool = False) -> dict:
    """Opens the tab at `url` in a fresh context; returns its timings (ms since navigation start).

    With `full_series`, the tab's /series requests go out without `max_points`.
    """
    context = browser.new_context(viewport=VIEWPORT)
    try:
        if full_series:
            context.route("**/series?*", _without_max_points)
        page = context.new_page()
        page.add_init_script(_INIT_SCRIPT)
        page.goto(url)
        page.wait_for_function("() => typeof window.__ghDrawnAt === 'number'", timeout=LOAD_TIMEOUT_MS)
        result = page.evaluate(_RESULT_SCRIPT)
    finally:
        context.close()
    missing = [route for route in ("runs", "series") if route not in result["routes"]]
    if missing or result["heatmap_pixels"] == 0 or result["trend_canvases"] == 0:
        raise RuntimeError("the tab did not load and draw as expected: %r" % result)
    # The charts' data: the run list and the series (the diagnosis is not waited for).
    data_ms = max(result["routes"]["runs"]["end"], result["series_end"])
    return {
        "total_ms": result["drawn_ms"],
        "data_ms": data_ms,
        "draw_ms": result["drawn_ms"] - data_ms,
        # From the first /series request to the painted charts, and the browser's part of it.
        "series_to_painted_ms": result["drawn_ms"] - result["series_start"],
        "browser_ms": result["drawn_ms"] - result["series_end"],
        "series_kib": result["routes"]["series"]["bytes"] / 1024,
        "series_query": result["routes"]["series"]["query"],  # as the tab asked; see full_series
        "full_series": full_series,
        # Steps the charts drew from; None when the server sent every step.
        "rows_shown": result["rows_shown"],
        "heatmap_pixels": result["heatmap_pixels"],
    }


def _start_servers(stack: contextlib.ExitStack, logdirs: dict, package: str) -> dict:
    """Starts one tensorboard per logdir serving the plugin of `package`, in parallel; `stack` stops them."""

    def start(logdir):
        manager = tb_server.running_tensorboard(str(logdir))
        return manager, manager.__enter__()

    with frontend_interact.pythonpath(package), concurrent.futures.ThreadPoolExecutor(len(logdirs)) as pool:
        futures = {name: pool.submit(start, logdir) for name, logdir in logdirs.items()}
        concurrent.futures.wait(futures.values())
    servers = {}
    for name, future in futures.items():
        if future.exception() is None:
            manager, servers[name] = future.result()
            stack.push(manager.__exit__)
    for future in futures.values():
        if future.exception() is not None:
            raise future.exception()
    return servers


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=100)
    parser.add_argument("--steps", type=int, default=2_000)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument(
        "--full-series",
        action="store_true",
        help="also visit the measured run with max_points dropped from the tab's /series requests (every step)",
    )
    parser.add_argument(
        "--refs",
        default=".",
        help="git commits whose plugin and frontend are measured, comma-separated (.: the working tree)",
    )
    parser.add_argument("--out-dir", default=str(common.OUT_DIR))
    args = parser.parse_args(argv)
    out_dir = pathlib.Path(args.out_dir)
    from playwright import sync_api

    specs = {
        "measured": eventgen.LogdirSpec(eventgen.GRADIENT_HEALTH, 1, args.layers, args.steps),
        "baseline": eventgen.LogdirSpec(eventgen.GRADIENT_HEALTH, 1, BASELINE_LAYERS, BASELINE_STEPS),
    }
    logdirs = {name: eventgen.build_logdir(spec, out_dir) for name, spec in specs.items()}
    refs = args.refs.split(",")
    # Each visit: (version, server, whether the tab's /series requests lose their max_points); the
    # first version's visits are named plainly, the others' get "@<ref>".
    visits = {}
    for index, ref in enumerate(refs):
        suffix = "" if index == 0 else "@" + ref
        visits["measured" + suffix] = (ref, "measured", False)
        visits["baseline" + suffix] = (ref, "baseline", False)
        if args.full_series:
            visits["measured_full" + suffix] = (ref, "measured", True)
    results = {
        "machine": common.machine("benchmarks.frontend_draw", argv),
        "args": vars(args),
        "sizes": {name: specs[server].name for name, (_, server, _) in visits.items()},
        "times": {name: [] for name in visits},
    }
    with contextlib.ExitStack() as stack:
        servers = {}
        for ref in refs:
            package = pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gh_ref_")))
            servers[ref] = _start_servers(stack, logdirs, str(frontend_interact.export_ref(ref, package)))
        playwright = stack.enter_context(sync_api.sync_playwright())
        browser = chromium.launch(playwright)
        stack.callback(browser.close)
        # One untimed visit each: TensorBoard's first requests warm its caches.
        for ref, server, full in visits.values():
            open_once(browser, servers[ref][server].url + ENTRY, full)
        names = list(visits)
        for rep in range(args.reps):
            # Rotated, so no configuration always comes first (or after the heaviest).
            order = names[rep % len(names) :] + names[: rep % len(names)]
            for name in order:
                ref, server, full = visits[name]
                results["times"][name].append(open_once(browser, servers[ref][server].url + ENTRY, full))
            print(
                "rep %d: %s" % (rep, ", ".join("%s %.0f ms" % (n, results["times"][n][-1]["total_ms"]) for n in names)),
                flush=True,
            )
    summary = {}
    keys = ("total_ms", "data_ms", "draw_ms", "series_to_painted_ms", "browser_ms", "series_kib")
    for name, (_, server, _) in visits.items():
        times = results["times"][name]
        summary[name] = {key: common.median([t[key] for t in times]) for key in keys}
        summary[name]["size"] = specs[server].name
        summary[name]["rows_shown"] = times[-1]["rows_shown"] or "all"
    for name in visits:
        if name.startswith("baseline"):
            continue
        baseline = "baseline" + name[name.index("@") :] if "@" in name else "baseline"
        for key in ("total_ms", "draw_ms", "browser_ms"):
            paired = [m[key] / b[key] for m, b in zip(results["times"][name], results["times"][baseline])]
            summary[name][key.replace("_ms", "_ratio")] = common.median(paired)
    results["summary"] = summary
    path = common.write_results("frontend_draw", results, out_dir)
    print()
    common.print_table(
        [dict(entry, run=name) for name, entry in summary.items()],
        [
            "run",
            "size",
            "rows_shown",
            "total_ms",
            "data_ms",
            "series_to_painted_ms",
            "browser_ms",
            "series_kib",
            "total_ratio",
            "browser_ratio",
        ],
    )
    print("\nresults: %s" % path)
    return results


if __name__ == "__main__":
    main()
