"""A registry of tiny random-init members, for platform tests (the site's
settings can point ``TRUSTTRACE['REGISTRY']`` here)."""

from __future__ import annotations

from ensemble.registry import Registry, tiny_spec

REGISTRY = Registry()
REGISTRY.register(tiny_spec("tiny_a", 64))
REGISTRY.register(tiny_spec("tiny_b", 48))
