"""Whether an account's e-mail address was shown to be its owner's."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class EmailVerification(models.Model):
    """The address an account gave when it signed itself up, until the link
    mailed to it is followed. Accounts created by an operator (admin,
    ``createsuperuser``, the demo command) have no row: their address is
    vouched for. See ``accounts.verification``."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="email_verification"
    )
    email = models.EmailField()
    sent_at = models.DateTimeField(null=True, blank=True)
    verified_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        state = "verified" if self.verified_at else "unverified"
        return f"{self.email} ({state})"
