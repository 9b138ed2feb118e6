"""The admin's user pages, with the site's one-account-per-address rule.

Django's stock user change form does not know the unique index on the
lower-cased address (migration 0002): an address another account already
has, in any case, failed the save with an IntegrityError (a 500 page).
"""

from __future__ import annotations

from django import forms
from django.contrib import admin
from django.contrib.auth.admin import UserAdmin
from django.contrib.auth.forms import UserChangeForm
from django.contrib.auth.models import User


class AddressCheckedChangeForm(UserChangeForm[User]):
    def clean_email(self) -> str:
        email = str(self.cleaned_data.get("email") or "").strip()
        others = User.objects.filter(email__iexact=email).exclude(pk=self.instance.pk)
        if email and others.exists():
            raise forms.ValidationError(
                "Another account already uses this e-mail address (in any case).",
                code="email_taken",
            )
        return email


class TrusttraceUserAdmin(UserAdmin[User]):
    form = AddressCheckedChangeForm


admin.site.unregister(User)
admin.site.register(User, TrusttraceUserAdmin)
