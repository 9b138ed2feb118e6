"""Admin: submissions (read mostly), weights versions (read-only)."""

from __future__ import annotations

from typing import TypeVar

from django.contrib import admin
from django.db.models import Model
from django.http import HttpRequest

from analyses.models import Artifact, Submission, WeightsVersion

M = TypeVar("M", bound=Model)


class ReadOnlyAdmin(admin.ModelAdmin[M]):
    """Rows the site writes itself; the admin only shows them."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: M | None = None) -> bool:
        return False


@admin.register(WeightsVersion)
class WeightsVersionAdmin(ReadOnlyAdmin[WeightsVersion]):
    list_display = (
        "member",
        "weights_sha256",
        "architecture",
        "input_size",
        "temperature",
        "bias",
        "first_seen",
    )

    def has_delete_permission(
        self, request: HttpRequest, obj: WeightsVersion | None = None
    ) -> bool:
        return False


@admin.register(Submission)
class SubmissionAdmin(ReadOnlyAdmin[Submission]):
    list_display = ("id", "owner", "original_name", "status", "verdict", "score", "created")
    list_filter = ("status", "verdict", "kind")
    search_fields = ("id", "original_name", "title", "sha256", "owner__username")


@admin.register(Artifact)
class ArtifactAdmin(ReadOnlyAdmin[Artifact]):
    list_display = ("submission", "kind", "frame", "person", "member")
