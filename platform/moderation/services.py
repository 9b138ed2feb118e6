"""Moderation rules: decisions, reports, the review queue and the metrics."""

from __future__ import annotations

from dataclasses import dataclass, field

from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import (
    Case,
    Exists,
    F,
    OuterRef,
    Prefetch,
    Q,
    QuerySet,
    Subquery,
    Value,
    When,
)
from django.db.models.functions import Abs

from accounts.roles import AnyUser, is_moderator
from analyses.models import Status, Submission, Verdict
from analyses.services.errors import DecisionError as DecisionError  # re-exported
from moderation.models import Action, Decision, Label, Report, Rerun

# The annotation carrying a submission's latest decision label (see annotated()).
DECISION = "decision_label"
REVIEW_VERDICTS = (Verdict.FAKE, Verdict.UNCERTAIN)
OVERRIDES = (Action.OVERRIDE_REAL, Action.OVERRIDE_FAKE)


def final_decision(sub: Submission) -> Decision | None:
    """The latest decision on a submission (the one the submitter sees)."""
    return sub.decisions.select_related("moderator").first()


# The attribute :func:`with_decisions` loads a submission's decisions into.
PREFETCHED_DECISIONS = "prefetched_decisions"


def with_decisions(qs: QuerySet[Submission]) -> QuerySet[Submission]:
    """``qs`` with every row's decisions loaded in one query for the lot, so
    :func:`decision_for` over a page of rows asks the database nothing more.
    For reading only: the loaded list is not refreshed by :func:`decide`."""
    return qs.prefetch_related(
        Prefetch(
            "decisions",
            queryset=Decision.objects.order_by("-pk"),
            to_attr=PREFETCHED_DECISIONS,
        )
    )


def decision_for(
    sub: Submission, viewer: AnyUser | None, *, moderator: bool | None = None
) -> Decision | None:
    """The decision ``viewer`` may see: the latest for moderators; for the
    submitter the latest that is not an escalation (an escalation is not a
    decision yet, and its note is addressed to other moderators).
    ``moderator`` says whether ``viewer`` is one, for a caller that asks once
    for many rows (otherwise it is looked up)."""
    if moderator is None:
        moderator = viewer is not None and is_moderator(viewer)
    loaded: list[Decision] | None = getattr(sub, PREFETCHED_DECISIONS, None)
    if loaded is not None:
        return next((d for d in loaded if moderator or d.action != Action.ESCALATE), None)
    if moderator:
        return final_decision(sub)
    return sub.decisions.exclude(action=Action.ESCALATE).select_related("moderator").first()


def current_label(sub: Submission) -> str:
    """The label before a new decision: the latest decision's, or the verdict."""
    last = final_decision(sub)
    return last.to_label if last else (sub.verdict or "")


OWN_SUBMISSION = (
    "You submitted this media, so another moderator decides it; you can escalate it with a note."
)


def decides_own(sub: Submission, moderator: User) -> bool:
    """Whether ``moderator`` would decide their own upload: only an
    escalation is theirs to make (a site administrator may decide anything)."""
    return sub.owner_id == moderator.pk and not moderator.is_superuser


def overridden_by(sub: Submission) -> Decision | None:
    """The override a confirmation would reverse: the latest decision other
    than an escalation, when it is an override."""
    last = sub.decisions.exclude(action=Action.ESCALATE).select_related("moderator").first()
    return last if last is not None and last.action in OVERRIDES else None


def confirm_needs_note(sub: Submission) -> bool:
    """Whether confirming the verdict would reverse a moderator's override
    (which then takes a note, as the override did)."""
    last = overridden_by(sub)
    return last is not None and last.to_label != (sub.verdict or "")


def decide(
    sub: Submission,
    moderator: User,
    action: str,
    note: str,
    *,
    reports_seen: int | None = None,
    decisions_seen: int | None = None,
    analysis_seen: str | None = None,
) -> Decision:
    """Record a decision; overrides (and escalations) need a note. A
    moderator's own upload is decided by another (:func:`decides_own`).

    A decision other than an escalation resolves the open reports the
    moderator saw: those up to ``reports_seen`` (the newest report id on the
    page, 0 for none). A report filed while the page was open stays open, so
    the item comes back to the queue with it. None resolves every open one
    (callers with no page).

    The decision is about what the page showed: ``decisions_seen`` (the
    newest decision id on it, 0 for none) and ``analysis_seen`` (the
    analysis's ``finished`` time, ISO) are checked against the submission's
    row, locked, and a decision recorded since or a re-run since is a
    :class:`DecisionError` asking for a reload, rather than a confirmation
    of a verdict the moderator never saw or a silent reversal of another
    moderator's override. None skips that check (callers with no page)."""
    if action not in Action.values:
        raise DecisionError(f"Unknown decision '{action}'.")
    note = note.strip()
    if "\x00" in note:
        raise DecisionError("The note contains a character that cannot be stored (NUL).")
    if action in (*OVERRIDES, Action.ESCALATE) and not note:
        raise DecisionError("A note is required for overrides and escalations.")
    if action != Action.ESCALATE and decides_own(sub, moderator):
        raise DecisionError(OWN_SUBMISSION)
    with transaction.atomic():
        # The row as it is now, locked against a re-run or a delete until
        # the decision is in (SQLite's IMMEDIATE transactions serialise too).
        row = Submission.objects.select_for_update().filter(pk=sub.pk).first()
        if row is None:
            raise DecisionError("This submission was deleted meanwhile.")
        if row.status != Status.DONE:
            raise DecisionError("Only finished analyses can be decided.")
        finished = row.finished.isoformat() if row.finished else ""
        if analysis_seen is not None and analysis_seen != finished:
            raise DecisionError(
                "This submission was analysed again since you opened it, and its verdict may "
                "have changed: reload the page and decide on what it shows now."
            )
        if decisions_seen is not None:
            newer = row.decisions.filter(pk__gt=decisions_seen).select_related("moderator")
            latest = newer.first()
            if latest is not None:
                who = latest.moderator.get_username() if latest.moderator else "another moderator"
                raise DecisionError(
                    f"{who} recorded a decision ({latest.get_action_display()}) on this "
                    "submission since you opened it: reload the page to see it before "
                    "deciding."
                )
        sub = row
        from_label = current_label(sub)
        to_label = {
            Action.CONFIRM: sub.verdict or "",
            Action.OVERRIDE_REAL: Label.REAL,
            Action.OVERRIDE_FAKE: Label.FAKE,
            Action.ESCALATE: Label.ESCALATED,
        }[Action(action)]
        if action == Action.CONFIRM and not note and confirm_needs_note(sub):
            # A moderator's override, argued in a note, is not reversed
            # without one: the submitter would see the label flip unexplained.
            earlier = overridden_by(sub)
            assert earlier is not None
            who = earlier.moderator.get_username() if earlier.moderator else "another moderator"
            raise DecisionError(
                f"Confirming the verdict reverses {who}'s override "
                f"({earlier.get_action_display()}): a note is required to say why."
            )
        decision = Decision.objects.create(
            submission=sub,
            submission_key=sub.pk,
            submission_sha256=sub.sha256,
            moderator=moderator,
            action=action,
            from_label=from_label,
            to_label=to_label,
            note=note,
            analysis_finished=sub.finished,
        )
        if action != Action.ESCALATE:
            seen = sub.reports.filter(resolved=False)
            if reports_seen is not None:
                seen = seen.filter(pk__lte=reports_seen)
            seen.update(resolved=True, resolved_by=decision)
    return decision


def record_rerun(sub: Submission, moderator: User) -> Rerun:
    """The audit row of ``moderator``'s re-run of ``sub``, which is still as
    the replaced analysis left it (:func:`analyses.services.reruns.rerun`
    calls this in the transaction that claims it)."""
    return Rerun.objects.create(
        submission=sub,
        submission_key=sub.pk,
        moderator=moderator,
        previous_status=sub.status,
        previous_verdict=sub.verdict or "",
        previous_score=sub.score,
        previous_finished=sub.finished,
        previous_model_versions=dict(sub.model_versions or {}),
    )


# Disputes one user may have open on one submission: each new reason is a
# new report, and without a cap one user could make the review page's list
# of reports as long as they like.
MAX_OPEN_REPORTS = 3


# Disputes listed on a submitter's result page, newest first.
DISPUTES_SHOWN = 10


def disputes_of(sub: Submission, reporter: User) -> list[Report]:
    """``reporter``'s latest disputes of ``sub``, newest first, each with the
    decision that answered it (``resolved_by``) when it has been."""
    return list(
        Report.objects.filter(submission=sub, reporter=reporter)
        .select_related("resolved_by")
        .order_by("-pk")[:DISPUTES_SHOWN]
    )


def open_reports_of(sub: Submission, reporter: User) -> int:
    """How many of ``reporter``'s disputes of ``sub`` are open."""
    return Report.objects.filter(submission=sub, reporter=reporter, resolved=False).count()


def file_report(sub: Submission, reporter: User, reason: str) -> Report:
    """A user disputes a verdict (:func:`dispute`, without saying whether
    the report is new)."""
    return dispute(sub, reporter, reason)[0]


def dispute(sub: Submission, reporter: User, reason: str) -> tuple[Report, bool]:
    """A user disputes a verdict: only a finished analysis has one. While the
    user has a report open, the same reason again (or none) adds nothing; a
    new reason is a new report, up to ``MAX_OPEN_REPORTS`` open ones. Returns
    the report and whether it is new (decided under the row lock, so two
    identical requests at once make one report, and only one says it is new)."""
    if sub.status != Status.DONE:
        state = {
            Status.PENDING: "is still waiting to be analysed",
            Status.RUNNING: "is still being analysed",
            Status.REJECTED: "was rejected",
            Status.FAILED: "failed",
        }.get(Status(sub.status), "has no verdict")
        raise DecisionError(f"Only a finished analysis has a verdict to dispute; this one {state}.")
    reason = reason.strip()[:2000]
    if "\x00" in reason:
        # Postgres refuses NUL in text (a 500 before); no person types one.
        raise DecisionError("The reason contains a character that cannot be stored (NUL).")
    with transaction.atomic():
        # The submission's row first: on Postgres, two disputes posted at once
        # with different reasons would otherwise each count the open ones
        # before the other's insert, and both pass the cap (SQLite's
        # IMMEDIATE transactions serialise them anyway). The locked row is
        # the one judged: deleted or re-run since the check above, it has
        # nothing to dispute (and a report on a deleted row would be a 500).
        row = Submission.objects.select_for_update().filter(pk=sub.pk).first()
        if row is None:
            raise DecisionError("This submission was deleted meanwhile; nothing was recorded.")
        if row.status != Status.DONE:
            raise DecisionError(
                "This submission is being analysed again; dispute its verdict once it is done."
            )
        same = (
            Report.objects.select_for_update()
            .filter(submission=sub, reporter=reporter, resolved=False)
            .filter(Q(reason=reason) if reason else Q())
            .order_by("-pk")
            .first()
        )
        if same is not None:
            return same, False
        open_reports = open_reports_of(sub, reporter)
        if open_reports >= MAX_OPEN_REPORTS:
            raise DecisionError(
                f"You already have {open_reports} open disputes of this verdict; a moderator "
                "will answer them before you can add another."
            )
        # A new reason is a new report: a moderator whose page showed the
        # earlier one (``reports_seen``) has not seen this one.
        return Report.objects.create(submission=sub, reporter=reporter, reason=reason), True


def latest_decisions(*, for_submitter: bool = False) -> QuerySet[Decision]:
    """The decisions of the outer submission, newest first (a subquery);
    ``for_submitter`` leaves escalations out (see :func:`decision_for`)."""
    qs = Decision.objects.filter(submission=OuterRef("pk"))
    if for_submitter:
        qs = qs.exclude(action=Action.ESCALATE)
    # Insertion order: decisions on one submission are serialised by its
    # row lock, while ``created`` comes from whichever web server's clock.
    return qs.order_by("-pk")


def annotated(*, for_submitter: bool = False) -> QuerySet[Submission]:
    """Submissions with their latest decision label and open-report flag."""
    latest = latest_decisions(for_submitter=for_submitter)
    return Submission.objects.select_related("owner").annotate(
        decision_label=Subquery(latest.values("to_label")[:1]),
        has_open_report=Exists(Report.objects.filter(submission=OuterRef("pk"), resolved=False)),
    )


QUEUE_STATES = ("todo", "escalated", "reviewed", "all", "failed")
SORTS = {"score": "score", "-score": "-score", "date": "created", "-date": "-created"}
# What needs a human most comes first: uncertain verdicts, then scores closest
# to the threshold, then the longest waiting.
PRIORITY = "priority"


def _by_priority(qs: QuerySet[Submission]) -> QuerySet[Submission]:
    return qs.annotate(
        not_uncertain=Case(When(verdict=Verdict.UNCERTAIN, then=Value(0)), default=Value(1)),
        distance=Abs(F("score") - F("threshold")),
    ).order_by("not_uncertain", F("distance").asc(nulls_last=True), "created", "pk")


def review_queue(
    *, state: str = "todo", verdict: str = "", sort: str = PRIORITY
) -> QuerySet[Submission]:
    """The moderation queue. ``todo``: fake/uncertain verdicts and open reports
    without a decision; ``escalated``; ``reviewed``; ``all`` of them, and
    every decided submission whatever its verdict now (a re-run or an
    override can leave a decided item with a ``real`` verdict and no open
    report: it stays in its tab instead of vanishing from every one);
    ``failed``: analyses that failed (the site's fault, not the file's: their
    owners are told a moderator can run them again), a dispute left open by a
    re-run that failed among them. Sorted by priority (uncertain first, then
    by the score's distance to the threshold, then oldest first) unless
    ``sort`` names another order."""
    if state == "failed":
        qs = annotated().filter(status=Status.FAILED)
    else:
        qs = annotated().filter(
            Q(status=Status.DONE)
            & (
                Q(verdict__in=REVIEW_VERDICTS)
                | Q(has_open_report=True)
                | Q(**{f"{DECISION}__isnull": False})
            )
        )
    if state == "todo":
        qs = qs.filter(Q(**{f"{DECISION}__isnull": True}) | Q(has_open_report=True))
    elif state == "escalated":
        qs = qs.filter(**{DECISION: Label.ESCALATED})
    elif state == "reviewed":
        qs = qs.filter(**{f"{DECISION}__isnull": False}).exclude(**{DECISION: Label.ESCALATED})
    if verdict:
        qs = qs.filter(verdict=verdict)
    if sort not in SORTS:
        return _by_priority(qs)
    return qs.order_by(SORTS[sort], "-created")


def next_in_queue(sub: Submission, queue: QuerySet[Submission] | None = None) -> Submission | None:
    """The item after ``sub`` in ``queue`` (default: the to-do queue in
    priority order; the moderator's filtered queue from the review page); the
    first item other than ``sub`` when ``sub`` is not in it; ``None`` at the
    end. Reads ids only, up to ``sub`` and one more."""
    if queue is None:
        queue = review_queue()
    seen_sub = False
    first_other = None
    for pk in queue.values_list("pk", flat=True).iterator(chunk_size=500):
        if pk == sub.pk:
            seen_sub = True
        elif seen_sub:
            return Submission.objects.get(pk=pk)
        elif first_other is None:
            first_other = pk
    if seen_sub or first_other is None:
        return None
    return Submission.objects.get(pk=first_other)


# Why a decided submission is left out of the metrics (dashboard wording).
LEFT_OUT_ESCALATED = "escalated (waiting for a final decision)"
LEFT_OUT_NO_LABEL = "decided without a real/fake call (an uncertain or no-face verdict confirmed)"
LEFT_OUT_NO_FACE = "verdict no_face (no score to judge)"


@dataclass
class Metrics:
    """Verdicts measured against moderator decisions (the ground truth).

    "fake" is the positive class; an ``uncertain`` verdict counts as not
    predicting fake (the site did not flag it). Only submissions whose latest
    decision is real or fake count. Left out, and counted in ``left_out``:
    escalated submissions, decisions that make no real/fake call (confirming
    an uncertain or no_face verdict), and ``no_face`` verdicts (no score was
    given, so there is nothing to judge even when a moderator labels them).
    """

    reviewed: int = 0
    matrix: dict[str, dict[str, int]] = field(default_factory=dict)  # verdict -> label -> n
    accuracy: float | None = None
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None
    left_out: dict[str, int] = field(default_factory=dict)  # reason -> n

    VERDICTS = ("fake", "uncertain", "real")
    LABELS = ("fake", "real")

    def rows(self) -> list[tuple[str, list[int]]]:
        """The confusion matrix as rows for a template."""
        return [(v, [self.matrix[v][lbl] for lbl in self.LABELS]) for v in self.VERDICTS]


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def metrics() -> Metrics:
    """Accuracy, precision, recall, F1 and the confusion matrix over reviewed submissions."""
    m = Metrics(matrix={v: dict.fromkeys(Metrics.LABELS, 0) for v in Metrics.VERDICTS})
    decided = annotated().filter(status=Status.DONE, **{f"{DECISION}__isnull": False})
    tp = fp = fn = tn = 0
    for sub in decided:
        verdict, label = sub.verdict, str(getattr(sub, DECISION))
        if label == Label.ESCALATED:
            reason = LEFT_OUT_ESCALATED
        elif label not in Metrics.LABELS:
            reason = LEFT_OUT_NO_LABEL
        elif verdict not in Metrics.VERDICTS:
            reason = LEFT_OUT_NO_FACE
        else:
            m.matrix[verdict][label] += 1
            predicted_fake, is_fake = verdict == "fake", label == "fake"
            tp += predicted_fake and is_fake
            fp += predicted_fake and not is_fake
            fn += not predicted_fake and is_fake
            tn += not predicted_fake and not is_fake
            continue
        m.left_out[reason] = m.left_out.get(reason, 0) + 1
    m.reviewed = tp + fp + fn + tn
    m.accuracy = _ratio(tp + tn, m.reviewed)
    m.precision = _ratio(tp, tp + fp)
    m.recall = _ratio(tp, tp + fn)
    if m.precision is not None and m.recall is not None and m.precision + m.recall > 0:
        m.f1 = 2 * m.precision * m.recall / (m.precision + m.recall)
    elif m.precision is not None and m.recall is not None:
        m.f1 = 0.0
    return m
