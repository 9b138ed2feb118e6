"""Reading images and sampling video frames, with limits checked first.

The type of a file is decided by its content, never by its name. Every failure
becomes a typed :class:`~ensemble.errors.InvalidMediaError` whose message a
person can act on.

Videos are sampled without decoding them whole: one demux pass (no decoding)
lists every frame's timestamp and the key frames; then, for each requested
frame, the decoder seeks to the key frame before it and decodes forward only
until that frame. Frames that are decoded on the way are never converted to
RGB, and stretches of the video holding no requested frame are never decoded.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps

from ensemble.config import MediaLimits
from ensemble.errors import (
    EmptyMediaError,
    MediaLimitError,
    NoVideoStreamError,
    UnreadableMediaError,
    UnsupportedMediaError,
)

logger = logging.getLogger(__name__)

MediaKind = Literal["image", "video"]
RGBImage = npt.NDArray[np.uint8]

IMAGE_FORMATS = ("jpeg", "png", "webp", "bmp")
VIDEO_FORMATS = ("mp4", "mov", "webm", "mkv", "avi")
MEDIA_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".mp4", ".m4v", ".mov", ".webm", ".mkv", ".avi"}
)
SUPPORTED_TEXT = "JPEG, PNG, WebP or BMP images and MP4, MOV, WebM, MKV or AVI videos"
_PIL_FORMATS = {"JPEG": "jpeg", "PNG": "png", "WEBP": "webp", "BMP": "bmp"}
# ISO-BMFF brands that are still images, not videos.
_IMAGE_BRANDS = (b"heic", b"heix", b"heif", b"mif1", b"msf1", b"avif", b"avis")
_AUDIO_BRANDS = (b"M4A ", b"M4B ", b"M4P ")
_SNIFF_BYTES = 4096
# Mean distance (in frames) between sampled frames from which non-reference
# frames are skipped while decoding.
SPARSE_GAP_FRAMES = 3


@dataclass(frozen=True)
class MediaType:
    kind: MediaKind
    format: str


@dataclass(frozen=True)
class MediaInfo:
    """What was learnt about the input before analysis."""

    kind: MediaKind
    format: str
    width: int
    height: int
    size_bytes: int
    sha256: str
    duration_s: float | None = None
    fps: float | None = None
    frame_count: int | None = None


@dataclass(frozen=True)
class Frame:
    """A decoded frame: its index in the video, presentation time and pixels."""

    index: int
    time_s: float
    image: RGBImage


@dataclass(frozen=True)
class DecodeStats:
    """How much work sampling took; lets tests and benchmarks check the
    cheap path is taken."""

    packets: int
    decoded: int
    converted: int
    seeks: int


@dataclass(frozen=True)
class LoadedMedia:
    info: MediaInfo
    frames: tuple[Frame, ...]
    stats: DecodeStats


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\r\n\t" for c in text)


def sniff(path: Path) -> MediaType:
    """Decide image or video, and which format, from the first bytes."""
    with path.open("rb") as fh:
        head = fh.read(_SNIFF_BYTES)
    if not head:
        raise UnreadableMediaError("The file is empty.")
    if head.startswith(b"\xff\xd8\xff"):
        return MediaType("image", "jpeg")
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return MediaType("image", "png")
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return MediaType("image", "webp")
    if head[:2] == b"BM" and len(head) >= 26:
        return MediaType("image", "bmp")
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return MediaType("video", "avi")
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return MediaType("video", "webm" if b"webm" in head[:64] else "mkv")
    box = head[4:8]
    if box == b"ftyp":
        brand = head[8:12]
        if brand in _IMAGE_BRANDS:
            raise UnsupportedMediaError(
                "HEIC/AVIF still images are not supported; please convert to JPEG or PNG."
            )
        if brand in _AUDIO_BRANDS:
            raise NoVideoStreamError("This is an audio file (M4A); it has no video to analyse.")
        return MediaType("video", "mov" if brand == b"qt  " else "mp4")
    if box in (b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"):
        return MediaType("video", "mov")
    what = "a text file" if _looks_like_text(head[:512]) else "an unknown format"
    raise UnsupportedMediaError(
        f"The file is not a supported image or video (it looks like {what}). "
        f"Supported: {SUPPORTED_TEXT}."
    )


def _check_size(path: Path, limits: MediaLimits) -> int:
    size = path.stat().st_size
    if size > limits.max_bytes:
        raise MediaLimitError(
            f"The file is {size / 2**20:.0f} MiB; the limit is {limits.max_bytes / 2**20:.0f} MiB."
        )
    return size


def _check_pixels(width: int, height: int, limits: MediaLimits) -> None:
    if width <= 0 or height <= 0:
        raise UnreadableMediaError("The media declares no picture size; it is corrupt.")
    if width * height > limits.max_pixels:
        raise MediaLimitError(
            f"The picture is {width}x{height} pixels ({width * height / 1e6:.0f} megapixels); "
            f"the limit is {limits.max_pixels / 1e6:.0f} megapixels."
        )


# --- Images -------------------------------------------------------------------


def read_image(path: Path, limits: MediaLimits, media_type: MediaType | None = None) -> LoadedMedia:
    """Decode an image, with EXIF orientation applied, as RGB."""
    media_type = media_type or sniff(path)
    size = _check_size(path, limits)
    try:
        with warnings.catch_warnings():
            # We enforce our own (lower) pixel limit before decoding.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                fmt = _PIL_FORMATS.get(im.format or "")
                if fmt is None:
                    raise UnsupportedMediaError(
                        f"The image format {im.format} is not supported. "
                        f"Supported: {SUPPORTED_TEXT}."
                    )
                _check_pixels(im.width, im.height, limits)
                im.load()
                oriented = ImageOps.exif_transpose(im)
                rgb = np.asarray(oriented.convert("RGB"), dtype=np.uint8)
    except Image.DecompressionBombError as e:
        raise MediaLimitError(
            f"The image declares an enormous picture size; the limit is "
            f"{limits.max_pixels / 1e6:.0f} megapixels."
        ) from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise UnreadableMediaError(
            f"The {media_type.format.upper()} image could not be decoded: "
            "it is corrupt or truncated."
        ) from e
    height, width = rgb.shape[:2]
    info = MediaInfo(
        kind="image", format=fmt, width=width, height=height, size_bytes=size,
        sha256=file_sha256(path), frame_count=1,
    )  # fmt: skip
    frame = Frame(index=0, time_s=0.0, image=np.ascontiguousarray(rgb))
    return LoadedMedia(info, (frame,), DecodeStats(packets=0, decoded=1, converted=1, seeks=0))


# --- Videos -------------------------------------------------------------------


def sample_indices(frame_count: int, n: int) -> list[int]:
    """``n`` frame indices spread evenly from the first to the last frame
    (all frames when there are fewer than ``n``)."""
    if frame_count <= 0 or n <= 0:
        return []
    if n >= frame_count:
        return list(range(frame_count))
    return sorted({round(x) for x in np.linspace(0, frame_count - 1, n)})


@dataclass(frozen=True)
class _VideoIndex:
    pts: tuple[int, ...]  # presentation timestamps of every frame, sorted
    keyframes: tuple[int, ...]  # sorted pts of key frames
    time_base: Fraction
    start_pts: int


def _open_container(path: Path) -> Any:
    import av

    try:
        return av.open(str(path), mode="r", metadata_errors="ignore")
    except av.error.FFmpegError as e:
        raise UnreadableMediaError(
            "The video could not be opened: the file is corrupt, truncated or not really a video."
        ) from e


def read_video(
    path: Path,
    limits: MediaLimits,
    n_frames: int,
    media_type: MediaType | None = None,
) -> LoadedMedia:
    """Sample ``n_frames`` frames evenly over the video, as RGB."""
    import av

    media_type = media_type or sniff(path)
    size = _check_size(path, limits)
    if n_frames > limits.max_frames:
        raise MediaLimitError(f"{n_frames} frames requested; the limit is {limits.max_frames}.")
    container = _open_container(path)
    try:
        if not container.streams.video:
            if container.streams.audio:
                raise NoVideoStreamError("The file has only audio; there is no video to analyse.")
            raise EmptyMediaError("The video contains no frames.")
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        _check_pixels(width, height, limits)
        duration = _declared_duration(container, stream)
        if duration is not None and duration > limits.max_duration_s:
            raise _duration_error(duration, limits)
        index = _index_video(container, stream, limits)
        if not index.pts:
            raise EmptyMediaError("The video contains no frames.")
        span = float((index.pts[-1] - index.start_pts) * index.time_base)
        if span > limits.max_duration_s:
            raise _duration_error(span, limits)
        targets = [index.pts[i] for i in sample_indices(len(index.pts), n_frames)]
        stream.thread_type = "AUTO"
        frames, stats = _decode_targets(container, stream, index, targets)
    except av.error.FFmpegError as e:
        raise UnreadableMediaError(
            "The video could not be read: the file is corrupt or truncated."
        ) from e
    finally:
        container.close()
    if not frames:
        raise UnreadableMediaError(
            "No frame of the video could be decoded: the file is corrupt or truncated."
        )
    count = len(index.pts)
    if duration is None or duration <= 0:
        duration = span
    rate = stream.average_rate
    fps = float(rate) if rate else (count / duration if duration else None)
    info = MediaInfo(
        kind="video", format=media_type.format, width=width, height=height, size_bytes=size,
        sha256=file_sha256(path), duration_s=duration, fps=fps, frame_count=count,
    )  # fmt: skip
    return LoadedMedia(info, tuple(frames), stats)


def _duration_error(duration: float, limits: MediaLimits) -> MediaLimitError:
    return MediaLimitError(
        f"The video lasts {duration / 60:.1f} minutes; the limit is "
        f"{limits.max_duration_s / 60:.1f} minutes."
    )


def _declared_duration(container: object, stream: object) -> float | None:
    dur = getattr(stream, "duration", None)
    tb = getattr(stream, "time_base", None)
    if dur and tb:
        return float(dur * tb)
    cdur = getattr(container, "duration", None)
    if cdur:
        return float(cdur) / 1_000_000  # AV_TIME_BASE
    return None


def _index_video(container: Any, stream: Any, limits: MediaLimits) -> _VideoIndex:
    """One demux pass: every frame's pts and which are key frames. Reads
    packets only; nothing is decoded."""
    pts: list[int] = []
    keys: list[int] = []
    time_base: Fraction = stream.time_base
    max_ticks = limits.max_duration_s / float(time_base) if time_base else None
    for packet in container.demux(stream):
        if packet.size == 0:
            continue  # the demuxer's flush packet
        ts = packet.pts if packet.pts is not None else packet.dts
        if ts is None:
            continue
        pts.append(int(ts))
        if packet.is_keyframe:
            keys.append(int(ts))
        if max_ticks is not None and ts - pts[0] > max_ticks:
            raise _duration_error(float((ts - pts[0]) * time_base), limits)
    pts.sort()
    keys.sort()
    start = pts[0] if pts else 0
    return _VideoIndex(tuple(pts), tuple(keys) or (start,), time_base, start)


def _decode_targets(
    container: Any, stream: Any, index: _VideoIndex, targets: Sequence[int]
) -> tuple[list[Frame], DecodeStats]:
    """Decode only what is needed to reach each target frame.

    When the targets are sparse, the decoder also skips frames that no other
    frame references (FFmpeg's ``skip_frame=NONREF``): that saves their decoding
    cost and cannot damage any other frame. A target that falls on such a frame
    is served by the next decoded frame, a frame or two later, whose own index
    and time are reported.
    """
    import av

    positions = [bisect.bisect_left(index.pts, t) for t in targets]
    gaps = np.diff(positions) if len(positions) > 1 else np.array([])
    if len(gaps) and float(np.mean(gaps)) >= SPARSE_GAP_FRAMES:
        stream.codec_context.skip_frame = "NONREF"
    frames: list[Frame] = []
    decoded = converted = seeks = 0
    i = 0
    last: Any = None

    def take(frame: Any) -> None:
        nonlocal i, converted
        image = frame.to_ndarray(format="rgb24")
        converted += 1
        pos = min(bisect.bisect_left(index.pts, frame.pts), len(index.pts) - 1)
        time_s = float((frame.pts - index.start_pts) * index.time_base)
        frames.append(Frame(pos, time_s, image))
        while i < len(targets) and targets[i] <= frame.pts:
            i += 1

    while i < len(targets):
        key = index.keyframes[max(bisect.bisect_right(index.keyframes, targets[i]) - 1, 0)]
        container.seek(key, stream=stream, backward=True, any_frame=False)
        seeks += 1
        progressed = False
        try:
            for frame in container.decode(stream):
                decoded += 1
                if frame.pts is None:
                    continue
                last = frame
                if frame.pts < targets[i]:
                    continue  # decoded to reach a target, never converted
                take(frame)
                progressed = True
                if i == len(targets):
                    break
                next_key = index.keyframes[bisect.bisect_right(index.keyframes, targets[i]) - 1]
                if next_key > frame.pts:
                    break  # a key frame lies between: seeking skips the stretch
        except av.error.FFmpegError:
            # Damaged data after some good frames: keep what we have.
            logger.warning("decoding stopped at a damaged packet", exc_info=True)
        if not progressed:
            break  # the decoder has nothing further: end of a skipped or truncated stream
    if (
        i < len(targets)
        and last is not None
        and (not frames or last.pts > _pts_of(frames[-1], index))
    ):
        take(last)  # the last target was skipped or missing: use the last frame decoded
    stats = DecodeStats(packets=len(index.pts), decoded=decoded, converted=converted, seeks=seeks)
    return frames, stats


def _pts_of(frame: Frame, index: _VideoIndex) -> int:
    return index.pts[frame.index]


def load_media(path: Path, limits: MediaLimits, n_frames: int) -> LoadedMedia:
    """Read an image (one frame) or sample a video, deciding by content."""
    if not path.is_file():
        raise UnreadableMediaError(f"{path.name} does not exist or is not a file.")
    media_type = sniff(path)
    if media_type.kind == "image":
        return read_image(path, limits, media_type)
    return read_video(path, limits, n_frames, media_type)


def list_media(paths: Sequence[Path]) -> list[Path]:
    """Expand folders into the media files they contain (by suffix, sorted);
    files named explicitly are kept whatever their suffix."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out += sorted(
                f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in MEDIA_SUFFIXES
            )
        else:
            out.append(p)
    return out
