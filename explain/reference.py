"""Frames of a reference (claimed original) at the submission's times."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ensemble.config import MediaLimits
from ensemble.errors import InvalidMediaError
from ensemble.media import LoadedMedia, RGBImage, display_rotation, load_media, upright
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
    start). A still image serves every time."""
    checked = check_reference(path, limits)
    if checked.info.kind == "image" or not times:
        image = checked.frames[0].image
        return dict.fromkeys(times, image)
    import av

    targets = sorted(set(times))
    out: dict[float, RGBImage] = {}
    try:
        container: Any = av.open(str(path))
    except av.error.FFmpegError as e:  # checked above; a race or a device error
        raise InvalidReferenceError(f"The reference video could not be read: {e}") from e
    try:
        stream: Any = container.streams.video[0]
        stream.thread_type = "AUTO"
        start: int | None = None
        prev: tuple[Any, float] | None = None
        i = 0
        for frame in container.decode(stream):
            if frame.pts is None:
                continue
            start = frame.pts if start is None else start
            t = float((frame.pts - start) * stream.time_base)
            while i < len(targets) and t >= targets[i]:
                target = targets[i]
                use_prev = prev is not None and abs(prev[1] - target) < abs(t - target)
                chosen = prev[0] if use_prev and prev is not None else frame
                out[target] = upright(chosen.to_ndarray(format="rgb24"), display_rotation(chosen))
                i += 1
            if i == len(targets):
                break
            prev = (frame, t)
        for target in targets[i:]:
            if prev is None:
                break
            # the reference is shorter
            out[target] = upright(prev[0].to_ndarray(format="rgb24"), display_rotation(prev[0]))
    except av.error.FFmpegError:
        logger.warning("reference decoding stopped at a damaged packet", exc_info=True)
    finally:
        container.close()
    if not out:
        raise InvalidReferenceError("No frame of the reference video could be decoded.")
    return out
