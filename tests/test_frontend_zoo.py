"""The tab on a real deep model recorded by the callback (MobileNetV2, 105 rows of convolutions and their normalisation), in a real Chromium."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import urllib.parse
import urllib.request

import numpy as np
import pytest
from support.browser import ENTRY, HEATMAP_TOP_PX, ROUTES, Page, browser, in_process_tensorboard  # noqa: F401  (fixtures)
from tb_server import strict_json

pytestmark = pytest.mark.slow

CASE = "mobilenet_v2"
RUN = "mobilenet_v2/train"
REPO = pathlib.Path(__file__).resolve().parent.parent
SCREENSHOT = REPO / "docs" / "gradient_health_deep_model.png"
UPDATE_SCREENSHOTS = os.environ.get("UPDATE_SCREENSHOTS") == "1"
# The docs' picture is of the same model trained longer, so that its trends have a shape to show.
SCREENSHOT_STEPS = 120
VIEWPORT = {"width": 1400, "height": 1000}
# view_trend.js, view_heatmap.js: the plot's height; the heatmap's plot at most, with its marker room and axis.
PLOT_HEIGHT_PX = 250
HEATMAP_MAX_HEIGHT_PX = 9 + 420 + 22
HEATMAP_MAX_ROWS_PX = 420
# Neighbouring rows differ this many times less once the normalisation layers are out of the picture (with
# them, every other row is 10-100x off its neighbours): in the data (log10 of the values) and in the colours drawn,
# which the colour scale's ends compress.
ZEBRA_FACTOR_DATA = 2
ZEBRA_FACTOR_PIXELS = 1.5


@pytest.fixture(scope="module")
def deep_logdir(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("frontend_zoo")
    if UPDATE_SCREENSHOTS:
        from support import zoo

        zoo.train(zoo.CASES[CASE], root / CASE, steps=SCREENSHOT_STEPS)
    else:
        shutil.copytree(request.getfixturevalue("zoo_runs")[CASE].log_dir, root / CASE)
    return root


@pytest.fixture(scope="module")
def server(deep_logdir):
    with in_process_tensorboard(str(deep_logdir)) as (url, _):
        yield url


@pytest.fixture(scope="module")
def served(server):
    """The run's /runs entry."""
    with urllib.request.urlopen(server + ROUTES + "/runs") as response:
        (entry,) = strict_json(response.read())["runs"]
    return entry


@pytest.fixture
def tab(browser, server):
    page = Page(browser, VIEWPORT)
    page.open_tab(
        server + ENTRY + "#" + urllib.parse.urlencode({"runs": json.dumps([RUN])}, quote_via=urllib.parse.quote)
    )
    yield page
    page.page.close()


def outer_groups(names: list[str]) -> int:
    """Rows once every group is collapsed, computed here: Keras's flat names group up to their first part with a digit."""

    def outer(name):
        parts = name.split("_")
        return next(("_".join(parts[:k]) for k in range(1, len(parts)) if re.search(r"\d", parts[k - 1])), name)

    keys = [outer(name) for name in names]
    return sum(1 for k, key in enumerate(keys) if k == 0 or keys[k - 1] != key)


def lines(tab) -> list[str]:
    return tab.cell(".trend-cell", RUN).locator(".legend-item.toggles .legend-name").all_text_contents()


def heatmap_rows(tab) -> int:
    return int(tab.cell(".heatmap-cell", RUN).locator("canvas").get_attribute("data-rows"))


def zebra(tab) -> float:
    """The mean RGB distance between neighbouring rows of the heatmap at its last step (the right edge)."""
    return tab.cell(".heatmap-cell", RUN).evaluate(
        """(cell, [top, height]) => {
            const canvas = cell.querySelector('canvas');
            const rows = Number(canvas.dataset.rows);
            const ratio = devicePixelRatio;
            const row = Math.min(24, height / rows);
            const x = canvas.width - Math.round(14 * ratio);  // inside the plot, left of its right margin
            const colours = [...Array(rows).keys()].map((r) =>
                [...canvas.getContext('2d').getImageData(x, Math.round((top + (r + 0.5) * row) * ratio), 1, 1).data].slice(0, 3));
            let total = 0;
            for (let r = 1; r < rows; r++) total += Math.hypot(...colours[r].map((c, k) => c - colours[r - 1][k]));
            return total / (rows - 1);
        }""",
        [HEATMAP_TOP_PX, HEATMAP_MAX_ROWS_PX],
    )


def test_mobilenet_v2_keeps_its_charts_in_their_boxes_and_a_filter_and_groups_narrow_it(tab, served):
    layers = served["layers"]
    assert len(layers) > 100 and "block_16_project_BN" in layers
    sizes = tab.cell(".trend-cell", RUN).evaluate(
        """(cell) => ({
            plot: cell.querySelector('.trend-plot canvas').getBoundingClientRect().height,
            legend: cell.querySelector('.trend-legend').getBoundingClientRect().height,
            legendMax: parseFloat(getComputedStyle(cell.querySelector('.trend-legend')).maxHeight),
        })"""
    )
    assert sizes["plot"] == PLOT_HEIGHT_PX and sizes["legend"] <= sizes["legendMax"]
    assert tab.cell(".heatmap-cell", RUN).locator("canvas").bounding_box()["height"] <= HEATMAP_MAX_HEIGHT_PX
    # The spread over the 105 layers and a few lines, not 105 lines.
    drawn = lines(tab)
    assert 2 <= len(drawn) <= 12 and {layers[0], layers[-1]} <= set(drawn)
    assert "median of %d layers" % len(layers) in tab.cell(".trend-cell", RUN).text_content()
    # A filter draws the layers it matches instead.
    tab.page.fill(".layer-filter", "block_1_")
    expected = [name for name in layers if "block_1_" in name]
    tab.page.wait_for_function(
        "(count) => document.querySelectorAll('.trend-cell .legend-item.toggles').length === count", arg=len(expected)
    )
    assert lines(tab) == expected and len(expected) == 6
    assert tab.cell(".trend-cell", RUN).locator(".trend-plot canvas").bounding_box()["height"] == PLOT_HEIGHT_PX
    # Grouping by name path: each block is one row.
    assert heatmap_rows(tab) == len(layers)
    tab.page.click("text=Collapse all")
    tab.page.wait_for_function(
        "(rows) => document.querySelector('.heatmap-cell canvas').dataset.rows === rows", arg=str(outer_groups(layers))
    )
    labels = tab.cell(".heatmap-cell", RUN).locator(".heatmap-label").all_text_contents()
    assert "▸ block_16 (6)" in labels
    assert tab.errors == []


def test_the_ranked_table_selects_a_layer_of_mobilenet_v2_everywhere(tab, served):
    first = tab.cell(".layers-cell", RUN).locator(".ranking[data-ranking=smallest] .rank-item").first
    name = first.get_attribute("data-layer")
    assert name in served["layers"]
    first.click()
    tab.page.wait_for_selector(".rank-item.focused")
    assert tab.cell(".trend-cell", RUN).locator(".legend-item.focused .legend-name").text_content() == name
    heatmap = tab.cell(".heatmap-cell", RUN)
    assert (
        heatmap.locator(".heatmap-focus").is_visible() and name in heatmap.locator(".heatmap-label").all_text_contents()
    )
    assert tab.errors == []


def test_one_kind_at_a_time_takes_the_zebra_of_convolutions_and_normalisation_out_of_the_heatmap(tab, server, served):
    kinds = dict(zip(served["layers"], served["kinds"]))
    assert {"conv", "normalization"} <= set(kinds.values())
    every_kind = zebra(tab)
    tab.page.select_option("select[aria-label='Kind of layer']", "conv")
    convolutions = sum(1 for kind in kinds.values() if kind == "conv")
    tab.page.wait_for_function(
        "(rows) => document.querySelector('.heatmap-cell canvas').dataset.rows === rows", arg=str(convolutions)
    )
    labelled = tab.cell(".heatmap-cell", RUN).locator(".heatmap-label").all_text_contents()
    assert labelled and all(kinds[name] == "conv" for name in labelled)
    assert zebra(tab) * ZEBRA_FACTOR_PIXELS < every_kind
    # The same in the data, computed here: neighbours' log10 distance at the last step, every kind against convolutions.
    with urllib.request.urlopen(
        server + ROUTES + "/series?" + urllib.parse.urlencode({"run": RUN, "stat": "grad_norm"})
    ) as response:
        body = strict_json(response.read())
    last = np.log10(np.array([float(value) for value in body["values"][-1]]))
    conv = np.array(body["kinds"]) == "conv"
    assert np.mean(np.abs(np.diff(last[conv]))) * ZEBRA_FACTOR_DATA < np.mean(np.abs(np.diff(last)))
    assert tab.errors == []


def test_screenshot_of_a_deep_model(tab, tmp_path):
    tab.page.evaluate("document.fonts.ready")
    target = SCREENSHOT if UPDATE_SCREENSHOTS else tmp_path / SCREENSHOT.name
    tab.page.screenshot(path=str(target), full_page=True)
    assert target.stat().st_size > 50_000
    assert tab.errors == []
