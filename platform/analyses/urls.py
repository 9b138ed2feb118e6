"""Submission pages."""

from __future__ import annotations

from django.urls import path

from analyses import views

app_name = "analyses"

urlpatterns = [
    path("", views.submission_list, name="list"),
    path("models/", views.models_page, name="models"),
    path("submit/", views.submit, name="submit"),
    path("s/<uuid:pk>/", views.detail, name="detail"),
    path("s/<uuid:pk>/progress.json", views.progress, name="progress"),
    path("s/<uuid:pk>/media", views.submission_file, name="file"),
    path("s/<uuid:pk>/reference", views.submission_file, {"which": "reference"}, name="reference"),
    path("s/<uuid:pk>/artifacts/<int:artifact_id>", views.artifact_file, name="artifact"),
    path("s/<uuid:pk>/delete/", views.delete, name="delete"),
    path("s/<uuid:pk>/report/", views.report, name="report"),
]
