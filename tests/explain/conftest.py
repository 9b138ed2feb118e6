"""Fixtures for explanation tests: an Analyzer over tiny members."""

from __future__ import annotations

from pathlib import Path

import pytest

from ensemble.pipeline import Analyzer
from tests.tiny_registry import EXPLAIN_MEMBERS, REGISTRY, explain_config, install_weights


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install_weights(tmp_path_factory.mktemp("tiny-weights"), EXPLAIN_MEMBERS)


@pytest.fixture
def tiny_analyzer(tiny_weights: Path, blazeface_cache: Path) -> Analyzer:
    return Analyzer(explain_config(tiny_weights, blazeface_cache), REGISTRY)
