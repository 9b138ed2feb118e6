"""Shared fixtures: ../shared (skipped when absent), BlazeFace, tiny members."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from ensemble.config import FaceConfig
from ensemble.faces import FaceDetector
from ensemble.members import LoadedMember
from ensemble.registry import MemberSpec, tiny_spec

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent; this test needs the project's shared data")
    return SHARED


@pytest.fixture(scope="session")
def blazeface_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("blazeface-cache")


@pytest.fixture(scope="session")
def detector(blazeface_cache: Path) -> FaceDetector:
    return FaceDetector.load(FaceConfig(), blazeface_cache)


class ConstantLogit(torch.nn.Module):
    """A 'detector' whose logit is fixed: lets tests plant known scores."""

    def __init__(self, logit: float) -> None:
        super().__init__()
        self.logit = torch.nn.Parameter(torch.tensor(float(logit)), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logit.expand(x.shape[0], 1)


@pytest.fixture
def tiny_member() -> Callable[..., LoadedMember]:
    def make(
        name: str = "tiny",
        input_size: int = 64,
        logit: float | None = None,
        temperature: float = 1.0,
        mirror: bool = False,
        bias: float = 0.0,
    ) -> LoadedMember:
        spec: MemberSpec = tiny_spec(name, input_size)
        torch.manual_seed(0)
        model = spec.build() if logit is None else ConstantLogit(logit)
        return LoadedMember(
            spec=spec,
            model=model,
            input_size=input_size,
            mean=spec.mean,
            std=spec.std,
            temperature=temperature,
            mirror=mirror,
            bias=bias,
        )

    return make


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``openvino`` run last. With OpenVINO loaded into the test
    process, later tests that fork (loader worker processes) or start
    subprocesses crashed it (SIGSEGV) on the 2-core AMX machine, though each
    passes alone (README, "Speed": why OpenVINO is opt-in)."""
    items.sort(key=lambda item: item.get_closest_marker("openvino") is not None)
