"""Fixtures for explanation tests: an Analyzer over tiny members."""

from __future__ import annotations

from pathlib import Path

import pytest

from ensemble.pipeline import Analyzer
from tests.explain.tiny import REGISTRY, install_weights, tiny_config


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install_weights(tmp_path_factory.mktemp("tiny-weights"))


@pytest.fixture
def tiny_analyzer(tiny_weights: Path, blazeface_cache: Path) -> Analyzer:
    return Analyzer(tiny_config(tiny_weights, blazeface_cache), REGISTRY)
