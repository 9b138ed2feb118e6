"""Sign-up and throttled login forms."""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.contrib.auth.forms import AuthenticationForm, UserCreationForm
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError

from accounts import throttle


class SignUpForm(UserCreationForm[User]):
    """A new submitter: user name, e-mail (for password resets) and password."""

    email = forms.EmailField(required=True, help_text="Used only for password resets.")

    class Meta(UserCreationForm.Meta):
        model = User
        fields = ("username", "email")


class ThrottledAuthenticationForm(AuthenticationForm):
    """Refuses a username+IP after too many failures, before checking the password."""

    def clean(self) -> dict[str, Any]:
        username = str(self.data.get("username", ""))
        ip = throttle.client_ip(self.request) if self.request else "unknown"
        if throttle.is_locked(username, ip):
            minutes = max(1, int(settings.LOGIN_LOCKOUT_S) // 60)
            raise ValidationError(
                f"Too many failed log-ins for this account from your address; "
                f"try again in {minutes} minutes or reset your password.",
                code="throttled",
            )
        try:
            cleaned = super().clean()
        except ValidationError:
            throttle.record_failure(username, ip)
            raise
        throttle.clear(username, ip)
        return cleaned
