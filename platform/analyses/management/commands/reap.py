"""``python manage.py reap``: one pass of the reaper (the workers run it at
start and every ``TRUSTTRACE_REAPER_INTERVAL_S``); for cron or by hand."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Queue again or fail stuck pending/running jobs (one reaper pass)."

    def handle(self, *args: Any, **options: Any) -> None:
        from analyses.services import reap

        out = reap()
        self.stdout.write(
            f"queued {len(out.queued)}, re-queued after their worker died "
            f"{len(out.requeued)}, failed {len(out.failed)}"
        )
        if out.broker_down:
            raise CommandError("the broker refused the message; the next pass tries again")
