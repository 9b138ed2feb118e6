"""Admin: submissions (read mostly), weights versions (read-only)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from analyses.models import Artifact, Submission, WeightsVersion


class ReadOnlyAdmin(admin.ModelAdmin[Any]):
    """Rows the site writes itself; the admin only shows them."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(WeightsVersion)
class WeightsVersionAdmin(ReadOnlyAdmin):
    list_display = ("member", "weights_sha256", "architecture", "input_size", "first_seen")

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Submission)
class SubmissionAdmin(ReadOnlyAdmin):
    list_display = ("id", "owner", "original_name", "status", "verdict", "score", "created")
    list_filter = ("status", "verdict", "kind")
    search_fields = ("id", "original_name", "title", "sha256", "owner__username")


@admin.register(Artifact)
class ArtifactAdmin(ReadOnlyAdmin):
    list_display = ("submission", "kind", "frame", "person", "member")
