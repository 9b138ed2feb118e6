"""Admin: the audit log (decisions and re-runs) is read-only."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from moderation.models import Decision, Report, Rerun


@admin.register(Decision)
class DecisionAdmin(admin.ModelAdmin[Decision]):
    list_display = (
        "submission_key",
        "submission",
        "moderator",
        "action",
        "from_label",
        "to_label",
        "created",
    )
    list_filter = ("action", "to_label")
    # A deleted submission's decisions are found by its id or file hash.
    search_fields = ("submission_key", "submission_sha256")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Decision | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Decision | None = None) -> bool:
        return False


@admin.register(Rerun)
class RerunAdmin(admin.ModelAdmin[Rerun]):
    list_display = (
        "submission_key",
        "submission",
        "moderator",
        "previous_status",
        "previous_verdict",
        "previous_score",
        "created",
    )
    search_fields = ("submission_key",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Rerun | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Rerun | None = None) -> bool:
        return False


@admin.register(Report)
class ReportAdmin(admin.ModelAdmin[Report]):
    list_display = ("submission", "reporter", "resolved", "resolved_by", "created")
    list_select_related = ("submission", "reporter", "resolved_by")
    # Which decision answered a report is the site's record, not an admin's
    # choice (a dropdown would list the whole audit log, and could point a
    # report at an escalation or at another submission's decision).
    readonly_fields = ("resolved_by",)
