"""Face crops for training from labelled videos, with the serving pipeline.

The same stages as :func:`ensemble.pipeline.analyze` (``load_media`` sampling,
:class:`~ensemble.faces.FaceDetector`, :func:`~ensemble.tracks.link_tracks`,
:func:`~ensemble.crops.crop_face` with each member's crop policy and input
size), so a member is trained on exactly the crops it will be served. Each
crop's six keypoints are written in crop pixels, so SBI and the blackout need
no second detection.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ensemble.config import AnalysisConfig
from ensemble.crops import Box, CropPolicy, crop_face, crop_region
from ensemble.faces import FaceDetector
from ensemble.media import RGBImage, load_media
from ensemble.registry import MemberSpec
from ensemble.tracks import link_tracks, looks_of

Keypoints = tuple[tuple[float, float], ...]


def crop_keypoints(
    frame_shape: tuple[int, int],
    box: Box,
    keypoints: Sequence[Sequence[float]],
    policy: CropPolicy,
    size: int,
) -> Keypoints:
    """Frame-pixel keypoints mapped into the crop :func:`crop_face` cuts
    (the same geometry, computed without the image)."""
    kp = np.asarray(keypoints, dtype=np.float64).reshape(-1, 2)
    x0, y0, x1, y1 = crop_region(frame_shape, box, policy)
    if policy.kind == "square":
        out = (kp - (x0, y0)) * (size / max(x1 - x0, 1))
    else:
        rw, rh = max(x1 - x0, 1), max(y1 - y0, 1)
        scale = size / max(rh, rw)
        nw, nh = max(round(rw * scale), 1), max(round(rh * scale), 1)
        top, left = (size - nh) // 2, (size - nw) // 2
        out = (kp - (x0, y0)) * (nw / rw, nh / rh) + (left, top)
    return tuple((float(x), float(y)) for x, y in out)


@dataclass(frozen=True)
class FaceCrop:
    member: str
    person: int
    position: int  # sampled frame position
    frame: int  # frame index in the video
    image: RGBImage
    keypoints: Keypoints


def extract_faces(
    path: Path,
    config: AnalysisConfig,
    detector: FaceDetector,
    members: Sequence[tuple[MemberSpec, int, CropPolicy]],
) -> list[FaceCrop]:
    """Every tracked face of ``path``, cropped for each ``(spec, input_size, policy)``.
    Raises :class:`ensemble.errors.InvalidMediaError` for unusable media."""
    media = load_media(path, config.limits, config.frames)
    images = [f.image for f in media.frames]
    detections = detector.detect(images)
    looks = looks_of(images, detections)  # people told apart as the analyses tell them
    times = [f.time_s for f in media.frames]
    faces = config.faces
    tracks = link_tracks(detections, faces.track_iou, faces.min_track_fraction, looks, times)
    crops = []
    for track in tracks:
        for pos, det in track.detections:
            frame = images[pos]
            for spec, size, policy in members:
                crops.append(
                    FaceCrop(
                        member=spec.name,
                        person=track.id,
                        position=pos,
                        frame=media.frames[pos].index,
                        image=crop_face(frame, det.box, policy, size),
                        keypoints=crop_keypoints(
                            frame.shape[:2], det.box, det.keypoints, policy, size
                        ),
                    )
                )
    return crops
