"""Sign up, and the throttled log-in view."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.views import LoginView
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from accounts.forms import SignUpForm, ThrottledAuthenticationForm


class ThrottledLoginView(LoginView):
    """Django's login view with :class:`ThrottledAuthenticationForm`."""

    form_class = ThrottledAuthenticationForm
    template_name = "registration/login.html"


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
