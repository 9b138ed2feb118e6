"""Growing the trained B4 into a B7 to start training from (ensemble.training.grow)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ensemble.detectors import EfficientNetAutoAttB4Detector, EfficientNetB7Detector
from ensemble.registry import REGISTRY
from ensemble.training import grow as grow_mod
from ensemble.training.grow import ChannelMap, GrowError, attention_factor, grow
from ensemble.training.loop import initial_model
from ensemble.weights import save_weights
from tests.training_toys import write_dataset

# An input size whose layer sizes have the parities of 380 px (380, 190, 95,
# 48, 24, 12 against 60, 30, 15, 8, 4, 2), so B4's static padding (computed
# for 380) and B7's dynamic "same" padding agree in every layer.
SAME_PADDING_SIZE = 60


def test_widened_channels_keep_the_originals_first_and_split_each_weight_in_full() -> None:
    gen = torch.Generator().manual_seed(3)
    m = ChannelMap.widen(5, 12, gen)
    assert m.source[:5].tolist() == [0, 1, 2, 3, 4]
    assert int(m.source.max()) < 5
    totals = torch.zeros(5).index_add_(0, m.source, m.share)
    assert torch.allclose(totals, torch.ones(5))
    copied = [int(i) for i in m.source[5:]]
    # Copies of one channel get different shares, so training can tell them apart.
    for i in set(copied):
        shares = m.share[m.source == i]
        assert len(set(shares.tolist())) == len(shares)


def test_a_layer_cannot_be_narrowed() -> None:
    with pytest.raises(GrowError, match="narrow"):
        ChannelMap.widen(8, 4, torch.Generator())


def _scrambled_b4(
    attention_logit: float | None, inputs: torch.Tensor | None = None
) -> EfficientNetAutoAttB4Detector:
    """A B4 with every weight moved off its initial value and batch-norm
    statistics from random inputs (at initialisation the signal fades over
    32 blocks and the logit hardly depends on the input), optionally with a
    constant attention map sigmoid(attention_logit)."""
    torch.manual_seed(0)
    b4 = EfficientNetAutoAttB4Detector()
    with torch.no_grad():
        for p in b4.parameters():
            p.add_(0.01 * torch.randn_like(p))
        if attention_logit is not None:
            b4.efficientnet.attconv.weight.zero_()
            b4.efficientnet.attconv.bias.fill_(attention_logit)
        for m in b4.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None  # a plain average over the batches below
        b4.train()
        for _ in range(2):
            b4(
                torch.randn(4, 3, SAME_PADDING_SIZE, SAME_PADDING_SIZE)
                if inputs is None
                else inputs
            )
    return b4.eval()


@pytest.mark.slow
def test_the_grown_b7_computes_what_b4_computes() -> None:
    b4 = _scrambled_b4(attention_logit=0.3)
    constant = float(torch.sigmoid(torch.tensor(0.3)))
    b7 = grow(b4, torch.full((b4.ATTENTION_CHANNELS,), constant), seed=1).eval()
    x = torch.randn(3, 3, SAME_PADDING_SIZE, SAME_PADDING_SIZE)
    with torch.no_grad():
        want, got = b4(x).flatten(), b7(x).flatten()
    assert float(want.std()) > 1e-3  # the check is not on a constant
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # The extra blocks are there and start as the identity.
    extra = b7.encoder.blocks[6][3]
    assert float(extra.bn3.weight.detach().abs().max()) == 0.0


@pytest.mark.slow
def test_a_per_channel_factor_scales_the_channels_it_belongs_to() -> None:
    # A B4 whose next convolution carries the factor over a constant map is
    # what the grown B7 must compute, channel by channel.
    b4 = _scrambled_b4(attention_logit=0.3)
    constant = float(torch.sigmoid(torch.tensor(0.3)))
    factor = 0.2 + torch.rand(b4.ATTENTION_CHANNELS, generator=torch.Generator().manual_seed(5))
    b7 = grow(b4, factor, seed=2).eval()
    shuffled = grow(b4, factor.roll(1), seed=2).eval()  # factors on the wrong channels
    nxt = b4.efficientnet._blocks[b4.ATTENTION_AFTER_BLOCK + 1]._expand_conv
    with torch.no_grad():
        nxt.weight.mul_((factor / constant)[None, :, None, None])
    x = torch.randn(3, 3, SAME_PADDING_SIZE, SAME_PADDING_SIZE)
    with torch.no_grad():
        want = b4(x).flatten()
        # Float rounding over 55 blocks: relative 1e-4 on logits in the hundreds.
        torch.testing.assert_close(b7(x).flatten(), want, rtol=1e-3, atol=1e-3)
        assert not torch.allclose(shuffled(x).flatten(), want, rtol=1e-2, atol=1e-2)


def test_a_channel_without_energy_gets_the_map_s_mean() -> None:
    b4 = EfficientNetAutoAttB4Detector().eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features, attention = b4._to_attention(x)

    def silent(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = features.clone()
        out[:, 4] = 0.0
        return out, attention

    b4._to_attention = silent  # type: ignore[method-assign]
    factor = attention_factor(b4, [x])
    assert float(factor[4]) == pytest.approx(float(attention.mean()), rel=1e-5)
    assert bool(torch.isfinite(factor).all())


@pytest.mark.slow
def test_without_folding_the_attention_the_grown_b7_would_differ() -> None:
    # Guards the check above: the constant attention has to be folded in.
    b4 = _scrambled_b4(attention_logit=0.3)
    b7 = grow(b4, torch.ones(b4.ATTENTION_CHANNELS)).eval()
    x = torch.randn(3, 3, SAME_PADDING_SIZE, SAME_PADDING_SIZE)
    with torch.no_grad():
        assert not torch.allclose(b7(x), b4(x), rtol=1e-3, atol=1e-3)


@pytest.mark.slow
def test_the_attention_factor_of_a_constant_map_is_that_constant() -> None:
    b4 = _scrambled_b4(attention_logit=-0.7)
    factor = attention_factor(b4, [torch.randn(2, 3, 64, 64)])
    assert factor.shape == (b4.ATTENTION_CHANNELS,)
    torch.testing.assert_close(
        factor, torch.full_like(factor, float(torch.sigmoid(-0.7 * torch.ones(()))))
    )


@pytest.mark.slow
def test_a_varying_attention_map_gives_a_factor_per_channel_inside_its_range() -> None:
    b4 = _scrambled_b4(attention_logit=None)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        attention = b4.attention_map(x)
    factor = attention_factor(b4, [x])
    assert float(factor.min()) >= float(attention.min()) - 1e-6
    assert float(factor.max()) <= float(attention.max()) + 1e-6
    assert float(factor.std()) > 0.0


def test_the_attention_factor_needs_crops() -> None:
    with pytest.raises(GrowError, match="crops"):
        attention_factor(EfficientNetAutoAttB4Detector(), [])


@pytest.mark.slow
def test_a_factor_of_the_wrong_shape_is_refused() -> None:
    with pytest.raises(GrowError, match="shape"):
        grow(EfficientNetAutoAttB4Detector(), torch.ones(3), b7=EfficientNetB7Detector())


@pytest.mark.slow
def test_the_command_writes_a_checkpoint_that_b7_training_starts_from(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data", n_train=6, n_val=2)
    spec = REGISTRY.get(grow_mod.SOURCE_MEMBER)
    # A constant attention map and the input size where the paddings agree:
    # the B7 written must score the crops as the installed B4 does.
    crops = grow_mod._calibration_batches(data, SAME_PADDING_SIZE, 4, 0)[0]
    b4 = _scrambled_b4(attention_logit=0.3, inputs=crops)  # batch norms fitted to such crops
    manifest = save_weights(
        b4.state_dict(),
        spec,
        tmp_path / "weights",
        input_size=SAME_PADDING_SIZE,
        quantization="fp32",
    )
    out = tmp_path / "grown.pt"
    grow_mod.main(
        [
            *("--weights", str(tmp_path / "weights"), "--data", str(data)),
            *("--out", str(out), "--crops", "4"),
        ]
    )
    ckpt = torch.load(out, map_location="cpu", weights_only=True)
    assert ckpt["member"] == grow_mod.TARGET_MEMBER
    assert ckpt["grown_from"]["weights_sha256"] == manifest.weights_sha256
    factor = torch.tensor(ckpt["grown_from"]["attention_factor"])
    assert factor.shape == (EfficientNetAutoAttB4Detector.ATTENTION_CHANNELS,)
    torch.testing.assert_close(
        factor, torch.full_like(factor, float(torch.sigmoid(torch.tensor(0.3))))
    )
    model = initial_model(REGISTRY.get(grow_mod.TARGET_MEMBER), out).eval()
    assert isinstance(model, EfficientNetB7Detector)
    with torch.no_grad():
        want = b4(crops).flatten()
        assert float(want.std()) > 1e-3
        torch.testing.assert_close(model(crops).flatten(), want, rtol=1e-3, atol=1e-3)
