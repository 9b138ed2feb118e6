"""The demo accounts ``make run`` loads (fixtures/demo_accounts.json)."""

from __future__ import annotations

from django.conf import settings

DEMO_FIXTURE = settings.BASE_DIR / "fixtures" / "demo_accounts.json"
# (username, password, role). Demo only: never load these on a public site.
DEMO_ACCOUNTS = (
    ("submitter", "submit-demo-2026", "submitter"),
    ("moderator", "moderate-demo-2026", "moderator"),
    ("admin", "admin-demo-2026", "admin"),
)
