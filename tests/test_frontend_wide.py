"""The tab on wide runs in a real Chromium: 1,000 layers x 2,000 steps stay readable and quick, 100,000 layers are capped and said so, names of any length or direction stay in their place."""

from __future__ import annotations

import math

import numpy as np
import pytest
from frontend_support import ENTRY, ROUTES, Page, browser, in_process_tensorboard  # noqa: F401  (fixtures)
from tb_server import strict_json

from tb_gradhealth.summary import GradientHealthFileWriter

pytestmark = pytest.mark.slow

WIDE_RUN = "a_wide"
BLOCKS = 500  # two layers each: 1,000 layers
WIDE_STEPS = 2_000
SMALL_RUN = "b_small"
SMALL_LAYERS = ["dense", "dense_1", "dense_2"]
HUGE_RUN = "z_huge"
HUGE_LAYERS = 100_000
HUGE_STEPS = 3
NAMES_RUN = "c_names"
# A name far longer than any box, one that overrides the writing direction, and a plain one.
LONG_NAME = "very_long_" * 100
BIDI_NAME = "\u202eesrever_ni"
NAMES = [LONG_NAME, BIDI_NAME, "dense"]
# A layer that grows by orders of magnitude, and one with a single Inf step.
GROWING_LAYER = "block_250/conv"
INF_LAYER = "block_400/bn"
INF_STEP = 1_500
# view_trend.js and layers.js: the plot's height, and the most lines a chart draws.
PLOT_HEIGHT_PX = 250
MAX_LINES = 40
# view_heatmap.js: the heatmap's plot is at most this tall, plus its room for the marker and the axis.
HEATMAP_MAX_HEIGHT_PX = 9 + 420 + 22
VIEWPORT = {"width": 1600, "height": 1000}
LOAD_TIMEOUT_MS = 180_000


def wide_layers() -> tuple[list[str], list[str]]:
    names, kinds = [], []
    for block in range(BLOCKS):
        names += ["block_%d/conv" % block, "block_%d/bn" % block]
        kinds += ["conv", "normalization"]
    return names, kinds


def wide_values() -> np.ndarray:
    """[steps, layers]: norms rising towards the output, normalisation layers 10x their convolution, some noise."""
    names, kinds = wide_layers()
    rng = np.random.default_rng(3)
    depth = 10.0 ** np.linspace(-3, 0, len(names))
    kind_scale = np.where(np.array(kinds) == "normalization", 10.0, 1.0)
    values = depth * kind_scale * np.exp(0.2 * rng.standard_normal((WIDE_STEPS, len(names))))
    values[:, names.index(GROWING_LAYER)] *= np.logspace(0, 3, WIDE_STEPS)
    values[INF_STEP, names.index(INF_LAYER)] = np.inf
    return values.astype(np.float32)


@pytest.fixture(scope="module")
def wide_logdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("frontend_wide")
    names, kinds = wide_layers()
    with GradientHealthFileWriter(str(root / WIDE_RUN)) as writer:
        for step, row in enumerate(wide_values()):
            writer.write(step, {"grad_norm": row}, names, kinds=kinds, loss=2.0 / (1.0 + 0.001 * step))
    with GradientHealthFileWriter(str(root / SMALL_RUN)) as writer:
        for step in range(WIDE_STEPS // 10):
            writer.write(step * 10, {"grad_norm": [0.01, 0.1, 1.0]}, SMALL_LAYERS)
    with GradientHealthFileWriter(str(root / NAMES_RUN)) as writer:
        for step in range(20):
            writer.write(step, {"grad_norm": [0.5, 0.2, 0.1]}, NAMES)
    huge = ["layer_%06d" % index for index in range(HUGE_LAYERS)]
    with GradientHealthFileWriter(str(root / HUGE_RUN)) as writer:
        for step in range(HUGE_STEPS):
            writer.write(step, {"grad_norm": np.logspace(-3, 0, HUGE_LAYERS) * (1 + step)}, huge)
    return root


@pytest.fixture(scope="module")
def server(wide_logdir):
    with in_process_tensorboard(str(wide_logdir)) as (url, _):
        yield url


@pytest.fixture
def tab(browser, server):
    page = Page(browser, VIEWPORT)
    page.page.set_default_timeout(LOAD_TIMEOUT_MS)
    yield page
    page.page.close()


def open_with(tab, server, runs):
    tab.page.goto(server + ENTRY)
    tab.page.wait_for_selector("body[data-state=ready]", timeout=LOAD_TIMEOUT_MS)
    tab.set_selection(runs)


def series_body(server, run):
    import urllib.parse
    import urllib.request

    url = server + ROUTES + "/series?" + urllib.parse.urlencode({"run": run, "stat": "grad_norm"})
    with urllib.request.urlopen(url, timeout=LOAD_TIMEOUT_MS / 1000) as response:
        body = strict_json(response.read())
    body["array"] = np.array([[float(v) for v in row] for row in body["values"]])
    return body


def visible_box(locator):
    """The element's box once scrolled into the window (the mouse only reaches what is in it)."""
    locator.scroll_into_view_if_needed()
    return locator.bounding_box()


def legend(tab, run):
    """[(name, value text)] of a run's trend legend, the step read-out first."""
    return tab.cell(".trend-cell", run).evaluate(
        """(cell) => [...cell.querySelectorAll('.trend-legend .legend-item')].map(
            (item) => [item.querySelector('.legend-name').textContent, item.querySelector('.legend-value').textContent])"""
    )


def test_a_wide_run_keeps_its_charts_in_their_boxes_and_caps_what_it_draws(tab, server):
    open_with(tab, server, [WIDE_RUN, SMALL_RUN])
    sizes = tab.page.evaluate(
        """(runs) => runs.map((run) => {
            const cell = (section) => [...document.querySelectorAll(section)].find((c) => c.dataset.run === run);
            const trend = cell('.trend-cell');
            const legend = trend.querySelector('.trend-legend');
            return {
                plot: trend.querySelector('.uplot canvas').getBoundingClientRect().height,
                legend: legend.getBoundingClientRect().height,
                legendMax: parseFloat(getComputedStyle(legend).maxHeight),
                trendCell: trend.getBoundingClientRect().height,
                lines: trend.querySelectorAll('.legend-item.toggles').length,
                heatmap: cell('.heatmap-cell').querySelector('canvas').getBoundingClientRect().height,
                profile: cell('.profile-cell').querySelector('canvas').getBoundingClientRect().height,
            };
        })""",
        [WIDE_RUN, SMALL_RUN],
    )
    wide, small = sizes
    # The plot is as tall with 1,000 layers as with 3; the legend scrolls inside its own box.
    assert wide["plot"] == small["plot"] == PLOT_HEIGHT_PX
    assert wide["legend"] <= wide["legendMax"]
    assert wide["trendCell"] <= PLOT_HEIGHT_PX + wide["legendMax"] + 150
    assert 0 < wide["lines"] <= MAX_LINES and small["lines"] == len(SMALL_LAYERS)
    assert wide["heatmap"] <= HEATMAP_MAX_HEIGHT_PX and wide["profile"] == small["profile"]
    names = [name for name, _ in legend(tab, WIDE_RUN)]
    # The spread over every layer, and the layers worth a look: first, last, the one that grew, the one with an Inf.
    assert names[1:3] == ["median of 1000 layers", "min – max of 1000 layers"]
    assert {"block_0/conv", "block_499/bn", GROWING_LAYER, INF_LAYER} <= set(names)
    # Its 1,000 rows share the heatmap's pixel rows, and the note says how.
    assert "1,000 rows in 420 pixel rows" in tab.cell(".heatmap-cell", WIDE_RUN).text_content()
    assert tab.errors == []


def test_hovering_reads_out_the_drawn_layers_and_the_median_over_all_layers(tab, server):
    open_with(tab, server, [WIDE_RUN])
    body = series_body(server, WIDE_RUN)
    over = visible_box(tab.cell(".trend-cell", WIDE_RUN).locator(".u-over"))
    tab.page.mouse.move(over["x"] + over["width"] * 0.37, over["y"] + over["height"] / 2)
    shown = dict(legend(tab, WIDE_RUN))
    step = int(shown.pop("Step").replace(",", ""))
    row = body["array"][body["steps"].index(step)]
    # The median over the layers at that step, computed here (log scale: positive finite values).
    values = row[np.isfinite(row) & (row > 0)]
    assert math.isclose(float(shown.pop("median of 1000 layers")), float(np.median(values)), rel_tol=5e-3)
    low, high = (float(text) for text in shown.pop("min – max of 1000 layers").split(" – "))
    assert math.isclose(low, values.min(), rel_tol=5e-3) and math.isclose(high, values.max(), rel_tol=5e-3)
    for name, text in shown.items():
        assert math.isclose(float(text), row[body["layers"].index(name)], rel_tol=5e-3), name
    assert tab.errors == []


def test_picking_a_step_on_a_wide_heatmap_shows_it_everywhere(tab, server):
    open_with(tab, server, [WIDE_RUN])
    box = visible_box(tab.cell(".heatmap-cell", WIDE_RUN).locator("canvas"))
    tab.page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
    tooltip = tab.cell(".heatmap-cell", WIDE_RUN).locator(".tooltip")
    tooltip.wait_for(state="visible")
    lines = tooltip.evaluate("(tip) => [...tip.children].map((line) => line.textContent)")
    # A pixel row holds 2-3 of the 1,000 rows: the tooltip names them and the layer whose value it shows.
    assert lines[0].startswith(("2 rows: block_", "3 rows: block_")) and lines[2].startswith("largest: grad_norm = ")
    picked = lines[1]
    tab.page.mouse.click(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
    assert tab.cell(".profile-cell", WIDE_RUN).locator(".cell-step").text_content() == picked
    tab.page.mouse.move(0, 0)
    assert legend(tab, WIDE_RUN)[0] == ["Step", picked.removeprefix("step ")]
    assert tab.page.locator(".heatmap-cell .step-marker:not([hidden])").count() == 1
    assert tab.errors == []


def test_100000_layers_are_capped_and_the_caps_are_said(tab, server):
    open_with(tab, server, [HUGE_RUN])
    cell = tab.cell(".trend-cell", HUGE_RUN)
    assert cell.locator(".legend-item.toggles").count() <= MAX_LINES
    assert "median of 100000 layers" in cell.text_content()
    heatmap = tab.cell(".heatmap-cell", HUGE_RUN)
    assert "100,000 rows in 420 pixel rows" in heatmap.text_content()
    assert heatmap.locator("canvas").bounding_box()["height"] <= HEATMAP_MAX_HEIGHT_PX
    # Names of the heatmap rows: a few dozen labels, not 100,000.
    assert 0 < heatmap.locator(".heatmap-label").count() <= 50
    assert tab.errors == []


def test_long_and_bidi_names_are_cut_isolated_and_whole_in_their_tooltip(tab, server):
    open_with(tab, server, [NAMES_RUN, SMALL_RUN])
    viewport_width = VIEWPORT["width"]
    # Nothing is wider than the window, and both runs' columns are as wide as each other.
    assert tab.page.evaluate("document.documentElement.scrollWidth") <= viewport_width
    widths = tab.page.evaluate(
        "[...document.querySelectorAll('.panel-trends .cell')].map((cell) => cell.getBoundingClientRect().width)"
    )
    assert len(widths) == 2 and abs(widths[0] - widths[1]) <= 20
    shown = tab.page.evaluate(
        """([run, names]) => [...document.querySelectorAll('.legend-name, .heatmap-label')]
            .filter((e) => e.closest('.cell').dataset.run === run && names.includes(e.textContent))
            .map((e) => ({
                text: e.textContent,
                title: e.closest('[title]').title,
                bidi: getComputedStyle(e).unicodeBidi,
                overflow: getComputedStyle(e).textOverflow,
                width: e.getBoundingClientRect().width,
                cell: e.closest('.cell').getBoundingClientRect().width,
            }))""",
        [NAMES_RUN, NAMES],
    )
    # Each name in the legend and among the heatmap's rows.
    assert sorted(entry["text"] for entry in shown) == sorted(NAMES * 2)
    for entry in shown:
        assert entry["bidi"] == "isolate" and entry["overflow"] == "ellipsis"
        assert entry["width"] < entry["cell"]
        # Whole in its tooltip.
        assert entry["text"] in entry["title"]
    assert tab.errors == []
