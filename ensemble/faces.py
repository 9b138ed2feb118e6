"""Finding faces in frames with BlazeFace, at every scale a frame needs.

BlazeFace's front model sees a 128x128 picture and finds faces that fill a
fair part of it. A 1080p frame squeezed to 128 pixels loses small faces, so,
as polimi-ispl/icpr2020dfdc does, each frame is also cut into overlapping
square tiles, each detected on its own. Here the tiles form a small pyramid
(tiles of the frame's short side, then of half that on large frames) and the
whole (letterboxed) frame is detected too, for faces larger than a tile.
Detections touching a tile edge inside the frame are dropped (the face is cut;
a neighbouring tile or the whole frame sees it entire), and weighted NMS merges
the rest. In a video the finest tiles run on every fourth frame, and on the
others only around the small faces those frames show (``FaceDetector.detect``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import numpy.typing as npt
import torch

from ensemble.blazeface import (
    INPUT_SIZE,
    BlazeFaceNet,
    Detection,
    box_iou,
    decode,
    default_tflite_path,
    load_blazeface_net,
    ssd_anchors,
    tflite_sha256,
    weighted_nms,
)
from ensemble.config import FaceConfig
from ensemble.errors import NonFiniteScoreError
from ensemble.media import RGBImage
from ensemble.runtime import check_device, resolve_backend, runner_for_module

# The finest tiles are half the frame's short side, but never smaller than this.
MIN_TILE = 400
# Neighbouring tiles overlap by at least a third of a tile, so any face up to
# a third of a tile wide lies whole inside some tile; larger faces are found
# whole at the next coarser level, where tiles are twice as large.
TILE_STRIDE_FRACTION = 2 / 3
# A detection closer than this share of the tile to an inner tile edge is cut.
EDGE_MARGIN_FRACTION = 0.01
# The finest tiles are probed on every this-many-th frame (FaceDetector.detect):
# a face kept by tracking is in at least min_track_fraction (0.15) of the
# frames, 5 of 32, and any 4 frames in a row hold a probed one.
FINE_PROBE_EVERY = 4
# Frames are fed to the detector in batches of this many views.
DETECT_BATCH = 32
# Calls that TorchScript's profiling executor needs before its graph is final.
JIT_WARMUP_CALLS = 3


def detector_backend(backend: str, device: str) -> Literal["torch", "onnxruntime", "openvino"]:
    """What runs BlazeFace. ``auto``: the traced and frozen TorchScript graph
    whatever runs the members, because it is the fastest here for this
    network's many small fp32 layers (the 608 views of the 1080p benchmark
    clip: 0.78 s, against 1.5 s on ONNX Runtime and 1.7 s on OpenVINO fp32;
    OpenVINO bf16 took 1.0 s and moves boxes and scores, and detections
    stay fp32 so the faces found never depend on the precision). A backend
    named explicitly is used as asked."""
    if backend == "auto":
        resolve_backend(backend, device)  # refuses what auto would refuse
        return "torch"
    return resolve_backend(backend, device)


@dataclass(frozen=True)
class View:
    """A square region of a frame fed to the detector: ``side`` frame pixels
    from ``(x0, y0)``; parts beyond the frame are black."""

    x0: int
    y0: int
    side: int
    is_tile: bool


def _starts(length: int, side: int) -> list[int]:
    if length <= side:
        return [0]
    n = math.ceil((length - side) / (side * TILE_STRIDE_FRACTION)) + 1
    return [round(k * (length - side) / (n - 1)) for k in range(n)]


def tile_sides(height: int, width: int) -> list[int]:
    """Tile sizes, coarse to fine: the frame's short side, and its half when
    that is still at least ``MIN_TILE`` pixels."""
    short, long = min(height, width), max(height, width)
    sides = [] if short == long else [short]
    if short // 2 >= MIN_TILE:
        sides.append(short // 2)
    return sides


def plan_views(height: int, width: int) -> list[View]:
    """The whole (letterboxed) frame plus tiles at each level of the pyramid."""
    views = [View(0, 0, max(height, width), is_tile=False)]
    for side in tile_sides(height, width):
        views += [
            View(x, y, side, True) for y in _starts(height, side) for x in _starts(width, side)
        ]
    return views


def _levels(frame: RGBImage, sides: Iterable[int]) -> dict[int, RGBImage]:
    """The frame resized once per pyramid level (tile side), so that a tile
    of that level is 128x128 there."""
    h, w = frame.shape[:2]
    scaled: dict[int, RGBImage] = {}
    # Finest level first; each coarser level is resized from the one before it
    # rather than from the full frame (area averaging composes, and a 1080p
    # frame is then read once instead of once per level).
    source = frame
    for side in sorted(set(sides)):
        scale = INPUT_SIZE / side
        size = (max(round(w * scale), 1), max(round(h * scale), 1))
        interp = cv2.INTER_AREA if size[0] < source.shape[1] else cv2.INTER_LINEAR
        source = np.asarray(cv2.resize(source, size, interpolation=interp), np.uint8)
        scaled[side] = source
    return scaled


def _render_views(levels: dict[int, RGBImage], views: Sequence[View]) -> list[RGBImage]:
    """Each view at 128x128, cut from its level rather than resized on its own."""
    out: list[RGBImage] = []
    for view in views:
        scale = INPUT_SIZE / view.side
        level = levels[view.side]
        x0, y0 = round(view.x0 * scale), round(view.y0 * scale)
        tile = level[y0 : y0 + INPUT_SIZE, x0 : x0 + INPUT_SIZE]
        if tile.shape[:2] != (INPUT_SIZE, INPUT_SIZE):
            canvas = np.zeros((INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)
            canvas[: tile.shape[0], : tile.shape[1]] = tile
            tile = canvas
        out.append(tile)
    return out


def _is_cut(row: npt.NDArray[np.floating], view: View, h: int, w: int) -> bool:
    """Does a tile detection (tile-relative coordinates) touch an inner edge?"""
    if not view.is_tile:
        return False
    m = EDGE_MARGIN_FRACTION
    x0, y0, x1, y1 = row[:4]
    return bool(
        (x0 < m and view.x0 > 0)
        or (y0 < m and view.y0 > 0)
        or (x1 > 1 - m and view.x0 + view.side < w)
        or (y1 > 1 - m and view.y0 + view.side < h)
    )


def _is_fine(view: View, height: int, width: int) -> bool:
    """A tile of the finest level: smaller than the frame's short side."""
    return view.is_tile and view.side < min(height, width)


def fine_probe_frames(n: int) -> list[int]:
    """The frames whose finest tiles are detected first: every
    ``FINE_PROBE_EVERY``-th one, from the first."""
    return list(range(0, n, FINE_PROBE_EVERY))


# Detections in some views of a frame: rows in frame pixels, and their scores.
_Found = tuple[list[npt.NDArray[np.float64]], list[float]]


def _joined(a: _Found, b: _Found) -> _Found:
    return a[0] + b[0], a[1] + b[1]


def _flat(per_view: Sequence[_Found]) -> _Found:
    """The detections of several views together."""
    return [r for rows, _ in per_view for r in rows], [s for _, scores in per_view for s in scores]


def _new_faces(
    faces: Sequence[Detection], known: Sequence[Detection], iou: float
) -> list[Detection]:
    """Those of ``faces`` at none of the places of ``known``."""
    if not known:
        return list(faces)
    boxes = np.array([d.box for d in known], dtype=np.float64)
    return [d for d in faces if box_iou(np.array(d.box, dtype=np.float64), boxes).max() < iou]


def _faces_near(small: dict[int, list[Detection]], frame: int) -> list[Detection]:
    """The faces found by probes less than a probe interval from ``frame``."""
    return [d for i, faces in small.items() if abs(i - frame) < FINE_PROBE_EVERY for d in faces]


def _reaches(view: View, faces: Sequence[Detection]) -> bool:
    """Could any of ``faces``, moved by up to its own size, lie whole in ``view``?"""
    for d in faces:
        x0, y0, x1, y1 = d.box
        w, h = x1 - x0, y1 - y0
        if (
            view.x0 <= x0 + w
            and x1 - w <= view.x0 + view.side
            and view.y0 <= y0 + h
            and y1 - h <= view.y0 + view.side
        ):
            return True
    return False


class FaceDetector:
    """BlazeFace over tiles and the whole frame, batched across frames."""

    def __init__(
        self,
        net: BlazeFaceNet,
        config: FaceConfig,
        device: str = "cpu",
        *,
        freeze: bool = True,
        backend: str = "torch",
        cache_dir: Path | None = None,
        weights_sha256: str | None = None,
        threads: int = 0,
    ) -> None:
        check_device(device)
        self.net = net.to(device).eval().to(memory_format=torch.channels_last)
        self.config = config
        self.device = device
        self.anchors = torch.from_numpy(ssd_anchors())
        self.backend = detector_backend(backend, device)
        self._run_net: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] = self.net
        if self.backend != "torch":
            # In fp32 whatever the members' precision: detections decide
            # which faces are scored at all, and fp32 keeps them identical
            # to the reference network's.
            example = torch.zeros(2, 3, INPUT_SIZE, INPUT_SIZE)
            with torch.no_grad():
                runner = runner_for_module(
                    self.backend,
                    net.to(memory_format=torch.contiguous_format),
                    example,
                    tag="blazeface_front",
                    weights_sha256=weights_sha256,
                    cache_dir=cache_dir,
                    output_names=("boxes", "scores"),
                    threads=threads,
                )

            def run_compiled(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                boxes, scores = runner(x.contiguous().numpy(), ("boxes", "scores"))
                return torch.from_numpy(boxes), torch.from_numpy(scores)

            self._run_net = run_compiled
            return
        # On CPU a traced and frozen graph (convolutions fused with their
        # activations, no Python per layer) runs the many small BlazeFace
        # layers about a quarter faster than eager; bench/speed.py measures it.
        if freeze and device == "cpu":
            example = torch.zeros(DETECT_BATCH, 3, INPUT_SIZE, INPUT_SIZE).contiguous(
                memory_format=torch.channels_last
            )
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer notes on shape arithmetic
                traced = torch.jit.trace(self.net, example)  # type: ignore[no-untyped-call]
                self._run_net = torch.jit.freeze(traced)
                # TorchScript specialises the graph over its first calls; do
                # that here, once per process, not inside the first analysis.
                with torch.inference_mode():
                    for _ in range(JIT_WARMUP_CALLS):
                        self._run_net(example)

    @classmethod
    def load(
        cls,
        config: FaceConfig,
        cache_dir: Path | None,
        device: str = "cpu",
        *,
        backend: str = "torch",
        threads: int = 0,
    ) -> FaceDetector:
        source = default_tflite_path()
        return cls(
            load_blazeface_net(source, cache_dir=cache_dir),
            config,
            device,
            backend=backend,
            cache_dir=cache_dir,
            weights_sha256=tflite_sha256(source),
            threads=threads,
        )

    @torch.inference_mode()
    def _run(
        self, batch: npt.NDArray[np.uint8]
    ) -> list[tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]]:
        out: list[tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]] = []
        for start in range(0, len(batch), DETECT_BATCH):
            x = torch.from_numpy(batch[start : start + DETECT_BATCH]).to(self.device)
            # NHWC uint8 viewed as NCHW is already channels_last.
            x = x.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
            boxes, scores = self._run_net(x)
            if not (torch.isfinite(boxes).all() and torch.isfinite(scores).all()):
                # NaN scores fail every threshold: a broken detector (a damaged
                # weights cache, a faulty runtime) would read as "no face".
                raise NonFiniteScoreError(
                    "the face detector returned values that are not finite numbers (a fault "
                    "of its weights or runtime): no face could be looked for"
                )
            out += decode(
                boxes.float().cpu(), scores.float().cpu(), self.anchors, self.config.min_score
            )
        return out

    def detect(self, frames: Sequence[RGBImage]) -> list[list[Detection]]:
        """Faces in each frame, best first, in frame pixel coordinates, at
        most ``max_faces_per_frame`` a frame (:meth:`detect_all` says how
        many there were)."""
        limit = self.config.max_faces_per_frame
        return [faces[:limit] for faces in self.detect_all(frames)]

    def detect_all(
        self, frames: Sequence[RGBImage], too_small: list[int] | None = None
    ) -> list[list[Detection]]:
        """Every face in each frame, best first, in frame pixel coordinates;
        ``too_small``, when given, receives each frame's count of faces left
        out as narrower than ``min_face_px``.

        The finest tiles (on frames large enough to have them) are most of
        the views: 15 of a 1080p frame's 19. They matter only for faces too
        small for the coarser views, and such a face stays in the picture,
        near where it was, for a while. So they run first on every
        ``FINE_PROBE_EVERY``-th frame only (the probes). Where the probes find
        no face the coarser views missed, no frame uses them. Otherwise each
        frame uses those of its finest tiles in which such a face, found by
        the probes on either side of it (or by itself, for a probe), could
        lie whole after moving by up to its own size; and no others."""
        n = len(frames)
        sizes = [(f.shape[0], f.shape[1]) for f in frames]
        plans = [plan_views(h, w) for h, w in sizes]
        levels = [_levels(f, (v.side for v in plan)) for f, plan in zip(frames, plans, strict=True)]
        coarse = [[v for v in plans[i] if not _is_fine(v, *sizes[i])] for i in range(n)]
        fine = [[v for v in plans[i] if _is_fine(v, *sizes[i])] for i in range(n)]
        probes = [i for i in fine_probe_frames(n) if fine[i]]
        # One pass for the coarse views of every frame and the probes' finest tiles.
        jobs = [(i, coarse[i]) for i in range(n)] + [(i, fine[i]) for i in probes]
        first = self._detect_views(levels, sizes, jobs)
        found = [_flat(hits) for hits in first[:n]]
        coarse_small = [0] * n
        coarse_faces = [self._merge(*found[i], *sizes[i], coarse_small, i) for i in range(n)]
        probed = dict(zip(probes, first[n:], strict=True))
        # The faces only the finest tiles find, in each probe (and those of
        # them too small to judge, counted as the coarse views' are).
        probe_small = [0] * n
        small = {
            i: _new_faces(
                self._merge(*_joined(found[i], _flat(hits)), *sizes[i], probe_small, i),
                coarse_faces[i],
                self.config.nms_iou,
            )
            for i, hits in probed.items()
        }
        if not any(small.values()):
            if too_small is not None:
                too_small[:] = [max(c, p) for c, p in zip(coarse_small, probe_small, strict=True)]
            return coarse_faces
        near = [
            [v for v in fine[i] if _reaches(v, _faces_near(small, i))] if fine[i] else []
            for i in range(n)
        ]
        extra = {
            i: _flat([h for v, h in zip(fine[i], hits, strict=True) if v in near[i]])
            for i, hits in probed.items()
        }
        rest = [i for i in range(n) if near[i] and i not in probed]
        more = self._detect_views(levels, sizes, [(i, near[i]) for i in rest])
        extra.update((i, _flat(hits)) for i, hits in zip(rest, more, strict=True))
        final_small = [0] * n
        faces = [
            self._merge(*_joined(found[i], extra.get(i, ([], []))), *sizes[i], final_small, i)
            for i in range(n)
        ]
        if too_small is not None:
            too_small[:] = [max(f, p) for f, p in zip(final_small, probe_small, strict=True)]
        return faces

    def _detect_views(
        self,
        levels: Sequence[dict[int, RGBImage]],
        sizes: Sequence[tuple[int, int]],
        jobs: Sequence[tuple[int, Sequence[View]]],
    ) -> list[list[_Found]]:
        """Detections (frame pixel rows, scores) in each view of each job (a
        frame's index and some of its views), all views in one batch through
        the network; faces cut at an inner tile edge are left out."""
        tiles = [t for i, views in jobs for t in _render_views(levels[i], views)]
        batch = np.stack(tiles) if tiles else np.zeros((0, INPUT_SIZE, INPUT_SIZE, 3), np.uint8)
        raw = iter(self._run(batch))
        out: list[list[_Found]] = []
        for i, views in jobs:
            h, w = sizes[i]
            per_view: list[_Found] = []
            for view in views:
                rows: list[npt.NDArray[np.float64]] = []
                scores: list[float] = []
                cand, cand_scores = next(raw)
                for row, score in zip(cand, cand_scores, strict=True):
                    if _is_cut(row, view, h, w):
                        continue
                    px = row.astype(np.float64) * view.side
                    px[0::2] += view.x0
                    px[1::2] += view.y0
                    rows.append(px)
                    scores.append(float(score))
                per_view.append((rows, scores))
            out.append(per_view)
        return out

    def _merge(
        self,
        rows: list[npt.NDArray[np.float64]],
        scores: list[float],
        h: int,
        w: int,
        too_small: list[int] | None = None,
        frame: int = 0,
    ) -> list[Detection]:
        """The views' detections of one frame merged (weighted NMS), faces
        narrower than ``min_face_px`` left out (counted in ``too_small[frame]``)."""
        if not rows:
            return []
        merged = weighted_nms(np.stack(rows), np.asarray(scores), self.config.nms_iou)
        faces: list[Detection] = []
        for row, score in merged:
            x0, y0, x1, y1 = (float(v) for v in row[:4])
            x0, y0, x1, y1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(w)), min(y1, float(h))
            if min(x1 - x0, y1 - y0) < self.config.min_face_px:
                if too_small is not None:
                    too_small[frame] += 1
                continue
            kps = tuple((float(row[4 + 2 * k]), float(row[5 + 2 * k])) for k in range(6))
            faces.append(Detection((x0, y0, x1, y1), score, kps))
        faces.sort(key=lambda d: -d.score)
        return faces
