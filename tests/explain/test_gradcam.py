"""Grad-CAM: shape and range, hooks released, and faithfulness on a planted patch."""

from __future__ import annotations

import gc
import resource
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ensemble.crops import CropPolicy
from ensemble.members import TAP_ATTENTION, TAP_GRADCAM, LoadedMember
from ensemble.registry import MemberSpec, tiny_spec
from explain.errors import ExplainError
from explain.gradcam import gradcam_maps

ROOT = Path(__file__).resolve().parents[2]


def _member(model: nn.Module, spec: MemberSpec, size: int) -> LoadedMember:
    return LoadedMember(
        spec=spec, model=model, input_size=size, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)
    )


def _hook_count(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


def _crops(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def test_gradcam_maps_have_the_crop_shape_and_unit_range(tiny_member) -> None:
    member = tiny_member("t", input_size=64)
    maps = gradcam_maps(member, _crops(5, 64), batch_size=2)
    assert len(maps) == 5
    for m in maps:
        assert m.shape == (64, 64) and m.dtype == np.float32
        assert m.min() >= 0.0 and m.max() <= 1.0 + 1e-6


def test_gradcam_leaves_the_model_as_it_found_it(tiny_member) -> None:
    member = tiny_member("t", input_size=64)
    flags = [p.requires_grad for p in member.model.parameters()]
    before = {k: v.clone() for k, v in member.model.state_dict().items()}
    gradcam_maps(member, _crops(3, 64), batch_size=3)
    assert [p.requires_grad for p in member.model.parameters()] == flags
    assert all(p.grad is None for p in member.model.parameters())
    after = member.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_gradcam_works_when_called_under_inference_mode(tiny_member) -> None:
    member = tiny_member("t", input_size=64)
    with torch.inference_mode():
        maps = gradcam_maps(member, _crops(2, 64), batch_size=2)
    assert len(maps) == 2 and all(np.isfinite(m).all() for m in maps)


def test_hooks_are_released_and_memory_does_not_grow_over_50_runs(tiny_member) -> None:
    member = tiny_member("t", input_size=64)
    crops = _crops(4, 64)
    hooks_before = _hook_count(member.model)
    gradcam_maps(member, crops, batch_size=4)  # allocator warm-up
    gc.collect()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(50):
        gradcam_maps(member, crops, batch_size=4)
        assert _hook_count(member.model) == hooks_before
    gc.collect()
    rss_growth_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    assert _hook_count(member.model) == hooks_before == 0
    # Peak RSS may creep by allocator noise, not by 50 retained graphs and activations.
    assert rss_growth_kb < 20 * 1024


def test_unknown_gradcam_layer_is_a_clear_error(tiny_member) -> None:
    spec = MemberSpec(
        name="bad",
        build=tiny_spec().build,
        crop=CropPolicy("square", 0.2),
        input_size=32,
        gradcam_layer="features.nope",
        description="",
    )
    member = _member(spec.build(), spec, 32)
    with pytest.raises(ExplainError, match=r"no layer 'features.nope'"):
        gradcam_maps(member, _crops(1, 32), batch_size=1)


class PatchNet(nn.Module):
    """A small CNN: the last conv layer keeps an 8x8 grid, then pools."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 16, 3, padding=1),
            nn.ReLU(),
        )
        self.fc = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).amax(dim=(2, 3)))


PATCH = 8
SIZE = 32


def _patch_batch(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, list]:
    images = rng.integers(40, 160, (n, SIZE, SIZE, 3), dtype=np.uint8)
    labels = rng.integers(0, 2, n)
    where = []
    for i in range(n):
        y, x = rng.integers(0, SIZE - PATCH, 2)
        where.append((int(y), int(x)))
        if labels[i]:
            images[i, y : y + PATCH, x : x + PATCH] = 255
    return images, labels, where


def test_gradcam_peak_falls_on_the_planted_patch_the_model_learnt_to_detect() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = PatchNet()
    spec = MemberSpec(
        name="patch",
        build=PatchNet,
        crop=CropPolicy("square", 0.0),
        input_size=SIZE,
        gradcam_layer="features.6",
        description="",
    )
    member = _member(model, spec, SIZE)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(60):
        images, labels, _ = _patch_batch(rng, 32)
        x = member.to_tensor(list(images))
        loss = nn.functional.binary_cross_entropy_with_logits(
            model(x)[:, 0], torch.tensor(labels, dtype=torch.float32)
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    images, labels, where = _patch_batch(np.random.default_rng(1), 24)
    with torch.inference_mode():
        accuracy = ((model(member.to_tensor(list(images)))[:, 0] > 0).numpy() == labels).mean()
    assert accuracy > 0.9, "the tiny model did not learn the patch; the check would be moot"
    fakes = [i for i in range(len(images)) if labels[i]]
    maps = gradcam_maps(member, [images[i] for i in fakes], batch_size=8)
    hits = 0
    for i, m in zip(fakes, maps, strict=True):
        py, px = np.unravel_index(np.argmax(m), m.shape)
        y, x = where[i]
        slack = 2  # the last conv grid is 8x8: one cell is 4 pixels
        hits += y - slack <= py < y + PATCH + slack and x - slack <= px < x + PATCH + slack
    assert hits >= 0.9 * len(fakes)


def _onnx_twin(
    member: LoadedMember, backend: str = "onnxruntime", *, mirror: bool = False
) -> LoadedMember:
    return LoadedMember(
        spec=member.spec,
        model=member.model,
        input_size=member.input_size,
        mean=member.mean,
        std=member.std,
        backend=backend,
        precision="fp32",
        mirror=mirror,
    )


@pytest.mark.parametrize(
    "backend", ["onnxruntime", pytest.param("openvino", marks=pytest.mark.openvino)]
)
@pytest.mark.parametrize("maker", ["plain", "attention"])
def test_onnx_replay_gives_the_same_maps_as_pytorch(tiny_member, maker, backend) -> None:
    from tests.tiny_registry import tiny_attention_spec

    if maker == "plain":
        member = tiny_member("t", input_size=64)
    else:
        spec = tiny_attention_spec("att", 56)
        torch.manual_seed(0)
        member = _member(spec.build(), spec, 56)
    crops = _crops(5, member.input_size, seed=2)
    reference = gradcam_maps(member, crops, batch_size=2)
    twin = _onnx_twin(member, backend)
    assert TAP_GRADCAM in twin.tap_names
    hooks = _hook_count(twin.model)
    replayed = gradcam_maps(twin, crops, batch_size=2)  # runs the tapped graph now
    # ... and from the taps of an earlier scoring pass, as the Explainer does
    scored = twin.infer(crops, batch_size=3, taps=True)
    reused = gradcam_maps(
        twin, crops, batch_size=2, logits=scored.logits, activations=scored.taps[TAP_GRADCAM]
    )
    assert _hook_count(twin.model) == hooks
    assert len(replayed) == len(reference) == len(reused)
    for a, b, c in zip(replayed, reference, reused, strict=True):
        np.testing.assert_allclose(a, b, atol=2e-3)
        np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_a_mirroring_member_scores_both_views_and_explains_the_crop_as_is(
    tiny_member, backend, caplog
) -> None:
    """The score is the mean of the crop's logit and its mirror image's; the
    taps, and so Grad-CAM, are the crop's as is, and the replay still
    reproduces its logits (it is checked against the crop's, not the mean)."""
    member = tiny_member("t", input_size=64)
    crops = _crops(5, 64, seed=3)
    mirrors = [np.ascontiguousarray(c[:, ::-1]) for c in crops]
    plain = member if backend == "torch" else _onnx_twin(member)
    both = tiny_member("t", input_size=64, mirror=True)
    if backend != "torch":
        both = _onnx_twin(member, mirror=True)
    as_is = plain.infer(crops, batch_size=3, taps=True)
    flipped = plain.infer(mirrors, batch_size=3)
    scored = both.infer(crops, batch_size=3, taps=True)
    assert not np.allclose(as_is.logits, flipped.logits, atol=1e-3)  # not a symmetric model
    np.testing.assert_allclose(scored.logits, (as_is.logits + flipped.logits) / 2, atol=1e-6)
    np.testing.assert_array_equal(scored.tapped_logits, as_is.logits)
    np.testing.assert_array_equal(plain.infer(crops, batch_size=3).tapped_logits, as_is.logits)
    assert set(scored.taps) == set(as_is.taps)
    for name, value in scored.taps.items():
        np.testing.assert_array_equal(value, as_is.taps[name])
    reference = gradcam_maps(plain, crops, batch_size=2)
    forward = both._forward
    passes: list[int] = []

    def counted(batch, names):
        passes.append(len(batch))
        return forward(batch, names)

    both._forward = counted  # type: ignore[method-assign]
    with caplog.at_level("WARNING"):
        maps = gradcam_maps(both, crops, batch_size=2)
    # Grad-CAM needs the crops as is only: no mirrored pass is run for it.
    assert passes == ([2, 2, 1] if backend != "torch" else [])
    with caplog.at_level("WARNING"):
        if backend != "torch":
            reused = gradcam_maps(
                both,
                crops,
                batch_size=2,
                logits=scored.tapped_logits,
                activations=scored.taps[TAP_GRADCAM],
            )
            for a, b in zip(reused, reference, strict=True):
                np.testing.assert_allclose(a, b, atol=2e-3)
    assert "does not reproduce its logits" not in caplog.text  # the replay was used
    for a, b in zip(maps, reference, strict=True):
        np.testing.assert_allclose(a, b, atol=2e-3)


class WithAttentionMap(nn.Module):
    """A tiny attention model that can also stop at its attention layer."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)

    def forward_with_attention(self, x):
        return self.inner.forward_with_attention(x)

    def attention_map(self, x):
        return self.inner.forward_with_attention(x)[1]


def test_onnx_attention_equals_the_models_own_map() -> None:
    from explain.attention import attention_maps
    from tests.tiny_registry import tiny_attention_spec

    spec = tiny_attention_spec("att", 56)
    torch.manual_seed(0)
    member = _member(WithAttentionMap(spec.build()), spec, 56)
    crops = _crops(3, 56, seed=5)
    reference = attention_maps(member, crops, batch_size=2)
    twin = _onnx_twin(member)
    assert TAP_ATTENTION in twin.tap_names
    onnx = attention_maps(twin, crops, batch_size=2)
    kept = attention_maps(
        twin, crops, batch_size=2, raw=twin.infer(crops, 2, taps=True).taps[TAP_ATTENTION]
    )
    for a, b, c in zip(onnx, reference, kept, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)
        np.testing.assert_array_equal(a, c)


def test_a_replay_that_cannot_reproduce_the_logits_falls_back_to_pytorch(caplog) -> None:
    class SkipsTheTarget(nn.Module):
        """Its head also reads the input directly: replaying from the target layer is wrong."""

        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU())
            self.fc = nn.Linear(4, 1)

        def forward(self, x):
            return self.fc(self.features(x).mean(dim=(2, 3))) + x.mean(dim=(1, 2, 3))[:, None]

    spec = MemberSpec(
        name="skip",
        build=SkipsTheTarget,
        crop=CropPolicy("square", 0.2),
        input_size=32,
        gradcam_layer="features.0",
        description="",
    )
    torch.manual_seed(0)
    member = _member(SkipsTheTarget(), spec, 32)
    crops = [np.clip(c.astype(int) + 100, 0, 255).astype(np.uint8) for c in _crops(3, 32, 7)]
    reference = gradcam_maps(member, crops, batch_size=3)
    replayed = gradcam_maps(_onnx_twin(member), crops, batch_size=3)
    assert "does not reproduce its logits" in caplog.text
    for a, b in zip(replayed, reference, strict=True):
        np.testing.assert_allclose(a, b, atol=2e-3)


def test_a_replay_that_raises_falls_back_to_pytorch_for_that_member_only(caplog) -> None:
    """A head that joins an earlier tensor to the target's output (a concat,
    not a broadcast) makes the replay raise instead of differ: that cost the
    whole Grad-CAM kind, every member's maps."""

    class JoinsAnEarlierTensor(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU())
            self.fc = nn.Linear(7, 1)

        def forward(self, x):
            joined = torch.cat([self.features(x).mean(dim=(2, 3)), x.mean(dim=(2, 3))], dim=1)
            return self.fc(joined)

    spec = MemberSpec(
        name="join",
        build=JoinsAnEarlierTensor,
        crop=CropPolicy("square", 0.2),
        input_size=32,
        gradcam_layer="features.0",
        description="",
    )
    torch.manual_seed(0)
    member = _member(JoinsAnEarlierTensor(), spec, 32)
    crops = _crops(3, 32, 5)
    reference = gradcam_maps(member, crops, batch_size=3)
    replayed = gradcam_maps(_onnx_twin(member), crops, batch_size=3)
    assert "cannot be replayed" in caplog.text
    for a, b in zip(replayed, reference, strict=True):
        np.testing.assert_allclose(a, b, atol=2e-3)


def test_gradcam_still_works_after_an_attention_export_under_inference_mode() -> None:
    from explain.attention import attention_maps
    from tests.tiny_registry import tiny_attention_spec

    spec = tiny_attention_spec("att", 56)
    spec = MemberSpec(**{**spec.__dict__, "gradcam_layer": "inner.head.0"})
    torch.manual_seed(0)
    plain = _member(WithAttentionMap(spec.build()), spec, 56)
    with torch.inference_mode():  # the member is made, and its graph exported, in here
        member = _onnx_twin(plain)
    crops = _crops(2, 56, seed=9)
    attention_maps(member, crops, batch_size=2)  # runs under inference_mode
    assert not any(p.is_inference() for p in member.model.parameters())
    assert len(gradcam_maps(member, crops, batch_size=2)) == 2


@pytest.mark.openvino
def test_gradcam_of_a_bf16_member_replays_without_falling_back(tmp_path, caplog) -> None:
    from ensemble.members import load_member
    from ensemble.registry import Registry
    from ensemble.runtime import cpu_has_bf16
    from ensemble.weights import save_weights

    if not cpu_has_bf16():
        pytest.skip("this CPU has no bf16 kernels for OpenVINO")
    registry = Registry()
    spec = registry.register(tiny_spec("tiny", 48))
    torch.manual_seed(2)
    save_weights(spec.build().state_dict(), spec, tmp_path / "w", input_size=48)
    kwargs = {"registry": registry, "cache_dir": tmp_path / "c"}
    fp32 = load_member("tiny", tmp_path / "w", backend="torch", **kwargs)
    bf16 = load_member("tiny", tmp_path / "w", backend="openvino", precision="bf16", **kwargs)
    crops = _crops(4, 48, seed=4)
    scored = bf16.infer(crops, batch_size=4, taps=True)
    with caplog.at_level("WARNING"):
        maps = gradcam_maps(
            bf16, crops, batch_size=2, logits=scored.logits, activations=scored.taps[TAP_GRADCAM]
        )
    assert "does not reproduce its logits" not in caplog.text  # the replay was used
    reference = gradcam_maps(fp32, crops, batch_size=2)
    assert len(maps) == 4
    for m, r in zip(maps, reference, strict=True):
        assert m.shape == (48, 48) and m.min() >= 0.0 and m.max() <= 1.0
        assert np.corrcoef(m.ravel(), r.ravel())[0, 1] > 0.9  # the same map, bf16 rounding aside


class _FakeLogit:
    """The grad-cam package's target for our detectors: output unit 0."""

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return output[..., 0]


@pytest.mark.parametrize("name", ["tiny", "resnet50", "effnet_autoatt_b4"])
def test_maps_are_those_of_the_grad_cam_package(name: str, tiny_member) -> None:
    """Our Grad-CAM against pytorch_grad_cam.GradCAM (a test-only dependency)
    on the same model, layer, target and crops: a tiny member and the
    shipped weights of two real ones."""
    from pytorch_grad_cam import GradCAM

    import ensemble.members  # noqa: F401 - registers the real members
    from ensemble.registry import REGISTRY
    from ensemble.weights import load_model

    size = 64
    if name == "tiny":
        member = tiny_member("t", input_size=size)
    else:
        spec = REGISTRY.get(name)
        model, manifest = load_model(spec, ROOT / "weights")
        size = manifest.input_size
        member = _member(model.eval(), spec, size)
    crops = _crops(3, size, seed=1)
    ours = gradcam_maps(member, crops, batch_size=3)
    layer = member.model.get_submodule(member.spec.gradcam_layer)
    with torch.enable_grad(), GradCAM(model=member.model, target_layers=[layer]) as cam:
        theirs = cam(input_tensor=member.to_tensor(crops), targets=[_FakeLogit()] * 3)
    for a, b in zip(ours, theirs, strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=1e-4)
    assert any(float(np.ptp(m)) > 0.1 for m in ours)  # maps with something in them


def test_a_layer_without_weights_is_a_grad_cam_layer_and_the_backbone_is_not_recorded() -> None:
    """B4's Grad-CAM layer is its head's swish, which has no weights: the
    maps are those of the grad-cam package at that layer, and autograd
    records nothing before it (no gradient reaches an earlier layer)."""
    from pytorch_grad_cam import GradCAM

    class ActLast(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.bn = nn.BatchNorm2d(8)
            self.act = nn.SiLU()
            self.fc = nn.Linear(8, 1)

        def forward(self, x):
            return self.fc(self.act(self.bn(self.conv(x))).mean(dim=(2, 3)))

    spec = MemberSpec(
        name="act",
        build=ActLast,
        crop=CropPolicy("square", 0.2),
        input_size=32,
        gradcam_layer="act",
        description="",
    )
    torch.manual_seed(0)
    member = _member(ActLast().eval(), spec, 32)
    seen: list[bool] = []
    member.model.bn.register_forward_hook(lambda m, i, o: seen.append(o.requires_grad))
    crops = _crops(3, 32, seed=3)
    ours = gradcam_maps(member, crops, batch_size=3)
    assert seen == [False]  # the layers before the target recorded no graph
    assert all(p.requires_grad and p.grad is None for p in member.model.parameters())
    with torch.enable_grad(), GradCAM(model=member.model, target_layers=[member.model.act]) as cam:
        theirs = cam(input_tensor=member.to_tensor(crops), targets=[_FakeLogit()] * 3)
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)
    assert any(float(np.ptp(m)) > 0.1 for m in ours)


def test_b4_grad_cam_layer_is_after_the_head_activation() -> None:
    """Taken before the swish, a channel the swish switches off (a large
    negative pre-activation) still weighed in the map."""
    import ensemble.members  # noqa: F401 - registers the real members
    from ensemble.registry import REGISTRY

    spec = REGISTRY.get("effnet_autoatt_b4")
    model = spec.build()
    layer = model.get_submodule(spec.gradcam_layer)
    assert isinstance(layer, nn.SiLU)
    seen: list[torch.Tensor] = []
    layer.register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.inference_mode():
        model.eval()(torch.zeros(1, 3, 64, 64))
    assert len(seen) == 1 and seen[0].shape[1] == 1792  # the head, once
