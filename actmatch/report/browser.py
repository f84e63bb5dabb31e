"""Headless Chromium for ``report.html``: find the system browser, open a page, screenshot it.

Driven by Playwright's Python package against the installed Chromium (Debian's ``chromium``),
so no browser is downloaded. Used by :mod:`actmatch.report.screenshot` and the browser test.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["BrowserUnavailable", "find_chromium", "open_page", "require_browser"]

#: looked up in this order; ``ACTMATCH_CHROMIUM`` (a path) comes first
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


class BrowserUnavailable(RuntimeError):
    """No Chromium, or no Playwright to drive it."""


def find_chromium() -> str | None:
    """The Chromium executable: ``$ACTMATCH_CHROMIUM``, else the first of :data:`CHROMIUM_NAMES` on PATH."""
    explicit = os.environ.get("ACTMATCH_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def require_browser() -> str:
    """The Chromium executable, after checking Playwright imports.

    Raises:
        BrowserUnavailable: with what is missing and how to install it.
    """
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as err:
        raise BrowserUnavailable(
            f"the Python package playwright is not importable ({err}); pip install playwright (no browser download needed)"
        ) from err
    chromium = find_chromium()
    if chromium is None:
        raise BrowserUnavailable(
            "no Chromium found (looked for $ACTMATCH_CHROMIUM, then "
            f"{', '.join(CHROMIUM_NAMES)} on PATH); apt-get install chromium"
        )
    return chromium


@contextmanager
def open_page(html: Path, width: int = 1400, height: int = 1000) -> Iterator:
    """A Playwright page showing the file ``html`` (loaded, images included) in headless Chromium.

    Args:
        html: the page to open (a local file).
        width: viewport width, CSS px (device scale factor 1: one CSS px is one screenshot pixel).
        height: viewport height, CSS px.
    """
    from playwright.sync_api import sync_playwright

    chromium = require_browser()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium, headless=True, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
        )
        try:
            page = browser.new_page(viewport={"width": width, "height": height}, device_scale_factor=1)
            page.goto(Path(html).resolve().as_uri(), wait_until="load")
            yield page
        finally:
            browser.close()
