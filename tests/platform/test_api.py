"""The REST API: token auth, submit, poll, result, frames, artifacts, CSV, schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.test import Client
from rest_framework.authtoken.models import Token

pytestmark = pytest.mark.django_db


@pytest.fixture
def api(users) -> Client:
    token = Token.objects.create(user=users["submitter"])
    return Client(HTTP_AUTHORIZATION=f"Token {token.key}")


def test_token_is_issued_for_credentials(users) -> None:
    from tests.platform.conftest import PASSWORD

    response = Client().post("/api/token/", {"username": "alice", "password": PASSWORD})
    assert response.status_code == 200
    assert response.json()["token"] == Token.objects.get(user=users["submitter"]).key


def test_token_endpoint_shares_the_login_throttle(users, settings) -> None:
    from django.core.cache import cache

    from tests.platform.conftest import PASSWORD

    cache.clear()
    settings.LOGIN_MAX_FAILURES = 2
    c = Client(REMOTE_ADDR="10.0.0.4")
    for name in ("alice", "Alice "):
        assert c.post("/api/token/", {"username": name, "password": "x"}).status_code == 400
    locked = c.post("/api/token/", {"username": "alice", "password": PASSWORD})
    assert locked.status_code == 429 and "Too many failed log-ins" in locked.json()["detail"]
    assert "token" not in locked.json()
    cache.clear()


def test_submit_poll_and_read_result(api: Client, site: Path, media_dir: Path) -> None:
    from analyses import services

    with (media_dir / "person.mp4").open("rb") as fh:
        created = api.post("/api/submissions/", {"file": fh, "title": "api clip"})
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["status"] == "pending" and body["title"] == "api clip" and body["kind"] == "video"
    services.run_submission(body["id"])  # what the worker does
    progress = api.get(f"/api/submissions/{body['id']}/progress/").json()
    assert progress["status"] == "done" and progress["percent"] == 100 and progress["finished"]
    result = api.get(f"/api/submissions/{body['id']}/result/").json()
    assert result["result"]["status"] == "done" and set(result["result"]["members"]) == {
        "tiny_a",
        "tiny_b",
    }
    # The file by the name it was uploaded under, never the server's path.
    assert result["result"]["file"] == "person.mp4"
    assert str(site) not in json.dumps(result)
    frames = api.get(f"/api/submissions/{body['id']}/frames/").json()["frames"]
    assert frames and {"frame", "time", "person", "score", "members"} <= set(frames[0])
    csv_text = b"".join(api.get(f"/api/submissions/{body['id']}/frames-csv/").streaming_content)
    assert csv_text.decode().splitlines()[0] == "frame,time,person,tiny_a,tiny_b,score"


def test_bad_upload_is_400_with_reason(api: Client, site: Path, tmp_path: Path) -> None:
    bad = tmp_path / "notes.mp4"
    bad.write_text("just text\n")
    with bad.open("rb") as fh:
        response = api.post("/api/submissions/", {"file": fh})
    assert response.status_code == 400
    assert response.json()["code"] == "unsupported_format"
    assert "text file" in response.json()["detail"]


def test_an_empty_file_is_refused_as_on_the_upload_page(
    api: Client, clients, site: Path, tmp_path: Path
) -> None:
    """DRF refused it itself ("The submitted file is empty.", code "empty"),
    so the API said otherwise than the site and did not count it."""
    from django.urls import reverse

    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with empty.open("rb") as fh:
        response = api.post("/api/submissions/", {"file": fh})
    assert response.status_code == 400
    with empty.open("rb") as fh:
        page = clients["submitter"].post(reverse("analyses:submit"), {"file": fh})
    assert page.status_code == 400
    assert response.json()["code"] == "unreadable"
    assert response.json()["detail"] in page.content.decode()


def test_no_weights_is_503(api: Client, no_weights_site: Path, media_dir: Path) -> None:
    with (media_dir / "face.png").open("rb") as fh:
        response = api.post("/api/submissions/", {"file": fh})
    assert response.status_code == 503 and "No weights are installed" in response.json()["detail"]
    assert str(no_weights_site) not in response.json()["detail"]


def test_artifacts_list_and_file(api: Client, users, finished) -> None:
    sub = finished(users["submitter"])
    arts = api.get(f"/api/submissions/{sub.pk}/artifacts/").json()
    kinds = {"face", "frame", "gradcam", "ssim_temporal"}
    assert len(arts) == 10 and {a["kind"] for a in arts} == kinds
    image = api.get(arts[0]["url"])
    assert image.status_code == 200 and image["Content-Type"] == "image/png"
    assert b"".join(image.streaming_content).startswith(b"\x89PNG")


def test_index_lists_the_artifacts_as_the_explainer_wrote_them(
    api: Client, users, finished
) -> None:
    import json

    from analyses import services

    sub = finished(users["submitter"])
    written = json.loads((services.artifact_dir(sub) / "index.json").read_text())
    index = api.get(f"/api/submissions/{sub.pk}/index/").json()
    assert index["series"] == written["series"]
    fields = ("kind", "frame", "time", "person", "member", "caption", "width", "height")

    def key(entry: dict) -> tuple:
        return tuple(entry[f] for f in fields)

    assert sorted(map(key, index["artifacts"]), key=str) == sorted(
        map(key, written["artifacts"]), key=str
    )
    face = next(a for a in index["artifacts"] if a["kind"] == "face")
    assert api.get(face["url"]).status_code == 200


def test_schema_documents_the_endpoints(api: Client) -> None:
    schema = api.get("/api/schema/").content.decode()
    for path in (
        "/api/submissions/",
        "/api/submissions/{id}/progress/",
        "/api/submissions/{id}/result/",
        "/api/submissions/{id}/frames-csv/",
        "/api/submissions/{id}/artifacts/",
        "/api/submissions/{id}/disputes/",
        "/api/token/",
    ):
        assert path in schema
    assert "DisputeAnswer" in schema


def test_huge_request_is_413_before_reading(api: Client, site: Path) -> None:
    response = api.generic(
        "POST",
        "/api/submissions/",
        data=b"x" * 16,
        content_type="multipart/form-data; boundary=zz",
        CONTENT_LENGTH=str(50 * 2**20),
    )
    assert response.status_code == 413 and response.json()["code"] == "too_large"
    assert not any(p.is_file() for p in site.rglob("*"))


@pytest.mark.parametrize("media_type", ["text/html", "image/svg+xml"])
def test_artifact_files_are_private_and_never_rendered_as_markup(
    api: Client, clients, users, finished, media_type: str
) -> None:
    from django.urls import reverse

    sub = finished(users["submitter"])
    art = sub.artifacts.first()
    sub.artifacts.filter(pk=art.pk).update(media_type=media_type)
    site_url = reverse("analyses:artifact", args=[sub.pk, art.pk])
    for response in (
        api.get(f"/api/submissions/{sub.pk}/artifacts/{art.pk}/file/"),
        clients["submitter"].get(site_url),
    ):
        assert response.status_code == 200
        assert response["Content-Type"] == "application/octet-stream"
        assert response["X-Content-Type-Options"] == "nosniff"
        assert response["Cache-Control"] == "private, no-store"


def test_schema_validates_against_openapi_without_warnings(tmp_path: Path) -> None:
    from django.core.management import call_command

    # --validate checks the OpenAPI 3 JSON schema; --fail-on-warn turns any
    # drf-spectacular guess (an undocumented view, say) into a failure.
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "s.yml"))
    assert "/api/submissions/{id}/frames-csv/" in (tmp_path / "s.yml").read_text()


def test_submission_carries_its_content_credentials_and_the_schema_documents_them(
    api: Client, users, finished, tmp_path: Path
) -> None:
    from tests.c2pa_signing import state_summaries

    summaries = state_summaries(tmp_path)
    sub = finished(users["submitter"])
    assert api.get(f"/api/submissions/{sub.pk}/").json()["provenance"] is None  # never read
    sub.provenance = summaries["valid"]
    sub.save(update_fields=["provenance"])
    p = api.get(f"/api/submissions/{sub.pk}/").json()["provenance"]
    assert p["state"] == "valid" and p["ai_generated"] is True
    assert p["actions"][0]["source_type"] == "trainedAlgorithmicMedia" and p["actions"][0]["ai"]
    assert p["signer"].startswith("Trusttrace test signer") and p["library"]
    listed = api.get("/api/submissions/").json()["results"]
    assert listed[0]["provenance"]["state"] == "valid"
    result = api.get(f"/api/submissions/{sub.pk}/result/").json()
    assert result["provenance"] == p and result["result"]["status"] == "done"
    # An older summary missing fields is filled with empty values, not an error.
    sub.provenance = {"state": "absent"}
    sub.save(update_fields=["provenance"])
    p = api.get(f"/api/submissions/{sub.pk}/").json()["provenance"]
    assert p["state"] == "absent" and p["actions"] == [] and p["signer"] == ""
    schema = api.get("/api/schema/?format=json").json()
    props = schema["components"]["schemas"]["Provenance"]["properties"]
    ref = props["state"]["allOf"][0]["$ref"].rsplit("/", 1)[-1]
    states = schema["components"]["schemas"][ref]["enum"]
    assert states == ["valid", "untrusted", "invalid", "absent", "unchecked"]
    assert {"signer", "issuer", "claim_generator", "actions", "ingredients"} <= set(props)
    assert "provenance" in schema["components"]["schemas"]["Submission"]["properties"]
    assert "provenance" in schema["components"]["schemas"]["Result"]["properties"]


@pytest.mark.parametrize("bad_id", ["abc", "123", "00000000-0000-0000-0000-00000000000g"])
def test_an_id_that_is_not_a_uuid_is_404_on_every_detail_endpoint(api: Client, bad_id) -> None:
    base = f"/api/submissions/{bad_id}/"
    for path in ("", "progress/", "result/", "frames/", "artifacts/", "index/", "frames-csv/"):
        assert api.get(base + path).status_code == 404, path
    assert api.get(base + "artifacts/1/file/").status_code == 404
    assert api.delete(base).status_code == 404


def test_a_format_suffix_is_404_not_a_server_error(api: Client, users, finished) -> None:
    """DRF's default router added ``.json``-style routes, and the custom
    actions, which take no ``format`` argument, failed on them with a 500."""
    sub = finished(users["submitter"])
    base = f"/api/submissions/{sub.pk}"
    art = api.get(f"{base}/artifacts/").json()[0]
    for url in (
        f"{base}/progress.json",
        f"{base}/result.json",
        f"{base}.json",
        "/api/submissions.json",
        "/api/submissions/export-csv.csv",
        f"{base}/frames-csv.csv",
        art["url"].rstrip("/") + ".png",
    ):
        response = api.get(url)
        assert response.status_code == 404, url
        assert "detail" in response.json(), url
    assert api.get(f"{base}/progress/").status_code == 200
    unknown = api.get("/api/no-such-thing/")
    assert unknown.status_code == 404
    assert unknown.json() == {"detail": "Not found.", "code": "not_found"}
    # The site's own pages keep Django's HTML 404.
    page = api.get("/no-such-page/")
    assert page.status_code == 404 and page["Content-Type"].startswith("text/html")


def test_a_server_error_under_the_api_is_json_without_details(users, monkeypatch) -> None:
    from api import views

    def broken(*args, **kwargs):
        raise RuntimeError("/srv/secret/path exploded")

    # Outside DRF's exception handler, which answers only APIException and Http404.
    monkeypatch.setattr(views, "drf_exception_handler", broken)
    token = Token.objects.create(user=users["submitter"])
    client = Client(HTTP_AUTHORIZATION=f"Token {token.key}", raise_request_exception=False)
    response = client.get("/api/submissions/not-a-uuid/")
    assert response.status_code == 500
    assert response.json() == {"detail": "A server error occurred.", "code": "server_error"}
    assert b"/srv/secret" not in response.content


def test_downloads_answer_clients_that_ask_for_their_media_type(api: Client, users, finished):
    sub = finished(users["submitter"])
    base = f"/api/submissions/{sub.pk}/"
    for path, accept in (
        ("frames-csv/", "text/csv"),
        ("/api/submissions/export-csv/", "text/csv"),
    ):
        url = path if path.startswith("/") else base + path
        response = api.get(url, HTTP_ACCEPT=accept)
        assert response.status_code == 200, url
        assert response["Content-Type"].startswith("text/csv")
    art = api.get(base + "artifacts/").json()[0]
    image = api.get(art["url"], HTTP_ACCEPT="image/png")
    assert image.status_code == 200 and image["Content-Type"] == "image/png"
    # Errors are still JSON, whatever was asked for.
    bad = api.get("/api/submissions/export-csv/", {"verdict": "FAKE"}, HTTP_ACCEPT="text/csv")
    assert bad.status_code == 400 and bad.json()["code"] == "bad_filter"
    missing = api.get(base + "artifacts/999999/file/", HTTP_ACCEPT="image/png")
    assert missing.status_code == 404 and "detail" in missing.json()


def test_every_api_error_has_a_detail_and_a_code(api: Client, users, site: Path) -> None:
    """Before, only refusals had a code: a missing file part was
    {"file": [...]}, a 404 or 401 had no code."""
    missing_file = api.post("/api/submissions/", {"title": "no file"})
    assert missing_file.status_code == 400
    body = missing_file.json()
    assert body["code"] == "required" and body["detail"].startswith("file: ")
    assert "file" in body["errors"]
    # A file part with a file name that is not UTF-8 is dropped by Django:
    # before, the answer was the same bare "No file was submitted.".
    dropped = api.generic(
        "POST",
        "/api/submissions/",
        data=(
            b'--B\r\nContent-Disposition: form-data; name="file"; filename="caf\xe9\xff.png"'
            b"\r\nContent-Type: image/png\r\n\r\n\x89PNG\r\n--B--\r\n"
        ),
        content_type="multipart/form-data; boundary=B",
    )
    assert dropped.status_code == 400 and dropped.json()["code"] == "required"
    assert "not valid UTF-8" in dropped.json()["detail"]
    assert api.get("/api/submissions/").json()["count"] == 0
    not_found = api.get("/api/submissions/00000000-0000-0000-0000-000000000000/")
    assert not_found.status_code == 404 and not_found.json()["code"] == "not_found"
    anonymous = Client().get("/api/submissions/")
    assert anonymous.status_code == 401 and anonymous.json()["code"] == "not_authenticated"
    bad_login = Client().post("/api/token/", {"username": "alice", "password": "wrong"})
    assert bad_login.status_code == 400 and bad_login.json()["code"] == "authorization"
    assert "Unable to log in" in bad_login.json()["detail"]


def test_the_list_takes_the_csv_exports_filters_and_refuses_bad_ones(
    api: Client, users, finished
) -> None:
    """Before, ?verdict= and the rest were ignored: every submission came back."""
    fake = finished(users["submitter"], verdict="fake", title="f")
    real = finished(users["submitter"], verdict="real", score=0.2, title="r")
    finished(users["other"], verdict="fake", title="not mine")

    def ids(query: str) -> list[str]:
        response = api.get("/api/submissions/" + query)
        assert response.status_code == 200, response.content
        return [row["id"] for row in response.json()["results"]]

    assert ids("") == [str(real.pk), str(fake.pk)]  # newest first, own only
    assert ids("?verdict=fake") == [str(fake.pk)]
    assert ids("?status=done&verdict=real") == [str(real.pk)]
    assert ids("?decision=none") == [str(real.pk), str(fake.pk)]
    bad = api.get("/api/submissions/?verdict=FAKE")
    assert bad.status_code == 400 and bad.json()["code"] == "bad_filter"
    assert "verdict" in bad.json()["detail"]


def test_requests_django_refuses_by_their_size_or_shape_are_json(
    api: Client, users, site: Path, media_dir: Path
) -> None:
    """Django raises these while a view reads the request; DRF's handler left
    them to Django, which answered with its HTML "Bad Request (400)" page."""
    many = api.get("/api/submissions/", {f"x{i}": "1" for i in range(1001)})
    assert many.status_code == 400 and many.json()["code"] == "parse_error"
    assert "fields" in many.json()["detail"]
    with (media_dir / "face.png").open("rb") as fh:
        big = api.post("/api/submissions/", {"file": fh, "title": "t" * (3 * 2**20)})
    assert big.status_code == 413 and big.json()["code"] == "too_large"
    assert "2.5 MiB" in big.json()["detail"]
    assert not any(p.is_file() for p in site.rglob("*"))
    fields = {f"f{i}": "1" for i in range(1001)}
    token = Client().post("/api/token/", {"username": "alice", "password": "x", **fields})
    assert token.status_code == 400 and token.json()["code"] == "parse_error"


def test_with_debug_on_api_errors_are_json_too(users, settings) -> None:
    """``make run`` runs with DEBUG on, where Django skips the site's 404 and
    500 handlers and answers with its debug pages (every route, a traceback)."""
    from api import views

    settings.DEBUG = True
    token = Token.objects.create(user=users["submitter"])
    client = Client(HTTP_AUTHORIZATION=f"Token {token.key}", raise_request_exception=False)
    unknown = client.get("/api/no-such-thing/")
    assert unknown.status_code == 404
    assert unknown.json() == {"detail": "Not found.", "code": "not_found"}

    def broken(*args, **kwargs):
        raise RuntimeError("/srv/secret/path exploded")

    original = views.drf_exception_handler
    views.drf_exception_handler = broken
    try:
        response = client.get("/api/submissions/not-a-uuid/")
    finally:
        views.drf_exception_handler = original
    assert response.status_code == 500
    assert response.json() == {"detail": "A server error occurred.", "code": "server_error"}
    assert b"/srv/secret" not in response.content
    # The site's own pages keep Django's.
    assert client.get("/no-such-page/")["Content-Type"].startswith("text/html")


@pytest.mark.parametrize("page", ["abc", "0", "-1", "99"])
def test_a_page_that_is_not_one_of_the_lists_is_400(api: Client, users, finished, page) -> None:
    """DRF answers 404 "Invalid page.", which reads as a missing resource."""
    finished(users["submitter"])
    response = api.get("/api/submissions/", {"page": page})
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["code"] == "bad_page" and "pages are 1 to 1" in body["detail"]
    assert api.get("/api/submissions/", {"page": "1"}).status_code == 200


def _list_queries(client: Client) -> tuple[int, list[dict]]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        response = client.get("/api/submissions/")
    assert response.status_code == 200, response.content
    return len(queries), response.json()["results"]


def test_the_list_asks_the_database_the_same_number_of_times_for_any_number_of_rows(
    users, finished
) -> None:
    """Before, every row cost a query for its decision and another for the
    caller's role: a page of 50 took over 100 queries."""
    from moderation.services import decide

    owner, moderator = users["submitter"], users["moderator"]
    clients = {}
    for who in ("submitter", "moderator"):
        token = Token.objects.create(user=users[who])
        clients[who] = Client(HTTP_AUTHORIZATION=f"Token {token.key}")

    def add_rows() -> None:
        for i in range(3):
            sub = finished(owner, title=f"clip {i}")
            decide(sub, moderator, "confirm", "")
            decide(sub, moderator, "escalate", "a second look, please")

    add_rows()
    few = {who: _list_queries(c) for who, c in clients.items()}
    add_rows()
    # Escalated and never decided: the submitter sees no decision on it yet.
    pending = finished(owner, title="escalated only")
    decide(pending, moderator, "escalate", "not sure")
    many = {who: _list_queries(c) for who, c in clients.items()}
    for who in clients:
        assert len(many[who][1]) == 2 * len(few[who][1]) + 1 == 7
        assert many[who][0] == few[who][0], who
    # The submitter sees the confirmation; the moderator the escalation after it.
    mine = {row["id"]: row["decision"] for row in many["submitter"][1]}
    assert mine.pop(str(pending.pk)) is None
    assert {d["action"] for d in mine.values()} == {"confirm"}
    assert {row["decision"]["action"] for row in many["moderator"][1]} == {"escalate"}
    # Each row of the list says what its own page (the detail view) says.
    for who, c in clients.items():
        for row in many[who][1]:
            detail = c.get(f"/api/submissions/{row['id']}/").json()
            assert detail["decision"] == row["decision"], who


def test_the_owner_disputes_a_verdict_and_follows_the_answer_through_the_api(
    api: Client, users, finished
) -> None:
    """Before, a program could not ask for review: only the result page could."""
    from moderation.services import decide

    sub = finished(users["submitter"], verdict="fake")
    url = f"/api/submissions/{sub.pk}/disputes/"
    first = api.post(url, {"reason": "it is me"}, content_type="application/json")
    assert first.status_code == 201, first.content
    body = first.json()
    assert body["status"] == "open" and body["reason"] == "it is me" and body["answer"] is None
    again = api.post(  # form-encoded: the same open dispute
        url, "reason=it+is+me", content_type="application/x-www-form-urlencoded"
    )
    assert again.status_code == 200 and again.json()["id"] == body["id"]
    blank = api.post(url, {"reason": "  "}, content_type="application/json")
    assert blank.status_code == 200 and blank.json()["id"] == body["id"]  # the open one

    decide(sub, users["moderator"], "escalate", "not sure")
    assert api.get(url).json()["disputes"][0]["status"] == "open"
    decide(sub, users["moderator"], "override_real", "known person")
    listed = api.get(url).json()["disputes"]
    assert [d["id"] for d in listed] == [body["id"]]
    assert listed[0]["status"] == "answered"
    answer = listed[0]["answer"]
    assert answer["action"] == "override_real" and answer["label"] == "real"
    assert "mona" not in json.dumps(listed)  # not who answered
    assert "not sure" not in json.dumps(listed)  # nor the escalation's note

    for n in range(3):  # three open at most, as on the page
        assert api.post(url, {"reason": f"reason {n}"}).status_code == 201
    full = api.post(url, {"reason": "a fourth"})
    assert full.status_code == 400 and full.json()["code"] == "decision_refused"
    assert "3 open disputes" in full.json()["detail"]

    too_long = api.post(url, {"reason": "x" * 2001}, content_type="application/json")
    assert too_long.status_code == 400 and "reason" in too_long.json()["detail"]
    waiting = finished(users["submitter"])
    type(waiting).objects.filter(pk=waiting.pk).update(status="pending")
    refused = api.post(f"/api/submissions/{waiting.pk}/disputes/", {"reason": "x"})
    assert refused.status_code == 400 and refused.json()["code"] == "decision_refused"
    assert "still waiting" in refused.json()["detail"]


def test_only_the_owner_has_disputes_of_a_submission(users, finished) -> None:
    sub = finished(users["submitter"], verdict="fake")
    url = f"/api/submissions/{sub.pk}/disputes/"
    for who in ("other", "moderator"):
        token = Token.objects.create(user=users[who])
        client = Client(HTTP_AUTHORIZATION=f"Token {token.key}")
        assert client.get(url).status_code == 404, who
        assert client.post(url, {"reason": "no"}).status_code == 404, who
    from moderation.models import Report

    assert not Report.objects.exists()
