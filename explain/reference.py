"""Frames of a reference (claimed original) at the submission's times.

A reference video may not start where the submission does: a submission cut
from a longer original, or an original trimmed before it was handed in.
Comparing the frames at equal times from each file's start then compares
different moments, and the SSIM mask lights up with motion instead of
manipulation. :func:`reference_offset` finds the shift: each of the
submission's sampled frames and every frame of the reference become small
grey pictures, less their own video's mean picture (what never moves, which
says nothing about time); the shift whose pairs correlate best, on average,
is taken when it matches well and clearly better than no shift.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from ensemble.config import MediaLimits
from ensemble.errors import InvalidMediaError
from ensemble.media import LoadedMedia, RGBImage, frames_at_times, gray_thumbnails, load_media
from explain.errors import InvalidReferenceError

logger = logging.getLogger(__name__)

# Side of the grey pictures compared.
SIGNATURE_SIDE = 32
# Fewer sampled frames than this cannot place the submission in time.
MIN_PROBES = 4
# Mean correlation a shift needs (unrelated videos measured below 0.12, a
# trimmed re-encoded copy 0.80-0.99), and what it must gain over no shift.
MIN_SCORE = 0.5
MIN_GAIN = 0.05
# Decoding every frame of a longer reference costs more than it is worth
# (frames times pixels: about 1,200 frames of 1080p, a few seconds), and
# so does comparing with more frames than this (3 minutes at 30 fps; the
# pictures and their correlations then take a few tens of MB).
ALIGN_MAX_DECODE_PIXELS = 2_500_000_000
ALIGN_MAX_FRAMES = 5_400


@dataclass(frozen=True)
class TimeOffset:
    """Seconds to add to a submission time for the reference's same moment.
    ``aligned``: found with confidence (the reference matches); otherwise
    ``seconds`` is 0 and ``why`` says why it was not found."""

    seconds: float
    aligned: bool
    score: float | None = None
    why: str = ""


def check_reference(path: Path, limits: MediaLimits) -> LoadedMedia:
    """Open the reference with the submission's limits (one frame), or say why it cannot be used."""
    try:
        return load_media(path, limits, 1)
    except InvalidMediaError as e:
        raise InvalidReferenceError(f"The reference could not be used: {e}", e.code) from e


def frames_at(path: Path, times: Sequence[float], limits: MediaLimits) -> dict[float, RGBImage]:
    """The reference frame nearest to each of ``times`` (seconds from the
    start), upright and bounded as the submission's frames are
    (:func:`ensemble.media.frames_at_times`). A still image serves every
    time. Times whose frame could not be decoded (a reference damaged after
    its first frames) are left out: the explanations skip them."""
    checked = check_reference(path, limits)
    if checked.info.kind == "image" or not times:
        image = checked.frames[0].image
        return dict.fromkeys(times, image)
    try:
        out = frames_at_times(path, limits, times)
    except InvalidMediaError as e:
        raise InvalidReferenceError(f"The reference could not be used: {e}", e.code) from e
    missing = len(set(times)) - len(out)
    if missing:
        logger.warning("%d of %d reference frames could not be decoded", missing, len(set(times)))
    return out


def signature(image: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """A frame (RGB or grey) as the small grey picture that is compared."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    side = SIGNATURE_SIDE
    return np.asarray(cv2.resize(grey, (side, side), interpolation=cv2.INTER_AREA), np.uint8)


def _normalised(pictures: npt.NDArray[np.generic]) -> npt.NDArray[np.float32]:
    """Each picture, blurred, less the video's mean picture, as a unit vector
    (a picture equal to the mean becomes zeros: it matches nothing)."""
    flat = np.empty((len(pictures), pictures[0].size), np.float32)
    for i, p in enumerate(pictures):
        flat[i] = cv2.GaussianBlur(p.astype(np.float32), (3, 3), 0).ravel()
    flat -= flat.mean(axis=0, dtype=np.float64).astype(np.float32)
    flat -= flat.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(flat, axis=1, keepdims=True)
    out: npt.NDArray[np.float32] = np.divide(
        flat, norms, out=np.zeros_like(flat), where=norms > 1e-6
    )
    return out


def estimate_offset(
    probe_times: Sequence[float],
    probes: npt.NDArray[np.uint8],
    ref_times: npt.NDArray[np.floating],
    refs: npt.NDArray[np.uint8],
) -> TimeOffset:
    """The shift that best matches the submission's sampled frames
    (``probes`` at ``probe_times``) with every frame of the reference
    (``refs`` at ``ref_times``, sorted), tried in steps of the reference's
    frame period: the mean correlation of each probe with the reference
    frame nearest its shifted time, over shifts that keep at least a quarter
    of the probes (and ``MIN_PROBES``) inside the reference."""
    t = np.asarray(probe_times, np.float64)
    r = np.asarray(ref_times, np.float64)
    if len(t) < MIN_PROBES:
        return TimeOffset(0.0, False, why="too few frames were sampled to place them in time")
    steps = np.diff(r)
    steps = steps[steps > 0]
    if len(r) < MIN_PROBES or not len(steps):
        return TimeOffset(0.0, False, why="the reference has too few frames")
    period = float(np.median(steps))
    similarity = _normalised(probes) @ _normalised(refs).T  # [probes, reference frames]
    need = max(MIN_PROBES, math.ceil(len(t) / 4))

    def scores(shifts: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        wanted = t[:, None] + shifts[None, :]
        j = np.clip(np.searchsorted(r, wanted), 1, len(r) - 1)
        j = np.where(np.abs(wanted - r[j - 1]) <= np.abs(wanted - r[j]), j - 1, j)
        inside = np.abs(r[j] - wanted) <= period / 2 + 1e-6
        values = np.where(inside, similarity[np.arange(len(t))[:, None], j], 0.0)
        counts = inside.sum(axis=0)
        mean = values.sum(axis=0) / np.maximum(counts, 1)
        return np.where(counts >= need, mean, -np.inf)

    shifts = np.unique(np.round((r[None, :] - t[:, None]).ravel() / period)) * period
    found = scores(shifts)
    at_zero = float(scores(np.zeros(1))[0])
    best = int(np.argmax(found))
    score = float(found[best])
    if math.isfinite(score) and score >= MIN_SCORE and score - at_zero >= MIN_GAIN:
        return TimeOffset(float(shifts[best]), True, round(score, 4))
    if math.isfinite(at_zero) and at_zero >= MIN_SCORE:
        return TimeOffset(0.0, True, round(at_zero, 4))
    return TimeOffset(
        0.0,
        False,
        round(max(score, at_zero), 4) if math.isfinite(max(score, at_zero)) else None,
        why="no moment of the reference matches the submission's frames closely",
    )


def reference_offset(
    path: Path,
    probe_times: Sequence[float],
    probe_images: Sequence[RGBImage],
    limits: MediaLimits,
    max_decode_pixels: int = ALIGN_MAX_DECODE_PIXELS,
    max_frames: int = ALIGN_MAX_FRAMES,
) -> TimeOffset:
    """Where the submission's sampled frames (at ``probe_times``) lie in the
    reference video (:func:`estimate_offset`), or no shift and why not."""
    if len(probe_times) < MIN_PROBES:
        return TimeOffset(0.0, False, why="too few frames were sampled to place them in time")
    try:
        thumbs = gray_thumbnails(path, limits, SIGNATURE_SIDE, max_decode_pixels, max_frames)
    except InvalidMediaError as e:
        raise InvalidReferenceError(f"The reference could not be used: {e}", e.code) from e
    if thumbs is None:
        return TimeOffset(0.0, False, why="the reference is too long to search")
    ref_times, refs = thumbs
    probes = np.stack([signature(image) for image in probe_images])
    return estimate_offset(probe_times, probes, ref_times, refs)
