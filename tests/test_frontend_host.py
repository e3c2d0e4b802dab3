"""The tab at home in TensorBoard, in a real Chromium against a real `tensorboard`: layout at common widths, dark mode, reload, the view in the URL, keyboard and screen readers."""

from __future__ import annotations

import json
import urllib.parse

import numpy as np
import pytest
from support.browser import ENTRY, LOAD_TIMEOUT_MS, Page, browser, tensorboard_process  # noqa: F401  (fixtures)

from tb_gradhealth.summary import GradientHealthFileWriter

pytestmark = pytest.mark.slow

RUNS = ["run_a", "run_b", "run_c"]
LAYERS = ["dense", "dense_1", "dense_2", "dense_3"]
STEPS = list(range(0, 300, 3))
TAB = "/#gradient_health"
THEME_MENU = 'button[aria-label="Menu for changing light or dark theme"]'
DARK = 'button[title="Force dark TensorBoard theme."]'
LIGHT = 'button[title="Force light TensorBoard theme."]'
# The largest luminance (0-1) of a dark background, the smallest of a light one.
DARK_MAX = 0.25
LIGHT_MIN = 0.75


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("frontend_host")
    rng = np.random.default_rng(5)
    for index, run in enumerate(RUNS):
        with GradientHealthFileWriter(str(root / run)) as writer:
            for step in STEPS:
                norms = 10.0 ** np.linspace(-2 - index, 0, len(LAYERS)) * np.exp(0.1 * rng.standard_normal(len(LAYERS)))
                writer.write(step, {"grad_norm": norms, "update_ratio": norms * 1e-3}, LAYERS)
    return root


@pytest.fixture(scope="module")
def server(logdir):
    with tensorboard_process(logdir) as running:
        yield running


def open_page(browser, url, width=1600, height=1000):
    page = Page(browser, {"width": width, "height": height})
    page.page.goto(url)
    return page


def tab_frame(page):
    """The tab's frame inside TensorBoard's page, once the tab is ready."""
    frame = page.page.wait_for_selector("iframe", timeout=LOAD_TIMEOUT_MS).content_frame()
    frame.wait_for_selector("body[data-state=ready]", timeout=LOAD_TIMEOUT_MS)
    return frame


def layout(frame):
    """Per section, each run's column (left, right) and whether the section scrolls sideways; the page's overflow."""
    return frame.evaluate(
        """() => ({
            sections: [...document.querySelectorAll('.run-grid')].map((grid) => ({
                scrolls: grid.scrollWidth > grid.clientWidth + 1,
                cells: [...grid.children].map((cell) => {
                    const box = cell.getBoundingClientRect();
                    return [cell.dataset.run, Math.round(box.left), Math.round(box.right)];
                }),
            })),
            contentScrolls: document.querySelector('main').scrollWidth > document.querySelector('main').clientWidth + 1,
            pageScrolls: document.documentElement.scrollWidth > window.innerWidth,
            width: window.innerWidth,
        })"""
    )


@pytest.mark.parametrize(("where", "width"), [("alone", 1024), ("alone", 1280), ("alone", 1920), ("tensorboard", 1280)])
def test_three_runs_fit_side_by_side_from_1280_px_and_stay_aligned_at_1024(browser, server, where, width):
    page = open_page(browser, server.url + (ENTRY if where == "alone" else TAB), width)
    try:
        frame = page.page.main_frame if where == "alone" else tab_frame(page)
        frame.wait_for_selector("body[data-state=ready]", timeout=LOAD_TIMEOUT_MS)
        shown = layout(frame)
        sections = shown["sections"]
        assert len(sections) == 5 and all(len(section["cells"]) == len(RUNS) for section in sections)
        # No section scrolls on its own, and each run's column lines up in every section.
        assert not any(section["scrolls"] for section in sections)
        for column in zip(*(section["cells"] for section in sections)):
            assert len({cell[0] for cell in column}) == 1
            assert max(cell[1] for cell in column) - min(cell[1] for cell in column) <= 1, column
        if width >= 1280:
            # The whole comparison in the window: nothing to scroll sideways.
            assert not shown["contentScrolls"] and not shown["pageScrolls"]
            assert all(section["cells"][-1][2] <= shown["width"] for section in sections)
        assert page.tab_errors() == []
    finally:
        page.page.close()


def luminance(frame, expression):
    """The luminance (0-1) of the CSS colour `expression` evaluates to in the tab."""
    rgb = frame.evaluate(
        """(expression) => {
            const [r, g, b] = eval(expression).match(/[\\d.]+/g).map(Number);
            return [r, g, b];
        }""",
        expression,
    )
    return (0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2]) / 255


def test_dark_mode_follows_tensorboards_toggle(browser, server):
    page = open_page(browser, server.url + TAB)
    try:
        frame = tab_frame(page)
        body_colour = "getComputedStyle(document.body).backgroundColor"
        assert frame.evaluate("document.documentElement.dataset.theme") == "light"
        assert luminance(frame, body_colour) >= LIGHT_MIN
        light_heatmap = frame.evaluate("document.querySelector('.heatmap-cell canvas').toDataURL()")
        for choice, theme in ((DARK, "dark"), (LIGHT, "light"), (DARK, "dark")):
            page.page.click(THEME_MENU)
            page.page.click(choice)
            frame.wait_for_function("(theme) => document.documentElement.dataset.theme === theme", arg=theme)
            if theme == "dark":
                assert luminance(frame, body_colour) <= DARK_MAX
                assert luminance(frame, "getComputedStyle(document.querySelector('.panel')).color") >= LIGHT_MIN
                # The canvases are drawn again in the dark theme's colours.
                frame.wait_for_function(
                    "(light) => document.querySelector('.heatmap-cell canvas').toDataURL() !== light", arg=light_heatmap
                )
            else:
                assert luminance(frame, body_colour) >= LIGHT_MIN
        assert page.tab_errors() == []
    finally:
        page.page.close()


def test_inside_tensorboard_the_tab_has_no_refresh_of_its_own_and_alone_it_has(browser, server):
    page = open_page(browser, server.url + TAB)
    try:
        frame = tab_frame(page)
        assert frame.locator(".refresh-button").count() == 0 and frame.locator(".auto-refresh").count() == 0
        with page.page.expect_request(lambda request: request.url.endswith("/runs"), timeout=LOAD_TIMEOUT_MS):
            page.page.click("button.reload-button")
    finally:
        page.page.close()
    page = open_page(browser, server.url + ENTRY)
    try:
        page.wait_for_state()
        assert page.page.locator(".refresh-button").count() == 1 and page.page.locator(".auto-refresh").count() == 1
    finally:
        page.page.close()


def url_data(url: str, prefix: str = "") -> dict:
    """The view state a URL keeps (TensorBoard's `p.gradient_health.` keys, or the tab's own hash)."""
    pairs = urllib.parse.parse_qsl(urllib.parse.urlsplit(url).fragment)
    return {key[len(prefix) :]: value for key, value in pairs if key.startswith(prefix)}


def view_of(frame) -> dict:
    """What the tab shows: runs, statistic, filter, picked step, drawn lines, the heatmap's image."""
    return frame.evaluate(
        """() => ({
            runs: [...document.querySelectorAll('.panel-heatmap .heatmap-cell')].map((cell) => cell.dataset.run),
            stat: document.querySelector('.stat-select').value,
            filter: document.querySelector('.layer-filter').value,
            step: document.querySelector('.profile-cell .cell-step').textContent,
            lines: [...document.querySelectorAll('.trend-cell .legend-item.toggles .legend-name')].map((e) => e.textContent),
            heatmap: document.querySelector('.heatmap-cell canvas').toDataURL(),
        })"""
    )


def change_the_view(frame, page):
    """Picks two runs, another statistic, a filter, a zoom and a step, as a user would."""
    for run in RUNS[:1]:
        frame.locator(".run-item[data-run=%s] input" % run).click()
    frame.wait_for_selector("body[data-state=ready]")
    frame.select_option(".stat-select", "update_ratio")
    frame.wait_for_function(
        "() => document.querySelector('.panel-trends .panel-subtitle').textContent.startsWith('Update')"
    )
    frame.wait_for_selector("body[data-state=ready]")
    frame.fill(".layer-filter", "dense_1")
    over = frame.locator(".trend-cell .trend-plot .u-over").first
    box = over.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.7, box["y"] + box["height"] / 2, steps=4)
    page.mouse.up()
    over.focus()
    for key in ("End", "ArrowLeft", "ArrowLeft"):
        over.press(key)


def test_the_url_restores_the_view_opened_alone(browser, server):
    page = open_page(browser, server.url + ENTRY)
    try:
        page.wait_for_state()
        change_the_view(page.page.main_frame, page.page)
        before = view_of(page.page)
        assert (
            before["runs"] == RUNS[1:] and before["filter"] == "dense_1" and before["lines"] == ["dense_1", "dense_1"]
        )
        page.page.wait_for_function("() => location.hash.includes('filter=dense_1')")
        url = page.page.url
        data = url_data(url)
        assert json.loads(data["runs"]) == RUNS[1:] and data["stat"] == "update_ratio" and "steps" in data
    finally:
        page.page.close()
    # A shared link, or a reload: the same view.
    page = open_page(browser, url)
    try:
        page.wait_for_state()
        assert view_of(page.page) == before
        assert page.errors == []
    finally:
        page.page.close()


def test_the_url_restores_the_view_inside_tensorboard(browser, server):
    # A link with the tab's state in TensorBoard's URL, as TensorBoard keeps plugins' URL data.
    link = (
        server.url
        + TAB
        + "&"
        + urllib.parse.urlencode(
            {"p.gradient_health.runs": json.dumps(RUNS[2:]), "p.gradient_health.stat": "update_ratio"}
        )
    )
    page = open_page(browser, link)
    try:
        frame = tab_frame(page)
        shown = view_of(frame)
        assert shown["runs"] == RUNS[2:] and shown["stat"] == "update_ratio"
        # What the user changes goes into TensorBoard's URL, next to TensorBoard's own state.
        frame.fill(".layer-filter", "dense_2")
        page.page.wait_for_function("() => location.hash.includes('p.gradient_health.filter=dense_2')")
        assert page.page.url.split("#")[1].startswith("gradient_health")
        url = page.page.url
        before = view_of(frame)
    finally:
        page.page.close()
    page = open_page(browser, url)
    try:
        frame = tab_frame(page)
        assert view_of(frame) == before
        assert page.tab_errors() == []
    finally:
        page.page.close()


def test_steps_are_picked_from_the_keyboard_and_every_canvas_is_labelled(browser, server):
    page = open_page(browser, server.url + ENTRY)
    try:
        page.wait_for_state()
        caption = "() => document.querySelector('.profile-cell .cell-step').textContent"
        over = page.page.locator(".trend-cell .trend-plot .u-over").first
        over.focus()
        for key, step in (("Home", STEPS[0]), ("ArrowRight", STEPS[1]), ("End", STEPS[-1]), ("ArrowLeft", STEPS[-2])):
            over.press(key)
            assert page.page.evaluate(caption) == "step %d" % step, key
            assert over.get_attribute("aria-valuenow") == str(step)
        heatmap = page.page.locator(".heatmap-cell canvas").first
        heatmap.focus()
        heatmap.press("PageDown")
        assert page.page.evaluate(caption) == "step %d" % STEPS[-2 - round(len(STEPS) * 0.1)]
        unlabelled = page.page.evaluate(
            """() => [...document.querySelectorAll('main canvas')].filter(
                (canvas) => canvas.getAttribute('role') !== 'img' || !canvas.getAttribute('aria-label')).length"""
        )
        assert unlabelled == 0
        assert page.errors == []
    finally:
        page.page.close()
