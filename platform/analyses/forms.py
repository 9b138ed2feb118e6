"""The upload form. The real checks (content type, decode probe, limits)
are in :mod:`analyses.services`; the form only collects the fields."""

from __future__ import annotations

from django import forms


class SubmissionForm(forms.Form):
    title = forms.CharField(max_length=200, required=False)
    file = forms.FileField(
        allow_empty_file=True,  # the service explains what is wrong with it
        label="Image or video",
        help_text=(
            "JPEG, PNG, WebP, BMP or GIF images; GIF, PNG or WebP animations; "
            "MP4, MOV, WebM, MKV or AVI videos."
        ),
    )
    reference = forms.FileField(
        allow_empty_file=True,
        required=False,
        label="Reference (optional)",
        help_text="The claimed original, for a side-by-side comparison.",
    )
    reuse = forms.BooleanField(
        required=False,
        label="Reuse an earlier result",
        help_text="If you analysed this same file before, show that result instead of "
        "analysing it again.",
    )
