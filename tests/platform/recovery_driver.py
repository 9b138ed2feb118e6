"""Run inside a site's environment (see stack.site_env): submit one file as a
new user through the service and print ``{"id", "error"}`` as JSON without
waiting for the worker. Used by tests/platform/test_worker_recovery.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.core.files.uploadedfile import SimpleUploadedFile

    from analyses import services

    media = Path(sys.argv[1])
    user, _ = User.objects.get_or_create(username="recovery-test")
    upload = SimpleUploadedFile(media.name, media.read_bytes())
    try:
        sub = services.create_submission(user, upload, title="recovery")
    except services.QueueUnavailable as e:
        out = {"id": e.submission_id, "error": e.code}
    else:
        out = {"id": str(sub.pk), "error": None}
    sys.stdout.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
