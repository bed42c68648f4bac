"""Debian's chromium, headless, driven by selenium: the browser tests and `make screenshots`.

Flags keep it quiet and private: no GPU, no background traffic, no component updates, no sync,
no first-run pages, and a fresh profile folder per session.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
)


class BrowserMissing(RuntimeError):
    """chromium, chromedriver or selenium is not installed; the message says how to get them."""


def browser_paths() -> tuple[str, str] | None:
    """(chromium, chromedriver), or None when either is missing."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return None if browser is None or driver is None else (browser, driver)


def chromium(profile: Path, width: int = 1280, height: int = 1000) -> Any:
    """A headless chromium with a fresh profile in `profile`; quit() it when done."""
    paths = browser_paths()
    if paths is None:
        raise BrowserMissing(
            "chromium and chromedriver are needed: apt-get install chromium "
            "chromium-driver (make setup installs them)"
        )
    try:
        from selenium import webdriver  # optional: the dev extra
    except ModuleNotFoundError as exc:
        raise BrowserMissing("selenium is needed: pip install selenium (the dev extra)") from exc
    options = webdriver.ChromeOptions()
    options.binary_location = paths[0]
    for flag in (*CHROMIUM_FLAGS, f"--window-size={width},{height}", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(paths[1]))
    driver.set_page_load_timeout(30)
    return driver
