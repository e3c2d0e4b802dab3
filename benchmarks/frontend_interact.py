"""Frontend benchmark: how quickly the tab answers the mouse on wide runs (hover, pick a step, log scale), in headless Chromium.

For each size (layers x logged steps) a run is generated with `eventgen`
(what the Keras callback writes: six statistics per step) and served by a
real `tensorboard`; a baseline run of 10 layers x the same steps is measured
in the same invocation, so each result is also a ratio to what the tab costs
at a depth where it was never slow. Each version of `--refs` (git commits;
`.` is the working tree) is served in turn from the same logdir, its package
and frontend exported to a folder of their own, so a checkout edited during
the run does not change what is measured.

Each visit opens the tab in a fresh browser context (1,600 x 1,000), waits
until it reports `body[data-state=ready]`, then:

* hover: real mouse moves (Chromium input events) across the trend chart's
  plot, one at a time;
* pick: real clicks at different steps of the heatmap;
* log scale: clicks on the log-scale checkbox (off, then on again).

An input's latency is measured in the page from the event's own time stamp
(when Chromium received the input) until the first animation frame after
its handlers ran, plus a task: the work the tab did for it, the frame it
drew and the wait for that frame. Long tasks (over 50 ms, the browser's
PerformanceObserver) during loading and during the interactions are
recorded, the longest being the worst freeze a user could meet. A stage
that takes longer than `--timeout-s` ends that visit and is reported.

    python -m benchmarks.frontend_interact --sizes 1000x2000,10000x200 --refs HEAD,205e960
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

from benchmarks import common, eventgen

# tests/tb_server.py starts and stops a real `tensorboard`, as in the end-to-end tests.
sys.path.insert(0, str(common.REPO / "tests"))
import tb_server
from support import chromium
from support.chromium import ENTRY, VIEWPORT

BASELINE_LAYERS = 10

# Runs before the tab's scripts: every input's latency, and every long task.
_INIT_SCRIPT = """
(() => {
  window.__ghLatencies = [];
  window.__ghLongTasks = [];
  const record = (event) => {
    const received = event.timeStamp;
    requestAnimationFrame(() => setTimeout(() => window.__ghLatencies.push([event.type, performance.now() - received]), 0));
  };
  for (const type of ['mousemove', 'click']) window.addEventListener(type, record, {capture: true});
  new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) window.__ghLongTasks.push([entry.startTime, entry.duration]);
  }).observe({type: 'longtask', buffered: true});
})();
"""


def _latencies_after(page, count_before: int, kind: str, expected: int, timeout_ms: float) -> list[float]:
    """Waits for `expected` latencies of events of type `kind` after the first `count_before`; returns them (ms)."""
    script = (
        "([before, kind]) => window.__ghLatencies.slice(before).filter(([type]) => type === kind).map(([, ms]) => ms)"
    )
    page.wait_for_function(
        "([before, kind, expected]) => (%s)([before, kind]).length >= expected" % script,
        arg=[count_before, kind, expected],
        timeout=timeout_ms,
    )
    return page.evaluate(script, [count_before, kind])


def _longest_task_since(page, since_ms: float) -> float:
    return page.evaluate(
        "(since) => Math.max(0, ...window.__ghLongTasks.filter(([start]) => start >= since).map(([, d]) => d))",
        since_ms,
    )


def visit(browser, url: str, moves: int, picks: int, timeout_s: float) -> dict:
    """Opens the tab at `url` and measures loading, hovering, picking and the log-scale toggle (ms).

    A stage that takes longer than `timeout_s` ends the visit: the result says which (`timed_out`).
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(timeout_s * 1000)
    result = {"timed_out": None}
    stage = "loading"
    try:
        page = context.new_page()
        page.add_init_script(_INIT_SCRIPT)
        page.goto(url)
        page.wait_for_selector("body[data-state=ready]")
        result["ready_ms"] = page.evaluate("performance.now()")
        result["longest_task_loading_ms"] = _longest_task_since(page, 0)
        stage = "hover"
        interactions_from = page.evaluate("performance.now()")

        # Positions relative to the element: Playwright scrolls it into the window first.
        over = page.locator(".trend-cell .trend-plot .u-over").first
        box = over.bounding_box()
        before = page.evaluate("window.__ghLatencies.length")
        for k in range(moves):
            over.hover(position={"x": box["width"] * (0.05 + 0.9 * k / max(1, moves - 1)), "y": box["height"] / 2})
        result["hover_ms"] = _latencies_after(page, before, "mousemove", moves, timeout_s * 1000)
        stage = "pick"
        page.mouse.move(0, 0)

        heatmap = page.locator(".heatmap-cell canvas").first
        box = heatmap.bounding_box()
        before = page.evaluate("window.__ghLatencies.length")
        for k in range(picks):
            # Inside the first rows (a tall heatmap need not fit the window), left to right.
            position = {"x": box["width"] * (0.3 + 0.6 * k / max(1, picks - 1)), "y": min(box["height"] * 0.4, 100)}
            heatmap.click(position=position)
        result["pick_ms"] = _latencies_after(page, before, "click", picks, timeout_s * 1000)
        stage = "log scale"
        page.mouse.move(0, 0)

        before = page.evaluate("window.__ghLatencies.length")
        for _ in range(2):
            page.click(".log-y")
            page.wait_for_selector("body[data-state=ready]")
        result["log_scale_ms"] = _latencies_after(page, before, "click", 2, timeout_s * 1000)
        result["longest_task_interacting_ms"] = _longest_task_since(page, interactions_from)
        result["lines_drawn"] = page.evaluate(
            "document.querySelectorAll('.trend-cell .trend-legend .legend-item.toggles, .trend-cell .u-legend .u-series').length"
        )
        result["notes"] = page.evaluate(
            "[...document.querySelectorAll('.legend-cap, .heatmap-note, .reduced-note')].map((e) => e.textContent).filter(Boolean)"
        )
    except PlaywrightTimeoutError:
        result["timed_out"] = stage
    finally:
        context.close()
    return result


def _summarise(visits: list[dict]) -> dict:
    """Medians and worst cases over the visits; a stage no visit finished is None (`timed_out` says which)."""

    def values(key):
        return [ms for v in visits for ms in v.get(key, [])]

    def median_or_none(found):
        return common.median(found) if found else None

    hover, pick, log_scale = values("hover_ms"), values("pick_ms"), values("log_scale_ms")
    ready = [v["ready_ms"] for v in visits if "ready_ms" in v]
    tasks = [v.get(key, 0) for v in visits for key in ("longest_task_loading_ms", "longest_task_interacting_ms")]
    return {
        "ready_ms": median_or_none(ready),
        "hover_p50_ms": median_or_none(hover),
        "hover_p95_ms": common.percentile(hover, 95) if hover else None,
        "pick_p50_ms": median_or_none(pick),
        "pick_max_ms": max(pick) if pick else None,
        "log_scale_ms": median_or_none(log_scale),
        "longest_task_ms": max(tasks) if tasks else None,
        "timed_out": sorted({v["timed_out"] for v in visits if v["timed_out"]}),
        "lines_drawn": visits[-1].get("lines_drawn"),
        "notes": visits[-1].get("notes"),
    }


SUMMARY_COLUMNS = [
    "ready_ms",
    "hover_p50_ms",
    "hover_p95_ms",
    "pick_p50_ms",
    "pick_max_ms",
    "log_scale_ms",
    "longest_task_ms",
    "timed_out",
    "hover_ratio",
    "pick_ratio",
    "lines_drawn",
]


def _cell(value) -> str:
    if value is None or value == []:
        return "-"
    return "%.1f" % value if isinstance(value, float) else str(value)


def export_ref(ref: str, into: pathlib.Path) -> pathlib.Path:
    """Writes the package and frontend of git commit `ref` (`.`: the working tree) into `into`, importable with PYTHONPATH=into."""
    if ref == ".":
        for folder in ("tb_gradhealth", "frontend"):
            shutil.copytree(common.REPO / folder, into / folder, ignore=shutil.ignore_patterns("__pycache__"))
        return into
    archive = subprocess.run(
        ["git", "-C", str(common.REPO), "archive", ref, "tb_gradhealth", "frontend"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


@contextlib.contextmanager
def pythonpath(path: str):
    """Sets PYTHONPATH to `path` for the processes started in the block (a tensorboard then imports that package)."""
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = path
    try:
        yield
    finally:
        if old is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = old


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """Parses `1000x2000,10000x200` into [(layers, steps), ...]."""
    return [tuple(int(part) for part in size.split("x")) for size in text.split(",") if size.strip()]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000x2000,10000x200", help="layers x logged steps, comma-separated")
    parser.add_argument("--reps", type=int, default=2, help="visits per size and version")
    parser.add_argument("--moves", type=int, default=40, help="mouse moves per visit")
    parser.add_argument("--picks", type=int, default=8, help="steps picked per visit")
    parser.add_argument(
        "--refs",
        default=".",
        help="git commits whose plugin and frontend are measured, comma-separated (.: the working tree)",
    )
    parser.add_argument("--timeout-s", type=float, default=300, help="longest wait for one stage of a visit")
    parser.add_argument("--out-dir", default=str(common.OUT_DIR))
    args = parser.parse_args(argv)
    out_dir = pathlib.Path(args.out_dir)
    from playwright import sync_api

    sizes = parse_sizes(args.sizes)
    results = {
        "machine": common.machine("benchmarks.frontend_interact", argv),
        "args": vars(args),
        "visits": {},
        "summary": {},
    }
    versions = {}
    with contextlib.ExitStack() as stack:
        for ref in args.refs.split(","):
            exported = pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gh_ref_")))
            versions[ref] = str(export_ref(ref, exported))
        playwright = stack.enter_context(sync_api.sync_playwright())
        browser = chromium.launch(playwright)
        stack.callback(browser.close)
        measured = [(BASELINE_LAYERS, steps) for steps in sorted({steps for _, steps in sizes})] + sizes
        for layers, steps in measured:
            spec = eventgen.LogdirSpec(eventgen.GRADIENT_HEALTH, 1, layers, steps)
            logdir = eventgen.build_logdir(spec, out_dir)
            for version, path in versions.items():
                key = "%dx%d %s" % (layers, steps, version)
                with pythonpath(path), tb_server.running_tensorboard(str(logdir)) as server:
                    # One untimed visit: TensorBoard's first requests fill its caches.
                    visit(browser, server.url + ENTRY, 1, 1, args.timeout_s)
                    visits = [
                        visit(browser, server.url + ENTRY, args.moves, args.picks, args.timeout_s)
                        for _ in range(args.reps)
                    ]
                results["visits"][key] = visits
                summary = _summarise(visits)
                baseline = results["summary"].get("%dx%d %s" % (BASELINE_LAYERS, steps, version))
                if baseline and layers != BASELINE_LAYERS and summary["hover_p50_ms"] and summary["pick_p50_ms"]:
                    summary["hover_ratio"] = summary["hover_p50_ms"] / baseline["hover_p50_ms"]
                    summary["pick_ratio"] = summary["pick_p50_ms"] / baseline["pick_p50_ms"]
                results["summary"][key] = summary
                print(
                    "%s: %s"
                    % (
                        key,
                        ", ".join(
                            "%s %s" % (name, _cell(summary[name])) for name in SUMMARY_COLUMNS if name in summary
                        ),
                    ),
                    flush=True,
                )
    path = common.write_results("frontend_interact", results, out_dir)
    print()
    common.print_table([dict(entry, size=key) for key, entry in results["summary"].items()], ["size", *SUMMARY_COLUMNS])
    print("\nresults: %s" % path)
    return results


if __name__ == "__main__":
    main()
