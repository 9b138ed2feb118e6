"""Sign up, e-mail verification, the account page, and the throttled log-in
and password reset views."""

from __future__ import annotations

import hashlib
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login, logout
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import PasswordResetForm
from django.contrib.auth.models import User
from django.contrib.auth.views import LoginView, PasswordChangeView, PasswordResetView
from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from accounts import erasure, throttle, verification
from accounts.forms import (
    SignUpForm,
    ThrottledAuthenticationForm,
    ThrottledPasswordChangeForm,
    VerifiedPasswordResetForm,
)
from analyses.services.errors import ErasureRefused

RESET_WINDOW_S = 3600
# Verification links one account may ask for per hour from its account page.
RESEND_MAX_PER_HOUR = 3


class ThrottledLoginView(LoginView):
    """Django's login view with :class:`ThrottledAuthenticationForm`."""

    form_class = ThrottledAuthenticationForm
    template_name = "registration/login.html"


class ThrottledPasswordResetView(PasswordResetView):
    """Password reset with hourly limits: per client address (then 429 and a
    message), per e-mail address asked for (then the same "sent" page as
    always, but no mail: no enumeration, no mail bombing). Links go only to
    verified addresses (:class:`VerifiedPasswordResetForm`)."""

    form_class = VerifiedPasswordResetForm

    def form_valid(self, form: PasswordResetForm) -> HttpResponse:
        ip = throttle.client_network(self.request)
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
        if isinstance(form, VerifiedPasswordResetForm):
            form.send_verification_links(self.request)
        return super().form_valid(form)


def signup(request: HttpRequest) -> HttpResponse:
    """Create a submitter account, sign it in and mail its address a
    verification link. One client network (the address; an IPv6 address's
    /64) creates at most ``SIGNUP_MAX_PER_IP`` accounts an hour (then 429):
    the upload quotas are per account. The form says when an e-mail address already has an
    account; once a client network (the address; an IPv6 address's /64) has
    been told so for ``SIGNUP_TAKEN_MAX_PER_IP`` different addresses within
    an hour's window, every sign-up from it is refused (429) until the window
    ends, before the form is checked, so the answer tells nothing. The same
    address tried again does not count: a person retrying their own is not
    locked out."""
    if request.method == "POST":
        network = hashlib.sha256(throttle.client_network(request).encode()).hexdigest()
        taken_key = "signup-taken-net:" + network
        if throttle.peek(taken_key) >= settings.SIGNUP_TAKEN_MAX_PER_IP:
            return _too_many_taken(request)
        form = SignUpForm(request.POST)
        if not form.is_valid() and form.has_error("email", "email_taken"):
            email = str(request.POST.get("email", "")).strip().casefold()
            pair = f"signup-taken-pair:{network}:" + hashlib.sha256(email.encode()).hexdigest()
            # Counted once per address (cache.add is atomic), and the count's
            # own answer decides: parallel posts cannot all slip under the
            # limit between the check above and this one.
            if (
                cache.add(pair, 1, timeout=RESET_WINDOW_S)
                and throttle.count(taken_key, RESET_WINDOW_S) > settings.SIGNUP_TAKEN_MAX_PER_IP
            ):
                return _too_many_taken(request)
        if form.is_valid():
            key = "signup-ip:" + network
            if throttle.count(key, RESET_WINDOW_S) > settings.SIGNUP_MAX_PER_IP:
                form.add_error(
                    None, "Too many accounts created from your address; try again in an hour."
                )
                return render(request, "accounts/signup.html", {"form": form}, status=429)
            try:
                with transaction.atomic():
                    user = form.save()
            except IntegrityError:
                # Another sign-up took the address (or the name) between the
                # form's check and this insert; checked again, the form says which.
                form = SignUpForm(request.POST)
                if form.is_valid():
                    form.add_error(None, "The account could not be created; please try again.")
                return render(request, "accounts/signup.html", {"form": form})
            login(request, user, backend="django.contrib.auth.backends.ModelBackend")
            messages.success(request, f"Welcome, {user.username}. You can submit media now.")
            _say_sent(request, user, verification.send_link(request, user))
            return redirect("analyses:list")
    else:
        form = SignUpForm()
    return render(request, "accounts/signup.html", {"form": form})


def _too_many_taken(request: HttpRequest) -> HttpResponse:
    # An empty form: checking the one sent would answer the question.
    refused = (
        "Too many sign-ups with e-mail addresses that already have an account came from "
        "your network; try again within the hour."
    )
    context = {"form": SignUpForm(), "refused": refused}
    return render(request, "accounts/signup.html", context, status=429)


def _say_sent(request: HttpRequest, user: User, sent: bool) -> None:
    if sent:
        messages.info(
            request,
            f"We sent a link to {user.email}: follow it to verify your address "
            "(password resets are only mailed to verified addresses).",
        )
    else:
        messages.warning(
            request,
            "The verification e-mail could not be sent; ask for a new one from your account page.",
        )


@login_required
@require_http_methods(["GET", "POST"])
def account(request: HttpRequest) -> HttpResponse:
    """The signed-in account: name, role, e-mail and whether it is verified;
    POST mails a new verification link."""
    user = request.user
    assert isinstance(user, User)  # login_required
    verified = verification.is_verified(user)
    if request.method == "POST" and not verified:
        key = f"verify-resend:{user.pk}"
        if throttle.count(key, RESET_WINDOW_S) > RESEND_MAX_PER_HOUR:
            messages.error(
                request, "Too many verification e-mails asked for; try again in an hour."
            )
        else:
            _say_sent(request, user, verification.send_link(request, user))
        return redirect("accounts:account")
    return render(request, "accounts/account.html", {"account": user, "verified": verified})


_LINK_STATUS = {"valid": 200, "verified": 200, "already_used": 200, "expired": 400, "invalid": 400}


@require_http_methods(["GET", "POST"])
def verify_email(request: HttpRequest, token: str) -> HttpResponse:
    """A verification link: GET says what it is worth and, when valid, offers
    a button; POST verifies (so a mail scanner fetching the link uses nothing)."""
    if request.method == "POST":
        checked = verification.verify(token)
    else:
        checked = verification.check_token(token)
    context = {"outcome": checked.outcome, "email": checked.email}
    response = render(request, "accounts/verify_email.html", context)
    response.status_code = _LINK_STATUS[checked.outcome]
    return response


TOO_MANY_GUESSES = (
    "Too many wrong passwords for this account or from your address; try again in "
    "{minutes} minutes."
)


@login_required
@require_http_methods(["GET", "POST"])
def delete_account(request: HttpRequest) -> HttpResponse:
    """The signed-in user deletes their account and every upload of theirs,
    after giving their password again (a session left open is not enough).
    Wrong passwords count against the log-in throttle (``accounts.throttle``):
    a stolen session cannot guess its way through this form."""
    user = request.user
    assert isinstance(user, User)  # login_required
    planned = erasure.plan(user)
    error, status = "", 200
    if request.method == "POST" and planned.blocked:
        status = 403
    elif request.method == "POST":
        ip = throttle.client_network(request)
        if not throttle.begin_attempt(user.username, ip):
            error, status = TOO_MANY_GUESSES.format(minutes=throttle.lockout_minutes()), 429
        elif not user.check_password(str(request.POST.get("password", ""))):
            error, status = "That is not your password; nothing was deleted.", 400
        else:
            throttle.succeeded(user.username, ip)
            username = user.username
            try:
                deleted = erasure.erase(user)
            except ErasureRefused as e:
                # Blocked meanwhile (a decision made in another tab).
                planned = erasure.plan(user)
                return render(
                    request,
                    "accounts/delete_account.html",
                    {"plan": planned, "error": str(e)},
                    status=403,
                )
            logout(request)
            if deleted:
                done = f"and its {deleted} upload{'' if deleted == 1 else 's'} were deleted"
            else:
                done = "was deleted"
            messages.success(request, f"The account {username} {done}.")
            return redirect(settings.LOGOUT_REDIRECT_URL)
    context = {"plan": planned, "error": error}
    return render(request, "accounts/delete_account.html", context, status=status)


class ThrottledPasswordChangeView(PasswordChangeView):
    """Django's password change, with the old password's check throttled."""

    form_class = ThrottledPasswordChangeForm

    def get_form_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = super().get_form_kwargs()
        kwargs["request"] = self.request
        return kwargs
