"""What the browser tests of the tab share: one Chromium per session, real TensorBoard servers, and a page that records errors."""

from __future__ import annotations

import contextlib
import io
import pathlib
import threading

import pytest
from tb_server import HOST, running_tensorboard, wsgi_client
from werkzeug import serving

playwright_sync = pytest.importorskip("playwright.sync_api")

# After the skip: without Playwright these tests are skipped, not broken.
from support.chromium import ENTRY, VIEWPORT, launch

ROUTES = "/data/plugin/gradient_health"
LOAD_TIMEOUT_MS = 60_000
# colormap.js: the colour of NaN/Inf cells, bars and marks.
NONFINITE_RGB = (228, 26, 28)
# view_heatmap.js: rows start this far below the canvas top.
HEATMAP_TOP_PX = 9
# Coloured pixels a chart with data has at least (axes, grid and text are grey: none).
MIN_DRAWN_PIXELS = 500


class _SharedBrowser:
    """One Chromium for the whole session, whichever test modules ask for it (each module's fixture holds a reference)."""

    users = 0
    playwright = None
    browser = None

    @classmethod
    def acquire(cls):
        if cls.users == 0:
            cls.playwright = playwright_sync.sync_playwright().start()
            cls.browser = launch(cls.playwright)
        cls.users += 1
        return cls.browser

    @classmethod
    def release(cls):
        cls.users -= 1
        if cls.users == 0:
            cls.browser.close()
            cls.playwright.stop()


@pytest.fixture(scope="session")
def browser():
    yield _SharedBrowser.acquire()
    _SharedBrowser.release()


class Page:
    """A browser page that records console errors, page errors and dialogs."""

    def __init__(self, browser, viewport=VIEWPORT):
        self.page = browser.new_page(viewport=viewport)
        self.errors = []
        self.dialogs = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.errors.append("page error: %s" % error))
        self.page.on("dialog", self._dialog)

    def _console(self, message):
        if message.type != "error":
            return
        url = message.location.get("url", "")
        # A top-level page (no TensorBoard around it) asks for /favicon.ico, which no
        # TensorBoard serves under a path prefix: the browser's doing, not the tab's.
        if url.endswith("/favicon.ico"):
            return
        self.errors.append("console: %s (%s)" % (message.text, url))

    def tab_errors(self):
        """Errors of our tab: TensorBoard's own page has its own (e.g. fonts under a path prefix)."""
        return [
            error
            for error in self.errors
            if not error.startswith("console:") or ROUTES in error or ENTRY.split("?")[0] in error
        ]

    def _dialog(self, dialog):
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def open_tab(self, url: str, state: str = "ready"):
        self.page.goto(url)
        self.wait_for_state(state)

    def wait_for_state(self, state: str = "ready"):
        """Waits until the tab says it is in `state` (ready: every request answered and drawn)."""
        self.page.wait_for_selector("body[data-state=%s]" % state, timeout=LOAD_TIMEOUT_MS)

    def settle(self):
        """Waits until the page has no request in flight (e.g. an image a name might have smuggled in)."""
        self.page.wait_for_load_state("networkidle")

    def set_selection(self, runs):
        """Ticks exactly `runs` in the run list and waits until their charts are drawn."""
        for _ in range(20):
            index = self.page.evaluate(
                """(runs) => [...document.querySelectorAll('.run-item')].findIndex(
                    (item) => item.querySelector('input').checked !== runs.includes(item.dataset.run))""",
                list(runs),
            )
            if index < 0:
                break
            self.page.locator(".run-item").nth(index).locator("input").click()
        self.page.wait_for_function(
            """(runs) => {
                const cells = [...document.querySelectorAll('.heatmap-cell')].map((cell) => cell.dataset.run);
                return cells.length === runs.length && runs.every((run) => cells.includes(run)) &&
                    document.querySelectorAll('.heatmap-cell canvas').length === runs.length;
            }""",
            arg=list(runs),
            timeout=LOAD_TIMEOUT_MS,
        )
        self.wait_for_state()

    def pixels(self, section: str, run: str, rgb=None) -> int:
        """Counts the coloured pixels (or those of exactly `rgb`) of a run's canvases in a section.

        Coloured: clearly not grey (axes, grid and text are grey) and not the red of the
        non-finite marks, so only drawn data counts: lines, cells, bars.
        """
        return self.page.evaluate(
            """([section, run, rgb]) => {
                const cell = [...document.querySelectorAll(section)].find((c) => c.dataset.run === run);
                let count = 0;
                for (const canvas of cell.querySelectorAll('canvas')) {
                    const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
                    for (let i = 0; i < data.length; i += 4) {
                        const [r, g, b, a] = [data[i], data[i + 1], data[i + 2], data[i + 3]];
                        if (a === 0) continue;
                        if (rgb !== null) {
                            if (r === rgb[0] && g === rgb[1] && b === rgb[2]) count++;
                            continue;
                        }
                        const reddish = r > 150 && g < 130 && b < 130;
                        if (Math.max(r, g, b) - Math.min(r, g, b) > 60 && !reddish) count++;
                    }
                }
                return count;
            }""",
            [section, run, list(rgb) if rgb else None],
        )

    def cell_text(self, section: str, run: str) -> str:
        return self.page.evaluate(
            "([section, run]) => [...document.querySelectorAll(section)].find((c) => c.dataset.run === run).textContent",
            [section, run],
        )

    def cell(self, section: str, run: str):
        """The locator of a run's cell in a section (e.g. `.trend-cell`)."""
        return self.page.locator("%s[data-run=%s]" % (section, _css_string(run)))


def _css_string(text: str) -> str:
    return '"%s"' % text.replace("\\", "\\\\").replace('"', '\\"')


@pytest.fixture
def page(browser):
    tab = Page(browser)
    yield tab
    tab.page.close()


def tensorboard_process(logdir: pathlib.Path, path_prefix: str = "", *extra_args: str):
    """Runs `tensorboard --path_prefix path_prefix extra_args...` on a free localhost port until the block ends."""
    return running_tensorboard(str(logdir), *extra_args, path_prefix=path_prefix)


class QuietHandler(serving.WSGIRequestHandler):
    """Serves without logging each request."""

    def log_request(self, *args, **kwargs):
        pass


@contextlib.contextmanager
def in_process_tensorboard(logdir: str):
    """TensorBoard's own WSGI app with our plugin, over HTTP on a free localhost port, in a thread."""
    app = wsgi_client(logdir).application
    http = serving.make_server(HOST, 0, app, threaded=True, request_handler=QuietHandler)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    try:
        yield "http://%s:%d" % (HOST, http.server_port), http
    finally:
        http.shutdown()
        thread.join()


def save_screenshot(page, path: pathlib.Path, full_page: bool = False) -> None:
    """Writes a screenshot of `page` to `path` as a PNG of 256 colours: the docs' pictures stay small, and the tab's flat colours survive."""
    from PIL import Image  # a dependency of TensorBoard's

    image = Image.open(io.BytesIO(page.screenshot(full_page=full_page))).convert("RGB")
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)
