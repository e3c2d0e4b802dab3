"""Debian's headless Chromium as the browser tests and the frontend benchmarks launch it (browser downloads are blocked)."""

from __future__ import annotations

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# The tab opened on its own, outside TensorBoard's frame.
ENTRY = "/data/plugin_entry.html?name=gradient_health"
VIEWPORT = {"width": 1600, "height": 1000}


def launch(playwright):
    """Launches the headless Chromium through a started Playwright (`sync_playwright().start()`)."""
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
