#!/usr/bin/env python
"""Django's command-line utility for Trusttrace.

The Django project lives in ``platform/``, a plain folder rather than a package:
a top-level package named ``platform`` would hide the standard library module of
the same name. This script puts that folder on ``sys.path``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
# Commands that run PyTorch eagerly on big batches for a long time: their
# process keeps freed memory for reuse (ensemble.runtime.keep_freed_memory).
MODEL_JOBS = frozenset({"train_detector", "evaluate"})


def main() -> None:
    """Run a Django management command."""
    sys.path.insert(0, str(ROOT / "platform"))
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "trusttrace.settings.local")
    if len(sys.argv) > 1 and sys.argv[1] in MODEL_JOBS:
        from ensemble.errors import ConfigError
        from ensemble.runtime import keep_freed_memory

        try:
            keep_freed_memory()
        except ConfigError as e:
            sys.exit(f"{sys.argv[1]}: {e}")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
