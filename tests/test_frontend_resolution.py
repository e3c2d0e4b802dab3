"""The tab in a real Chromium fetches /series at the plots' resolution, says so, and still marks non-finite steps where they are."""

from __future__ import annotations

import math
import urllib.request
from urllib.parse import parse_qs, urlencode, urlsplit

import numpy as np
import pytest
from support.browser import ENTRY, MIN_DRAWN_PIXELS, NONFINITE_RGB, ROUTES, browser, in_process_tensorboard, page  # noqa: F401  (fixtures)
from tb_server import strict_json

from tb_gradhealth.summary import GradientHealthFileWriter

pytestmark = pytest.mark.slow  # a browser and a server: ~10 s on 2 cores

RUN = "long"
LAYERS = ["dense", "dense_1", "dense_2"]
NUM_ROWS = 1500  # logged steps: more than the tab asks for at this viewport
STEP_STRIDE = 3  # logged every 3 steps
NAN_STEP = 2001  # between two of the rows a thinned series keeps at even spacing
NAN_LAYER = 1
# A window whose plots are under 1,024 device pixels wide, so 1,024 points are asked for;
# widened, its plots need more than the run's steps.
VIEWPORT = {"width": 1000, "height": 900}
WIDE_VIEWPORT = {"width": 1600, "height": 900}
# resolution.js: the bounds of the points asked for.
MIN_REQUEST_POINTS = 512
MAX_REQUEST_POINTS = 8192
# How far (canvas pixels) a mark may sit from where its step is: rounding and the mark's own width.
POSITION_TOLERANCE_PX = 2.0


@pytest.fixture(scope="module")
def long_logdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("frontend_resolution")
    steps = np.arange(NUM_ROWS) * STEP_STRIDE
    values = 0.1 * np.arange(1, len(LAYERS) + 1) * (1.5 + np.sin(steps / 50.0))[:, None]
    values[steps == NAN_STEP, NAN_LAYER] = np.nan
    with GradientHealthFileWriter(str(root / RUN)) as writer:
        for step, row in zip(steps.tolist(), values):
            writer.write(step, {"grad_norm": row}, LAYERS)
    return root


def request_points(page) -> int:
    """The max_points the tab should ask for now, computed here from its main area's width in device pixels."""
    main_px = page.page.evaluate("document.querySelector('main').clientWidth * devicePixelRatio")
    return min(MAX_REQUEST_POINTS, max(MIN_REQUEST_POINTS, 2 ** math.ceil(math.log2(main_px))))


def exact_pixel_xs(page, selector: str, rgb) -> list[int]:
    """The x (canvas pixels) of every pixel of exactly `rgb` in the first canvas under `selector`."""
    return page.page.evaluate(
        """([selector, rgb]) => {
            const canvas = document.querySelector(selector);
            const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
            const xs = [];
            for (let i = 0; i < data.length; i += 4) {
                if (data[i] === rgb[0] && data[i + 1] === rgb[1] && data[i + 2] === rgb[2] && data[i + 3] === 255) xs.push((i / 4) % canvas.width);
            }
            return xs;
        }""",
        [selector, list(rgb)],
    )


def test_series_come_at_plot_resolution_the_reduction_is_told_and_nonfinite_steps_land_right(long_logdir, page):
    series_urls = []
    page.page.on("request", lambda request: "/series?" in request.url and series_urls.append(request.url))
    page.page.set_viewport_size(VIEWPORT)
    with in_process_tensorboard(str(long_logdir)) as (url, _):
        page.open_tab(url + ENTRY)
        ratio = page.page.evaluate("devicePixelRatio")
        expected_points = request_points(page)
        assert expected_points < NUM_ROWS  # otherwise nothing is reduced and the test proves nothing
        queries = [parse_qs(urlsplit(request_url).query) for request_url in series_urls]
        assert queries and all(
            query == {"run": [RUN], "stat": ["grad_norm"], "max_points": [str(expected_points)]} for query in queries
        )

        with urllib.request.urlopen(
            url + ROUTES + "/series?" + urlencode({"run": RUN, "stat": "grad_norm", "max_points": expected_points})
        ) as response:
            body = strict_json(response.read())
        steps = body["steps"]
        assert body["total_steps"] == NUM_ROWS and len(steps) < NUM_ROWS and NAN_STEP in steps
        for cell in (".trend-cell", ".heatmap-cell"):
            note = page.page.text_content(cell + " .reduced-note")
            assert note.startswith("%s of %s steps shown" % (format(len(steps), ","), format(NUM_ROWS, ","))), note
        assert page.page.locator(".profile-cell .reduced-note").count() == 0
        assert page.pixels(".heatmap-cell", RUN) > MIN_DRAWN_PIXELS
        assert page.pixels(".trend-cell", RUN) > MIN_DRAWN_PIXELS
        assert "NaN or Inf in 1 logged step, first at step %s" % format(NAN_STEP, ",") in page.cell_text(
            ".trend-cell", RUN
        )

        # The trend's red marker sits on the step: the plot area (.u-over) spans the first to the last step.
        trend_canvas = ".trend-cell .trend-plot canvas"
        box = page.page.locator(trend_canvas).bounding_box()
        over = page.page.locator(".trend-cell .trend-plot .u-over").bounding_box()
        fraction = (NAN_STEP - steps[0]) / (steps[-1] - steps[0])
        expected_x = (over["x"] - box["x"] + fraction * over["width"]) * ratio
        xs = exact_pixel_xs(page, trend_canvas, NONFINITE_RGB)
        assert xs and abs(np.mean(xs) - expected_x) <= POSITION_TOLERANCE_PX * ratio, (np.mean(xs), expected_x)

        # The heatmap's red cell too: its cells, centred on the kept steps and reaching halfway to
        # their neighbours (uneven after downsampling), fill the plot from its left to its right edge.
        heatmap_canvas = ".heatmap-cell canvas"
        left, right = page.page.evaluate(
            """(selector) => {
                const canvas = document.querySelector(selector);
                const y = Math.round(canvas.height / 4);  // inside the rows, below the step marker
                const data = canvas.getContext('2d').getImageData(0, y, canvas.width, 1).data;
                const coloured = [];
                for (let x = 0; x < canvas.width; x++) {
                    const [r, g, b] = data.slice(4 * x, 4 * x + 3);
                    if (Math.max(r, g, b) - Math.min(r, g, b) > 60) coloured.push(x);
                }
                return [coloured[0], coloured[coloured.length - 1] + 1];
            }""",
            heatmap_canvas,
        )
        lo = steps[0] - (steps[1] - steps[0]) / 2
        hi = steps[-1] + (steps[-1] - steps[-2]) / 2
        expected_x = left + (NAN_STEP - lo) / (hi - lo) * (right - left)
        xs = exact_pixel_xs(page, heatmap_canvas, NONFINITE_RGB)
        assert xs and abs(np.mean(xs) - expected_x) <= POSITION_TOLERANCE_PX * ratio, (np.mean(xs), expected_x)

        # A wider window asks again at its resolution, which here covers every step: the note goes.
        page.page.set_viewport_size(WIDE_VIEWPORT)
        page.page.wait_for_function(
            "() => document.querySelectorAll('.reduced-note').length === 0 && document.body.dataset.state === 'ready'"
        )
        wide_points = request_points(page)
        assert wide_points > NUM_ROWS
        assert parse_qs(urlsplit(series_urls[-1]).query)["max_points"] == [str(wide_points)]
        assert page.pixels(".heatmap-cell", RUN, NONFINITE_RGB) > 0
        assert page.errors == []
