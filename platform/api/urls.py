"""API routes and the OpenAPI schema."""

from __future__ import annotations

from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView
from rest_framework.routers import DefaultRouter

from api.auth import obtain_auth_token, revoke_token
from api.views import SubmissionViewSet

app_name = "api"

router = DefaultRouter()
# No ``.json``-style suffix routes: the custom actions take no ``format``
# argument (a suffix made them fail with a 500), and content negotiation goes
# by the Accept header, as the downloads document.
router.include_format_suffixes = False
router.register("submissions", SubmissionViewSet, basename="submission")

urlpatterns = [
    path("token/", obtain_auth_token, name="token"),
    path("token/revoke/", revoke_token, name="token-revoke"),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("", include(router.urls)),
]
