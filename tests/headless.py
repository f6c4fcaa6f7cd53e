"""Headless Chromium for the browser tests: Debian's chromium + chromedriver driven by selenium, skipped with a
reason when any of them is missing (`.ci/run` installs them)."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

try:
    import selenium  # noqa: F401
except ImportError:
    selenium = None

needs_chromium = pytest.mark.skipif(
    selenium is None or CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver) "
           "and selenium (pip install -e '.[dev]')",
)


@contextlib.contextmanager
def chromium(window: str, *flags: str) -> Iterator:
    """A headless Chromium driver with its own throwaway profile and the browser console logged."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="musicgpt-chromium-")
    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", *flags, f"--window-size={window}", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def console_errors(driver) -> list:
    """The console errors logged since the last read of the log (`blank_page` reads it too)."""
    return [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]


def blank_page(driver) -> None:
    """Leave the page for about:blank and drop the console log so far: what a test reads next is its own (a page
    left open logs on after its test, e.g. a request to the server that test stopped)."""
    driver.get("about:blank")
    driver.get_log("browser")
