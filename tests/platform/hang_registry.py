"""Tiny members that hold the job (for the worker recovery tests): while the
file named by ``TRUSTTRACE_TEST_HOLD_FILE`` exists, ``forward`` waits, so a
test can kill the worker mid-job or run into a time limit. With
``TRUSTTRACE_TEST_IGNORE_SOFT_LIMIT`` set it also swallows Celery's soft time
limit, so only the hard limit ends the job. Run with the torch backend (the
other backends never call this ``forward``)."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

from celery.exceptions import SoftTimeLimitExceeded
from torch import Tensor

from ensemble.detectors import TinyDetector
from ensemble.registry import Registry
from tests import tiny_registry

POLL_S = 0.2


class HeldTiny(TinyDetector):
    def forward(self, x: Tensor) -> Tensor:
        hold = os.environ.get("TRUSTTRACE_TEST_HOLD_FILE")
        while hold and Path(hold).exists():
            try:
                time.sleep(POLL_S)
            except SoftTimeLimitExceeded:
                if not os.environ.get("TRUSTTRACE_TEST_IGNORE_SOFT_LIMIT"):
                    raise
        return super().forward(x)


# The site's tiny members of tests.tiny_registry, held.
REGISTRY = Registry()
for _name in tiny_registry.SITE_MEMBERS:
    REGISTRY.register(dataclasses.replace(tiny_registry.REGISTRY.get(_name), build=HeldTiny))
