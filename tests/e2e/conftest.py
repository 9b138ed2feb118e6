"""Browser tests: Debian's chromium driven by Playwright against the real
stack (``manage.py runstack``: web server + Celery worker, embedded queue)."""

from __future__ import annotations

import os
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.platform import stack
from tests.platform.conftest import install_tiny_weights, media_dir  # noqa: F401 (fixture)

CHROMIUM = Path("/usr/bin/chromium")
# Frames sampled per video: the site's default, so the pages are measured as users see them.
FRAMES = 32
ARTIFACTS = Path(os.environ.get("TRUSTTRACE_TEST_ARTIFACTS", stack.ROOT / "test-artifacts"))


@pytest.fixture(scope="session")
def chromium() -> Path:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent (make test installs Debian's chromium as root)")
    return CHROMIUM


@pytest.fixture(scope="session")
def screenshots() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


class Stack:
    def __init__(self, url: str, env: dict[str, str], var: Path) -> None:
        self.url, self.env, self.var = url, env, var

    def manage(self, *args: str) -> str:
        return stack.manage(self.env, *args)


@pytest.fixture(scope="session")
def live_stack(
    chromium: Path, tmp_path_factory: pytest.TempPathFactory, blazeface_cache: Path
) -> Iterator[Stack]:
    """The whole site in subprocesses, on a free port, with the tiny registry."""
    root = tmp_path_factory.mktemp("stack")
    weights = install_tiny_weights(root / "weights")
    env = stack.site_env(root / "var", weights, blazeface_cache)
    env["TRUSTTRACE_FRAMES"] = str(FRAMES)
    stack.manage(env, "migrate", "--noinput")
    port = stack.free_port()
    url = f"http://127.0.0.1:{port}"
    log = root / "runstack.log"
    cmd = [sys.executable, str(stack.ROOT / "manage.py"), "runstack", f"127.0.0.1:{port}"]
    with stack.process(cmd, env, log) as proc:

        def up() -> bool:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                return urllib.request.urlopen(url + "/models/", timeout=2).status == 200
            except OSError:
                return False

        stack.wait_for(up, 60, "the web server")
        yield Stack(url, env, root / "var")
    (ARTIFACTS / "runstack.log").parent.mkdir(parents=True, exist_ok=True)
    text = log.read_text()
    (ARTIFACTS / "runstack.log").write_text(text)
    # SIGTERM stopped both children (the worker says so), then runstack itself.
    assert "Warm shutdown" in text and text.rstrip().endswith("stopped"), text[-2000:]


@pytest.fixture
def browser_page(chromium: Path, live_stack: Stack) -> Iterator[Any]:
    """A page in a fresh browser context. Every request it makes is recorded,
    and the test fails if any went to another host than the site's own."""
    from playwright.sync_api import sync_playwright

    site = urlsplit(live_stack.url).netloc
    elsewhere: list[str] = []

    def record(request: Any) -> None:
        parts = urlsplit(request.url)
        # data:, blob: and about: URLs stay inside the page; anything else must be the site.
        if parts.scheme not in ("data", "blob", "about") and parts.netloc != site:
            elsewhere.append(request.url)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=["--no-sandbox"])
        context = browser.new_context(accept_downloads=True)
        context.set_default_timeout(30_000)
        context.on("request", record)
        page = context.new_page()
        try:
            yield page
        finally:
            context.close()
            browser.close()
    assert elsewhere == [], f"requests to other hosts: {elsewhere}"
