from __future__ import annotations

from django.apps import AppConfig


class AnalysesConfig(AppConfig):
    name = "analyses"
    verbose_name = "Analyses"

    def ready(self) -> None:
        """Connect the signal that removes a deleted submission's files."""
        from analyses import signals  # noqa: F401
