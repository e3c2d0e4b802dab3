"""Frontend benchmark: bytes and browser work of refreshing a growing run by its new steps, against fetching it whole and against opening the page afresh.

One run of `--layers` layers x `--steps` logged steps (grad_norm and the
loss, written with `GradientHealthFileWriter`) is served by a real
`tensorboard` (`--reload_interval 1`). Each repetition measures three ways of
showing the same growth of `--new-steps` steps, in rotated order, each in a
fresh browser context (1,600 x 1,000) that opened the tab on the run before
it grew:

* `after_step`: the tab's *Refresh*: each series it holds whole is asked for
  its steps after the last one it has (`/series?after_step=`), and the
  answer (`"partial": true`) is appended;
* `whole`: the same *Refresh* with `after_step` dropped from the tab's
  requests by the browser, so the server sends each series whole and the tab
  decodes and draws it afresh (what a refresh cost before `after_step`);
* `reopen`: the grown run opened in a new page (navigation, every route);
* `unchanged`: the tab's *Refresh* of a run that did not grow: what a
  refresh costs the tab whatever it brings.

Measured, from the click (or the navigation) until two animation frames after
the tab says its charts are drawn (`body[data-charts=drawn]`): `/series`
bytes as sent (gzipped), the renderer's main-thread work (Chromium's
`TaskDuration` and `ScriptDuration`, CDP `Performance.getMetrics`), the time
from the last `/series` answer to the painted frame (`browser_ms`) and the
total. The run grows before every measurement, so it is longer at each
repetition; it stays within `max_points` (2,048 at this width), i.e. whole,
as long as steps + (reps x 3 + 1) x new steps < 2,048.

    python -m benchmarks.frontend_refresh --layers 100 --steps 1000 --new-steps 40 --reps 5
"""

from __future__ import annotations

import argparse
import contextlib
import json
import pathlib
import sys
import tempfile
import urllib.parse

import numpy as np

from benchmarks import common
from tb_gradhealth.summary import GradientHealthFileWriter

# The browser as the tests launch it (tests/support/chromium.py).
sys.path.insert(0, str(common.REPO / "tests"))
from support import chromium
from support.chromium import ENTRY, VIEWPORT

RUN = "growing"
ROUTES = "/data/plugin/gradient_health"
TIMEOUT_MS = 300_000
MAX_POINTS = 2048
WAYS = ("after_step", "whole", "reopen", "unchanged")
# The ways that show a growth (`unchanged` refreshes a run that did not grow).
GROWING_WAYS = WAYS[:3]

# Records when the charts are next drawn after they were loading: two frames after, so the frame was painted.
_WATCH_SCRIPT = """
() => {
  window.__ghSeenLoading = false;
  window.__ghPaintedAt = undefined;
  const observer = new MutationObserver(() => {
    const charts = document.body.dataset.charts;
    if (charts === 'loading') window.__ghSeenLoading = true;
    if (charts !== 'drawn' || !window.__ghSeenLoading || window.__ghPaintedAt !== undefined) return;
    window.__ghPaintedAt = null;
    observer.disconnect();
    requestAnimationFrame(() => requestAnimationFrame(() => { window.__ghPaintedAt = performance.now(); }));
  });
  observer.observe(document.body, {attributes: true, attributeFilter: ['data-charts']});
  window.__ghWatchFrom = performance.now();
  return window.__ghWatchFrom;
}
"""

# /series answers that arrived between `from` and the painted frame: bytes as sent, and the last one's end.
_SERIES_SCRIPT = """
([from, until]) => {
  let bytes = 0, count = 0, lastEnd = 0, decoded = 0;
  for (const entry of performance.getEntriesByType('resource')) {
    if (!entry.name.includes('/series?') || entry.startTime < from || entry.responseEnd > until) continue;
    bytes += entry.encodedBodySize;
    decoded += entry.decodedBodySize;
    count += 1;
    lastEnd = Math.max(lastEnd, entry.responseEnd);
  }
  return {bytes, decoded, count, lastEnd};
}
"""


def write_steps(run_dir: pathlib.Path, layers: int, steps: range) -> None:
    """Writes grad_norm of `layers` layers and the loss at `steps` (one new event file, as a resumed writer does)."""
    names = ["layer_%04d" % j for j in range(layers)]
    depth = np.logspace(-3, 0, layers)
    with GradientHealthFileWriter(str(run_dir)) as writer:
        for step in steps:
            # Periodic in the step: new steps leave the scales as they were.
            wobble = 1.0 + 0.2 * np.sin(0.05 * step + np.arange(layers))
            writer.write(step, {"grad_norm": depth * wobble}, names, loss=1.0 + 0.1 * np.cos(0.03 * step))


def _without_after_step(route) -> None:
    """Sends a /series request of the tab on without its `after_step`: the server then sends the series whole."""
    url = urllib.parse.urlsplit(route.request.url)
    query = [(key, value) for key, value in urllib.parse.parse_qsl(url.query) if key != "after_step"]
    route.continue_(url=urllib.parse.urlunsplit(url._replace(query=urllib.parse.urlencode(query))))


def _metrics(cdp) -> dict:
    return {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}


def _painted(page) -> float:
    page.wait_for_function("() => typeof window.__ghPaintedAt === 'number'", timeout=TIMEOUT_MS)
    return page.evaluate("window.__ghPaintedAt")


def _measure(page, cdp, start, from_ms: float) -> dict:
    """Runs `start()`, waits for the painted charts, and returns what it cost since `from_ms` (page time)."""
    before = _metrics(cdp)
    start()
    painted = _painted(page)
    after = _metrics(cdp)
    series = page.evaluate(_SERIES_SCRIPT, [from_ms, painted])
    return {
        "total_ms": painted - from_ms,
        "browser_ms": painted - series["lastEnd"],
        "task_ms": 1000 * (after["TaskDuration"] - before.get("TaskDuration", 0.0)),
        "script_ms": 1000 * (after["ScriptDuration"] - before.get("ScriptDuration", 0.0)),
        "series_kib": series["bytes"] / 1024,
        "series_decoded_kib": series["decoded"] / 1024,
        "series_requests": series["count"],
    }


def measure_once(browser, server, url: str, way: str, grow) -> dict:
    """Opens the tab on the run, grows it by calling `grow()` (returns the new last step) unless `way` is `unchanged`, and measures `way` of showing it."""
    context = browser.new_context(viewport=VIEWPORT)
    try:
        if way == "whole":
            context.route("**/series?*", _without_after_step)
        page = context.new_page()
        cdp = context.new_cdp_session(page)
        cdp.send("Performance.enable", {"timeMode": "threadTicks"})
        if way == "reopen":
            last = grow()
            server.wait_until(lambda: _max_step(server) == last, TIMEOUT_MS / 1000, "the new steps to load")
            page.add_init_script("document.addEventListener('DOMContentLoaded', () => (%s)());" % _WATCH_SCRIPT.strip())
            result = _measure(page, cdp, lambda: page.goto(url), 0.0)
        else:
            page.goto(url)
            page.wait_for_selector("body[data-charts=drawn]", timeout=TIMEOUT_MS)
            page.wait_for_selector("body[data-state=ready]", timeout=TIMEOUT_MS)
            last = _max_step(server) if way == "unchanged" else grow()
            server.wait_until(lambda: _max_step(server) == last, TIMEOUT_MS / 1000, "the new steps to load")
            from_ms = page.evaluate(_WATCH_SCRIPT)
            result = _measure(page, cdp, lambda: page.click(".refresh-button"), from_ms)
        page.wait_for_function(
            "(step) => document.querySelector('.run-item .run-meta').textContent.includes(step)",
            arg="step %s" % format(last, ","),
            timeout=TIMEOUT_MS,
        )
        page.wait_for_selector("body[data-state=ready]", timeout=TIMEOUT_MS)
        result["last_step"] = last
        result["errors"] = page.evaluate("document.querySelectorAll('.error-banner:not([hidden])').length")
    finally:
        context.close()
    return result


def _max_step(server) -> int | None:
    """The run's last step as the plugin lists it (None until it is listed)."""
    for entry in server.get_json(ROUTES + "/runs")["runs"]:
        if entry["run"] == RUN:
            return entry["max_step"]
    return None


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=100)
    parser.add_argument("--steps", type=int, default=1_000)
    parser.add_argument("--new-steps", type=int, default=40)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--load-fast", default="true", choices=["true", "false"])
    parser.add_argument("--out-dir", default=str(common.OUT_DIR))
    args = parser.parse_args(argv)
    if args.steps + (args.reps * len(GROWING_WAYS) + 1) * args.new_steps >= MAX_POINTS:
        parser.error("the run would outgrow max_points (%d) and be downsampled" % MAX_POINTS)
    from playwright import sync_api

    results = {
        "machine": common.machine("benchmarks.frontend_refresh", argv),
        "args": vars(args),
        "times": {way: [] for way in WAYS},
    }
    with contextlib.ExitStack() as stack:
        logdir = pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gh_refresh_")))
        write_steps(logdir / RUN, args.layers, range(args.steps))
        next_step = [args.steps]

        def grow() -> int:
            first = next_step[0]
            next_step[0] += args.new_steps
            write_steps(logdir / RUN, args.layers, range(first, next_step[0]))
            return next_step[0] - 1

        server = stack.enter_context(
            common.tb_server.running_tensorboard(str(logdir), "--load_fast=%s" % args.load_fast, "--reload_interval=1")
        )
        server.wait_until(lambda: _max_step(server) == args.steps - 1, TIMEOUT_MS / 1000, "the run to load")
        url = server.url + ENTRY + "#runs=" + urllib.parse.quote(json.dumps([RUN]))
        playwright = stack.enter_context(sync_api.sync_playwright())
        browser = chromium.launch(playwright)
        stack.callback(browser.close)
        # One untimed visit: TensorBoard's and the tab's first requests warm their caches.
        measure_once(browser, server, url, "after_step", grow)
        for rep in range(args.reps):
            # Rotated, so no way always comes first.
            order = WAYS[rep % len(WAYS) :] + WAYS[: rep % len(WAYS)]
            for way in order:
                results["times"][way].append(measure_once(browser, server, url, way, grow))
            print(
                "rep %d: %s"
                % (
                    rep,
                    ", ".join(
                        "%s %.0f ms %.0f KiB"
                        % (w, results["times"][w][-1]["total_ms"], results["times"][w][-1]["series_kib"])
                        for w in WAYS
                    ),
                ),
                flush=True,
            )
    keys = ("series_kib", "series_decoded_kib", "series_requests", "task_ms", "script_ms", "browser_ms", "total_ms")
    summary = {}
    for way in WAYS:
        summary[way] = {key: common.median([t[key] for t in results["times"][way]]) for key in keys}
    for way in WAYS[1:]:
        for key in ("series_kib", "task_ms", "script_ms", "browser_ms", "total_ms"):
            paired = [
                b[key] / a[key] for a, b in zip(results["times"]["after_step"], results["times"][way]) if a[key] > 0
            ]
            summary[way][key.replace("_ms", "").replace("_kib", "") + "_x"] = common.median(paired)
    results["summary"] = summary
    path = common.write_results("frontend_refresh", results, pathlib.Path(args.out_dir))
    print()
    common.print_table(
        [dict(entry, way=way) for way, entry in summary.items()],
        ["way", *keys, "series_x", "task_x", "script_x", "browser_x", "total_x"],
    )
    print("\nresults: %s" % path)
    return results


if __name__ == "__main__":
    main()
