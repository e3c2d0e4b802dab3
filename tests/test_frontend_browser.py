"""The Gradient Health tab in a real Chromium against real TensorBoard servers: runs, verdicts, charts, states, safety."""

from __future__ import annotations

import math
import os
import pathlib
import shutil
import urllib.request
from urllib.parse import parse_qs, urlencode, urlsplit

import numpy as np
import pytest
from support.browser import (  # noqa: F401  (fixtures)
    ENTRY,
    HEATMAP_TOP_PX,
    LOAD_TIMEOUT_MS,
    MIN_DRAWN_PIXELS,
    NONFINITE_RGB,
    ROUTES,
    browser,
    in_process_tensorboard,
    page,
    tensorboard_process,
)
from tb_server import strict_json

from tb_gradhealth.summary import GradientHealthFileWriter

pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parent.parent
SCREENSHOT = REPO / "docs" / "gradient_health_tab.png"
SCREENSHOT_IN_TENSORBOARD = REPO / "docs" / "gradient_health_in_tensorboard.png"
# The README's screenshots are rewritten only on request (`make screenshots`),
# so a test run leaves the checkout clean; otherwise they go to a temp folder.
UPDATE_SCREENSHOTS = os.environ.get("UPDATE_SCREENSHOTS") == "1"


def screenshot_target(path: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
    return path if UPDATE_SCREENSHOTS else tmp_path / path.name


# Serving under a prefix proves every URL of the tab is relative.
PATH_PREFIX = "/tb"
HOSTILE_RUN = "<img src=x onerror=alert(1)>"
HOSTILE_LAYERS = ["<b>bold</b>", "dense_1"]
USER_STAT = "my_stat"
HOSTILE_STEPS = 20
# A run that grows during a test, as while training runs.
LIVE_RUN = "live"
LIVE_STEPS = 30


def user_stat_value(step: int) -> float:
    return 1.0 + 0.5 * step


def write_live_steps(logdir: pathlib.Path, steps) -> None:
    layers = ["dense", "dense_1", "dense_2"]
    with GradientHealthFileWriter(str(logdir / LIVE_RUN)) as writer:
        for step in steps:
            # Periodic values: new steps leave the value (and colour) scales as they were.
            writer.write(step, {"grad_norm": [0.1 * (1 + step % 7), 0.3, 0.2 + 0.01 * (step % LIVE_STEPS)]}, layers)


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def demo_logdir(demo_runs):
    """The demo's runs: its models, one epoch each on generated data (trained once per session)."""
    return demo_runs.logdir


@pytest.fixture(scope="module")
def logdir(demo_logdir, tmp_path_factory):
    """The demo's runs, a run whose names are HTML with a stat of its own, and a run that grows."""
    root = tmp_path_factory.mktemp("frontend_logdir")
    shutil.copytree(demo_logdir, root, dirs_exist_ok=True)
    rng = np.random.default_rng(0)
    with GradientHealthFileWriter(str(root / HOSTILE_RUN)) as writer:
        for step in range(HOSTILE_STEPS):
            norms = np.abs(0.5 + 0.05 * rng.standard_normal(len(HOSTILE_LAYERS)))
            writer.write(
                step,
                {"grad_norm": norms, USER_STAT: np.full(len(HOSTILE_LAYERS), user_stat_value(step))},
                HOSTILE_LAYERS,
            )
    write_live_steps(root, range(LIVE_STEPS))
    return root


@pytest.fixture(scope="module")
def server(logdir):
    with tensorboard_process(logdir, PATH_PREFIX) as running:
        yield running


@pytest.fixture(scope="module")
def demo_server(demo_logdir):
    """TensorBoard over the demo's runs only: what the README's screenshots show."""
    with tensorboard_process(demo_logdir, PATH_PREFIX) as running:
        yield running


def verdicts(server):
    return {entry["run"]: entry["verdict"] for entry in server.get_json(PATH_PREFIX + ROUTES + "/health")["runs"]}


def run_with_verdict(server, verdict: str) -> str:
    return sorted(
        run for run, found in verdicts(server).items() if found == verdict and run not in (HOSTILE_RUN, LIVE_RUN)
    )[0]


def series_body(server, run: str, stat: str = "grad_norm") -> dict:
    return server.get_json(PATH_PREFIX + ROUTES + "/series?" + urlencode({"run": run, "stat": stat}))


def live_max_step(server) -> int | None:
    runs = server.get_json(PATH_PREFIX + ROUTES + "/runs")["runs"]
    return next((entry["max_step"] for entry in runs if entry["run"] == LIVE_RUN), None)


def first_nonfinite_step(server, run: str) -> int:
    """The first step with a NaN/Inf grad_norm, computed here from /series."""
    body = series_body(server, run)
    values = np.array([[float(v) for v in row] for row in body["values"]])
    return int(np.array(body["steps"])[~np.isfinite(values).all(axis=1)][0])


# ---------------------------------------------------------------- tests over the demo runs


def test_every_run_is_listed_with_the_verdict_of_health_and_no_console_error(server, page):
    page.open_tab(server.url + PATH_PREFIX + ENTRY)
    listed = page.page.evaluate(
        "[...document.querySelectorAll('.run-item')].map((item) => [item.dataset.run, item.querySelector('.badge').dataset.verdict])"
    )
    expected = verdicts(server)
    runs = [entry["run"] for entry in server.get_json(PATH_PREFIX + ROUTES + "/runs")["runs"]]
    assert [run for run, _ in listed] == runs
    assert dict(listed) == expected
    # The demo has something to diagnose: the page would also pass with every badge "healthy".
    assert {"healthy", "nonfinite"} <= set(expected.values())
    assert page.errors == []


def test_heatmap_and_trend_are_drawn_and_the_nonfinite_run_is_marked(server, page):
    page.open_tab(server.url + PATH_PREFIX + ENTRY)
    broken = run_with_verdict(server, "nonfinite")
    healthy = run_with_verdict(server, "healthy")
    page.set_selection([healthy, broken])
    for run in (healthy, broken):
        assert page.pixels(".heatmap-cell", run) > MIN_DRAWN_PIXELS, run
        assert page.pixels(".trend-cell", run) > MIN_DRAWN_PIXELS, run
        # The profile shows the latest step: the broken run's bars may all be non-finite (red).
        bars = page.pixels(".profile-cell", run) + page.pixels(".profile-cell", run, NONFINITE_RGB)
        assert bars > MIN_DRAWN_PIXELS, run
    # Non-finite cells and marks have their own colour, and only the broken run has them.
    assert page.pixels(".heatmap-cell", broken, NONFINITE_RGB) > 0
    assert page.pixels(".trend-cell", broken, NONFINITE_RGB) > 0
    assert page.pixels(".heatmap-cell", healthy, NONFINITE_RGB) == 0
    assert page.pixels(".trend-cell", healthy, NONFINITE_RGB) == 0
    note = page.cell_text(".trend-cell", broken)
    assert "first at step %d" % first_nonfinite_step(server, broken) in note
    assert "NaN or Inf" not in page.cell_text(".trend-cell", healthy)
    # No JavaScript value leaks into the page as text (an absent element
    # handed to append() shows as "null").
    words = set(page.page.evaluate("document.body.innerText").split())
    assert not words & {"null", "undefined", "[object"}
    assert page.errors == []


def test_hostile_names_stay_text_and_no_dialog_fires(server, page):
    page.open_tab(server.url + PATH_PREFIX + ENTRY)
    page.set_selection([HOSTILE_RUN])
    texts = page.page.evaluate("[...document.querySelectorAll('.run-name, .cell-run')].map((e) => e.textContent)")
    assert texts.count(HOSTILE_RUN) == 1 + 5  # the run list, and the caption of each of the five panels
    legend = page.cell_text(".trend-cell", HOSTILE_RUN)
    assert HOSTILE_LAYERS[0] in legend
    # Nothing of the names became markup.
    assert page.page.evaluate("document.querySelectorAll('img, b').length") == 0
    page.settle()
    assert page.dialogs == []
    assert page.errors == []


def test_user_defined_stat_is_offered_and_plotted(server, page):
    page.open_tab(server.url + PATH_PREFIX + ENTRY)
    page.set_selection([HOSTILE_RUN])
    page.page.select_option(".stat-select", USER_STAT)
    page.page.wait_for_function(
        "(stat) => [...document.querySelectorAll('.panel-trends .panel-subtitle')].some((e) => e.textContent === stat)",
        arg=USER_STAT,
    )
    page.wait_for_state()
    # Away from the chart the read-out shows the selected (latest) step's values.
    last = HOSTILE_STEPS - 1
    legend = page.cell_text(".trend-cell", HOSTILE_RUN)
    assert "Step%d" % last in legend.replace(" ", "").replace(":", "")
    assert ("%s%g" % (HOSTILE_LAYERS[1], user_stat_value(last))) in legend.replace(" ", "").replace(":", "")
    assert page.pixels(".trend-cell", HOSTILE_RUN) > MIN_DRAWN_PIXELS
    assert page.errors == []


def test_heatmap_hover_reads_out_and_click_selects_a_step(server, page):
    page.open_tab(server.url + PATH_PREFIX + ENTRY)
    run = run_with_verdict(server, "healthy")
    page.set_selection([run])
    body = series_body(server, run)
    box = page.page.locator(".heatmap-cell canvas").bounding_box()
    # Inside the first row (input layer), a little past the middle of the steps.
    x = box["x"] + box["width"] * 0.55
    y = box["y"] + HEATMAP_TOP_PX + 3
    page.page.mouse.move(x, y)
    tooltip = page.page.locator(".heatmap-cell .tooltip")
    tooltip.wait_for(state="visible")
    lines = tooltip.evaluate("(tip) => [...tip.children].map((line) => line.textContent)")
    layer = body["layers"][0]
    assert lines[0] == layer
    step = int(lines[1].removeprefix("step ").replace(",", ""))
    expected = float(body["values"][body["steps"].index(step)][0])
    shown = float(lines[2].removeprefix(body["stat"] + " = "))
    assert math.isclose(shown, expected, rel_tol=5e-3)  # 3 significant digits
    page.page.mouse.click(x, y)
    caption = page.page.evaluate(
        "(run) => [...document.querySelectorAll('.profile-cell')].find((c) => c.dataset.run === run).querySelector('.cell-step').textContent",
        run,
    )
    assert caption == "step %s" % format(step, ",")
    assert page.errors == []


def test_new_steps_appear_on_refresh_keeping_zoom_and_selected_step(server, logdir, page):
    page.open_tab(server.url + PATH_PREFIX + ENTRY)
    page.set_selection([LIVE_RUN])
    heatmap = "document.querySelector('.heatmap-cell canvas').toDataURL()"
    caption = "document.querySelector('.profile-cell .cell-step').textContent"
    full = page.page.evaluate(heatmap)
    # Pick a step on the heatmap, then zoom the trend chart by dragging across it.
    box = page.page.locator(".heatmap-cell canvas").bounding_box()
    page.page.mouse.click(box["x"] + box["width"] * 0.4, box["y"] + HEATMAP_TOP_PX + 3)
    picked = page.page.evaluate(caption)
    over = page.page.locator(".trend-cell .trend-plot .u-over").bounding_box()
    y = over["y"] + over["height"] / 2
    page.page.mouse.move(over["x"] + over["width"] * 0.2, y)
    page.page.mouse.down()
    page.page.mouse.move(over["x"] + over["width"] * 0.6, y, steps=5)
    page.page.mouse.up()
    zoomed = page.page.evaluate(heatmap)
    assert zoomed != full  # the heatmap follows the trend chart's zoom

    write_live_steps(logdir, range(LIVE_STEPS, 2 * LIVE_STEPS))
    last = 2 * LIVE_STEPS - 1
    server.wait_until(
        lambda: live_max_step(server) == last, LOAD_TIMEOUT_MS / 1000, "TensorBoard to load the new steps"
    )
    meta = "[...document.querySelectorAll('.run-item')].find((item) => item.dataset.run === %r).textContent" % LIVE_RUN
    asked = []
    page.page.on("request", lambda request: "/series?" in request.url and asked.append(request.url))
    page.page.click(".refresh-button")
    page.page.wait_for_function("(last) => %s.includes(last)" % meta, arg="step %d" % last)
    page.wait_for_state()
    # It asked for the steps after the last one it had (a server that can answers with those alone).
    assert [parse_qs(urlsplit(url).query).get("after_step") for url in asked] == [[str(LIVE_STEPS - 1)]]
    # Redrawn with the new steps, still zoomed on the same steps and showing the picked one.
    assert page.page.evaluate(heatmap) == zoomed
    assert page.page.evaluate(caption) == picked
    page.page.dblclick(".trend-cell .trend-plot .u-over")
    page.page.wait_for_function("(zoomed) => %s !== zoomed" % heatmap, arg=zoomed)
    # All steps again, now twice as many: the cells are half as wide as at first.
    assert page.page.evaluate(heatmap) not in (full, zoomed)
    assert page.errors == []


def test_inside_tensorboard_under_a_path_prefix_and_its_reload_button_refreshes_the_tab(demo_server, page, tmp_path):
    runs_requests = []
    page.page.on(
        "request", lambda request: request.url.endswith(ROUTES + "/runs") and runs_requests.append(request.url)
    )
    page.page.goto(demo_server.url + PATH_PREFIX + "/#gradient_health")
    frame = page.page.wait_for_selector("iframe", timeout=LOAD_TIMEOUT_MS).content_frame()
    frame.wait_for_selector("body[data-state=ready]", timeout=LOAD_TIMEOUT_MS)
    assert frame.evaluate("document.querySelectorAll('.run-item').length") == len(verdicts(demo_server))
    assert runs_requests and all(url.startswith(demo_server.url + PATH_PREFIX + "/") for url in runs_requests)
    seen = len(runs_requests)
    with page.page.expect_request(lambda request: request.url.endswith(ROUTES + "/runs"), timeout=LOAD_TIMEOUT_MS):
        page.page.click("button.reload-button")
    assert len(runs_requests) > seen
    target = screenshot_target(SCREENSHOT_IN_TENSORBOARD, tmp_path)
    target.parent.mkdir(exist_ok=True)
    page.page.screenshot(path=str(target))
    assert target.stat().st_size > 50_000
    assert page.tab_errors() == []


def test_screenshot_of_the_tab_over_the_demo_runs(demo_server, page, tmp_path):
    page.open_tab(demo_server.url + PATH_PREFIX + ENTRY)
    shown = [run_with_verdict(demo_server, verdict) for verdict in ("healthy", "vanishing", "nonfinite")]
    page.set_selection(shown)
    page.wait_for_state()
    page.page.evaluate("document.fonts.ready")
    target = screenshot_target(SCREENSHOT, tmp_path)
    target.parent.mkdir(exist_ok=True)
    page.page.screenshot(path=str(target), full_page=True)
    assert target.stat().st_size > 50_000
    assert page.errors == []


# ---------------------------------------------------------------- empty and error states


def test_empty_logdir_shows_the_how_to_and_a_dead_server_shows_an_error(tmp_path, page):
    with in_process_tensorboard(str(tmp_path)) as (url, _):
        page.open_tab(url + ENTRY, state="empty")
        how_to = page.page.text_content(".how-to")
        assert "GradientHealthCallback" in how_to
        assert len(how_to.strip().splitlines()) == 3
        assert page.page.is_hidden(".error-banner")
        assert page.errors == []
    # The server is gone: a refresh must say so, not leave a blank or stale tab.
    page.page.click(".refresh-button")
    page.page.wait_for_selector("body[data-state=error]")
    banner = page.page.locator(".error-banner")
    assert banner.is_visible()
    assert "Could not reach TensorBoard" in banner.text_content()


def test_a_failing_diagnosis_is_reported_and_the_charts_still_show(tmp_path, page):
    with GradientHealthFileWriter(str(tmp_path / "only")) as writer:
        for step in range(5):
            writer.write(step, {"grad_norm": [1.0 + step, 2.0]}, ["dense", "dense_1"])
    # Our /health never answers 500; injected here to prove the tab degrades gracefully.
    page.page.route(
        "**" + ROUTES + "/health",
        lambda route: route.fulfill(
            status=500, content_type="application/json", body='{"error": {"code": 500, "message": "disk on fire"}}'
        ),
    )
    with in_process_tensorboard(str(tmp_path)) as (url, _):
        page.open_tab(url + ENTRY)
        banner = page.page.locator(".error-banner")
        assert banner.is_visible()
        assert "Diagnosis unavailable: /health failed (HTTP 500): disk on fire" in banner.text_content()
        assert page.page.text_content(".run-item .badge") == "no diagnosis"
        assert page.pixels(".trend-cell", "only") > MIN_DRAWN_PIXELS


def test_smoothing_and_heatmap_binning_agree_with_numpy(tmp_path, page):
    with GradientHealthFileWriter(str(tmp_path / "only")) as writer:
        writer.write(0, {"grad_norm": [1.0]}, ["dense"])
    rng = np.random.default_rng(7)
    values = np.exp(rng.normal(0.0, 2.0, size=200))
    values[[17, 90]] = [np.nan, np.inf]
    weight = 0.8
    steps = np.arange(len(values)) * 3
    pixels = 37
    with in_process_tensorboard(str(tmp_path)) as (url, _):
        page.open_tab(url + ENTRY)
        smoothed, kinds, binned = page.page.evaluate(
            """async ([values, weight, steps, pixels]) => {
                const format = await import('./format.js');
                const heatmap = await import('./view_heatmap.js');
                const decoded = values.map(format.decodeNumber);
                const series = {layers: ['a'], steps: Float64Array.from(steps), values: Float64Array.from(decoded), missing: null};
                const {kinds, values: binned} = heatmap.aggregateColumns(series, steps[0] - 1.5, steps[steps.length - 1] + 1.5, pixels);
                return [format.smooth(decoded, weight, true), [...kinds], [...binned]];
            }""",
            [
                [v if np.isfinite(v) else ("NaN" if np.isnan(v) else "Infinity") for v in values.tolist()],
                weight,
                steps.tolist(),
                pixels,
            ],
        )
    # Debiased exponential moving average of log10, skipping non-finite values (TensorBoard's smoothing).
    expected, last, count = [], 0.0, 0
    for value in values:
        if not np.isfinite(value):
            expected.append(None)
            continue
        last, count = last * weight + (1 - weight) * np.log10(value), count + 1
        expected.append(10 ** (last / (1 - weight**count)))
    assert [v is None for v in smoothed] == [v is None for v in expected]
    np.testing.assert_allclose(
        [v for v in smoothed if v is not None], [v for v in expected if v is not None], rtol=1e-9
    )
    # Each pixel column covers the steps whose cells (centred on them, 3 steps wide) fall in it:
    # a non-finite value wins, otherwise the largest value survives.
    edges = np.linspace(steps[0] - 1.5, steps[-1] + 1.5, pixels + 1)
    for pixel in range(pixels):
        inside = (steps + 1.5 > edges[pixel]) & (steps - 1.5 < edges[pixel + 1])
        cell = values[inside]
        if not np.isfinite(cell).all():
            assert kinds[pixel] == 3, pixel
        else:
            assert kinds[pixel] == 1 and math.isclose(binned[pixel], cell.max()), pixel


def test_runs_side_by_side_share_scales_computed_over_all_their_values(tmp_path, page):
    with GradientHealthFileWriter(str(tmp_path / "only")) as writer:
        writer.write(0, {"grad_norm": [1.0]}, ["dense"])
    first = {
        "run": "a",
        "stat": "s",
        "layers": ["x", "y"],
        "steps": [0, 5, 10],
        "wall_times": [0, 1, 2],
        "values": [[0.02, 3.0], ["NaN", 0.0], [0.5, "Infinity"]],
    }
    second = {
        "run": "b",
        "stat": "s",
        "layers": ["z"],
        "steps": [3, 40],
        "wall_times": [0, 1],
        "values": [[7e-6], [250.0]],
    }
    with in_process_tensorboard(str(tmp_path)) as (url, _):
        page.open_tab(url + ENTRY)
        log_scales, linear_scales, nonfinite = page.page.evaluate(
            """async (bodies) => {
                const model = await import('./model.js');
                const scales = await import('./scales.js');
                const series = bodies.map(model.decodeSeries);
                return [scales.sharedScales(series, true), scales.sharedScales(series, false), series.map((s) => s.nonFinite)];
            }""",
            [first, second],
        )
    values = np.array([0.02, 3.0, np.nan, 0.0, 0.5, np.inf, 7e-6, 250.0])
    finite = values[np.isfinite(values)]
    positive = finite[finite > 0]
    assert log_scales["x"] == [0, 40]
    # Whole decades around every positive finite value of both runs; zeros and NaN/Inf left out.
    assert log_scales["y"] == pytest.approx(
        [10.0 ** np.floor(np.log10(positive.min())), 10.0 ** np.ceil(np.log10(positive.max()))]
    )
    assert log_scales["colour"] == pytest.approx({"lo": np.log10(positive.min()), "hi": np.log10(positive.max())})
    assert linear_scales["y"] == pytest.approx([min(0.0, finite.min()), finite.max() * 1.05])
    assert nonfinite == [[1, 2], []]  # step indices with a NaN or Inf in some layer


def test_a_late_diagnosis_fills_in_without_redrawing_the_charts(tmp_path, page):
    with GradientHealthFileWriter(str(tmp_path / "only")) as writer:
        for step in range(5):
            writer.write(step, {"grad_norm": [1.0 + step, 2.0]}, ["dense", "dense_1"])
    held = []
    # /health is held back until the charts are drawn, as when the diagnosis of a big run is slow.
    page.page.route("**" + ROUTES + "/health", lambda route: held.append(route))
    with in_process_tensorboard(str(tmp_path)) as (url, _):
        page.page.goto(url + ENTRY)
        page.page.wait_for_selector(".trend-cell canvas", timeout=LOAD_TIMEOUT_MS)
        assert page.page.evaluate("document.body.dataset.state") == "loading"
        assert page.page.text_content(".trend-cell .cell-caption .badge") == "diagnosing…"
        page.page.evaluate("window.drawnTrend = document.querySelector('.trend-cell canvas')")
        (route,) = held
        route.continue_()
        page.page.wait_for_selector("body[data-state=ready]", timeout=LOAD_TIMEOUT_MS)
        verdict = strict_json(urllib.request.urlopen(url + ROUTES + "/health").read())["runs"][0]["verdict"]
        captions = page.page.evaluate(
            "[...document.querySelectorAll('.cell-caption .badge')].map((b) => b.dataset.verdict)"
        )
        assert captions == [verdict] * 3  # diagnosis, trend and heatmap captions
        assert page.page.locator(".panel-diagnosis .diagnosis .muted").count() == 0  # no longer "Diagnosing…"
        assert page.page.evaluate("window.drawnTrend.isConnected")
        assert page.pixels(".trend-cell", "only") > MIN_DRAWN_PIXELS
        assert page.errors == []


def test_a_partial_series_is_appended_to_the_series_the_tab_has(tmp_path, page):
    with GradientHealthFileWriter(str(tmp_path / "only")) as writer:
        writer.write(0, {"grad_norm": [1.0]}, ["dense"])
    whole = {
        "run": "r",
        "stat": "s",
        "layers": ["x", "y"],
        "steps": [0, 2, 4, 6, 8],
        "wall_times": [0, 1, 2, 3, 4],
        "values": [[0.5, 2.0], [0.25, None], ["NaN", 1.0], [0.125, "Infinity"], [0.0625, 3.0]],
        "total_steps": 5,
    }
    first = dict(
        whole, steps=whole["steps"][:3], wall_times=whole["wall_times"][:3], values=whole["values"][:3], total_steps=3
    )
    # What a server answers to after_step=4: the later rows alone.
    rows = dict(
        whole, steps=whole["steps"][3:], wall_times=whole["wall_times"][3:], values=whole["values"][3:], partial=True
    )
    with in_process_tensorboard(str(tmp_path)) as (url, _):
        page.open_tab(url + ENTRY)
        appended, decoded = page.page.evaluate(
            """async ([first, rows, whole]) => {
                const model = await import('./model.js');
                const plain = (series) => ({...series, steps: [...series.steps], wallTimes: [...series.wallTimes],
                    values: [...series.values].map(String), missing: series.missing && [...series.missing]});
                const grown = model.appendSeries(model.decodeSeries(first), model.decodeSeries(rows));
                return [plain(grown), plain(model.decodeSeries(whole))];
            }""",
            [first, rows, whole],
        )
    # The same series as the whole answer, and marked as grown from the first part.
    assert appended.pop("grownFrom") == "3:4:2"
    assert appended == decoded
