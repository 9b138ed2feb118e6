"""Headless chromium against the real stack: sign up, upload, watch progress,
the result page (verdict header, member bars, the chart as navigation, the
frame viewer, the person selector, the filmstrip), CSV download, the review
page's keyboard decisions and "next item", deleting one's account. Screenshots of the result and
review pages at 1280x800 and 390x844 go to test-artifacts/ on every run; the
browser fixture fails a test whose page asked any other host than the site.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from analyses.services.storage import ARTIFACT_DIR
from tests import media_factory as mf
from tests.e2e.conftest import FRAMES

pytestmark = pytest.mark.slow

PASSWORD = "e2e-Long-passw0rd"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
# The result page of a video with FRAMES sampled frames fits in this many screens.
MAX_SCREENS = 2.5
TOP_K = 8


def sign_up(page: Any, url: str, name: str) -> None:
    page.goto(url + "/accounts/signup/")
    page.fill("#id_username", name)
    page.fill("#id_email", f"{name}@example.org")
    page.fill("#id_password1", PASSWORD)
    page.fill("#id_password2", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/$"))


def log_in(page: Any, url: str, name: str, password: str) -> None:
    if page.locator("text=Log out").count():
        page.click("text=Log out")
    page.goto(url + "/accounts/login/")
    page.fill("#id_username", name)
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/$"))


def upload(page: Any, url: str, path: Path, title: str) -> str:
    """Upload ``path``; wait for the verdict; the submission id."""
    page.goto(url + "/submit/")
    page.fill("#id_title", title)
    page.set_input_files("#id_file", str(path))
    page.click("#submit-form button[type=submit]")
    page.wait_for_url(re.compile(r".*/s/[0-9a-f-]+/$"))
    page.wait_for_selector("#verdict", timeout=180_000)
    return str(page.url.rstrip("/").rsplit("/", 1)[-1])


def viewer_data(page: Any) -> dict[str, Any]:
    return dict(json.loads(page.inner_text("#viewer-data")))


def viewing(page: Any) -> tuple[int, int]:
    """(frame, person) the viewer shows."""
    frame = page.get_attribute("#viewer", "data-frame")
    person = page.get_attribute("#viewer", "data-person")
    return int(frame), int(person)


def page_height(page: Any) -> int:
    return int(page.evaluate("document.documentElement.scrollHeight"))


@pytest.fixture(scope="module")
def two_people(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clip of 48 frames (more than FRAMES) with two faces side by side."""
    folder = tmp_path_factory.mktemp("two")
    return mf.write_clip(
        folder / "two.mp4",
        frames=48,
        width=480,
        height=240,
        face_at=(30, 40, 150),
        more_faces=((280, 40, 150),),
    )


def test_submit_watch_result_download_and_moderate(
    live_stack, browser_page, screenshots: Path, media_dir: Path
) -> None:
    page, url = browser_page, live_stack.url
    sign_up(page, url, "erin")
    page.screenshot(path=str(screenshots / "01-signed-up.png"))

    # Upload a clip; the status badge and progress bar show until the verdict.
    page.goto(url + "/submit/")
    assert "tiny_a" in page.inner_text("main")  # the page names the members it runs
    page.fill("#id_title", "e2e clip")
    page.set_input_files("#id_file", str(media_dir / "person.mp4"))
    page.click("#submit-form button[type=submit]")
    page.wait_for_url(re.compile(r".*/s/[0-9a-f-]+/$"))
    sub_id = page.url.rstrip("/").rsplit("/", 1)[-1]
    if page.locator("#status").count():  # not finished yet
        assert page.inner_text("#status") in {"Pending", "Running"}
        assert page.locator("#progress").count() == 1
        page.screenshot(path=str(screenshots / "02-progress.png"))
    page.wait_for_selector("#verdict", timeout=120_000)
    assert page.locator("#status").count() == 0  # the status is said once: the badge
    assert page.locator(".model-version").count() == 2
    # The explainer's real face crops and heat maps are in the viewer.
    page.wait_for_function("document.getElementById('viewer-face').naturalWidth > 0")
    assert page.locator('#viewer-tabs [data-tab="gradcam:tiny_a"]').count() == 1
    assert page.locator('#viewer-tabs [data-tab="gradcam:tiny_b"]').count() == 1
    # The SVG chart is a download, not an <img> the server would refuse to show inline.
    page.click("#more summary")
    assert "image/svg+xml" in page.inner_text("#artifact-downloads")
    assert "image/png" in page.inner_text("#artifact-downloads")  # the chart's PNG too
    page.screenshot(path=str(screenshots / "03-result.png"), full_page=True)

    # Frame-level CSV download.
    with page.expect_download() as dl:
        page.click("#frames-csv")
    csv_path = screenshots / "frames.csv"
    dl.value.save_as(str(csv_path))
    header = csv_path.read_text().splitlines()[0]
    assert header == "frame,time,person,tiny_a,tiny_b,score"

    # Moderator override with a note, through the form.
    live_stack.manage("demo_accounts")
    log_in(page, url, "moderator", "moderate-demo-2026")
    page.goto(url + f"/moderation/s/{sub_id}/")
    page.check("input[value=override_fake]")
    page.fill("textarea[name=note]", "Known synthetic clip.")
    page.click("#decide-form button[type=submit]")
    page.wait_for_url(re.compile(r".*/moderation/.*"))
    page.goto(url + f"/moderation/s/{sub_id}/")
    audit = page.inner_text("#audit")
    assert "moderator" in audit and "Override: fake" in audit and "Known synthetic clip." in audit
    page.screenshot(path=str(screenshots / "05-moderated.png"), full_page=True)

    # The submitter sees the decision and its note.
    log_in(page, url, "erin", PASSWORD)
    page.goto(url + f"/s/{sub_id}/")
    assert "Known synthetic clip." in page.inner_text("#decision")


def test_result_page_header_chart_viewer_people_and_filmstrip(
    live_stack, browser_page, screenshots: Path, two_people: Path
) -> None:
    page, url = browser_page, live_stack.url
    page.set_viewport_size(DESKTOP)
    sign_up(page, url, "rita")
    sub_id = upload(page, url, two_people, "two people")
    data = viewer_data(page)
    assert data["persons"] == [0, 1] and len(data["entries"]) == 2 * FRAMES

    # Header: the badge says the verdict, each member has a bar as long as its score.
    badge = page.locator("#verdict")
    verdict = page.get_attribute("#verdict", "class").split("badge-")[-1]
    assert verdict in {"fake", "uncertain", "real"} and badge.inner_text().lower() == verdict
    bars = page.locator("#member-bars .bar-row")
    assert bars.count() == 2
    for i in range(2):
        row = bars.nth(i)
        score = float(row.get_attribute("data-score"))
        track = row.locator(".bar-track").bounding_box()
        fill = row.locator(".bar-fill").bounding_box()
        assert fill["width"] == pytest.approx(score * track["width"], abs=2)
        threshold = row.locator(".bar-threshold").bounding_box()
        assert threshold["x"] == pytest.approx(track["x"] + 0.5 * track["width"], abs=2)

    # The most suspicious face is selected on load.
    best = max(data["entries"], key=lambda e: e["score"])
    assert viewing(page) == (best["frame"], best["person"])
    page.wait_for_function("document.getElementById('viewer-face').naturalWidth > 0")
    page.screenshot(path=str(screenshots / "result-1280x800.png"), full_page=True)
    height = page_height(page)
    # The measured height is part of what this test reports (issue 16 asks for it).
    print(  # noqa: T201
        f"\nresult page height at 1280x800, {FRAMES} frames: {height} px "
        f"({height / DESKTOP['height']:.2f} screens)"
    )
    assert height <= MAX_SCREENS * DESKTOP["height"]

    # The chart shows the selected person only; clicking a point selects that frame.
    person = best["person"]
    points = page.locator("#chart circle.point")
    assert points.count() == FRAMES
    assert set(points.evaluate_all("ps => ps.map(p => p.dataset.person)")) == {str(person)}
    other = next(
        e for e in data["entries"] if e["person"] == person and e["frame"] != best["frame"]
    )
    face_before = page.get_attribute("#viewer-face", "src")
    page.locator(f'#chart circle.point[data-frame="{other["frame"]}"]').click()
    assert viewing(page) == (other["frame"], person)
    assert page.get_attribute("#viewer-face", "src") != face_before
    assert page.inner_text("#viewer-frame") == str(other["frame"])
    assert page.locator(f'#chart circle.selected[data-frame="{other["frame"]}"]').count() == 1

    # The arrow keys step through the person's frames.
    frames = sorted(e["frame"] for e in data["entries"] if e["person"] == person)
    k = frames.index(other["frame"])
    page.keyboard.press("ArrowRight" if k + 1 < len(frames) else "ArrowLeft")
    stepped = frames[k + 1] if k + 1 < len(frames) else frames[k - 1]
    assert viewing(page) == (stepped, person)
    page.keyboard.press("ArrowLeft" if k + 1 < len(frames) else "ArrowRight")
    assert viewing(page) == (other["frame"], person)

    # The filmstrip holds the person's top-k; a thumbnail selects its frame.
    thumbs = page.locator("#filmstrip .thumb")
    assert thumbs.count() == TOP_K
    strip = thumbs.evaluate_all("ts => ts.map(t => [+t.dataset.person, +t.dataset.frame])")
    mine = sorted(
        (e for e in data["entries"] if e["person"] == person),
        key=lambda e: (-e["score"], e["frame"]),
    )
    assert strip == [[person, e["frame"]] for e in mine[:TOP_K]]
    thumbs.nth(1).click()
    assert viewing(page) == (mine[1]["frame"], person)

    # Heat map over the face: the slider sets its opacity, the toggle hides it.
    thumbs.first.click()  # the most suspicious frame has a Grad-CAM from every member
    page.click('#viewer-tabs [data-tab="gradcam:tiny_b"]')
    overlay_src = page.get_attribute("#viewer-overlay", "src")
    assert page.is_visible("#viewer-overlay") and overlay_src
    page.fill("#opacity", "20")
    assert page.eval_on_selector("#viewer-overlay", "e => e.style.opacity") == "0.2"
    page.fill("#opacity", "80")
    assert page.eval_on_selector("#viewer-overlay", "e => e.style.opacity") == "0.8"
    page.uncheck("#show-overlay")
    assert page.eval_on_selector("#viewer-overlay", "e => e.style.visibility") == "hidden"
    page.check("#show-overlay")
    assert page.eval_on_selector("#viewer-overlay", "e => e.style.visibility") == "visible"
    page.click('#viewer-tabs [data-tab="ssim_temporal"]')
    assert page.is_visible("#viewer-panel") and not page.is_visible("#viewer-overlay")
    assert "SSIM" in page.inner_text("#viewer-caption")
    assert page.locator("#heat-note").count() == 1

    # The person selector filters the chart, the viewer and the filmstrip.
    other_person = 1 - person
    page.select_option("#person-select", str(other_person))
    assert set(points.evaluate_all("ps => ps.map(p => p.dataset.person)")) == {str(other_person)}
    assert viewing(page)[1] == other_person
    people = thumbs.evaluate_all("ts => ts.map(t => t.dataset.person)")
    assert people == [str(other_person)] * TOP_K

    # "Show all frames" keeps every frame reachable.
    page.click("#all-frames")
    page.wait_for_url(re.compile(r".*frames=all.*"))
    assert page.locator("#filmstrip .thumb").count() == FRAMES
    people = page.locator("#filmstrip .thumb").evaluate_all("ts => ts.map(t => t.dataset.person)")
    assert people == [str(other_person)] * FRAMES and viewing(page)[1] == other_person

    page.goto(url + f"/s/{sub_id}/")
    page.set_viewport_size(PHONE)
    page.wait_for_function("document.getElementById('viewer-face').naturalWidth > 0")
    page.screenshot(path=str(screenshots / "result-390x844.png"), full_page=True)
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]


def test_review_keyboard_decisions_open_the_next_item(
    live_stack, browser_page, screenshots: Path, media_dir: Path, two_people: Path
) -> None:
    page, url = browser_page, live_stack.url
    page.set_viewport_size(DESKTOP)
    sign_up(page, url, "kim")
    uploads = (
        (two_people, "kim two"),
        (media_dir / "face.png", "kim image"),
        (media_dir / "person.mp4", "kim clip"),  # a third item, for N
    )
    for path, title in uploads:
        sub_id = upload(page, url, path, title)
        page.fill("input[name=reason]", "please check")  # reported: in the queue
        page.click("text=Ask for review")
        page.wait_for_url(re.compile(rf".*/s/{sub_id}/$"))
    live_stack.manage("demo_accounts")
    log_in(page, url, "moderator", "moderate-demo-2026")
    page.goto(url + "/moderation/")
    order = page.locator("#queue .queue-item").evaluate_all("rs => rs.map(r => r.dataset.id)")
    assert len(order) >= 2
    assert page.locator("#queue .queue-thumb").count() >= 2  # the most suspicious faces
    page.screenshot(path=str(screenshots / "queue-1280x800.png"), full_page=True)

    first, second = order[0], order[1]
    page.goto(url + f"/moderation/s/{first}/")
    page.wait_for_selector("#decide-form")
    page.screenshot(path=str(screenshots / "review-1280x800.png"), full_page=True)
    page.set_viewport_size(PHONE)
    page.screenshot(path=str(screenshots / "review-390x844.png"), full_page=True)
    page.set_viewport_size(DESKTOP)

    # C confirms at once and opens the next queue item.
    page.keyboard.press("c")
    page.wait_for_url(re.compile(rf".*/moderation/s/{second}/.*"))
    assert "Decision recorded" in page.inner_text(".messages")
    # F picks the override, which needs a note; Ctrl+Enter records it.
    page.keyboard.press("f")
    assert page.evaluate("document.activeElement.name") == "note"
    assert page.is_checked("input[value=override_fake]")
    page.keyboard.type("Swapped face.")
    page.keyboard.press("Control+Enter")
    page.wait_for_url(lambda u: f"/moderation/s/{second}/" not in u)
    # N moves on without deciding.
    third = re.search(r"/moderation/s/([0-9a-f-]{36})/", page.url)
    assert third is not None, page.url  # kim's third report is still in the queue
    page.wait_for_selector("#decide-form")
    page.keyboard.press("n")
    page.wait_for_url(lambda u: f"/moderation/s/{third.group(1)}/" not in u)
    page.goto(url + f"/moderation/s/{third.group(1)}/")
    assert "No decisions yet." in (page.text_content("#audit") or "")  # a closed <details>

    page.goto(url + f"/moderation/s/{first}/")
    assert "Confirm the verdict" in page.inner_text("#audit")
    page.goto(url + f"/moderation/s/{second}/")
    audit = page.inner_text("#audit")
    assert "Override: fake" in audit and "Swapped face." in audit


# --- Content Credentials (issue 18) -------------------------------------------------

PANEL = {
    "valid": "Signed, unchanged since signing, by a signer on the trust list.",
    "untrusted": "the signer's certificate is not on the trust list",
    "invalid": "Content Credentials that do not verify",
    "absent": "their absence says nothing about whether it is real or fake",
    "unchecked": "does not read Content Credentials from MKV",
}


@pytest.fixture(scope="module")
def credentials_media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Files for each Content Credentials state, signed here with the library
    and a throwaway CA (tests/c2pa_signing.py), and the CA."""
    from tests.c2pa_signing import (
        created_action,
        make_pki,
        sign,
        tamper_jpeg,
        truncate_jpeg_manifest,
    )

    folder = tmp_path_factory.mktemp("credentials")
    pki = make_pki()
    plain = mf.write_image(folder / "plain.jpg", mf.face_image(160), "JPEG")
    ai = sign(plain, folder / "generated.jpg", pki, actions=[created_action()])
    return {
        "pki": pki,
        "untrusted": ai,
        "invalid": tamper_jpeg(ai, folder / "tampered.jpg"),
        "truncated": truncate_jpeg_manifest(ai, folder / "truncated.jpg"),
        "absent": plain,
        "unchecked": mf.write_clip(folder / "clip.mkv", frames=8, width=192, height=144),
    }


def panel_state(page: Any) -> str:
    return str(page.get_attribute("#provenance", "data-state"))


def test_content_credentials_panel_for_each_state(
    live_stack, browser_page, screenshots: Path, credentials_media: dict[str, Any]
) -> None:
    from ensemble.provenance import read_provenance

    page, url = browser_page, live_stack.url
    page.set_viewport_size(DESKTOP)
    sign_up(page, url, "cora")
    ids: dict[str, str] = {}
    for state in ("untrusted", "invalid", "truncated", "absent", "unchecked"):
        ids[state] = upload(page, url, credentials_media[state], f"credentials {state}")
        expected = "invalid" if state == "truncated" else state
        panel = page.locator("#provenance")
        assert panel.is_visible() and panel_state(page) == expected
        assert PANEL[expected] in page.inner_text("#provenance")
        # The detectors' verdict is there whatever the manifest says.
        assert page.locator("#verdict").is_visible()
        says_ai = state == "untrusted"
        assert page.locator("#provenance-ai").count() == int(says_ai)
        if says_ai:
            # Prominent, in the verdict's own row, and both kept.
            badge, verdict = page.locator("#provenance-ai"), page.locator("#verdict")
            assert badge.is_visible() and "AI-generated" in badge.inner_text()
            assert abs(badge.bounding_box()["y"] - verdict.bounding_box()["y"]) < 40
            assert "(the signer is not verified)" in page.inner_text("#provenance-ai-note")
            page.click("#provenance-details summary")
            assert "trainedAlgorithmicMedia" in page.inner_text("#provenance-actions")
            assert "Trusttrace test signer" in page.inner_text("#provenance-signer")
        if expected == "invalid":
            assert page.locator("#provenance [role=alert]").is_visible()
            reason = page.inner_text("#provenance .provenance-reason")
            if state == "truncated":
                assert reason.startswith("The Content Credentials could not be read:")
            else:
                assert "dataHash.mismatch" in reason
        page.screenshot(path=str(screenshots / f"provenance-{state}-1280x800.png"))

    # The state a trusted signer gives: the site's trust list does not hold the
    # test CA, so the summary the library gives with it trusted is stored.
    summary = read_provenance(
        credentials_media["untrusted"], trust_anchors=credentials_media["pki"].ca_pem
    )
    assert summary.state == "valid"
    stored = live_stack.var / "valid-summary.json"
    stored.write_text(json.dumps(summary.to_dict()))
    live_stack.manage(
        "shell",
        "-c",
        "import json, pathlib; from analyses.models import Submission; "
        f"s = Submission.objects.get(pk='{ids['untrusted']}'); "
        f"s.provenance = json.loads(pathlib.Path(r'{stored}').read_text()); s.save()",
    )
    page.goto(url + f"/s/{ids['untrusted']}/")
    assert panel_state(page) == "valid" and PANEL["valid"] in page.inner_text("#provenance")
    assert page.locator("#provenance-ai").is_visible()
    assert "not verified" not in page.inner_text("#provenance-ai-note")
    page.screenshot(path=str(screenshots / "provenance-valid-1280x800.png"))
    page.set_viewport_size(PHONE)
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    page.screenshot(path=str(screenshots / "provenance-valid-390x844.png"), full_page=True)
    page.set_viewport_size(DESKTOP)

    # Moderators: the panel on the review page, and the queue's filter. A
    # report puts a submission in the queue whatever its verdict.
    for state in ("untrusted", "absent"):
        page.goto(url + f"/s/{ids[state]}/")
        page.fill("input[name=reason]", "Is this generated?")
        page.click("text=Ask for review")
        page.wait_for_load_state()
    live_stack.manage("demo_accounts")
    log_in(page, url, "moderator", "moderate-demo-2026")
    page.goto(url + f"/moderation/s/{ids['invalid']}/")
    assert panel_state(page) == "invalid"
    page.goto(url + "/moderation/?state=all")
    page.select_option("#provenance-filter", "ai_generated")
    page.click("form.filters button[type=submit]")
    page.wait_for_url(re.compile(r".*provenance=ai_generated.*"))
    rows = page.locator("#queue .queue-item")
    listed = {rows.nth(i).get_attribute("data-id") for i in range(rows.count())}
    assert listed == {ids["untrusted"]}  # now valid, and says AI-generated
    assert "AI-generated" in page.inner_text("#queue")
    page.screenshot(path=str(screenshots / "provenance-queue-1280x800.png"))
    page.goto(url + "/moderation/?state=all&provenance=absent")
    rows = page.locator("#queue .queue-item")
    absent = {rows.nth(i).get_attribute("data-id") for i in range(rows.count())}
    assert ids["absent"] in absent and ids["untrusted"] not in absent


def test_a_user_deletes_their_account_and_its_uploads_go_with_it(
    live_stack, browser_page, screenshots: Path, media_dir: Path
) -> None:
    """From the account page, with the password given again: the upload's
    file leaves the site's storage, the user is signed out, and the name no
    longer signs in."""
    page, url = browser_page, live_stack.url
    media = live_stack.var / "media"
    before = {p for p in (media / "uploads").rglob("*") if p.is_file()}
    sign_up(page, url, "frank")
    sub_id = upload(page, url, media_dir / "face.png", "frank's photo")
    stored = {p for p in (media / "uploads").rglob("*") if p.is_file()} - before
    explanations = media / ARTIFACT_DIR / sub_id
    assert len(stored) == 1 and explanations.is_dir()
    page.goto(url + "/accounts/")
    page.click("#delete-account")
    assert "your 1 upload," in page.inner_text("#what-goes")
    page.fill("#password", "not my password")
    page.click("#delete")
    assert "nothing was deleted" in page.inner_text("#error")
    page.fill("#password", PASSWORD)
    page.click("#delete")
    page.wait_for_url(re.compile(r".*/accounts/login/.*"))
    assert "The account frank and its 1 upload were deleted." in page.inner_text("main")
    page.screenshot(path=str(screenshots / "08-account-deleted.png"))
    assert not any(p.exists() for p in stored) and not explanations.exists()
    assert all(p.exists() for p in before)  # the other users' uploads stay
    page.fill("#id_username", "frank")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    assert page.url.rstrip("/").endswith("/accounts/login")
