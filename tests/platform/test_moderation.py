"""Moderation: queue, decisions with notes, audit log, re-run, metrics."""

from __future__ import annotations

import re

import pytest
from django.test import Client
from django.urls import reverse

from moderation.models import Decision
from moderation.services import DecisionError, decide, metrics, review_queue

pytestmark = pytest.mark.django_db


def test_queue_holds_fake_uncertain_and_reported_and_sorts(clients, users, finished) -> None:
    fake = finished(users["submitter"], verdict="fake", score=0.9, title="fake")
    unsure = finished(users["submitter"], verdict="uncertain", score=0.55, title="unsure")
    real = finished(users["submitter"], verdict="real", score=0.1, title="real")
    assert [s.pk for s in review_queue(sort="score")] == [unsure.pk, fake.pk]
    assert [s.pk for s in review_queue(sort="-score")] == [fake.pk, unsure.pk]
    assert [s.pk for s in review_queue(verdict="fake")] == [fake.pk]
    clients["submitter"].post(reverse("analyses:report", args=[real.pk]), {"reason": "wrong"})
    assert real.pk in {s.pk for s in review_queue()}
    page = clients["moderator"].get(reverse("moderation:queue"), {"sort": "-score"})
    text = page.content.decode()
    # Rows, not the filter form's options: the score order, highest first.
    rows = [text.index(f'data-id="{s.pk}"') for s in (fake, unsure)]
    assert rows == sorted(rows) and "open" in text


def test_override_needs_a_note_and_is_audited(clients, users, finished) -> None:
    sub = finished(users["submitter"], verdict="fake")
    url = reverse("moderation:decide", args=[sub.pk])
    response = clients["moderator"].post(url, {"action": "override_real", "note": " "})
    assert response.status_code == 302 and not Decision.objects.exists()
    clients["moderator"].post(url, {"action": "override_real", "note": "A known actor."})
    d = Decision.objects.get()
    assert (d.moderator.username, d.action, d.from_label, d.to_label, d.note) == (
        "mona",
        "override_real",
        "fake",
        "real",
        "A known actor.",
    )
    assert sub.pk not in {s.pk for s in review_queue()}
    page = clients["submitter"].get(reverse("analyses:detail", args=[sub.pk])).content.decode()
    assert "Moderator decision" in page and "A known actor." in page
    review = clients["moderator"].get(reverse("moderation:review", args=[sub.pk])).content.decode()
    # The audit row: who, what, from, to, note (the header shows "mona" on every page).
    row = "<td>mona</td><td>Override: real</td><td>fake</td><td>real</td><td>A known actor.</td>"
    assert row in review


def test_confirm_and_escalate(users, finished) -> None:
    sub = finished(users["submitter"], verdict="uncertain")
    with pytest.raises(DecisionError, match="note is required"):
        decide(sub, users["moderator"], "escalate", "")
    decide(sub, users["moderator"], "escalate", "needs an expert")
    assert [s.pk for s in review_queue(state="escalated")] == [sub.pk]
    d = decide(sub, users["admin"], "confirm", "")
    assert (d.from_label, d.to_label) == ("escalated", "uncertain")
    assert Decision.objects.filter(submission=sub).count() == 2


def test_decided_items_stay_in_their_tab_whatever_their_verdict_now(
    clients, users, finished
) -> None:
    from analyses.models import Submission

    # An escalated fake that a re-run turned real: the escalation still
    # waits for an answer (before, it was in no tab at all).
    escalated = finished(users["submitter"], verdict="fake", title="escalated")
    decide(escalated, users["moderator"], "escalate", "needs an expert")
    Submission.objects.filter(pk=escalated.pk).update(verdict="real", score=0.2)
    # A disputed real verdict overridden to fake, its report resolved.
    disputed = finished(users["submitter"], verdict="real", title="disputed")
    clients["submitter"].post(reverse("analyses:report", args=[disputed.pk]), {"reason": "fake!"})
    decide(disputed, users["moderator"], "override_fake", "a face swap")
    assert not disputed.reports.filter(resolved=False).exists()
    # A real verdict nobody decided on or disputed stays out of every tab.
    finished(users["submitter"], verdict="real", title="plain")
    assert [s.pk for s in review_queue(state="escalated")] == [escalated.pk]
    assert [s.pk for s in review_queue(state="reviewed")] == [disputed.pk]
    assert {s.pk for s in review_queue(state="all")} == {escalated.pk, disputed.pk}
    assert list(review_queue()) == []
    page = clients["moderator"].get(reverse("moderation:queue"), {"state": "escalated"})
    assert f'data-id="{escalated.pk}"' in page.content.decode()


def test_a_moderator_does_not_decide_their_own_upload(clients, users, finished) -> None:
    mine = finished(users["moderator"], verdict="fake")
    # Before: a moderator could confirm or override the verdict on their own upload.
    for action, note in (("confirm", ""), ("override_real", "mine, and real")):
        with pytest.raises(DecisionError, match="another moderator decides it"):
            decide(mine, users["moderator"], action, note)
    posted = clients["moderator"].post(
        reverse("moderation:decide", args=[mine.pk]), {"action": "override_real", "note": "x"}
    )
    assert posted.status_code == 302 and not Decision.objects.filter(submission=mine).exists()
    page = clients["moderator"].get(reverse("moderation:review", args=[mine.pk])).content.decode()
    assert 'id="decide-own"' in page and 'value="escalate"' in page
    assert 'value="confirm"' not in page and 'value="override_real"' not in page
    # Escalating it to others is theirs to do; another moderator or an admin decides.
    decide(mine, users["moderator"], "escalate", "I uploaded this; please look")
    d = decide(mine, users["admin"], "override_real", "checked: a real clip")
    assert (d.from_label, d.to_label) == ("escalated", "real")
    theirs = finished(users["submitter"], verdict="fake")
    page = clients["moderator"].get(reverse("moderation:review", args=[theirs.pk])).content.decode()
    assert 'id="decide-own"' not in page and 'value="confirm"' in page


def test_metrics_compare_verdicts_with_decisions(clients, users, finished) -> None:
    mod = users["moderator"]
    cases = [
        ("fake", "confirm"),
        ("fake", "override_real"),
        ("real", "confirm"),
        ("real", "override_fake"),
        ("uncertain", "override_fake"),
        ("fake", "confirm"),
    ]
    for verdict, action in cases:
        decide(finished(users["submitter"], verdict=verdict), mod, action, "n")
    finished(users["submitter"], verdict="fake")  # not reviewed: not counted
    # Left out, and said so: escalated, an uncertain verdict confirmed (no
    # real/fake call), a no_face verdict even when overridden.
    decide(finished(users["submitter"], verdict="fake"), mod, "escalate", "ask legal")
    decide(finished(users["submitter"], verdict="uncertain"), mod, "confirm", "")
    decide(finished(users["submitter"], verdict="no_face"), mod, "override_fake", "a mask")
    m = metrics()
    assert sorted(m.left_out.values()) == [1, 1, 1] and len(m.left_out) == 3
    # fake->fake 2 (TP), fake->real 1 (FP), real->fake 1 + uncertain->fake 1 (FN), real->real 1 (TN)
    assert m.reviewed == 6
    assert m.matrix["fake"] == {"fake": 2, "real": 1}
    assert m.matrix["uncertain"] == {"fake": 1, "real": 0}
    assert m.accuracy == pytest.approx(3 / 6)
    assert m.precision == pytest.approx(2 / 3) and m.recall == pytest.approx(2 / 4)
    assert m.f1 == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    page = clients["moderator"].get(reverse("moderation:dashboard")).content.decode()
    for key, value in (
        ("accuracy", "0.500"),
        ("precision", "0.667"),
        ("recall", "0.500"),
        ("f1", "0.571"),
    ):
        assert f'<dd id="{key}">{value}</dd>' in page, key
    assert "1 escalated" in page


def test_moderator_rerun_queues_with_current_models(clients, users, finished, monkeypatch) -> None:
    from analyses import services

    queued = []
    monkeypatch.setattr(services.queue, "enqueue", queued.append)
    sub = finished(users["submitter"], verdict="fake", score=0.83)
    before = sub.finished
    type(sub).objects.filter(pk=sub.pk).update(model_versions={"resnet50": "ab" * 32})
    clients["moderator"].post(reverse("moderation:rerun", args=[sub.pk]))
    sub.refresh_from_db()
    assert sub.status == "pending" and sub.score is None and not sub.artifacts.exists()
    assert [s.pk for s in queued] == [sub.pk]
    # The re-run wiped the verdict; the audit log keeps who did it and what
    # the replaced analysis said.
    from moderation.models import Rerun

    (record,) = Rerun.objects.all()
    assert record.submission_id == sub.pk and record.moderator == users["moderator"]
    assert (record.previous_status, record.previous_verdict) == ("done", "fake")
    assert record.previous_score == pytest.approx(0.83) and record.previous_finished == before
    assert record.previous_model_versions == {"resnet50": "ab" * 32}
    page = clients["admin"].get(reverse("moderation:review", args=[sub.pk])).content.decode()
    rows = re.search(r'<table class="grid" id="reruns">.*?</table>', page, re.S)
    assert rows is not None
    assert users["moderator"].get_username() in rows.group(0) and "0.830" in rows.group(0)
    # A re-run refused (the job is pending and alive) records nothing.
    refused = clients["moderator"].post(reverse("moderation:rerun", args=[sub.pk]), follow=True)
    assert "only finished" in refused.content.decode()
    assert Rerun.objects.count() == 1
    # Deleting the submission keeps the record.
    type(sub).objects.filter(pk=sub.pk).delete()
    assert Rerun.objects.get().submission_key == sub.pk


def test_submitter_sees_the_last_real_decision_not_an_escalation_note(
    clients, users, finished
) -> None:
    import csv
    import io

    from rest_framework.authtoken.models import Token

    sub = finished(users["submitter"], verdict="fake")
    decide(sub, users["moderator"], "override_real", "A known actor.")
    decide(sub, users["moderator"], "escalate", "internal: ask legal about the uploader")
    detail = reverse("analyses:detail", args=[sub.pk])
    page = clients["submitter"].get(detail).content.decode()
    assert "A known actor." in page and "ask legal" not in page
    assert "ask legal" in clients["moderator"].get(detail).content.decode()
    token = Token.objects.create(user=users["submitter"])
    api = Client(HTTP_AUTHORIZATION=f"Token {token.key}")
    assert api.get(f"/api/submissions/{sub.pk}/").json()["decision"]["note"] == "A known actor."
    response = clients["submitter"].get(reverse("reports:submissions"))
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert [(r["decision"], r["decision_note"]) for r in rows] == [("real", "A known actor.")]


def _aged(sub, minutes: int):
    """Make ``sub`` look ``minutes`` old (the queue breaks ties by age)."""
    from datetime import timedelta

    from django.utils import timezone

    from analyses.models import Submission

    Submission.objects.filter(pk=sub.pk).update(created=timezone.now() - timedelta(minutes=minutes))
    return sub


def test_queue_puts_uncertain_first_then_closest_to_threshold_then_oldest(
    clients, users, finished
) -> None:
    owner = users["submitter"]
    # Scores that are exact binary fractions, so equal distances tie exactly.
    far_fake = _aged(finished(owner, verdict="fake", score=0.9375, title="far"), 50)
    near_fake = _aged(finished(owner, verdict="fake", score=0.6875, title="near"), 40)
    unsure_new = _aged(finished(owner, verdict="uncertain", score=0.5625, title="new"), 10)
    unsure_old = _aged(finished(owner, verdict="uncertain", score=0.4375, title="old"), 30)
    unsure_close = _aged(finished(owner, verdict="uncertain", score=0.53125, title="c"), 5)
    expected = [unsure_close.pk, unsure_old.pk, unsure_new.pk, near_fake.pk, far_fake.pk]
    assert [s.pk for s in review_queue()] == expected
    page = clients["moderator"].get(reverse("moderation:queue")).content.decode()
    rows = [page.index(f'data-id="{pk}"') for pk in expected]
    assert rows == sorted(rows) and '<option value="priority" selected>' in page


def test_queue_shows_the_most_suspicious_face_of_each_item(clients, users, finished) -> None:
    from analyses.models import Submission

    sub = finished(users["submitter"], verdict="fake")
    series = dict(sub.series)
    series["persons"][0]["points"][1]["score"] = 0.95  # frame 5
    Submission.objects.filter(pk=sub.pk).update(series=series)
    face = sub.artifacts.get(kind="face", frame=5, person=0)
    page = clients["moderator"].get(reverse("moderation:queue")).content.decode()
    assert f'<img src="/s/{sub.pk}/artifacts/{face.pk}"' in page and 'class="queue-thumb"' in page


def test_review_page_is_the_result_page_with_the_decision_form_and_shortcuts(
    clients, users, finished
) -> None:
    first = _aged(finished(users["submitter"], verdict="uncertain", score=0.5625), 20)
    second = _aged(finished(users["submitter"], verdict="fake", score=0.9375), 10)
    page = clients["moderator"].get(reverse("moderation:review", args=[first.pk])).content.decode()
    assert 'id="viewer"' in page and 'id="member-bars"' in page and 'id="filmstrip"' in page
    viewer, form = page.index('class="viewer-side"'), page.index('id="decide-form"')
    assert viewer < form < page.index('id="heat-note"')  # beside the viewer
    for key, action in (
        ("c", "confirm"),
        ("r", "override_real"),
        ("f", "override_fake"),
        ("e", "escalate"),
    ):
        assert f'value="{action}" data-key="{key}"' in page
    next_url = reverse("moderation:review", args=[second.pk])
    assert f'href="{next_url}?state=todo" id="next-item"' in page
    assert "/static/trusttrace/review.js" in page
    last = clients["moderator"].get(reverse("moderation:review", args=[second.pk])).content.decode()
    assert f'href="{reverse("moderation:queue")}?state=todo" id="next-item"' in last


def test_a_decision_opens_the_next_queue_item(clients, users, finished) -> None:
    first = _aged(finished(users["submitter"], verdict="uncertain", score=0.5625), 30)
    second = _aged(finished(users["submitter"], verdict="fake", score=0.6875), 20)
    third = _aged(finished(users["submitter"], verdict="fake", score=0.9375), 10)
    url = reverse("moderation:decide", args=[first.pk])
    response = clients["moderator"].post(url, {"action": "confirm", "state": "todo"})
    assert response.status_code == 302
    assert response["Location"] == reverse("moderation:review", args=[second.pk]) + "?state=todo"
    assert Decision.objects.get().submission_id == first.pk
    # A refused decision stays on the same item.
    url = reverse("moderation:decide", args=[second.pk])
    response = clients["moderator"].post(url, {"action": "override_real", "note": ""})
    assert response["Location"] == reverse("moderation:review", args=[second.pk]) + "?state=todo"
    response = clients["moderator"].post(url, {"action": "override_real", "note": "An actor."})
    assert response["Location"] == reverse("moderation:review", args=[third.pk]) + "?state=todo"
    url = reverse("moderation:decide", args=[third.pk])
    response = clients["moderator"].post(url, {"action": "escalate", "note": "ask legal"})
    assert response["Location"] == reverse("moderation:queue") + "?state=todo"  # the last one


def test_a_decision_made_before_a_rerun_says_so_and_its_label_stands(
    clients, users, finished, monkeypatch
) -> None:
    from datetime import timedelta

    from django.utils import timezone
    from rest_framework.authtoken.models import Token

    from analyses import services
    from analyses.models import Submission

    monkeypatch.setattr(services.queue, "enqueue", lambda sub: None)
    sub = finished(users["submitter"], verdict="fake", score=0.8)
    Submission.objects.filter(pk=sub.pk).update(finished=timezone.now() - timedelta(hours=1))
    sub.refresh_from_db()
    decide(sub, users["moderator"], "confirm", "")
    detail = reverse("analyses:detail", args=[sub.pk])
    token = Token.objects.create(user=users["submitter"])
    api = Client(HTTP_AUTHORIZATION=f"Token {token.key}")
    assert "earlier analysis" not in clients["submitter"].get(detail).content.decode()
    assert api.get(f"/api/submissions/{sub.pk}/").json()["decision"]["on_earlier_analysis"] is False

    old_result = dict(sub.result)
    clients["moderator"].post(reverse("moderation:rerun", args=[sub.pk]))
    # The re-run's worker finishes with another verdict.
    Submission.objects.filter(pk=sub.pk).update(
        status="done",
        verdict="real",
        score=0.2,
        result={**old_result, "verdict": "real", "score": 0.2},
        finished=timezone.now(),
    )
    page = clients["submitter"].get(detail).content.decode()
    assert "Confirm the verdict" in page and "Made on an earlier analysis" in page
    decision = api.get(f"/api/submissions/{sub.pk}/").json()["decision"]
    assert (decision["action"], decision["label"], decision["on_earlier_analysis"]) == (
        "confirm",
        "fake",
        True,
    )
    review = clients["moderator"].get(reverse("moderation:review", args=[sub.pk])).content.decode()
    assert "(earlier analysis)" in review
    # The moderator's label is what the media is: the new verdict is scored against it.
    assert metrics().matrix["real"] == {"fake": 1, "real": 0}


@pytest.mark.parametrize("person", ["\u00b2", "9" * 5000, "-1", "1.5", "x", "\u0663"])
def test_a_person_that_is_not_a_small_number_is_ignored_not_a_server_error(
    clients, users, finished, person
) -> None:
    sub = finished(users["submitter"], verdict="uncertain", score=0.5625)
    for who, name in (("submitter", "analyses:detail"), ("moderator", "moderation:review")):
        page = clients[who].get(reverse(name, args=[sub.pk]), {"person": person})
        assert page.status_code == 200, (who, person)


def test_a_report_filed_while_the_review_page_was_open_stays_open(clients, users, finished) -> None:
    from moderation.models import Report

    sub = finished(users["submitter"], verdict="real", score=0.2)
    clients["submitter"].post(reverse("analyses:report", args=[sub.pk]), {"reason": "seen"})
    page = clients["moderator"].get(reverse("moderation:review", args=[sub.pk])).content.decode()
    seen = Report.objects.get()
    assert f'name="reports_seen" value="{seen.pk}"' in page
    # Another user's report arrives before the moderator clicks Confirm.
    late = Report.objects.create(submission=sub, reporter=users["moderator"], reason="late")
    clients["moderator"].post(
        reverse("moderation:decide", args=[sub.pk]),
        {"action": "confirm", "reports_seen": str(seen.pk)},
    )
    seen.refresh_from_db()
    late.refresh_from_db()
    assert seen.resolved and not late.resolved
    assert sub.pk in {s.pk for s in review_queue()}
    # A form without the field resolves nothing it cannot have shown.
    clients["moderator"].post(reverse("moderation:decide", args=[sub.pk]), {"action": "confirm"})
    late.refresh_from_db()
    assert not late.resolved


def _decide_fields(page: str) -> dict[str, str]:
    import re

    return {
        name: re.search(rf'name="{name}" value="([^"]*)"', page).group(1)
        for name in ("reports_seen", "decisions_seen", "analysis_seen")
    }


def test_a_decision_recorded_while_the_review_page_was_open_is_not_reversed_unseen(
    clients, users, finished
) -> None:
    """Before, moderator A's Confirm on a page opened before B's override
    recorded fake -> over B's real, without a note and without A seeing it."""
    from django.utils import timezone

    from analyses.models import Submission
    from moderation.models import Decision

    sub = finished(users["submitter"], verdict="fake", score=0.8)
    Submission.objects.filter(pk=sub.pk).update(finished=timezone.now())
    url = reverse("moderation:review", args=[sub.pk])
    page = clients["moderator"].get(url).content.decode()
    fields = _decide_fields(page)
    assert fields["decisions_seen"] == "0" and fields["analysis_seen"]
    clients["admin"].post(
        reverse("moderation:decide", args=[sub.pk]),
        {"action": "override_real", "note": "known actor", **_decide_fields(
            clients["admin"].get(url).content.decode())},
    )  # fmt: skip
    assert Decision.objects.count() == 1
    late = clients["moderator"].post(
        reverse("moderation:decide", args=[sub.pk]), {"action": "confirm", **fields}, follow=True
    )
    assert Decision.objects.count() == 1  # the override stands
    assert "recorded a decision (Override" in late.content.decode()
    # Reloaded, the page shows the override; reversing it takes a note, as
    # the override did (the submitter would see the label flip unexplained).
    page = clients["moderator"].get(url).content.decode()
    assert re.search(r'value="confirm" data-key="c" data-needs-note="1"', page)
    fields = _decide_fields(page)
    bare = clients["moderator"].post(
        reverse("moderation:decide", args=[sub.pk]), {"action": "confirm", **fields}, follow=True
    )
    assert Decision.objects.count() == 1
    admin = users["admin"].get_username()
    assert f"reverses {admin}&#x27;s override (Override: real)" in bare.content.decode()
    clients["moderator"].post(
        reverse("moderation:decide", args=[sub.pk]),
        {"action": "confirm", "note": "the lips are pasted", **fields},
    )
    assert Decision.objects.count() == 2
    assert Decision.objects.first().to_label == "fake"


def test_only_a_confirmation_that_reverses_an_override_needs_a_note(users, finished) -> None:
    from moderation import services
    from moderation.models import Decision

    sub = finished(users["submitter"], verdict="fake", score=0.8)
    services.decide(sub, users["moderator"], "confirm", "")  # nothing to reverse
    services.decide(sub, users["admin"], "override_fake", "sure")  # the verdict's own label
    services.decide(sub, users["moderator"], "confirm", "")
    services.decide(sub, users["admin"], "override_real", "a known actor")
    services.decide(sub, users["admin"], "escalate", "ask the team")
    # An escalation in between does not hide the override it would reverse.
    with pytest.raises(services.DecisionError, match="a note is required"):
        services.decide(sub, users["moderator"], "confirm", "  ")
    services.decide(sub, users["moderator"], "confirm", "checked the frames")
    assert [d.action for d in Decision.objects.all()][:2] == ["confirm", "escalate"]


def test_the_latest_decision_is_the_last_recorded_whatever_the_clocks_said(users, finished) -> None:
    """Several web servers need not agree on the time: a decision stamped
    earlier by a lagging clock is still the later one."""
    import datetime as dt

    from moderation import services
    from moderation.models import Decision

    sub = finished(users["submitter"], verdict="fake", score=0.8)
    first = services.decide(sub, users["moderator"], "confirm", "")
    second = services.decide(sub, users["admin"], "override_real", "known actor")
    Decision.objects.filter(pk=second.pk).update(created=first.created - dt.timedelta(minutes=5))
    assert services.final_decision(sub).pk == second.pk
    assert services.annotated().get(pk=sub.pk).decision_label == "real"


def test_a_decision_on_a_page_opened_before_a_rerun_asks_for_a_reload(
    clients, users, finished
) -> None:
    import datetime as dt

    from django.utils import timezone

    from analyses.models import Submission
    from moderation.models import Decision

    sub = finished(users["submitter"], verdict="fake", score=0.8)
    before = timezone.now()
    Submission.objects.filter(pk=sub.pk).update(finished=before)
    fields = _decide_fields(
        clients["moderator"].get(reverse("moderation:review", args=[sub.pk])).content.decode()
    )
    assert fields["analysis_seen"] == before.isoformat()
    # A re-run finished meanwhile, and found the media real.
    Submission.objects.filter(pk=sub.pk).update(
        verdict="real", score=0.2, finished=before + dt.timedelta(minutes=3)
    )
    response = clients["moderator"].post(
        reverse("moderation:decide", args=[sub.pk]), {"action": "confirm", **fields}, follow=True
    )
    assert not Decision.objects.exists()
    assert "analysed again since you opened it" in response.content.decode()


def test_a_nul_in_a_note_or_a_dispute_is_refused_in_words(clients, users, finished) -> None:
    from moderation.models import Decision, Report

    sub = finished(users["submitter"], verdict="fake", score=0.8)
    response = clients["submitter"].post(
        reverse("analyses:report", args=[sub.pk]), {"reason": "a\x00b"}, follow=True
    )
    assert not Report.objects.exists() and "cannot be stored" in response.content.decode()
    response = clients["moderator"].post(
        reverse("moderation:decide", args=[sub.pk]),
        {"action": "override_real", "note": "x\x00"},
        follow=True,
    )
    assert not Decision.objects.exists() and "cannot be stored" in response.content.decode()


@pytest.mark.parametrize(
    ("status", "said"),
    [("pending", "still waiting"), ("running", "still being"), ("rejected", "was rejected")],
)
def test_only_a_finished_analysis_can_be_reported(clients, users, finished, status, said) -> None:
    from analyses.models import Submission
    from moderation.models import Report

    sub = finished(users["submitter"], verdict="real", score=0.2)
    Submission.objects.filter(pk=sub.pk).update(status=status, verdict="")
    response = clients["submitter"].post(
        reverse("analyses:report", args=[sub.pk]), {"reason": "x"}, follow=True
    )
    assert not Report.objects.exists()
    assert said in response.content.decode()
    assert "a moderator will review" not in response.content.decode()


def test_a_repeated_report_adds_nothing_and_a_new_reason_is_a_new_report(
    clients, users, finished
) -> None:
    from moderation.models import Report

    sub = finished(users["submitter"], verdict="real", score=0.2)
    url = reverse("analyses:report", args=[sub.pk])
    for reason in ("wrong", "wrong", " ", "really wrong"):
        clients["submitter"].post(url, {"reason": reason})
    reasons = list(Report.objects.order_by("pk").values_list("reason", "resolved"))
    assert reasons == [("wrong", False), ("really wrong", False)]
    # The moderator saw only the first; the second keeps the item in the queue.
    first = Report.objects.order_by("pk").first()
    assert first is not None
    clients["moderator"].post(
        reverse("moderation:decide", args=[sub.pk]),
        {"action": "confirm", "reports_seen": str(first.pk)},
    )
    assert list(Report.objects.order_by("pk").values_list("resolved", flat=True)) == [True, False]
    assert sub.pk in {s.pk for s in review_queue()}


def test_open_disputes_of_one_verdict_are_capped_until_a_moderator_answers(
    clients, users, finished
) -> None:
    from moderation.models import Report
    from moderation.services import MAX_OPEN_REPORTS

    sub = finished(users["submitter"], verdict="real", score=0.2)
    url = reverse("analyses:report", args=[sub.pk])
    for i in range(MAX_OPEN_REPORTS):
        clients["submitter"].post(url, {"reason": f"reason {i}"})
    refused = clients["submitter"].post(url, {"reason": "one more"}, follow=True)
    assert f"already have {MAX_OPEN_REPORTS} open disputes" in refused.content.decode()
    # The page no longer offers a form whose reason would be refused.
    assert 'id="disputes-full"' in refused.content.decode()
    assert f'action="{url}"' not in refused.content.decode()
    assert Report.objects.filter(submission=sub).count() == MAX_OPEN_REPORTS
    # A reason already open is no new report, so it is not refused.
    again = clients["submitter"].post(url, {"reason": "reason 0"}, follow=True)
    assert "already waiting for a moderator" in again.content.decode()
    assert "Thank you" not in again.content.decode()
    # Once a moderator has answered them, the owner may dispute again.
    newest = Report.objects.order_by("-pk").first()
    assert newest is not None
    clients["moderator"].post(
        reverse("moderation:decide", args=[sub.pk]),
        {"action": "confirm", "reports_seen": str(newest.pk)},
    )
    page = clients["submitter"].post(url, {"reason": "one more"}, follow=True).content.decode()
    assert Report.objects.filter(submission=sub, resolved=False).count() == 1
    assert f'action="{url}"' in page and 'id="disputes-full"' not in page


def test_my_submissions_and_the_queue_page_with_previous_and_next(
    clients, users, finished, monkeypatch
) -> None:
    import re

    from analyses import views as analyses_views
    from moderation import views as moderation_views

    monkeypatch.setattr(analyses_views, "LIST_PAGE_SIZE", 2)
    monkeypatch.setattr(moderation_views, "PAGE_SIZE", 2)
    made = [
        _aged(finished(users["submitter"], verdict="fake", title=f"t{i}"), 10 * (i + 1))
        for i in range(5)
    ]
    seen: list[str] = []
    for number in (1, 2, 3):
        page = clients["submitter"].get(reverse("analyses:list"), {"page": number})
        text = page.content.decode()
        seen += re.findall(r'href="/s/([0-9a-f-]{36})/"', text)
        assert f"Page {number} of 3 (5 in all)" in text
        assert ('rel="prev"' in text) == (number > 1) and ('rel="next"' in text) == (number < 3)
    assert seen == [str(s.pk) for s in made]  # newest first, every one reachable
    queue = (
        clients["moderator"]
        .get(reverse("moderation:queue"), {"verdict": "fake", "sort": "-date", "page": 2})
        .content.decode()
    )
    assert "Page 2 of 3" in queue
    assert 'href="?state=todo&amp;verdict=fake&amp;sort=-date&amp;page=1"' in queue
    assert 'href="?state=todo&amp;verdict=fake&amp;sort=-date&amp;page=3"' in queue


def test_review_and_decisions_keep_the_queues_filters(clients, users, finished) -> None:
    older_fake = _aged(finished(users["submitter"], verdict="fake", score=0.9), 40)
    _aged(finished(users["submitter"], verdict="uncertain", score=0.55), 30)
    newer_fake = _aged(finished(users["submitter"], verdict="fake", score=0.7), 20)
    query = "state=todo&verdict=fake&sort=-date"
    queue = clients["moderator"].get(f"{reverse('moderation:queue')}?{query}").content.decode()
    review_url = reverse("moderation:review", args=[newer_fake.pk])
    assert f'href="{review_url}?{query.replace("&", "&amp;")}"' in queue
    page = clients["moderator"].get(f"{review_url}?{query}").content.decode()
    # Next is the older fake (newest first, fakes only), not the uncertain one.
    next_url = reverse("moderation:review", args=[older_fake.pk])
    assert f'href="{next_url}?{query.replace("&", "&amp;")}" id="next-item"' in page
    for field, value in (("verdict", "fake"), ("sort", "-date")):
        assert f'name="{field}" value="{value}"' in page
    decided = clients["moderator"].post(
        reverse("moderation:decide", args=[newer_fake.pk]),
        {"action": "confirm", "state": "todo", "verdict": "fake", "sort": "-date"},
    )
    assert decided["Location"] == f"{next_url}?{query}"
    last = clients["moderator"].post(
        reverse("moderation:decide", args=[older_fake.pk]),
        {"action": "confirm", "state": "todo", "verdict": "fake", "sort": "-date"},
    )
    assert last["Location"] == f"{reverse('moderation:queue')}?{query}"


def test_deleting_a_submission_keeps_its_decisions_in_the_audit_log(
    clients, users, finished
) -> None:
    sub = finished(users["submitter"], verdict="fake")
    decide(sub, users["moderator"], "override_real", "A known actor.")
    key, sha = sub.pk, sub.sha256
    assert clients["submitter"].post(reverse("analyses:delete", args=[sub.pk])).status_code == 302
    kept = Decision.objects.get()
    assert kept.submission is None and (kept.submission_key, kept.submission_sha256) == (key, sha)
    assert (kept.action, kept.to_label, kept.note) == ("override_real", "real", "A known actor.")
    assert not kept.on_earlier_analysis
    assert "override_real" in str(kept) and str(key) in str(kept)
    assert metrics().reviewed == 0  # a deleted submission has no verdict to score


@pytest.mark.django_db(transaction=True)
def test_the_migration_copies_each_decisions_submission_id_and_hash() -> None:
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    before = [("moderation", "0002_decision_analysis_finished")]
    after = [("moderation", "0003_decision_kept_after_submission_deleted")]
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    old = executor.loader.project_state(before).apps
    user = old.get_model("auth", "User").objects.create(username="m")
    sub = old.get_model("analyses", "Submission").objects.create(
        owner=user, kind="image", sha256="ab" * 32, size_bytes=1
    )
    old.get_model("moderation", "Decision").objects.create(
        submission=sub, moderator=user, action="confirm", to_label="fake"
    )
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(after)
    new = executor.loader.project_state(after).apps
    row = new.get_model("moderation", "Decision").objects.get()
    assert (row.submission_key, row.submission_sha256) == (sub.pk, "ab" * 32)
    # Going back is refused while a decision's submission is deleted.
    new.get_model("analyses", "Submission").objects.filter(pk=sub.pk).delete()
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    with pytest.raises(RuntimeError, match="1 decision"):
        executor.migrate(before)
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())


def test_deciding_or_rerunning_a_submission_deleted_meanwhile_says_so(
    clients, users, finished, monkeypatch
) -> None:
    """The review page was open when the owner deleted the upload: pressing C
    (or re-run) answered a bare 404, and the service's own "deleted meanwhile"
    sent the moderator on to the deleted item's page, a 404 again."""
    from moderation import services as moderation_services
    from moderation import views

    moderator = clients["moderator"]
    sub = finished(users["submitter"], verdict="fake")
    pk = sub.pk
    assert clients["submitter"].post(reverse("analyses:delete", args=[pk])).status_code == 302
    form = {"action": "confirm", "state": "todo", "verdict": "fake"}
    for response in (
        moderator.post(reverse("moderation:decide", args=[pk]), form, follow=True),
        moderator.post(reverse("moderation:rerun", args=[pk]), follow=True),
    ):
        assert response.status_code == 200
        assert response.redirect_chain[-1][0].startswith(reverse("moderation:queue"))
        assert views.GONE in response.content.decode()
    assert not Decision.objects.exists()
    # Deleted between the page's lookup and the decision's locked read.
    other = finished(users["submitter"], verdict="fake")
    real_decide = moderation_services.decide

    def delete_first(sub, *args, **kwargs):
        type(sub).objects.filter(pk=sub.pk).delete()
        return real_decide(sub, *args, **kwargs)

    monkeypatch.setattr(moderation_services, "decide", delete_first)
    response = moderator.post(reverse("moderation:decide", args=[other.pk]), form)
    assert response.status_code == 302
    assert response["Location"] == f"{reverse('moderation:queue')}?state=todo&verdict=fake"
    # A submitter posting to a moderator's address still gets the 404.
    assert clients["submitter"].post(reverse("moderation:decide", args=[pk])).status_code == 404


def test_a_dispute_of_a_submission_deleted_or_rerun_meanwhile_is_refused_in_words(
    users, finished
) -> None:
    """The row is judged as locked: a dispute posted as the owner deleted the
    upload (in another tab) was a report on a missing row, a 500."""
    from analyses.models import Status, Submission
    from moderation.models import Report
    from moderation.services import file_report

    sub = finished(users["submitter"], verdict="fake")
    Submission.objects.filter(pk=sub.pk).delete()
    with pytest.raises(DecisionError, match="deleted meanwhile"):
        file_report(sub, users["submitter"], "it is me")
    again = finished(users["submitter"], verdict="fake")
    Submission.objects.filter(pk=again.pk).update(status=Status.PENDING, verdict="")
    with pytest.raises(DecisionError, match="analysed again"):
        file_report(again, users["submitter"], "it is me")
    assert not Report.objects.exists()


def test_failed_analyses_have_a_queue_of_their_own(clients, users, finished) -> None:
    """A failed job tells its owner a moderator can run it again: the
    moderator finds it under "failed" (a dispute stranded by a re-run that
    failed too), and nowhere else."""
    from analyses.models import Status, Submission

    done = finished(users["submitter"], verdict="fake", title="done one")
    failed = finished(users["submitter"], verdict="fake", title="failed one")
    Submission.objects.filter(pk=failed.pk).update(
        status=Status.FAILED, verdict="", score=None, reason_code="internal_error"
    )
    clients["submitter"].post(reverse("analyses:report", args=[done.pk]), {"reason": "me"})
    assert [s.pk for s in review_queue(state="failed")] == [failed.pk]
    for state in ("todo", "all"):
        assert failed.pk not in {s.pk for s in review_queue(state=state)}
    page = clients["moderator"].get(reverse("moderation:queue") + "?state=failed")
    html = page.content.decode()
    assert '<option value="failed" selected>' in html
    assert "failed one" in html and "done one" not in html
    assert (
        clients["submitter"].get(reverse("moderation:queue") + "?state=failed").status_code == 404
    )


def test_a_dispute_records_the_decision_that_answered_it_and_its_owner_sees_it(
    clients, users, finished
) -> None:
    """Before, a resolved dispute was a flag: neither its submitter nor the
    review page could tell who answered it, when, or with what."""
    from moderation.models import Report

    sub = finished(users["submitter"], verdict="fake", score=0.8)
    detail = reverse("analyses:detail", args=[sub.pk])
    clients["submitter"].post(reverse("analyses:report", args=[sub.pk]), {"reason": "it is me"})
    page = clients["submitter"].get(detail).content.decode()
    assert 'id="disputes"' in page and "it is me" in page and "waiting for a moderator" in page

    # An escalation is not an answer: the dispute stays open.
    decide_url = reverse("moderation:decide", args=[sub.pk])
    clients["moderator"].post(decide_url, {"action": "escalate", "note": "unsure"})
    report = Report.objects.get()
    assert not report.resolved and report.resolved_by is None
    answer = clients["admin"].post(
        decide_url,
        {"action": "override_real", "note": "known person", "reports_seen": str(report.pk)},
    )
    assert answer.status_code == 302
    report.refresh_from_db()
    assert report.resolved and report.resolved_by is not None
    assert report.resolved_by.action == "override_real"
    assert report.resolved_by.moderator == users["admin"]

    page = clients["submitter"].get(detail).content.decode()
    card = re.search(r'<div class="card" id="disputes">.*?</div>', page, re.S)
    assert card is not None
    card_text = re.sub(r"<[^>]+>", "", card.group(0))
    assert "waiting for a moderator" not in card_text
    assert "answered " in card_text and "Override: real → Real" in card_text
    assert "ada" not in card_text  # who answered is not the submitter's to know
    assert "unsure" not in page  # the escalation's note is for moderators
    review = clients["moderator"].get(reverse("moderation:review", args=[sub.pk]))
    assert "resolved by ada's override: real" in review.content.decode()
    # Other users see neither the form nor anyone's disputes.
    other = clients["moderator"].get(detail).content.decode()
    assert 'id="disputes"' not in other


def test_deleting_the_answering_decision_keeps_the_dispute_resolved(users, finished) -> None:
    """A decision row is the audit log and the site never deletes one; should
    an administrator do so in the database, the dispute stays answered."""
    from moderation.models import Decision, Report
    from moderation.services import decide, file_report

    sub = finished(users["submitter"], verdict="fake", score=0.8)
    report = file_report(sub, users["submitter"], "no")
    decision = decide(sub, users["moderator"], "confirm", "")
    Decision.objects.filter(pk=decision.pk).delete()
    report = Report.objects.get(pk=report.pk)
    assert report.resolved and report.resolved_by is None


def test_the_admin_shows_which_decision_answered_a_report_but_cannot_change_it(
    clients, users, finished
) -> None:
    from moderation.services import file_report

    sub = finished(users["submitter"], verdict="fake", score=0.8)
    report = file_report(sub, users["submitter"], "no")
    decide(sub, users["moderator"], "confirm", "")
    change = clients["admin"].get(reverse("admin:moderation_report_change", args=[report.pk]))
    assert change.status_code == 200
    page = change.content.decode()
    assert 'name="resolved_by"' not in page  # shown, not a field to pick from
    assert "confirm by" in page  # the decision's own description
    listing = clients["admin"].get(reverse("admin:moderation_report_changelist"))
    assert listing.status_code == 200
