"""Growing a trained EfficientNet-B4 member into an EfficientNet-B7 to start
B7 training from (function-preserving expansion, after Net2Net: Chen,
Goodfellow and Shlens, ICLR 2016).

No ImageNet weights can be had here, and B7 learns slowly from scratch on a
CPU (about 1.4 images/s at 224 px without bf16 kernels). The two networks
are the same family: seven stages of MBConv blocks with the same kernels,
strides and expansion ratios, B7 wider in every layer and deeper in every
stage. So a B7 can start out computing what the project's trained B4
computes, and training goes on from there:

* Wider: each B7 channel is a copy of a B4 channel (the first ones in order,
  the rest drawn at random). A layer reading copied channels splits the
  original's input weight among the copies in random shares that sum to one,
  so the sum is unchanged and the copies get different gradients (equal
  shares would keep them identical forever).
* Deeper: B7's extra blocks in a stage follow B4's blocks and start as the
  identity: their last batch norm has weight and bias 0, so the residual
  branch adds nothing until training moves them.
* The attention map: ``EfficientNetAutoAttB4`` multiplies the features
  after block 9 by a learned map; B7 has no such layer. It is replaced by
  the per-channel factor that best fits the gating in least squares over
  some training crops (``E[x^2 a] / E[x^2]``), folded into the next
  convolution. This is the one approximation, besides one padding: B4's
  convolutions pad as for a 380 px input, and at 224 px the 5x5 stride-2
  convolution of stage 2 pads (2, 2) there where B7's pads (1, 2). At an
  input size whose layer sizes have the same parities as 380's (60 px, say)
  and with a constant attention map the grown B7 reproduces B4's logit.

    python -m ensemble.training.grow --weights weights \\
        --data ../shared/datasets/dfdc_faces --out ~/.cache/trusttrace/effnet_b7-grown.pt

writes a checkpoint that ``train_detector --member effnet_b7 --init-from``
starts from. The B4 here is the installed one, loaded as it is served.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ensemble.detectors import EfficientNetAutoAttB4Detector, EfficientNetB7Detector
from ensemble.errors import TrusttraceError

logger = logging.getLogger(__name__)

SOURCE_MEMBER = "effnet_autoatt_b4"
TARGET_MEMBER = "effnet_b7"
# Training crops the attention factor is fitted on, and their batch.
CALIBRATION_CROPS = 256
CALIBRATION_BATCH = 16


class GrowError(TrusttraceError, ValueError):
    """The source network cannot be grown into the target one."""


@dataclass(frozen=True)
class ChannelMap:
    """Which source channel each target channel copies (``source``), and
    each target channel's share of its source's outgoing weight
    (``share``; the shares of one source channel's copies sum to 1)."""

    source: Tensor
    share: Tensor

    @classmethod
    def widen(cls, n_old: int, n_new: int, gen: torch.Generator) -> ChannelMap:
        if n_new < n_old:
            raise GrowError(f"cannot narrow {n_old} channels to {n_new}")
        extra = torch.randint(0, n_old, (n_new - n_old,), generator=gen)
        source = torch.cat([torch.arange(n_old), extra])
        raw = 0.5 + torch.rand(n_new, generator=gen, dtype=torch.float64)
        total = torch.zeros(n_old, dtype=torch.float64).index_add_(0, source, raw)
        share = (raw / total[source]).to(torch.float32)
        return cls(source, share)

    @classmethod
    def same(cls, n: int) -> ChannelMap:
        return cls(torch.arange(n), torch.ones(n))


def _copy(dst: Tensor, src: Tensor) -> None:
    if dst.shape != src.shape:
        raise GrowError(f"shape {tuple(src.shape)} does not fit {tuple(dst.shape)}")
    with torch.no_grad():
        dst.copy_(src)


def _conv(dst: nn.Conv2d, src: nn.Conv2d, out_map: ChannelMap, in_map: ChannelMap) -> None:
    """A dense (or 1x1) convolution: rows copied by ``out_map``, columns by
    ``in_map`` and scaled by their shares."""
    weight = src.weight[out_map.source][:, in_map.source] * in_map.share[None, :, None, None]
    _copy(dst.weight, weight)
    if src.bias is not None and dst.bias is not None:
        _copy(dst.bias, src.bias[out_map.source])


def _depthwise(dst: nn.Conv2d, src: nn.Conv2d, channels: ChannelMap) -> None:
    _copy(dst.weight, src.weight[channels.source])


def _norm(dst: nn.Module, src: nn.Module, channels: ChannelMap) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        _copy(getattr(dst, name), getattr(src, name)[channels.source])


def _squeeze_excite(dst: Any, src: Any, channels: ChannelMap, gen: torch.Generator) -> None:
    """timm ``SqueezeExcite`` from efficientnet-pytorch's ``_se_reduce`` /
    ``_se_expand``: both gate the same (mapped) channels."""
    reduced = ChannelMap.widen(src._se_reduce.out_channels, dst.conv_reduce.out_channels, gen)
    _conv(dst.conv_reduce, src._se_reduce, reduced, channels)
    _conv(dst.conv_expand, src._se_expand, channels, reduced)


def _identity(block: Any) -> None:
    """Zero a residual block's last batch norm: the block passes its input on."""
    if not getattr(block, "has_skip", False):
        raise GrowError(f"{type(block).__name__} without a skip cannot start as the identity")
    norm = block.bn3 if hasattr(block, "bn3") else block.bn2
    with torch.no_grad():
        norm.weight.zero_()
        norm.bias.zero_()


def _block(
    dst: Any, src: Any, in_map: ChannelMap, out_map: ChannelMap, gen: torch.Generator
) -> None:
    """One efficientnet-pytorch ``MBConvBlock`` into a timm block: a
    ``DepthwiseSeparableConv`` (no expansion) or an ``InvertedResidual``."""
    expands = hasattr(src, "_expand_conv")
    if expands != hasattr(dst, "conv_pwl"):
        raise GrowError("source and target blocks differ in kind")
    if expands:
        mid = ChannelMap.widen(src._expand_conv.out_channels, dst.conv_pw.out_channels, gen)
        _conv(dst.conv_pw, src._expand_conv, mid, in_map)
        _norm(dst.bn1, src._bn0, mid)
        _depthwise(dst.conv_dw, src._depthwise_conv, mid)
        _norm(dst.bn2, src._bn1, mid)
        _squeeze_excite(dst.se, src, mid, gen)
        _conv(dst.conv_pwl, src._project_conv, out_map, mid)
        _norm(dst.bn3, src._bn2, out_map)
    else:
        _depthwise(dst.conv_dw, src._depthwise_conv, in_map)
        _norm(dst.bn1, src._bn1, in_map)
        _squeeze_excite(dst.se, src, in_map, gen)
        _conv(dst.conv_pw, src._project_conv, out_map, in_map)
        _norm(dst.bn2, src._bn2, out_map)


def _stages(b4: EfficientNetAutoAttB4Detector) -> list[list[Any]]:
    """B4's flat block list cut into its stages (a stage starts where the
    block arguments change: its first block's output width or stride)."""
    stages: list[list[Any]] = []
    previous = None
    for block in b4.efficientnet._blocks:
        args = block._block_args
        key = (args.kernel_size, args.expand_ratio, args.output_filters)
        if key != previous:
            stages.append([])
            previous = key
        stages[-1].append(block)
    return stages


def attention_factor(b4: EfficientNetAutoAttB4Detector, batches: Sequence[Tensor]) -> Tensor:
    """Per channel of the attended features, the factor ``E[x^2 a] / E[x^2]``
    that best replaces the spatial attention ``a`` in least squares, over
    ``batches`` of normalised crops (B4 in eval mode)."""
    b4.eval()
    num = torch.zeros(b4.ATTENTION_CHANNELS, dtype=torch.float64)
    den = torch.zeros(b4.ATTENTION_CHANNELS, dtype=torch.float64)
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            x, attention = b4._to_attention(batch)
            sq = x.double() ** 2
            num += (sq * attention.double()).sum(dim=(0, 2, 3))
            den += sq.sum(dim=(0, 2, 3))
            total += float(attention.double().sum())
            count += attention.numel()
    if not count:
        raise GrowError("the attention factor needs some crops")
    if not (torch.isfinite(num).all() and torch.isfinite(den).all()):
        raise GrowError("the source network gives non-finite features on these crops")
    # A channel that is zero on every crop: any factor fits; take the map's mean.
    factor = torch.where(den > 0, num / den.clamp_min(1e-300), total / count)
    return factor.float()


def grow(
    b4: EfficientNetAutoAttB4Detector,
    attention: Tensor,
    seed: int = 0,
    b7: EfficientNetB7Detector | None = None,
) -> EfficientNetB7Detector:
    """A B7 (``b7``, or a new one) that computes what ``b4`` computes, with
    the attention map replaced by the per-channel factor ``attention``
    (:func:`attention_factor`; a constant map ``c`` is ``attention = c``)."""
    if attention.shape != (b4.ATTENTION_CHANNELS,):
        raise GrowError(f"attention factor of shape {tuple(attention.shape)}")
    gen = torch.Generator().manual_seed(seed)
    b7 = b7 if b7 is not None else EfficientNetB7Detector()
    src, enc = b4.efficientnet, b7.encoder
    src_stages = _stages(b4)
    if len(src_stages) != len(enc.blocks):
        raise GrowError(f"{len(src_stages)} source stages for {len(enc.blocks)} target stages")

    channels = ChannelMap.widen(src._conv_stem.out_channels, enc.conv_stem.out_channels, gen)
    _conv(enc.conv_stem, src._conv_stem, channels, ChannelMap.same(3))
    _norm(enc.bn1, src._bn0, channels)
    attended = b4.ATTENTION_AFTER_BLOCK + 1  # blocks before the attention
    seen = 0
    for stage, (blocks, target) in enumerate(zip(src_stages, enc.blocks, strict=True)):
        if len(blocks) > len(target):
            raise GrowError(f"stage {stage}: {len(blocks)} source blocks for {len(target)}")
        first = target[0]
        width = first.conv_pwl if hasattr(first, "conv_pwl") else first.conv_pw
        out_map = ChannelMap.widen(blocks[0]._block_args.output_filters, width.out_channels, gen)
        for i, block in enumerate(blocks):
            _block(target[i], block, channels if i == 0 else out_map, out_map, gen)
            if seen + i == attended:
                # This first convolution reads the attended features.
                if not hasattr(first, "conv_pwl"):
                    raise GrowError("the attention must feed an expanding block")
                with torch.no_grad():
                    first.conv_pw.weight.mul_(attention[channels.source][None, :, None, None])
        for extra in list(target)[len(blocks) :]:
            _identity(extra)
        channels = out_map
        seen += len(blocks)
        if seen > attended and seen - len(blocks) < attended:
            raise GrowError("the attention does not sit at a stage boundary")

    head = ChannelMap.widen(src._conv_head.out_channels, enc.conv_head.out_channels, gen)
    _conv(enc.conv_head, src._conv_head, head, channels)
    _norm(enc.bn2, src._bn1, head)
    weight = b4.classifier.weight[:, head.source] * head.share[None, :]
    _copy(b7.fc.weight, weight)
    _copy(b7.fc.bias, b4.classifier.bias)
    return b7


def _calibration_batches(data: Path, size: int, limit: int, seed: int) -> list[Tensor]:
    from ensemble.registry import IMAGENET_MEAN, IMAGENET_STD
    from ensemble.training.data import limit_balanced, load_samples, read_rgb, resize_to, select

    samples = limit_balanced(select(load_samples(data), "train"), limit, seed)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    batches = []
    for start in range(0, len(samples), CALIBRATION_BATCH):
        images = [
            resize_to(read_rgb(s.path), None, size)[0]
            for s in samples[start : start + CALIBRATION_BATCH]
        ]
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
        batches.append((x - mean) / std)
    return batches


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, required=True, help="weights folder with B4")
    parser.add_argument("--data", type=Path, required=True, help="dataset (train split used)")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint to write")
    parser.add_argument("--crops", type=int, default=CALIBRATION_CROPS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    from ensemble.registry import REGISTRY
    from ensemble.weights import load_model

    b4, manifest = load_model(REGISTRY.get(SOURCE_MEMBER), args.weights)
    if not isinstance(b4, EfficientNetAutoAttB4Detector):
        raise GrowError(f"{SOURCE_MEMBER} did not load as {EfficientNetAutoAttB4Detector.__name__}")
    b4.eval()
    batches = _calibration_batches(args.data, manifest.input_size, args.crops, args.seed)
    factor = attention_factor(b4, batches)
    logger.info(
        "attention factor over %d crops: mean %.3f, range %.3f-%.3f",
        sum(len(b) for b in batches),
        float(factor.mean()),
        float(factor.min()),
        float(factor.max()),
    )
    b7 = grow(b4, factor, seed=args.seed).eval()
    with torch.no_grad():
        probe = batches[0]
        gap = (b7(probe) - b4(probe)).abs().max()
    logger.info("largest logit gap to B4 on %d calibration crops: %.3f", len(probe), float(gap))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "member": TARGET_MEMBER,
            "state_dict": b7.state_dict(),
            "grown_from": {
                "member": SOURCE_MEMBER,
                "weights_sha256": manifest.weights_sha256,
                "attention_factor": factor.tolist(),
                "seed": args.seed,
            },
        },
        args.out,
    )
    logger.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
