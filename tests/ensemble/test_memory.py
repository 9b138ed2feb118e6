"""What a worker keeps in memory: weights loaded once, only the head kept in
torch beside a compiled graph, and duplicates handed back to the OS."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from ensemble import runtime
from ensemble.errors import ConfigError
from ensemble.members import keep_head_only, load_member
from ensemble.registry import Registry, tiny_spec
from ensemble.weights import load_model, load_state, read_manifest, save_weights


def _crops(n: int, size: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def _is_placeholder(t: Tensor) -> bool:
    return t.untyped_storage().nbytes() <= t.element_size() and t.numel() > 1


class Shared(nn.Module):
    """A stem, a target layer and a head, and one module used before and after it."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.both = nn.Conv2d(4, 4, 1)
        self.target = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4))
        self.fc = nn.Linear(4, 1)
        self.unused = nn.Linear(4, 4)

    def forward(self, x: Tensor) -> Tensor:
        y = self.both(self.target(self.both(self.stem(x))))
        out: Tensor = self.fc(y.mean(dim=(2, 3)))
        return out


def test_keep_head_only_frees_what_runs_before_the_layer_and_keeps_the_rest() -> None:
    torch.manual_seed(0)
    model = Shared().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sizes = {
        k: v.numel() * v.element_size()
        for k, v in before.items()
        if k.startswith(("stem", "target"))
    }
    freed = keep_head_only(model, model.target)
    assert freed == sum(v for k, v in sizes.items() if "num_batches" not in k)
    for name, t in model.state_dict().items():
        if name.startswith(("stem", "target")) and "num_batches" not in name:
            assert _is_placeholder(t), name
            assert t.shape == before[name].shape
        else:  # the head, a module that also runs after the layer, one that never runs
            assert torch.equal(t, before[name]), name
    assert model(torch.zeros(2, 3, 8, 8)).shape == (2, 1)  # still runs, on zeros


def test_weights_load_once_without_a_random_init_and_equal_the_files(tmp_path: Path) -> None:
    registry = Registry()
    spec = registry.register(tiny_spec("tiny", 48))
    save_weights(spec.build().state_dict(), spec, tmp_path, input_size=48)
    model, manifest = load_model(spec, tmp_path)
    state = load_state(tmp_path, read_manifest(tmp_path, "tiny"))
    assert manifest.weights_sha256 == read_manifest(tmp_path, "tiny").weights_sha256
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize(
    "backend", ["onnxruntime", pytest.param("openvino", marks=pytest.mark.openvino)]
)
def test_a_compiled_member_keeps_only_its_head_and_can_reload_the_rest(
    tmp_path: Path, backend: str
) -> None:
    registry = Registry()
    spec = registry.register(tiny_spec("tiny", 48))
    save_weights(spec.build().state_dict(), spec, tmp_path / "w", input_size=48)
    plain = load_member("tiny", tmp_path / "w", registry=registry)
    member = load_member(
        "tiny",
        tmp_path / "w",
        registry=registry,
        backend=backend,
        cache_dir=tmp_path / "cache",
        precision="fp32",
    )
    assert member.head_only and not plain.head_only
    state, full_state = member.model.state_dict(), plain.model.state_dict()
    # TinyDetector: features.2 is the Grad-CAM layer; fc runs after it.
    for name in ("features.0.weight", "features.2.weight", "features.2.bias"):
        assert _is_placeholder(state[name])
    assert torch.equal(state["fc.weight"], full_state["fc.weight"])
    crops = _crops(5, 48)
    np.testing.assert_allclose(member.logits(crops, 2), plain.logits(crops, 2), atol=1e-4)
    model = member.full_model()
    assert not member.head_only and member.model is model
    assert all(torch.equal(model.state_dict()[k], v) for k, v in full_state.items())


def test_release_memory_is_harmless_without_cached_models() -> None:
    assert runtime.release_memory() >= 0


@pytest.mark.openvino
def test_release_memory_drops_the_cached_blob_and_the_model_still_runs(tmp_path: Path) -> None:
    registry = Registry()
    spec = registry.register(tiny_spec("tiny", 48))
    save_weights(spec.build().state_dict(), spec, tmp_path / "w", input_size=48)

    def load() -> object:
        return load_member(
            "tiny",
            tmp_path / "w",
            registry=registry,
            backend="openvino",
            cache_dir=tmp_path / "cache",
            precision="fp32",
        )

    first = load()  # compiles and writes the cache
    member = load()  # maps the cached blob
    assert runtime._cached_blob_mappings(), "the cached blob is not mapped"
    crops = _crops(3, 48)
    expected = member.logits(crops, 4)  # type: ignore[attr-defined]
    assert runtime.release_memory() > 0
    np.testing.assert_array_equal(member.logits(crops, 4), expected)  # type: ignore[attr-defined]
    np.testing.assert_allclose(first.logits(crops, 4), expected, atol=1e-5)  # type: ignore[attr-defined]


# A child process mallocs, fills and frees a 64 MB block (plain malloc, as
# PyTorch's CPU allocator does; numpy would ask for huge pages), then does it
# again, and prints the minor page faults of the second time. malloc settings
# hold for a whole process, so each case gets its own.
_REUSE = """
import ctypes, resource, sys
from ensemble.runtime import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 64 * 2**20
def fill():
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
fill()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
fill()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _second_allocation(case: str, **env: str) -> tuple[str, int]:
    root = Path(__file__).resolve().parents[2]
    inherited = {k: v for k, v in os.environ.items() if k != "TRUSTTRACE_MALLOC"}
    done = subprocess.run(
        [sys.executable, "-c", _REUSE, case],
        cwd=root,
        env={**inherited, "PYTHONPATH": str(root), **env},
        capture_output=True,
        text=True,
        check=True,
    )
    applied, faults = done.stdout.split()
    return applied, int(faults)


def _huge_pages_always() -> bool:
    """With transparent huge pages "always", a fresh 64 MB mapping faults in
    2 MB pages, and the page counts below do not apply."""
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return thp.is_file() and "[always]" in thp.read_text()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="glibc on Linux only")
@pytest.mark.skipif(_huge_pages_always(), reason="transparent huge pages are 'always'")
def test_keep_freed_memory_reuses_a_freed_big_block_instead_of_faulting_it_in_again() -> None:
    pages = 64 * 2**20 // 4096
    applied, faults = _second_allocation("default")
    assert applied == "False" and faults > pages // 2  # glibc unmapped it: every page again
    applied, faults = _second_allocation("keep")
    assert applied == "True" and faults < pages // 10
    # TRUSTTRACE_MALLOC=system leaves glibc's defaults alone.
    applied, faults = _second_allocation("keep", TRUSTTRACE_MALLOC="system")
    assert applied == "False" and faults > pages // 2


def test_an_unknown_trusttrace_malloc_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRUSTTRACE_MALLOC", "sytem")
    with pytest.raises(ConfigError, match="TRUSTTRACE_MALLOC='sytem' is not one of keep, system"):
        runtime.keep_freed_memory()
