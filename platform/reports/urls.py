"""CSV downloads."""

from __future__ import annotations

from django.urls import path

from reports import views

app_name = "reports"

urlpatterns = [
    path("submissions.csv", views.submissions_csv, name="submissions"),
    path("s/<uuid:pk>/frames.csv", views.frames_csv, name="frames"),
]
