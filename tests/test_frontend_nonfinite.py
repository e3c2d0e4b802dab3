"""A run that turns non-finite, in a real Chromium: it opens on its finite part, and its NaN steps are marked without covering the chart."""

from __future__ import annotations

import json
import urllib.parse

import numpy as np
import pytest
from support.browser import ENTRY, NONFINITE_RGB, browser, in_process_tensorboard, page  # noqa: F401  (fixtures)

from tb_gradhealth.summary import GradientHealthFileWriter

pytestmark = pytest.mark.slow

BROKEN_RUN = "exploding"
HEALTHY_RUN = "healthy"
LAYERS = ["dense", "dense_1", "dense_2"]
STEPS = 1_000
ONSET = 20  # every layer is NaN from this step on, as in a run that diverged early and never recovered
# view_trend.js: the strip along the top of the plot, and the marker at the first NaN step.
STRIP_PX = 5
MARKER_PX = 7 * 1.4


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("frontend_nonfinite")
    rng = np.random.default_rng(11)
    with GradientHealthFileWriter(str(root / BROKEN_RUN)) as writer:
        for step in range(STEPS):
            norms = np.full(len(LAYERS), np.nan) if step >= ONSET else 0.1 * 3.0 ** (step / 4) * (1 + rng.random(3))
            writer.write(step, {"grad_norm": norms}, LAYERS)
    with GradientHealthFileWriter(str(root / HEALTHY_RUN)) as writer:
        for step in range(STEPS):
            writer.write(step, {"grad_norm": 0.1 * (1 + rng.random(3))}, LAYERS)
    with in_process_tensorboard(str(root)) as (url, _):
        yield url


def open_runs(page, server, runs):
    page.open_tab(
        server + ENTRY + "#" + urllib.parse.urlencode({"runs": json.dumps(runs)}, quote_via=urllib.parse.quote)
    )


def caption(page, run):
    return page.cell(".profile-cell", run).locator(".cell-step").text_content()


def heatmap_shares(page, run):
    """Shares of a heatmap row's pixels that are coloured by a finite value and red (NaN), across the plot."""
    return page.cell(".heatmap-cell", run).evaluate(
        """(cell, red) => {
            const canvas = cell.querySelector('canvas');
            const y = Math.round(canvas.height / 3);
            const data = canvas.getContext('2d').getImageData(0, y, canvas.width, 1).data;
            let finite = 0, nan = 0, cells = 0;
            for (let x = 0; x < canvas.width; x++) {
                const [r, g, b] = data.slice(4 * x, 4 * x + 3);
                if (r === red[0] && g === red[1] && b === red[2]) { nan++; cells++; }
                else if (Math.max(r, g, b) - Math.min(r, g, b) > 60) { finite++; cells++; }
            }
            return [finite / cells, nan / cells];
        }""",
        list(NONFINITE_RGB),
    )


def red_below_the_marks(page, run):
    """Red pixels of the trend plot below its strip and onset marker, and the columns they are in."""
    return page.cell(".trend-cell", run).evaluate(
        """(cell, [red, below]) => {
            const canvas = cell.querySelector('.trend-plot canvas');
            const ratio = devicePixelRatio;
            const top = Math.ceil(10 * ratio + below * ratio);  // the plot's padding, then the marks
            const data = canvas.getContext('2d').getImageData(0, top, canvas.width, canvas.height - top).data;
            const columns = new Set();
            let count = 0;
            for (let i = 0; i < data.length; i += 4) {
                if (data[i] === red[0] && data[i + 1] === red[1] && data[i + 2] === red[2]) { count++; columns.add((i / 4) % canvas.width); }
            }
            return [count, columns.size / ratio];
        }""",
        [list(NONFINITE_RGB), max(STRIP_PX, MARKER_PX) + 1],
    )


def test_a_run_that_turned_non_finite_opens_on_its_finite_part(page, server):
    open_runs(page, server, [BROKEN_RUN])
    # Zoomed to the onset, the step picked there: most of the heatmap is the finite part.
    assert caption(page, BROKEN_RUN) == "step %d" % ONSET
    finite, nan = heatmap_shares(page, BROKEN_RUN)
    assert finite > 0.5 and 0 < nan < 0.5
    # NaN steps are marked along the top; below, only the onset's thin line is red.
    count, columns = red_below_the_marks(page, BROKEN_RUN)
    assert 0 < count and columns <= 2
    assert page.errors == []


def test_beside_a_healthy_run_one_click_shows_the_onset(page, server):
    open_runs(page, server, [BROKEN_RUN, HEALTHY_RUN])
    # The healthy run's steps all show: no zoom of its own accord.
    assert caption(page, HEALTHY_RUN) == "step %d" % (STEPS - 1)
    finite, nan = heatmap_shares(page, BROKEN_RUN)
    assert finite < 0.1 and nan > 0.9
    _count, columns = red_below_the_marks(page, BROKEN_RUN)
    assert columns <= 2
    page.cell(".trend-cell", BROKEN_RUN).locator(".onset-button").click()
    page.page.wait_for_function(
        "(step) => document.querySelector('.profile-cell .cell-step').textContent === step", arg="step %d" % ONSET
    )
    finite, nan = heatmap_shares(page, BROKEN_RUN)
    assert finite > 0.5
    assert caption(page, HEALTHY_RUN) == "step %d" % ONSET
    assert page.errors == []
