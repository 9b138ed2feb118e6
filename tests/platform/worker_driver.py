"""Run inside a site's environment (see stack.site_env): submit a file as a
new user through the service, then wait for the worker and print the outcome
as JSON. Used by the worker integration tests."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

TIMEOUT_S = 150


def main() -> None:
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.core.files.uploadedfile import SimpleUploadedFile

    from analyses import services
    from analyses.models import Submission

    media = Path(sys.argv[1])
    user, _ = User.objects.get_or_create(username="worker-test")
    sub = services.create_submission(
        user, SimpleUploadedFile(media.name, media.read_bytes()), title="worker"
    )
    # The status it was created with: a fast worker may start it before the
    # first read below.
    stages = [(sub.status, sub.stage)]
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        sub = Submission.objects.get(pk=sub.pk)
        if not stages or stages[-1] != (sub.status, sub.stage):
            stages.append((sub.status, sub.stage))
        if sub.is_finished:
            break
        time.sleep(0.1)
    out = {
        "status": sub.status,
        "verdict": sub.verdict,
        "score": sub.score,
        "reason": sub.reason,
        "members": sub.members,
        "model_versions": sub.model_versions,
        "stages": stages,
        "frames": len(sub.frame_rows),
        "series_persons": len(sub.series.get("persons", [])),
        "artifacts": sorted({f"{a.kind}:{a.member}" for a in sub.artifacts.all()}),
        "backends": sorted({m.get("backend") for m in (sub.result or {}).get("models", [])}),
    }
    sys.stdout.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
