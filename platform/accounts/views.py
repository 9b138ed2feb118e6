"""Sign up, and the throttled log-in view."""

from __future__ import annotations

import hashlib

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.forms import PasswordResetForm
from django.contrib.auth.views import LoginView, PasswordResetView
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect, render

from accounts import throttle
from accounts.forms import SignUpForm, ThrottledAuthenticationForm

RESET_WINDOW_S = 3600


class ThrottledLoginView(LoginView):
    """Django's login view with :class:`ThrottledAuthenticationForm`."""

    form_class = ThrottledAuthenticationForm
    template_name = "registration/login.html"


class ThrottledPasswordResetView(PasswordResetView):
    """Password reset with hourly limits: per client address (then 429 and a
    message), per e-mail address asked for (then the same "sent" page as
    always, but no mail: no enumeration, no mail bombing)."""

    def form_valid(self, form: PasswordResetForm) -> HttpResponse:
        ip = throttle.client_ip(self.request)
        if throttle.count(f"reset-ip:{ip}", RESET_WINDOW_S) > settings.PASSWORD_RESET_MAX_PER_IP:
            form.add_error(
                None, "Too many password reset requests from your address; try again in an hour."
            )
            response = self.form_invalid(form)
            response.status_code = 429
            return response
        email = str(form.cleaned_data["email"]).strip().casefold()
        key = "reset-email:" + hashlib.sha256(email.encode()).hexdigest()
        if throttle.count(key, RESET_WINDOW_S) > settings.PASSWORD_RESET_MAX_PER_EMAIL:
            return HttpResponseRedirect(self.get_success_url())
        return super().form_valid(form)


def signup(request: HttpRequest) -> HttpResponse:
    """Create a submitter account and sign it in."""
    if request.method == "POST":
        form = SignUpForm(request.POST)
        if form.is_valid():
            user = form.save()
            login(request, user, backend="django.contrib.auth.backends.ModelBackend")
            messages.success(request, f"Welcome, {user.username}. You can submit media now.")
            return redirect("analyses:list")
    else:
        form = SignUpForm()
    return render(request, "accounts/signup.html", {"form": form})
