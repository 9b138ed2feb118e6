"""Sign-up and throttled login forms."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

from django import forms
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import (
    AuthenticationForm,
    PasswordChangeForm,
    PasswordResetForm,
    UserCreationForm,
    UsernameField,
)
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.http import HttpRequest

from accounts import throttle, verification


class SignUpForm(UserCreationForm[User]):
    """A new submitter: user name, e-mail (for password resets) and password."""

    email = forms.EmailField(
        required=True,
        help_text="Used only for password resets. We mail it a link to verify it.",
    )

    # Written out rather than inherited from UserCreationForm.Meta, which the
    # pinned django-stubs do not declare; same model and username field class.
    class Meta:
        model = User
        fields = ("username", "email")
        field_classes: ClassVar[dict[str, type[UsernameField]]] = {"username": UsernameField}

    def clean_email(self) -> str:
        """One account per address, whatever its case (password resets go there)."""
        email = str(self.cleaned_data["email"]).strip()
        if User.objects.filter(email__iexact=email).exists():
            raise ValidationError(
                "An account already uses this e-mail address; log in or reset its password.",
                code="email_taken",
            )
        return email


class ThrottledLoginMixin:
    """Counts the attempt before the password is checked and refuses it when
    the user name+IP or the IP is locked (``accounts.throttle``)."""

    request: HttpRequest | None
    data: Any

    def clean(self) -> dict[str, Any]:
        username = str(self.data.get("username", ""))
        ip = throttle.client_network(self.request) if self.request else "unknown"
        if not throttle.begin_attempt(username, ip):
            raise ValidationError(throttle.locked_message(), code="throttled")
        cleaned: dict[str, Any] = super().clean()  # type: ignore[misc]
        throttle.succeeded(username, ip)
        return cleaned


class ThrottledAuthenticationForm(ThrottledLoginMixin, AuthenticationForm):
    """The site's log-in form, throttled."""


class ThrottledAdminAuthenticationForm(ThrottledLoginMixin, AdminAuthenticationForm):
    """The admin site's log-in form (staff only), throttled like the site's."""


class VerifiedPasswordResetForm(PasswordResetForm):
    """Reset links go only to verified addresses (``accounts.verification``);
    the view mails an account whose address is not verified yet a new
    verification link instead (:meth:`send_verification_links`), so nobody is
    left without a way back. The page answers the same either way."""

    def get_users(self, email: str) -> Iterator[User]:
        return (u for u in super().get_users(email) if verification.is_verified(u))

    def send_verification_links(self, request: HttpRequest) -> None:
        """A verification link to each unverified account of the address asked for."""
        for user in super().get_users(self.cleaned_data["email"]):
            if not verification.is_verified(user):
                verification.send_link(request, user)


class ThrottledPasswordChangeForm(PasswordChangeForm):
    """Password change whose old-password check counts against the log-in
    throttle: a stolen session cannot guess the password here either."""

    def __init__(self, user: User, *args: Any, request: HttpRequest | None = None, **kwargs: Any):
        super().__init__(user, *args, **kwargs)
        self.request = request

    def clean_old_password(self) -> str:
        ip = throttle.client_network(self.request) if self.request else "unknown"
        if not throttle.begin_attempt(self.user.username, ip):
            raise ValidationError(throttle.locked_message(), code="throttled")
        old: str = super().clean_old_password()
        throttle.succeeded(self.user.username, ip)
        return old
