"""Headless chromium: sign up, upload, watch progress, chart click shows the
frame's overlays, heatmap toggles, CSV download, moderator override, the
submitter sees the decision. Screenshots go to test-artifacts/."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

PASSWORD = "e2e-Long-passw0rd"


def test_submit_watch_result_chart_and_moderate(
    live_stack, browser_page, screenshots: Path, media_dir: Path
) -> None:
    page, url = browser_page, live_stack.url
    # Sign up.
    page.goto(url + "/accounts/signup/")
    page.fill("#id_username", "erin")
    page.fill("#id_email", "erin@example.org")
    page.fill("#id_password1", PASSWORD)
    page.fill("#id_password2", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/$"))
    page.screenshot(path=str(screenshots / "01-signed-up.png"))

    # Upload a clip.
    page.goto(url + "/submit/")
    assert "tiny_a" in page.inner_text("main")  # the page names the members it runs
    page.fill("#id_title", "e2e clip")
    page.set_input_files("#id_file", str(media_dir / "person.mp4"))
    page.click("#submit-form button[type=submit]")
    page.wait_for_url(re.compile(r".*/s/[0-9a-f-]+/$"))
    sub_id = page.url.rstrip("/").rsplit("/", 1)[-1]
    first_status = page.inner_text("#status")
    page.screenshot(path=str(screenshots / "02-progress.png"))
    assert first_status in {"Pending", "Running", "Done"}

    # The progress bar polls until the page reloads with the verdict.
    page.wait_for_selector("#verdict", timeout=120_000)
    assert page.inner_text("#status") == "Done"
    page.screenshot(path=str(screenshots / "03-result.png"), full_page=True)
    assert page.locator(".model-version").count() == 2

    # The worker's real explanations: a chart click shows the frame's overlays.
    gallery = page.locator("#gallery .artifact")
    gradcams = page.locator('#gallery .artifact[data-kind="gradcam"]')
    assert gradcams.count() >= 2, page.inner_text("main")
    # The SVG chart is a download, not an <img> the server would refuse to show inline.
    assert page.locator('#gallery .artifact[data-kind="chart"]').count() == 1
    assert "image/svg+xml" in page.inner_text("#artifact-downloads")
    frame = gradcams.first.get_attribute("data-frame")
    in_frame = page.locator(f'#gallery .artifact[data-frame="{frame}"]').count()
    page.locator(f'#chart circle.point[data-frame="{frame}"]').first.click()
    overlays = page.locator("#frame-overlays .frame-overlay img")
    overlays.first.wait_for()
    assert overlays.count() == in_frame
    assert f"frame {frame}" in page.inner_text("#frame-overlays")
    overlay_kinds = page.locator("#frame-overlays .frame-overlay").evaluate_all(
        "fs => fs.map(f => f.dataset.kind + ':' + f.dataset.member)"
    )
    assert {"gradcam:tiny_a", "gradcam:tiny_b"} <= set(overlay_kinds)
    width = page.evaluate("document.querySelector('#frame-overlays img').naturalWidth")
    assert width == int(overlays.first.get_attribute("width"))  # a decoded image file
    page.screenshot(path=str(screenshots / "04-chart-click.png"), full_page=True)

    # Heatmap toggles hide a member's Grad-CAMs.
    visible = page.locator("#gallery .artifact:not(.hidden)")
    before, of_a = visible.count(), page.locator('#gallery .artifact[data-member="tiny_a"]').count()
    assert before == gallery.count() and of_a > 0
    page.uncheck("input[data-toggle-member=tiny_a]")
    assert visible.count() == before - of_a

    # Frame-level CSV download.
    with page.expect_download() as dl:
        page.click("#frames-csv")
    csv_path = screenshots / "frames.csv"
    dl.value.save_as(str(csv_path))
    header = csv_path.read_text().splitlines()[0]
    assert header == "frame,time,person,tiny_a,tiny_b,score"

    # Moderator override with a note.
    live_stack.manage("demo_accounts")
    page.click("text=Log out")
    page.goto(url + "/accounts/login/")
    page.fill("#id_username", "moderator")
    page.fill("#id_password", "moderate-demo-2026")
    page.click("button[type=submit]")
    page.goto(url + f"/moderation/s/{sub_id}/")
    page.check("input[value=override_fake]")
    page.fill("textarea[name=note]", "Known synthetic clip.")
    page.click("#decide-form button[type=submit]")
    page.wait_for_url(re.compile(r".*/moderation/$"))
    page.goto(url + f"/moderation/s/{sub_id}/")
    audit = page.inner_text("#audit")
    assert "moderator" in audit and "Override: fake" in audit and "Known synthetic clip." in audit
    page.screenshot(path=str(screenshots / "05-moderated.png"), full_page=True)

    # The submitter sees the decision and its note.
    page.click("text=Log out")
    page.goto(url + "/accounts/login/")
    page.fill("#id_username", "erin")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.goto(url + f"/s/{sub_id}/")
    assert "Known synthetic clip." in page.inner_text("#decision")
