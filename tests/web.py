"""Helpers of the dashboard tests: a uvicorn server in a thread, headless
Chromium (Debian's, driven by Playwright), the hostile strings, and reading
a form's CSRF value out of a page."""

from __future__ import annotations

import os
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from tests.support import wait_for

CHROMIUM = os.environ.get("DBOS_TEST_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = Path(os.environ.get("DBOS_TEST_SCREENSHOTS", "/tmp/dbos_celery_dashboard"))
TOKEN = "t0ken-for-the-dashboard-tests"

# markup that would run or show up as elements if printed unescaped; the
# tests look for [data-xss] elements and window.__xss
HOSTILE = (
    '<script>window.__xss=1</script><img src=x onerror="window.__xss=2">'
    '<b data-xss="1">&amp;"\'</b>'
)
# an id that also needs URL escaping: a slash, a query, a fragment, a percent
HOSTILE_ID = 'wf/../?a=1#x%2F <b data-xss="id">' + "\u2603"
HOSTILE_TOPIC = 'topic"><b data-xss="topic">&lt;'
HOSTILE_TOPIC2 = '</code></pre><b data-xss="topic2">\''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """An ASGI app served by uvicorn on a free loopback port, in a thread."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="off", access_log=False)  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        wait_for(lambda: self.server.started, 10)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium browser (Playwright's ``Browser``)."""
    if not Path(CHROMIUM).exists():
        why = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
        if os.environ.get("CI"):
            raise RuntimeError(why)
        pytest.skip(why)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-gpu"])  # fmt: skip
        try:
            yield browser
        finally:
            browser.close()


def screenshot(page: Any, name: str) -> Path:
    """A full-page PNG of what the browser shows, kept under SCREENSHOTS."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def injected(page: Any) -> list[Any]:
    """Signs of markup from the database run or parsed as markup: script
    side effects, elements made from it, dialogs (recorded by watch())."""
    got: list[Any] = page.evaluate(
        "() => [window.__xss ?? null, document.querySelectorAll('[data-xss]').length]"
    )
    return got


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF field in the page"
    return found.group(1)
