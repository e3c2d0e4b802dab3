"""The tab on wide runs in a real Chromium: 1,000 layers x 2,000 steps stay readable and quick, 100,000 layers are capped and said so, names of any length or direction stay in their place."""

from __future__ import annotations

import json
import math
import re
import urllib.parse
import urllib.request

import numpy as np
import pytest
from support.browser import ENTRY, ROUTES, Page, browser, in_process_tensorboard  # noqa: F401  (fixtures)
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
# resolution.js: the max_points the tab asks for in this window (every step of the wide run).
TAB_MAX_POINTS = 2048
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
    """Opens the tab on `runs` alone (the view in its URL), so no other run is loaded."""
    tab.page.goto(
        server + ENTRY + "#" + urllib.parse.urlencode({"runs": json.dumps(runs)}, quote_via=urllib.parse.quote)
    )
    tab.page.wait_for_selector("body[data-state=ready]", timeout=LOAD_TIMEOUT_MS)
    tab.set_selection(runs)


def get_json(server, route):
    with urllib.request.urlopen(server + ROUTES + route, timeout=LOAD_TIMEOUT_MS / 1000) as response:
        return strict_json(response.read())


def series_body(server, run):
    # The resolution the tab asks for in this window: the server answers from the body it keeps for the tab.
    query = {"run": run, "stat": "grad_norm", "max_points": TAB_MAX_POINTS}
    body = get_json(server, "/series?" + urllib.parse.urlencode(query))
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
                plot: trend.querySelector('.trend-plot canvas').getBoundingClientRect().height,
                legend: legend.getBoundingClientRect().height,
                legendMax: parseFloat(getComputedStyle(legend).maxHeight),
                trendCell: trend.getBoundingClientRect().height,
                loss: trend.querySelector('.loss').getBoundingClientRect().height,
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
    assert wide["trendCell"] <= wide["loss"] + PLOT_HEIGHT_PX + wide["legendMax"] + 150
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
    over = visible_box(tab.cell(".trend-cell", WIDE_RUN).locator(".trend-plot .u-over"))
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


def levels_at_the_end(values: np.ndarray) -> np.ndarray:
    """Each layer's median finite non-negative value over the last tenth of the rows (layers.js endLevels)."""
    tail = values[-max(1, round(len(values) * 0.1)) :]
    return np.array([np.median(column[np.isfinite(column) & (column >= 0)]) for column in tail.T])


def smallest_relative_to_kind(values: np.ndarray, kinds: list[str], count: int = 5) -> list[int]:
    """The layers of the lowest level relative to the median positive level of their kind (of all layers for a kind of fewer than 3)."""
    levels = levels_at_the_end(values)
    kinds = np.array(kinds)
    reference = np.full(len(levels), np.median(levels[levels > 0]))
    for kind in set(kinds):
        peers = levels[(kinds == kind) & (levels > 0)]
        if len(peers) >= 3:
            reference[kinds == kind] = np.median(peers)
    return list(np.argsort(levels / reference, kind="stable")[:count])


def test_a_filter_narrows_the_lines_to_the_layers_it_matches(tab, server):
    open_with(tab, server, [WIDE_RUN])
    names, _ = wide_layers()
    for typed, matches in (
        ("/^block_4[0-9]\\/conv$/", [name for name in names if re.fullmatch(r"block_4[0-9]/conv", name)]),
        ("BLOCK_7/", [name for name in names if "block_7/" in name]),
    ):
        tab.page.fill(".layer-filter", typed)
        tab.page.wait_for_function(
            "(count) => document.querySelectorAll('.trend-cell .legend-item.toggles').length === count",
            arg=len(matches),
        )
        drawn = [name for name, _ in legend(tab, WIDE_RUN)][3:]  # after the step and the band's two entries
        assert sorted(drawn) == sorted(matches), typed
        assert "%d of 1000 layers match the filter" % len(matches) in tab.cell(".trend-cell", WIDE_RUN).text_content()
    # A regular expression that does not compile says so and filters nothing.
    tab.page.fill(".layer-filter", "/block_(/")
    tab.page.wait_for_selector(".layer-filter.invalid")
    assert "block_0/conv" in [name for name, _ in legend(tab, WIDE_RUN)]
    assert tab.errors == []


def test_grouping_by_name_path_collapses_rows_and_a_group_opens_again(tab, server):
    open_with(tab, server, [WIDE_RUN])
    rows = "document.querySelector('.heatmap-cell canvas').dataset.rows"
    assert tab.page.evaluate(rows) == str(2 * BLOCKS)
    tab.page.click("text=Collapse all")
    tab.page.wait_for_function("(count) => %s === count" % rows, arg=str(BLOCKS))
    # Each block is one row over its two layers: the profile follows the heatmap's rows.
    assert "%d rows in 420 pixel rows" % BLOCKS in tab.cell(".heatmap-cell", WIDE_RUN).text_content()
    tab.page.click("text=Readable rows")
    group = tab.cell(".heatmap-cell", WIDE_RUN).locator(".heatmap-group").first
    assert group.text_content() == "▸ block_0 (2)"
    group.click()
    tab.page.wait_for_function("(count) => %s === count" % rows, arg=str(BLOCKS + 1))
    labels = tab.cell(".heatmap-cell", WIDE_RUN).locator(".heatmap-label").all_text_contents()
    assert labels[:3] == ["block_0/conv", "block_0/bn", "▸ block_1 (2)"]
    # The bracket beside an open group closes it again.
    tab.cell(".heatmap-cell", WIDE_RUN).locator(".heatmap-bracket").first.click()
    tab.page.wait_for_function("(count) => %s === count" % rows, arg=str(BLOCKS))
    tab.page.click("text=Expand all")
    tab.page.wait_for_function("(count) => %s === count" % rows, arg=str(2 * BLOCKS))
    assert tab.errors == []


def test_the_ranked_layers_are_those_numpy_finds_and_a_click_selects_one_everywhere(tab, server):
    open_with(tab, server, [WIDE_RUN])
    names, kinds = wide_layers()
    ranked = tab.cell(".layers-cell", WIDE_RUN).evaluate(
        """(cell) => Object.fromEntries([...cell.querySelectorAll('.ranking')].map((list) => [
            list.dataset.ranking, [...list.querySelectorAll('.rank-item')].map((item) => item.dataset.layer)]))"""
    )
    # The rows the tab has: 1,000 layers x 2,000 steps are more values than a response holds, so the
    # server sent fewer steps (and says so).
    body = series_body(server, WIDE_RUN)
    assert body["kinds"] == kinds and len(body["steps"]) < WIDE_STEPS and body["notices"]
    for section in (".trend-cell", ".heatmap-cell"):
        assert tab.cell(section, WIDE_RUN).locator(".series-notice").all_text_contents() == body["notices"]
    smallest = [names[j] for j in smallest_relative_to_kind(body["array"], body["kinds"])]
    assert ranked["smallest"] == smallest
    # What a user expects: the layers nearest the input of both kinds, although every normalisation
    # layer's gradient is 10x its convolution's; ranked against all layers they would all be convolutions.
    assert {kinds[names.index(name)] for name in smallest} == {"conv", "normalization"}
    assert all(int(name.split("/")[0].removeprefix("block_")) < 5 for name in smallest)
    assert {kinds[j] for j in smallest_relative_to_kind(body["array"], ["all"] * len(names))} == {"conv"}
    # A layer without gradient is the smallest of all, and a kind of one layer (a dense head) is
    # compared with every layer, not with itself.
    dead_and_head = tab.page.evaluate(
        """async () => {
            const layers = await import('./layers.js');
            const values = Float64Array.from([1, 1, 2, 2, 4, 4, 0, 0, 0.01, 0.01]);  // [layer][step]
            const series = {layers: ['c1', 'c2', 'c3', 'dead', 'head'], steps: Float64Array.from([0, 1]), values, missing: null};
            return layers.ranking(series, ['conv', 'conv', 'conv', 'conv', 'dense']).smallest.map(({j, ratio}) => [j, ratio]);
        }"""
    )
    assert dead_and_head == [[3, 0], [4, pytest.approx(0.01 / 1.5)], [0, 0.5], [1, 1], [2, 2]]
    assert ranked["growth"][0] == GROWING_LAYER
    assert ranked["nonfinite"] == [INF_LAYER]
    assert "step 1,500" in tab.cell(".layers-cell", WIDE_RUN).locator(".rank-item").last.text_content()

    tab.cell(".layers-cell", WIDE_RUN).locator(".rank-item[data-layer='%s']" % GROWING_LAYER).first.click()
    # Selected everywhere: marked in the table, drawn bold in the trend, outlined in the heatmap at a readable height.
    tab.page.wait_for_selector(".rank-item.focused[data-layer='%s']" % GROWING_LAYER)
    focused = tab.cell(".trend-cell", WIDE_RUN).locator(".legend-item.focused .legend-name")
    assert focused.text_content() == GROWING_LAYER
    heatmap = tab.cell(".heatmap-cell", WIDE_RUN)
    assert heatmap.locator(".heatmap-focus").is_visible()
    assert GROWING_LAYER in heatmap.locator(".heatmap-label").all_text_contents()
    focus_box = heatmap.locator(".heatmap-focus").bounding_box()
    label_box = heatmap.locator(".heatmap-label", has_text=GROWING_LAYER).bounding_box()
    assert abs((focus_box["y"] + focus_box["height"] / 2) - (label_box["y"] + label_box["height"] / 2)) <= 3
    # A second click unselects it.
    tab.cell(".layers-cell", WIDE_RUN).locator(".rank-item[data-layer='%s']" % GROWING_LAYER).first.click()
    tab.page.wait_for_function("() => !document.querySelector('.rank-item.focused')")
    assert heatmap.locator(".heatmap-focus").is_hidden()
    assert tab.errors == []


# Keras's own layer names of MobileNetV2 and ResNet50 (excerpts), and nested names as PyTorch and Keras subclasses write them.
MOBILENET = ["Conv1", "bn_Conv1", "expanded_conv_depthwise", "block_1_expand", "block_1_expand_BN", "block_1_depthwise"]
MOBILENET += ["block_2_expand", "block_2_project", "Conv_1", "Conv_1_bn", "predictions"]
RESNET = [
    "conv1_conv",
    "conv1_bn",
    "conv2_block1_1_conv",
    "conv2_block1_1_bn",
    "conv2_block1_2_conv",
    "conv2_block2_1_conv",
]
RESNET += ["conv3_block1_1_conv", "predictions"]
NESTED = ["encoder.layer.0.attention.query", "encoder.layer.0.attention.key", "encoder.layer.0.ffn"]
NESTED += ["encoder.layer.1.ffn", "head"]
RESNET_KINDS = ["conv", "normalization", "conv", "normalization", "conv", "conv", "conv", "dense"]


def test_rows_group_by_name_path_and_by_kind_as_real_models_name_their_layers(tab, server):
    open_with(tab, server, [SMALL_RUN])
    groups = tab.page.evaluate(
        """async ([mobilenet, resnet, nested, kinds]) => {
            const layers = await import('./layers.js');
            const spans = (names, options) => layers.layerRows(names, options.kinds ?? null, options).spans
                .map((span) => [span.key, span.from, span.to]);
            const rows = (names, options) => layers.layerRows(names, options.kinds ?? null, options).rows
                .map((row) => [row.name, row.layers]);
            return {
                mobilenet: spans(mobilenet, {}),
                resnet: spans(resnet, {}),
                nested: spans(nested, {}),
                collapsed: rows(mobilenet, {collapsed: new Set(['block_1', 'Conv_1'])}),
                byKind: rows(resnet, {kinds, groupBy: 'kind', collapsed: new Set(['kind:normalization'])}),
                oneKind: rows(resnet, {kinds, kind: 'normalization'}),
                noKinds: rows(resnet, {groupBy: 'kind', kind: 'conv'}).length,
            };
        }""",
        [MOBILENET, RESNET, NESTED, RESNET_KINDS],
    )
    # Flat Keras names group after each part with a digit: block_1_expand is in block_1, conv2_block1_1_bn in conv2.
    assert groups["mobilenet"] == [["block_1", 3, 6], ["block_2", 6, 8], ["Conv_1", 8, 10]]
    assert groups["resnet"] == [["conv1", 0, 2], ["conv2_block1_1", 2, 4], ["conv2_block1", 2, 5], ["conv2", 2, 6]]
    # A group with one sub-group only is that sub-group (encoder.layer.0, not encoder > encoder.layer > ...).
    assert groups["nested"] == [["encoder.layer.0.attention", 0, 2], ["encoder.layer.0", 0, 3], ["encoder.layer", 0, 4]]
    assert groups["collapsed"][3] == ["block_1", [3, 4, 5]] and groups["collapsed"][6] == ["Conv_1", [8, 9]]
    assert len(groups["collapsed"]) == len(MOBILENET) - 3
    # By kind: dense, then convolutions, then normalisation (collapsed into one row over its two layers).
    assert groups["byKind"] == [["predictions", [7]]] + [[RESNET[j], [j]] for j in (0, 2, 4, 5, 6)] + [
        ["normalization", [1, 3]]
    ]
    assert groups["oneKind"] == [["conv1_bn", [1]], ["conv2_block1_1_bn", [3]]]
    # Without recorded kinds no layer is dropped and grouping by kind falls back to the name path.
    assert groups["noKinds"] == len(RESNET)


def loss_at(step: int) -> float:
    return float(np.float32(2.0 / (1.0 + 0.001 * step)))


def test_the_loss_is_drawn_over_the_trends_and_reads_out_the_hovered_and_picked_step(tab, server):
    open_with(tab, server, [WIDE_RUN, SMALL_RUN])
    # Only the run that records its loss has the chart.
    assert tab.cell(".trend-cell", WIDE_RUN).locator(".loss canvas").count() == 1
    assert tab.cell(".trend-cell", SMALL_RUN).locator(".loss").is_hidden()
    readout = tab.cell(".trend-cell", WIDE_RUN).locator(".loss-readout")
    over = visible_box(tab.cell(".trend-cell", WIDE_RUN).locator(".trend-plot .u-over"))
    tab.page.mouse.move(over["x"] + over["width"] * 0.61, over["y"] + over["height"] / 2)
    step, value = readout.text_content().removeprefix("step ").split(": ")
    assert math.isclose(float(value), loss_at(int(step.replace(",", ""))), rel_tol=5e-3)
    # Away from the plots it reads out the picked step, picked here from the keyboard.
    tab.page.mouse.move(0, 0)
    tab.cell(".trend-cell", WIDE_RUN).locator(".trend-plot .u-over").press("Home")
    assert readout.text_content() == "step 0: %g" % float("%.3g" % loss_at(0))
    label = tab.cell(".trend-cell", WIDE_RUN).locator(".loss canvas").get_attribute("aria-label")
    assert label.startswith("Training loss of run %s over %d steps" % (WIDE_RUN, WIDE_STEPS))
    assert tab.errors == []


def test_the_evidence_reads_out_its_numbers_and_the_loss_trend(tab, server):
    open_with(tab, server, [WIDE_RUN])
    findings = next(entry for entry in get_json(server, "/health")["runs"] if entry["run"] == WIDE_RUN)["findings"]
    nonfinite = next(finding for finding in findings if finding["kind"] == "nonfinite")
    item = tab.cell(".panel-diagnosis .cell", WIDE_RUN).locator(".finding[data-kind=nonfinite]")
    item.locator("summary").click()
    shown = dict(
        zip(
            item.locator(".finding-evidence > .evidence-list > dt").all_text_contents(),
            item.locator(".finding-evidence > .evidence-list > dd").all_text_contents(),
        )
    )
    # Each number under the words it means, as the diagnosis computed it.
    assert shown["logged steps with NaN/Inf"] == "%d" % nonfinite["evidence"]["steps_nonfinite"]
    assert shown["logged steps"] == format(nonfinite["evidence"]["steps_logged"], ",")
    sparkline = item.locator(".evidence-loss canvas")
    assert "training loss from 2 to " in sparkline.get_attribute("aria-label")
    assert "the finding starts at step %s" % format(nonfinite["first_step"], ",") in sparkline.get_attribute(
        "aria-label"
    )
    assert tab.errors == []
