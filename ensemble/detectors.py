"""The three detector architectures.

Every detector honours one contract: ``forward(x: [B, 3, H, W]) -> [B, 1]``
fake-logit, where ``x`` is the member's normalised face crop. Ensembling,
calibration and Grad-CAM then treat all members alike. Architectures are built
without pretrained weights; weights are loaded separately (``ensemble.weights``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


class ResNet50Detector(nn.Module):
    """timm ResNet-50 backbone with the head of "A ResNet-based system for
    real-time detection of deepfake videos" (second variation): global pool,
    Dense 256 ReLU, BatchNorm, Dropout 0.7, Dense 128 ReLU, BatchNorm,
    Dropout 0.7, Dense 64 ReLU, Dense 1."""

    DROPOUT = 0.7

    def __init__(self) -> None:
        super().__init__()
        import timm

        self.backbone = timm.create_model("resnet50", pretrained=False, num_classes=0)
        self.head = nn.Sequential(
            nn.Linear(2048, 256),
            nn.ReLU(inplace=True),
            nn.BatchNorm1d(256),
            nn.Dropout(self.DROPOUT),
            nn.Linear(256, 128),
            nn.ReLU(inplace=True),
            nn.BatchNorm1d(128),
            nn.Dropout(self.DROPOUT),
            nn.Linear(128, 64),
            nn.ReLU(inplace=True),
            nn.Linear(64, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.head(self.backbone(x))
        return out


class EfficientNetB7Detector(nn.Module):
    """timm ``tf_efficientnet_b7`` encoder, average pool, dropout and one
    linear unit: the layout of selimsef/dfdc_deepfake_challenge's
    ``DeepFakeClassifier``, so its published checkpoints load with
    ``strict=True``. The encoder keeps timm's 1000-class classifier because
    those checkpoints carry it; it is never run."""

    DROPOUT = 0.0

    def __init__(self) -> None:
        super().__init__()
        import timm

        self.encoder: Any = timm.create_model("tf_efficientnet_b7", pretrained=False)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(self.DROPOUT)
        self.fc = nn.Linear(2560, 1)

    def forward(self, x: Tensor) -> Tensor:
        features = self.encoder.forward_features(x)
        out: Tensor = self.fc(self.dropout(self.avg_pool(features).flatten(1)))
        return out


class EfficientNetAutoAttB4Detector(nn.Module):
    """efficientnet-pytorch EfficientNet-B4 with a learned attention map after
    block 9 (the last 56-channel block): a 1x1 convolution to one channel and a
    sigmoid, multiplied into the features; then a linear head. The layout of
    polimi-ispl/icpr2020dfdc's ``EfficientNetAutoAttB4``."""

    ATTENTION_AFTER_BLOCK = 9
    ATTENTION_CHANNELS = 56

    def __init__(self) -> None:
        super().__init__()
        from efficientnet_pytorch import EfficientNet

        net = EfficientNet.from_name("efficientnet-b4")
        # Plain swish traces and compiles; the memory-efficient one is a custom autograd op.
        net.set_swish(memory_efficient=False)
        del net._fc
        net.attconv = nn.Conv2d(self.ATTENTION_CHANNELS, 1, kernel_size=1)
        self.efficientnet = net
        # The head's swish as a module of its own (``net._swish`` also serves
        # the stem): the Grad-CAM layer, so maps are taken after the
        # activation, as the other members' are. No weights, so checkpoints
        # keep polimi's keys.
        self.head_act = nn.SiLU()
        self.classifier = nn.Linear(1792, 1)
        self._n_blocks = len(net._blocks)

    def _blocks(self, x: Tensor, start: int, stop: int) -> Tensor:
        net = self.efficientnet
        rate = net._global_params.drop_connect_rate or 0.0
        for idx in range(start, stop):
            x = net._blocks[idx](x, drop_connect_rate=rate * idx / self._n_blocks)
        return x

    def _to_attention(self, x: Tensor) -> tuple[Tensor, Tensor]:
        net = self.efficientnet
        x = net._swish(net._bn0(net._conv_stem(x)))
        x = self._blocks(x, 0, self.ATTENTION_AFTER_BLOCK + 1)
        return x, torch.sigmoid(net.attconv(x))

    def _features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        net = self.efficientnet
        x, attention = self._to_attention(x)
        x = self._blocks(x * attention, self.ATTENTION_AFTER_BLOCK + 1, self._n_blocks)
        x = self.head_act(net._bn1(net._conv_head(x)))
        return x, attention

    def forward(self, x: Tensor) -> Tensor:
        logit, _ = self.forward_with_attention(x)
        return logit

    def forward_with_attention(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The logit and the attention map ``[B, 1, h, w]`` in ``[0, 1]``."""
        features, attention = self._features(x)
        pooled = self.efficientnet._avg_pooling(features).flatten(1)
        out: Tensor = self.classifier(self.efficientnet._dropout(pooled))
        return out, attention

    def attention_map(self, x: Tensor) -> Tensor:
        """The attention map ``[B, 1, h, w]`` alone, running the network only
        as far as the attention layer (blocks 0 to 9 of 32): what
        explanations need for every face."""
        return self._to_attention(x)[1]


class TinyDetector(nn.Module):
    """A few-thousand-parameter network with the same contract, for tests and
    smoke runs. Never used for real verdicts."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 1)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.fc(self.pool(self.features(x)).flatten(1))
        return out
