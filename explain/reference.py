"""Frames of a reference (claimed original) at the submission's times."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from ensemble.config import MediaLimits
from ensemble.errors import InvalidMediaError
from ensemble.media import LoadedMedia, RGBImage, frames_at_times, load_media
from explain.errors import InvalidReferenceError

logger = logging.getLogger(__name__)


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
