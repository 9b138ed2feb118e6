"""E-mail verification of self sign-ups: a signed, expiring link.

The link carries the account's id and the address it was sent to, signed
(``django.core.signing``, its own salt) with the time it was made; it is
refused once older than ``EMAIL_VERIFICATION_MAX_AGE_S``, when altered, when
the account's address has changed since, and once used. Until then the
account may log in and submit like any other, but password reset links are
only mailed to verified addresses (``accounts.forms.VerifiedPasswordResetForm``:
an unverified one gets a new verification link instead) and the account
page shows the address as unverified, with a button to send a new link.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

from django.conf import settings
from django.contrib.auth.models import User
from django.core import signing
from django.core.mail import send_mail
from django.http import HttpRequest
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone

from accounts.models import EmailVerification

logger = logging.getLogger(__name__)

SALT = "accounts.verify-email"

# valid: the link may be used (check_token); verified: it just was (verify).
Outcome = Literal["valid", "verified", "already_used", "expired", "invalid"]


def is_verified(user: User) -> bool:
    """Whether password resets may be mailed to ``user``'s address: it was
    verified, or set by an operator (no pending verification)."""
    pending = EmailVerification.objects.filter(user=user).first()
    return pending is None or pending.verified_at is not None


def make_token(user: User) -> str:
    """A signed, timestamped token for ``user``'s current address."""
    return signing.dumps({"u": user.pk, "e": user.email}, salt=SALT)


def send_link(request: HttpRequest, user: User) -> bool:
    """Record ``user``'s address as unverified (if not already) and mail it a
    verification link; False (logged) when the mail could not be sent."""
    record, _ = EmailVerification.objects.update_or_create(
        user=user, defaults={"email": user.email, "verified_at": None}
    )
    link = request.build_absolute_uri(reverse("accounts:verify_email", args=[make_token(user)]))
    hours = settings.EMAIL_VERIFICATION_MAX_AGE_S / 3600
    body = render_to_string(
        "accounts/verify_email.txt", {"user": user, "link": link, "hours": f"{hours:g}"}
    )
    try:
        send_mail("Verify your Trusttrace e-mail address", body, None, [user.email])
    except Exception:  # SMTP down or refused: the account stays; a new link can be asked for
        logger.exception("verification mail to user %s not sent", user.pk)
        return False
    record.sent_at = timezone.now()
    record.save(update_fields=["sent_at"])
    return True


@dataclass(frozen=True)
class Checked:
    """What a verification link is worth, and for whom."""

    outcome: Outcome
    user: User | None = None
    email: str = ""


def check_token(token: str) -> Checked:
    """Decide what ``token`` is worth without changing anything."""
    try:
        data: Any = signing.loads(token, salt=SALT, max_age=settings.EMAIL_VERIFICATION_MAX_AGE_S)
    except signing.SignatureExpired:
        return Checked("expired")
    except signing.BadSignature:
        return Checked("invalid")
    if not isinstance(data, dict) or not isinstance(data.get("u"), int):
        return Checked("invalid")
    user = User.objects.filter(pk=int(data["u"])).first()
    email = str(data.get("e", ""))
    if user is None or user.email.casefold() != email.casefold():
        return Checked("invalid")  # the account or its address changed since
    if is_verified(user):
        return Checked("already_used", user, email)
    return Checked("valid", user, email)


def verify(token: str) -> Checked:
    """Mark the address ``token`` was sent to as verified, once."""
    checked = check_token(token)
    if checked.outcome != "valid" or checked.user is None:
        return checked
    # Conditional: two clicks at once verify once, and the second says so.
    updated = EmailVerification.objects.filter(
        user=checked.user, email__iexact=checked.email, verified_at__isnull=True
    ).update(verified_at=timezone.now())
    outcome: Outcome = "verified" if updated else "already_used"
    return Checked(outcome, checked.user, checked.email)
