"""Headless Chromium for the tests (Debian's chromium + chromium-driver, driven by selenium): open
a local HTML file and report what a reader would get — the images and whether each loaded, the
console errors, every URL the page requested, a screenshot.

Missing Chromium, chromedriver or selenium skips the test, except where PLURALIGN_REQUIRE_CHROMIUM=1
(CI, .ci/run), where a skip would hide a missing install step: there it fails.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REQUIRE = "PLURALIGN_REQUIRE_CHROMIUM"
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")


@dataclass
class Page:
    url: str
    title: str
    images: list[tuple[str, int]]  # (src, naturalWidth) of every <img>, after each finished loading
    console_errors: list[str]
    requests: list[str]  # every URL the page asked for, local ones included
    screenshot: bytes  # PNG of the window
    extra: dict = field(default_factory=dict)

    @property
    def broken_images(self) -> list[str]:
        return [src for src, width in self.images if width <= 0]

    @property
    def remote_requests(self) -> list[str]:
        return [u for u in self.requests if not u.startswith(LOCAL_SCHEMES)]


def _missing() -> str | None:
    for exe in ("chromium", "chromedriver"):
        if shutil.which(exe) is None:
            return f"{exe} is not installed (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    return None


def require_chromium() -> None:
    why = _missing()
    if why is None:
        return
    if os.environ.get(REQUIRE) == "1":
        pytest.fail(f"{REQUIRE}=1 but {why}")
    pytest.skip(why)


def distinct_colours(png: bytes, box: tuple[int, int, int, int] | None = None) -> int:
    """How many colours a PNG (or a box of it) holds: 1 means blank."""
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    if box is not None:
        img = img.crop(box)
    colours = img.getcolors(maxcolors=1 << 16)
    return len(colours) if colours is not None else 1 << 16


class Chromium:
    """One headless Chromium for several pages: ``with Chromium() as b: page = b.open(path)``."""

    def __init__(self, width: int = 1280, height: int = 1600):
        require_chromium()
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        opts = webdriver.ChromeOptions()
        opts.binary_location = shutil.which("chromium")
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    f"--window-size={width},{height}", "--hide-scrollbars", "--allow-file-access-from-files",
                    "--no-first-run", "--disable-extensions", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--disable-default-apps"):
            opts.add_argument(arg)
        # the console ("browser") and the DevTools network events ("performance") come back as logs
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
        os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager: never download a driver
        self.driver = webdriver.Chrome(options=opts, service=Service(shutil.which("chromedriver")))
        self.driver.set_page_load_timeout(60)

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc) -> None:
        self.driver.quit()

    def _drain(self) -> tuple[list[str], list[str]]:
        errors = [e["message"] for e in self.driver.get_log("browser") if e.get("level") == "SEVERE"]
        requests = []
        for entry in self.driver.get_log("performance"):
            msg = json.loads(entry["message"])["message"]
            if msg.get("method") == "Network.requestWillBeSent":
                requests.append(msg["params"]["request"]["url"])
            elif msg.get("method") == "Network.webSocketCreated":
                requests.append(msg["params"]["url"])
        return errors, requests

    def open(self, path: Path, ready_js: str | None = None, timeout: float = 30.0) -> Page:
        """Load ``path`` (file://), make every image load (lazy ones too), wait until ``ready_js``
        (a JS expression) is true if given, then collect what the page did."""
        self._drain()  # drop what an earlier page left
        url = Path(path).resolve().as_uri()
        self.driver.get(url)
        js = self.driver.execute_script
        js("document.querySelectorAll('img[loading=lazy]').forEach(i => { i.loading = 'eager'; });")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = js("return document.readyState === 'complete' && "
                      "Array.from(document.images).every(i => i.complete)")
            if done and (ready_js is None or js(f"return Boolean({ready_js});")):
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"{url}: not ready after {timeout:.0f} s (images or {ready_js!r})")
        time.sleep(0.3)  # let a last paint land before the screenshot
        images = [(src, int(w)) for src, w in js(
            "return Array.from(document.images).map(i => [i.currentSrc || i.src, i.naturalWidth]);")]
        shot = self.driver.get_screenshot_as_png()
        errors, requests = self._drain()
        return Page(url=url, title=self.driver.title, images=images, console_errors=errors,
                    requests=requests, screenshot=shot)

    def element_screenshots(self, css: str) -> list[bytes]:
        """PNG of each element matching ``css`` on the current page."""
        from selenium.webdriver.common.by import By

        return [el.screenshot_as_png for el in self.driver.find_elements(By.CSS_SELECTOR, css)]
