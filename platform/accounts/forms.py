"""Sign-up and throttled login forms."""

from __future__ import annotations

from typing import Any, ClassVar

from django import forms
from django.conf import settings
from django.contrib.auth.forms import AuthenticationForm, UserCreationForm, UsernameField
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError

from accounts import throttle


class SignUpForm(UserCreationForm[User]):
    """A new submitter: user name, e-mail (for password resets) and password."""

    email = forms.EmailField(required=True, help_text="Used only for password resets.")

    # Written out rather than inherited from UserCreationForm.Meta, which the
    # pinned django-stubs do not declare; same model and username field class.
    class Meta:
        model = User
        fields = ("username", "email")
        field_classes: ClassVar[dict[str, type[UsernameField]]] = {"username": UsernameField}


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
