from __future__ import annotations

from django.apps import AppConfig


class ApiConfig(AppConfig):
    name = "api"
    verbose_name = "REST API"

    def ready(self) -> None:
        """Connect the signal that deletes a token when its owner's password changes."""
        from api import signals  # noqa: F401
