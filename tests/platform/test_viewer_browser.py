"""The frame viewer's script in Debian's chromium, on pages of pytest-django's
live server (a thread of this process, on the test database): lighter than
the live stack of tests/e2e, and the tests can set up results that no real
analysis makes on demand."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.urls import reverse

from analyses.models import Submission

# The live server needs committed rows: it reads them from another thread.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture
def browse(live_server: Any, clients) -> Iterator[Callable[[str], Any]]:
    """A function that opens a site path in chromium as the submitter; the page.
    The test fails if the page asked another host or raised a script error."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent (make test installs Debian's chromium as root)")
    from playwright.sync_api import sync_playwright

    site = urlsplit(live_server.url)
    session = clients["submitter"].cookies["sessionid"].value
    elsewhere: list[str] = []
    errors: list[str] = []

    def record(request: Any) -> None:
        parts = urlsplit(request.url)
        if parts.scheme not in ("data", "blob", "about") and parts.netloc != site.netloc:
            elsewhere.append(request.url)

    # Started on the first page opened: Playwright's sync API runs an event
    # loop in this thread, and Django refuses database calls beside one, so
    # the test makes its rows first.
    with ExitStack() as stack:
        held: dict[str, Any] = {}

        def open_page(path: str) -> Any:
            if "page" not in held:
                p = stack.enter_context(sync_playwright())
                browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
                stack.callback(browser.close)
                context = browser.new_context()
                stack.callback(context.close)
                context.set_default_timeout(15_000)
                cookie = {"name": "sessionid", "value": session, "url": live_server.url}
                context.add_cookies([cookie])
                context.on("request", record)
                held["page"] = context.new_page()
                held["page"].on("pageerror", lambda e: errors.append(str(e)))
            page = held["page"]
            page.goto(live_server.url + path)
            page.wait_for_load_state("load")
            return page

        yield open_page
    assert elsewhere == [] and errors == [], (elsewhere, errors)


def _two_people(sub: Submission) -> Submission:
    """Give ``sub`` two people: person 0 in frame 0 only (the most suspicious
    face, so the page opens on it), person 1 in frames 0 and 5."""
    from analyses import services
    from tests.platform.conftest import write_index

    out = services.artifact_dir(sub)
    index = write_index(out, frames=(0, 5))
    mine = [a for a in index["artifacts"] if a["person"] == 0]
    index["artifacts"] = [a for a in index["artifacts"] if a["frame"] == 0 or a["person"] is None]
    index["artifacts"] += [{**a, "person": 1} for a in mine]
    point = index["series"]["persons"][0]["points"][0]
    index["series"]["persons"] = [
        {"id": 0, "points": [{**point, "frame": 0, "time": 0.0, "score": 0.9}]},
        {
            "id": 1,
            "points": [
                {**point, "frame": 0, "time": 0.0, "score": 0.6},
                {**point, "frame": 5, "time": 0.5, "score": 0.7},
            ],
        },
    ]
    (out / "index.json").write_text(json.dumps(index))
    services.load_index_file(sub, out)
    sub.refresh_from_db()
    return sub


def test_switching_to_a_person_with_more_frames_shows_their_filmstrip(
    browse, users, finished
) -> None:
    sub = _two_people(finished(users["submitter"]))
    page = browse(reverse("analyses:detail", args=[sub.pk]))
    # Person 0, seen once, is selected: nothing to pick from, so no filmstrip.
    assert page.get_attribute("#viewer", "data-person") == "0"
    assert not page.is_visible("#filmstrip")

    page.select_option("#person-select", "1")
    assert page.get_attribute("#viewer", "data-person") == "1"
    assert page.is_visible("#filmstrip")
    thumbs = page.locator("#filmstrip .thumb")
    picked = thumbs.evaluate_all("ts => ts.map(t => [+t.dataset.person, +t.dataset.frame])")
    assert picked == [[1, 5], [1, 0]]  # most suspicious first
    assert page.inner_text("#all-frames") == "Show all 2 frames of person 1"
    assert page.get_attribute("#all-frames", "href") == "?frames=all&person=1#filmstrip"
    thumbs.nth(1).click()
    assert page.get_attribute("#viewer", "data-frame") == "0"

    page.select_option("#person-select", "0")
    assert not page.is_visible("#filmstrip")


def test_all_frames_keeps_its_way_back_for_the_person_shown(browse, users, finished) -> None:
    sub = _two_people(finished(users["submitter"]))
    page = browse(reverse("analyses:detail", args=[sub.pk]) + "?frames=all&person=1")
    assert page.get_attribute("#viewer", "data-person") == "1"
    assert page.locator("#filmstrip .thumb").count() == 2
    assert page.get_attribute("#top-frames", "href") == "?person=1"
    page.select_option("#person-select", "0")
    assert not page.is_visible("#filmstrip")
    page.select_option("#person-select", "1")
    frames = page.locator("#filmstrip .thumb").evaluate_all("ts => ts.map(t => +t.dataset.frame)")
    assert frames == [0, 5]  # every frame, in time order
