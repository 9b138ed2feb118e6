"""URL routes. Uploaded media and artifacts have no public URL: MEDIA_ROOT
is never served; permission-checked views stream the files."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

from accounts.forms import ThrottledAdminAuthenticationForm

# The admin's log-in shares the site's throttle (it is the most valuable one).
admin.site.login_form = ThrottledAdminAuthenticationForm

# API addresses answer in the API's error shape; the site's pages as Django's.
handler404 = "trusttrace.errors.not_found"
handler500 = "trusttrace.errors.server_error"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("accounts.urls")),
    path("moderation/", include("moderation.urls")),
    path("reports/", include("reports.urls")),
    path("api/", include("api.urls")),
    path("", include("analyses.urls")),
]
