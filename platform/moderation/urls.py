"""Moderation pages."""

from __future__ import annotations

from django.urls import path

from moderation import views

app_name = "moderation"

urlpatterns = [
    path("", views.queue, name="queue"),
    path("dashboard/", views.dashboard, name="dashboard"),
    path("s/<uuid:pk>/", views.review, name="review"),
    path("s/<uuid:pk>/decide/", views.decide, name="decide"),
    path("s/<uuid:pk>/rerun/", views.rerun, name="rerun"),
]
