"""Trusttrace's detection core: media, faces, detectors, weights, scoring and
the analysis pipeline. Pure Python and PyTorch: it never imports Django,
Celery or anything under ``platform/``."""
