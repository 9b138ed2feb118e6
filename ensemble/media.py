"""Reading images and sampling video frames, with limits checked first.

The type of a file is decided by its content, never by its name. Every failure
becomes a typed :class:`~ensemble.errors.InvalidMediaError` whose message a
person can act on.

Videos are sampled without decoding them whole: one demux pass (no decoding)
lists every frame's timestamp and the key frames; then, for each requested
frame, the decoder seeks to the key frame before it and decodes forward only
until that frame. Frames that are decoded on the way are never converted to
RGB, and stretches of the video holding no requested frame are never decoded.

What a video may cost is bounded before and during that work: the frame rate
and frame count the container declares are checked before the demux pass
(for MP4 and MOV from the sample tables, before FFmpeg even opens the file:
its MP4 demuxer builds an index entry per sample as it opens it);
the pass stops at ``max_video_frames`` packets and as soon as the timestamps
show a rate above ``max_fps``; and a frame larger than ``max_video_pixels`` is
downscaled while it is converted to RGB, so it never exists in memory at full
size as RGB (see :class:`~ensemble.config.MediaLimits`).
"""

from __future__ import annotations

import bisect
import errno
import hashlib
import io
import logging
import math
import os
import struct
import warnings
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps

from ensemble.config import MediaLimits
from ensemble.errors import (
    DamagedMediaError,
    DecodeWorkLimitError,
    EmptyMediaError,
    FrameCountLimitError,
    FrameRateLimitError,
    MediaLimitError,
    MediaReadFaultError,
    NoVideoStreamError,
    PictureShapeError,
    UnreadableMediaError,
    UnsupportedMediaError,
)
from ensemble.hdr import display_mapping

logger = logging.getLogger(__name__)

MediaKind = Literal["image", "video"]
RGBImage = npt.NDArray[np.uint8]

# What a decoder's or the disk's error number says about the machine, not
# the file: memory ran out, the disk failed a read, a network volume went
# away, the process ran out of file handles.
_MACHINE_ERRNOS = frozenset(
    {errno.ENOMEM, errno.EIO, errno.ESTALE, errno.ENXIO, errno.EMFILE, errno.ENFILE}
)


def _machine_fault(e: BaseException) -> None:
    """Raise :class:`MediaReadFaultError` from ``e`` when it is the machine's fault
    (see ``_MACHINE_ERRNOS``; Pillow's decoders say "out of memory" without an
    error number); a damaged file's error returns, to be reported as such."""
    fault = isinstance(e, MemoryError) or getattr(e, "errno", None) in _MACHINE_ERRNOS
    if not fault and isinstance(e, OSError) and "out of memory" in str(e):
        fault = True
    if fault:
        why = e.strerror if isinstance(e, OSError) and e.strerror else "out of memory"
        raise MediaReadFaultError(
            f"The site could not finish reading the file ({why}). This is a fault of the "
            "site, not of your file; it was logged, and the analysis can be run again."
        ) from e


IMAGE_FORMATS = ("jpeg", "png", "webp", "bmp")
VIDEO_FORMATS = ("mp4", "mov", "webm", "mkv", "avi")
MEDIA_SUFFIXES = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".png",
        ".apng",
        ".webp",
        ".bmp",
        ".gif",
        ".mp4",
        ".m4v",
        ".mov",
        ".webm",
        ".mkv",
        ".avi",
    }
)
SUPPORTED_TEXT = (
    "JPEG, PNG, WebP, BMP or GIF images, GIF, PNG or WebP animations, and MP4, MOV, WebM, MKV "
    "or AVI videos"
)
# Pillow calls a JPEG holding more than one picture (a multi-picture "MPF"
# block: camera previews, HDR gain maps) MPO; it is read as the JPEG it is,
# from its first, primary picture.
_PIL_FORMATS = {
    "JPEG": "jpeg",
    "MPO": "jpeg",
    "PNG": "png",
    "WEBP": "webp",
    "BMP": "bmp",
    "GIF": "gif",
}
# ISO-BMFF brands that are still images, not videos.
_IMAGE_BRANDS = (b"heic", b"heix", b"heif", b"mif1", b"msf1", b"avif", b"avis")
_AUDIO_BRANDS = (b"M4A ", b"M4B ", b"M4P ")
_SNIFF_BYTES = 4096
# Demuxers of animated pictures (GIF, APNG), read as videos.
_ANIMATION_DEMUXERS = frozenset({"gif", "apng"})
# Data blocks walked looking for a GIF's second picture: an encoder writes
# 255-byte blocks, so this is over 500 MB of picture data (walked in well
# under a second); a crafted file of one-byte blocks stops here.
MAX_GIF_BLOCKS = 2_000_000
_TOO_MANY_BLOCKS = (
    f"The GIF is split into more blocks than any encoder writes (over {MAX_GIF_BLOCKS:,}); "
    "it cannot be read."
)
# Chunks walked in a PNG or WebP (an animation's frames are a few chunks
# each; the frame limit is 216,000).
MAX_CHUNKS = 2_000_000
_TOO_MANY_CHUNKS = (
    f"The {{what}} is split into more chunks than any encoder writes (over {MAX_CHUNKS:,}); "
    "it cannot be read."
)
# An animated WebP is read whole into memory, twice, by its decoder: a larger
# one would not fit beside the analysis.
MAX_ANIMATED_WEBP_BYTES = 200 * 1024**2
# Chunks read looking for an animated PNG's acTL before the image data.
_PNG_CHUNKS_BEFORE_DATA = 4096
# Mean distance (in frames) between sampled frames from which non-reference
# frames are skipped while decoding.
SPARSE_GAP_FRAMES = 3
# The index pass refuses a video once it has read more than ``max_fps`` frames
# per second of timestamps covered plus this many seconds' worth: a camera at
# the limit, timestamp jitter included, never gets there.
RATE_SLACK_S = 1.0
# Packets the demuxer yields besides the frames: its end-of-stream flush packet.
FLUSH_PACKETS = 1
# The MP4/MOV sample-table walk gives up (FFmpeg's own reading then decides)
# after this many boxes: a real file has a few dozen.
MAX_MP4_BOXES = 10_000
# Decoder threads per CPU core. With frame threading a thread often waits
# for the frame it references, so two per core keep the cores busy: 1080p
# H.264 on 2 cores decoded in 0.46 s with 4 threads, 0.54 s with 2 and
# 0.61 s with FFmpeg's own choice (3).
DECODE_THREADS_PER_CORE = 2
# Resampling used when a frame is downscaled while decoding (swscale's area
# averaging, like cv2.INTER_AREA elsewhere in the pipeline).
DOWNSCALE_INTERPOLATION = "AREA"


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
    # Set when the sampled frames were downscaled while decoding (a video
    # frame over ``MediaLimits.max_video_pixels``): their size, in which face
    # boxes are given. ``width`` and ``height`` stay the source's.
    decoded_width: int | None = None
    decoded_height: int | None = None
    # Degrees counterclockwise by which the decoded frames were turned upright,
    # as the video's display matrix asks (phones store portrait video sideways
    # with such a matrix). ``width`` and ``height`` are the upright picture's.
    rotation: int = 0
    # Frames sampled over the video, and those that could not be decoded
    # (damaged data): the result rests on the others.
    frames_requested: int = 0
    frames_missing: int = 0

    @property
    def frame_size(self) -> tuple[int, int]:
        """``(width, height)`` of the analysed frames: face boxes are in these pixels."""
        return (self.decoded_width or self.width, self.decoded_height or self.height)


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
    # Degrees counterclockwise applied to the sampled frames (see ``MediaInfo.rotation``).
    rotation: int = 0
    # Sampled frames asked for, and those left out because their data was damaged.
    requested: int = 0
    missing: int = 0


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
        return MediaType("video", "apng") if _apng_frames(path) > 1 else MediaType("image", "png")
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        animated = len(_webp_delays(path, enough=2)) > 1
        return MediaType("video", "webp") if animated else MediaType("image", "webp")
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
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return MediaType("video", "gif") if _gif_is_animated(path) else MediaType("image", "gif")
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):  # TIFF, BigTIFF
        raise UnsupportedMediaError(
            "TIFF images are not supported; please convert the picture to JPEG or PNG."
        )
    what = "a text file" if _looks_like_text(head[:512]) else "an unknown format"
    raise UnsupportedMediaError(
        f"The file is not a supported image or video (it looks like {what}). "
        f"Supported: {SUPPORTED_TEXT}."
    )


def _apng_frames(path: Path) -> int:
    """The frame count an animated PNG declares (its ``acTL`` chunk, which
    must come before the image data), or 0 for a still PNG. Reads chunk
    headers only."""
    with path.open("rb") as fh:
        fh.seek(8)
        for _ in range(_PNG_CHUNKS_BEFORE_DATA):
            header = fh.read(8)
            if len(header) < 8:
                return 0
            length, kind = struct.unpack(">I4s", header)
            if kind == b"acTL":
                body = fh.read(8)
                return struct.unpack(">I", body[:4])[0] if len(body) == 8 else 0
            if kind in (b"IDAT", b"IEND"):
                return 0
            fh.seek(length + 4, os.SEEK_CUR)  # the data and its CRC
    return 0


def _png_chunks(path: Path) -> Iterator[tuple[bytes, bytes]]:
    """Each chunk of a PNG as (type, the first 26 bytes of its data): headers
    only, the data skipped."""
    with path.open("rb") as fh:
        fh.seek(8)
        for _ in range(MAX_CHUNKS):
            header = fh.read(8)
            if len(header) < 8:
                return
            length, kind = struct.unpack(">I4s", header)
            head = fh.read(min(length, 26))
            yield kind, head
            if kind == b"IEND":
                return
            fh.seek(length - len(head) + 4, os.SEEK_CUR)  # the rest and the CRC
        raise UnsupportedMediaError(_TOO_MANY_CHUNKS.format(what="PNG"))


def _shown_for(seconds: float) -> float:
    """How long browsers show an animation frame given ``seconds``: 10 ms
    or less is shown for 100 ms (so a zero delay does not stack frames)."""
    return 0.1 if seconds <= 0.01 else seconds


def _apng_delays(path: Path) -> list[float]:
    """How long each frame of an animated PNG is shown (seconds), from its
    ``fcTL`` chunks (a default image before the first one is no frame), for
    as many frames as its ``acTL`` declares (viewers play no more)."""
    delays: list[float] = []
    declared = None
    for kind, head in _png_chunks(path):
        if kind == b"acTL" and len(head) >= 8 and declared is None:
            declared = struct.unpack(">I", head[:4])[0]
        elif kind == b"fcTL" and len(head) >= 26:
            num, den = struct.unpack(">HH", head[20:24])
            delays.append(_shown_for(num / (den or 100)))
            if declared is not None and len(delays) >= declared:
                break
    return delays


def _webp_delays(path: Path, enough: int = 0) -> list[float]:
    """How long each frame of an animated WebP is shown (seconds), from its
    ``ANMF`` chunks inside the RIFF size, as libwebp reads them: none for a
    still (no ``VP8X`` chunk first with the animation flag). Stops after
    ``enough`` frames when given (0: all)."""
    delays: list[float] = []
    with path.open("rb") as fh:
        riff = fh.read(12)
        if len(riff) < 12:
            return delays
        end = 8 + struct.unpack("<I", riff[4:8])[0]
        first = fh.read(9)
        if len(first) < 9 or first[:4] != b"VP8X" or not first[8] & 0x02:
            return delays
        fh.seek(12)
        for _ in range(MAX_CHUNKS):
            start = fh.tell()
            header = fh.read(8)
            if len(header) < 8 or start + 8 > end:
                return delays
            kind, length = header[:4], struct.unpack("<I", header[4:])[0]
            if kind == b"ANMF":
                head = fh.read(16)
                if len(head) < 16 or length < 16:
                    return delays  # cut short: the frames before it
                delays.append(_shown_for(int.from_bytes(head[12:15], "little") / 1000))
                if enough and len(delays) >= enough:
                    return delays
            fh.seek(start + 8 + length + (length & 1))
        raise UnsupportedMediaError(_TOO_MANY_CHUNKS.format(what="WebP"))


def _gif_is_animated(path: Path) -> bool:
    """Whether a GIF holds more than one picture: its blocks are walked
    (sizes only, nothing decoded) until a second image descriptor, the
    trailer, or the end of the data. A GIF whose blocks are too many to walk
    (a crafted file of one-byte blocks) is refused rather than walked for
    minutes."""
    import mmap

    with path.open("rb") as fh:
        try:
            data = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file
            return False
        except OSError as e:
            _machine_fault(e)
            raise UnreadableMediaError("The GIF could not be read.") from e
    with data:
        end = len(data)
        if end < 13:
            return False
        pos = 13
        if data[10] & 0x80:  # a global colour table follows
            pos += 3 * 2 ** ((data[10] & 0x07) + 1)
        pictures = blocks = 0
        while pos < end:
            blocks += 1
            if blocks > MAX_GIF_BLOCKS:
                raise UnsupportedMediaError(_TOO_MANY_BLOCKS)
            introducer = data[pos]
            if introducer == 0x2C:  # an image descriptor
                pictures += 1
                if pictures > 1:
                    return True
                if pos + 10 >= end:
                    return False
                packed = data[pos + 9]
                pos += 10
                if packed & 0x80:  # a local colour table
                    pos += 3 * 2 ** ((packed & 0x07) + 1)
                pos += 1  # the LZW minimum code size
            elif introducer == 0x21:  # an extension and its label
                pos += 2
            else:  # the trailer, or bytes no decoder reads on from
                return False
            # Data sub-blocks, each led by its size, up to an empty one.
            while pos < end and data[pos]:
                pos += data[pos] + 1
                blocks += 1
                if blocks > MAX_GIF_BLOCKS:
                    raise UnsupportedMediaError(_TOO_MANY_BLOCKS)
            pos += 1
        return False


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
    short, long = min(width, height), max(width, height)
    if short < limits.min_side:
        raise PictureShapeError(
            f"The picture is {width}x{height} pixels: too small to hold a face that can be "
            f"judged (its shorter side must be at least {limits.min_side} pixels)."
        )
    if limits.max_aspect and long > limits.max_aspect * short:
        raise PictureShapeError(
            f"The picture is {width}x{height} pixels, {long / short:.0f} times longer than it "
            f"is wide; pictures up to {limits.max_aspect:.0f}:1 are analysed. Please crop it "
            "around the faces."
        )


# --- Images -------------------------------------------------------------------


# Grey pictures of more than 8 bits (16-bit PNG): Pillow's convert("RGB")
# clips them (every value over 255 white) instead of scaling them.
_WIDE_GREY_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


# What a transparent part of a picture is analysed as: the white of the
# site's pages it is shown on. Dropping the alpha channel instead analysed
# whatever colour the encoder left under it (PNG keeps it; WebP zeroes it).
TRANSPARENT_SHOWN_ON = (255, 255, 255)
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
# Profiles whose pictures are sRGB already (nothing to convert).
_SRGB_DESCRIPTIONS = ("sRGB",)


def _rgb_array(im: Image.Image) -> npt.NDArray[np.uint8]:
    """``im`` as an ``[H, W, 3]`` uint8 sRGB array, as a browser shows it:
    colours converted from the picture's ICC profile (a phone's Display P3,
    Adobe RGB, a CMYK picture's profile) to sRGB, then transparency over
    :data:`TRANSPARENT_SHOWN_ON`; 16-bit grey scaled to 8."""
    if im.mode in _WIDE_GREY_MODES:
        grey = np.clip(np.asarray(im).astype(np.int64) >> 8, 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    icc = im.info.get("icc_profile")
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        if im.mode not in ("RGBA", "LA"):
            im = im.convert("RGBA")  # palette or a transparent colour: small pictures
        mask = im
        if icc:
            # The profile describes the colours, not the alpha: converted
            # apart, in the mode the profile fits (grey or RGB).
            mask = im.getchannel("A")
            im = _to_srgb(im.convert("L" if im.mode == "LA" else "RGB"), icc)
        # Pasted through the alpha onto the page's white: one copy of the
        # picture, where compositing in RGBA made three (a transparent
        # picture at the pixel limit went past the upload probe's memory).
        shown = Image.new("RGB", im.size, TRANSPARENT_SHOWN_ON)
        shown.paste(im, mask=mask)
        return np.asarray(shown, dtype=np.uint8)
    if icc:
        im = _to_srgb(im.convert("RGB") if im.mode == "P" else im, icc)
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _to_srgb(im: Image.Image, icc: bytes) -> Image.Image:
    """``im`` converted from the colour space its ICC profile describes to
    sRGB (as browsers show it). A profile that does not parse, or does not
    fit the picture's mode, is ignored: the colours are taken as sRGB."""
    from PIL import ImageCms

    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if ImageCms.getProfileDescription(source).strip().startswith(_SRGB_DESCRIPTIONS):
            return im
        converted = ImageCms.profileToProfile(
            im, source, ImageCms.createProfile("sRGB"), outputMode="RGB"
        )
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError) as e:
        logger.warning("the image's ICC profile was ignored: %s", e)
        return im
    return converted if converted is not None else im


def _upright(im: Image.Image) -> Image.Image:
    """``im`` turned as its EXIF orientation says. The EXIF block is parsed
    only now, after the pixels decoded: a damaged one (a truncated or
    malformed TIFF header) costs the orientation, not the picture, which is
    then taken as stored."""
    try:
        return ImageOps.exif_transpose(im)
    except (SyntaxError, struct.error, ValueError, TypeError, KeyError, OSError) as e:
        logger.warning("the image's EXIF block is unreadable (%s); taken as stored", e)
        return im


# JPEG start-of-frame markers of codings libjpeg cannot decode: lossless
# (SOF3, SOF11; medical and scientific cameras write it), hierarchical
# (SOF5-7, SOF13-15) and JPEG-LS (SOF55).
_DHP = 0xDE  # define hierarchical progression: the segment a hierarchical JPEG starts with
_UNDECODABLE_JPEG_SOF = frozenset({0xC3, 0xC5, 0xC6, 0xC7, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7, _DHP})
# Markers without a length: TEM, RST0-7, SOI, EOI.
_BARE_JPEG_MARKERS = frozenset({0x01, *range(0xD0, 0xD9)})
_JPEG_SEGMENTS_READ = 64


def _jpeg_frame_marker(path: Path) -> int | None:
    """The JPEG's start-of-frame marker (0xC0 baseline, 0xC2 progressive,
    ...), or its DHP marker (0xDE) for a hierarchical one, read from the
    segment headers; None when it is not among the
    first segments or the headers do not parse (decoding then says what
    is wrong)."""
    with path.open("rb") as fh:
        if fh.read(2) != b"\xff\xd8":
            return None
        for _ in range(_JPEG_SEGMENTS_READ):
            head = fh.read(2)
            while head[:1] == b"\xff" and head[1:2] == b"\xff":  # fill bytes
                head = head[1:] + fh.read(1)
            if len(head) < 2 or head[0] != 0xFF:
                return None
            marker = head[1]
            if marker in _BARE_JPEG_MARKERS:
                continue
            if (0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC)) or marker in (
                0xF7,
                _DHP,  # a hierarchical JPEG's frames follow its DHP segment
            ):
                return marker
            if marker == 0xDA:  # start of scan before any frame header
                return None
            length = fh.read(2)
            if len(length) < 2:
                return None
            fh.seek(int.from_bytes(length, "big") - 2, os.SEEK_CUR)
    return None


def read_image(path: Path, limits: MediaLimits, media_type: MediaType | None = None) -> LoadedMedia:
    """Decode an image, with EXIF orientation applied, as RGB."""
    media_type = media_type or sniff(path)
    size = _check_size(path, limits)
    if media_type.format == "jpeg" and _jpeg_frame_marker(path) in _UNDECODABLE_JPEG_SOF:
        raise UnsupportedMediaError(
            "The JPEG uses a coding this site cannot decode (lossless, JPEG-LS or "
            "hierarchical, as medical and scientific cameras write); please save it "
            "as a standard JPEG or as PNG."
        )
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
                # An APNG's default image may stand outside its animation.
                frames = getattr(im, "n_frames", 1) - bool(im.info.get("default_image"))
                if fmt in ("png", "webp") and frames > 1:
                    # An MPO's second picture is a camera's preview, not a
                    # frame: only PNG and WebP animate.
                    raise UnsupportedMediaError(
                        f"The {fmt.upper()} image is animated ({frames} frames), but its "
                        "animation is not laid out as the format requires. Please upload the "
                        "animation as a GIF or a video (MP4 or WebM), or one of its frames as a "
                        "still picture."
                    )
                im.load()
                rgb = _rgb_array(_upright(im))
    except Image.DecompressionBombError as e:
        raise MediaLimitError(
            f"The image declares an enormous picture size; the limit is "
            f"{limits.max_pixels / 1e6:.0f} megapixels."
        ) from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        _machine_fault(e)
        raise UnreadableMediaError(
            f"The {media_type.format.upper()} image could not be decoded: "
            "it is corrupt or truncated."
        ) from e
    height, width = rgb.shape[:2]
    info = MediaInfo(
        kind="image",
        format=fmt,
        width=width,
        height=height,
        size_bytes=size,
        sha256=file_sha256(path),
        frame_count=1,
    )
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


# Ticks by which a constant-rate video's frame spacing may vary: timestamps
# rounded to a coarse time base (30 fps in milliseconds: 33, 33, 34, ...).
TIMESTAMP_JITTER = 1


def sample_positions(pts: Sequence[int], n: int) -> list[int]:
    """Positions in ``pts`` (a video's sorted presentation timestamps) of
    ``n`` frames spread evenly over its time, from the first frame to the
    last: the frame nearest each of ``n`` evenly spaced moments.

    A constant-rate video is sampled as :func:`sample_indices` samples it
    (there, time and frame count agree; its frame spacing may vary by
    ``TIMESTAMP_JITTER``). A variable-rate one (phones drop
    their rate in dim light; screen recordings add frames only when the
    screen changes) is not sampled by frame count, which would crowd the
    samples into its busy stretches and pass over its slow ones. A frame
    shown for longer than the samples' spacing is nearest to several
    moments and is sampled once, so such a video may give fewer than ``n``.
    """
    count = len(pts)
    if count == 0 or n <= 0:
        return []
    if n >= count or n == 1:
        return sample_indices(count, n)
    steps = np.diff(np.asarray(pts, dtype=np.int64))
    if int(steps.max()) - int(steps.min()) <= TIMESTAMP_JITTER:
        return sample_indices(count, n)
    first, span = pts[0], pts[-1] - pts[0]
    chosen: set[int] = set()
    for k in range(n):
        moment = first + Fraction(span * k, n - 1)  # exact: no rounding ties
        i = bisect.bisect_left(pts, moment)
        if i == count or (i > 0 and moment - pts[i - 1] <= pts[i] - moment):
            i -= 1  # the earlier frame is nearer, or as near
        chosen.add(i)
    return sorted(chosen)


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
        _machine_fault(e)
        raise UnreadableMediaError(
            "The video could not be opened: the file is corrupt, truncated or not really a video."
        ) from e


def _video_stream(container: Any) -> Any:
    """The container's first video stream that is a moving picture and that
    this FFmpeg can decode. A cover picture (an attached picture: audio files
    carry their album art as a one-frame "video" stream) is not a video."""
    import av

    pictures = [
        s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic
    ]
    if not pictures:
        if container.streams.audio:
            cover = " and a cover picture" if container.streams.video else ""
            raise NoVideoStreamError(
                f"The file has only audio{cover}; there is no video to analyse."
            )
        raise EmptyMediaError("The video contains no frames.")
    # The stream a player shows: the one flagged default, else the first.
    default = [s for s in pictures if s.disposition & av.stream.Disposition.default]
    stream = (default or pictures)[0]
    if stream.codec_context is None:
        # FFmpeg knows no decoder for the stream's codec (an unknown FourCC).
        raise UnsupportedMediaError(
            "The video's codec is not one this site can decode. "
            "Re-encoded as H.264 in an MP4, it can be analysed."
        )
    return stream


# FFmpeg's own VP8 and VP9 decoders drop a WebM's alpha channel: WebM keeps
# it beside the picture, as a second VP8/VP9 picture in each block's
# BlockAdditional, which only the libvpx decoders read. A browser plays such a
# video transparent, over the page; decoded without it, the transparent parts
# come out as whatever colour the encoder left under them (often black).
_ALPHA_DECODERS = {"vp8": "libvpx", "vp9": "libvpx-vp9"}
# Packets offered to FFmpeg's own decoder to learn an alpha WebM's display
# matrix before it is taken as upright (a seek lands on a key frame, so the
# first one normally tells).
_ORIENTATION_PACKETS = 4


class _Decoder:
    """The frames of one video stream, from where the container was last
    sought to: decoded by the stream's own decoder, or, for a WebM with an
    alpha channel (its ``alpha_mode`` tag), by libvpx into frames that keep
    the alpha (``yuva420p``), which :func:`_to_rgb` shows on the page's white.
    libvpx's frames carry no display matrix (FFmpeg attaches the stream's to
    its own decoder's frames only), so :meth:`orientation` answers for them
    from the first frame FFmpeg's decoder gives. Decoding uses
    ``DECODE_THREADS_PER_CORE`` threads a core."""

    def __init__(self, container: Any, stream: Any) -> None:
        self.container, self.stream = container, stream
        self.context = _alpha_context(stream) or stream.codec_context
        self.alpha = self.context is not stream.codec_context
        self.context.thread_type = "AUTO"
        self.context.thread_count = DECODE_THREADS_PER_CORE * _cores()
        # An alpha WebM's (mirrored, quarter turns), once FFmpeg's decoder has told.
        self._shown: tuple[bool, int] | None = None

    def orientation(self, frame: Any) -> tuple[bool, int]:
        """How ``frame`` is turned to be shown upright, as
        :func:`display_mirrored` answers: from its own display matrix, or for
        libvpx's frames the stream's (upright when that could not be read)."""
        if not self.alpha:
            return display_mirrored(frame)
        return self._shown or (False, 0)

    def _native(self) -> Any:
        """FFmpeg's own decoder of the stream (the container's context)."""
        return self.stream.codec_context

    def _learn_orientation(self, packet: Any) -> None:
        """The stream's display matrix, from FFmpeg's own decoder's frame
        for ``packet``; a packet that gives none (damaged, or not a key
        frame's) leaves it to the next."""
        import av

        native = self._native()
        try:
            if not native.is_open:
                native.thread_count = 1  # one key frame: no thread pool for it
            frames = native.decode(packet) or native.decode(None)
        except av.error.FFmpegError as e:
            _machine_fault(e)
            frames = []
        except ValueError:  # this FFmpeg has no decoder of its own for the codec
            self._shown = (False, 0)
            return
        finally:
            native.flush_buffers()
        if frames:
            self._shown = display_mirrored(frames[0])

    def seek(self, pts: int) -> None:
        """To the key frame at or before ``pts``."""
        self.container.seek(pts, stream=self.stream, backward=True, any_frame=False)
        if self.alpha:
            self.context.flush_buffers()  # the container flushes only its streams' own

    def frames(self) -> Iterator[Any]:
        if not self.alpha:
            yield from self.container.decode(self.stream)
            return
        # demux ends with an empty packet per stream, which drains the decoder.
        learnt = 0
        for packet in self.container.demux(self.stream):
            if self._shown is None and packet.size and learnt < _ORIENTATION_PACKETS:
                learnt += 1
                self._learn_orientation(packet)
            yield from self.context.decode(packet)


def _alpha_context(stream: Any) -> Any:
    """A libvpx decoder for a VP8/VP9 stream that declares an alpha channel,
    else None (as when this FFmpeg lacks libvpx: the alpha is then lost, and
    the transparent parts are analysed as the encoder left them)."""
    import av

    name = _alpha_decoder_name(stream)
    if name is None:
        return None
    try:
        context = av.CodecContext.create(name, "r")
    except (ValueError, av.error.FFmpegError):
        logger.warning("no %s decoder: the video's alpha channel is not read", name)
        return None
    native = stream.codec_context
    context.extradata = native.extradata
    # The container's colour description (an HDR or wide-gamut WebM's), which
    # FFmpeg hands its own decoder and libvpx's frames otherwise lack.
    for tag in ("color_primaries", "color_trc", "colorspace", "color_range"):
        setattr(context, tag, getattr(native, tag))
    return context


def _alpha_decoder_name(stream: Any) -> str | None:
    """The libvpx decoder for a VP8/VP9 stream that declares an alpha
    channel (WebM's ``alpha_mode`` tag), else None."""
    name = _ALPHA_DECODERS.get(getattr(stream.codec_context, "name", ""))
    tags = {str(k).lower(): str(v) for k, v in (getattr(stream, "metadata", None) or {}).items()}
    return name if tags.get("alpha_mode") == "1" else None


def _pictures_per_frame(stream: Any) -> int:
    """Pictures decoded for each frame: two for a WebM with alpha (the alpha
    is a second VP8/VP9 picture), else one. The decoding work counts both."""
    return 2 if _alpha_decoder_name(stream) is not None else 1


def read_video(
    path: Path,
    limits: MediaLimits,
    n_frames: int,
    media_type: MediaType | None = None,
    *,
    plan_frames: int = 0,
) -> LoadedMedia:
    """Sample ``n_frames`` frames evenly over the video's time
    (:func:`sample_positions`), as RGB.

    The decoding work is checked (``MediaLimits.max_decode_pixels_per_frame``) for
    ``plan_frames`` sampled frames when that is more than ``n_frames``: the
    upload probe decodes one frame but answers for the analysis's sampling.
    Most sampled frames damaged is :class:`DamagedMediaError`; a few are left
    out (``MediaInfo.frames_missing``)."""
    import av

    media_type = media_type or sniff(path)
    size = _check_size(path, limits)
    if n_frames > limits.max_frames:
        raise MediaLimitError(f"{n_frames} frames requested; the limit is {limits.max_frames}.")
    if media_type.format in ("mp4", "mov"):
        _check_mp4_tables(path, limits)
    container = _open_container(path)
    try:
        stream = _video_stream(container)
        # What the stream says is freed with the container: read it now.
        rate = stream.average_rate
        width, height = stream.codec_context.width, stream.codec_context.height
        _check_pixels(width, height, limits)
        duration = _declared_duration(container, stream)
        if duration is not None and duration > limits.max_duration_s:
            raise _duration_error(duration, limits)
        _check_declared_rate(stream, limits)
        index = _index_video(container, stream, limits)
        if not index.pts:
            raise EmptyMediaError("The video contains no frames.")
        span = float((index.pts[-1] - index.start_pts) * index.time_base)
        if span > limits.max_duration_s:
            raise _duration_error(span, limits)
        targets = [index.pts[i] for i in sample_positions(index.pts, n_frames)]
        planned = [index.pts[i] for i in sample_positions(index.pts, plan_frames)]
        # Priced at the declared size; _decode_targets counts what it decodes.
        area = width * height * _pictures_per_frame(stream)
        _check_decode_work(index, max(targets, planned, key=len), area, limits)
        frames, stats = _decode_targets(container, stream, index, targets, limits)
    except av.error.FFmpegError as e:
        _machine_fault(e)
        raise UnreadableMediaError(
            "The video could not be read: the file is corrupt or truncated."
        ) from e
    finally:
        container.close()
    if not frames:
        raise UnreadableMediaError(
            "No frame of the video could be decoded: the file is corrupt or truncated."
        )
    if stats.missing * 2 > stats.requested:
        raise DamagedMediaError(
            f"The video is damaged: {stats.missing} of the {stats.requested} frames sampled "
            "over its length could not be decoded, too many to judge it from the rest."
        )
    count = len(index.pts)
    if duration is None or duration <= 0:
        # From the timestamps: the last frame is shown for a frame's time too.
        duration = span + (span / (count - 1) if count > 1 else 0.0)
    fps = float(rate) if rate else (count / duration if duration else None)
    if stats.rotation in (90, 270):
        width, height = height, width  # the upright picture's size
    decoded_h, decoded_w = frames[0].image.shape[:2]
    downscaled = (decoded_w, decoded_h) != (width, height)
    info = MediaInfo(
        kind="video",
        format=media_type.format,
        width=width,
        height=height,
        size_bytes=size,
        sha256=file_sha256(path),
        duration_s=duration,
        fps=fps,
        frame_count=count,
        decoded_width=decoded_w if downscaled else None,
        decoded_height=decoded_h if downscaled else None,
        rotation=stats.rotation,
        frames_requested=stats.requested,
        frames_missing=stats.missing,
    )
    return LoadedMedia(info, tuple(frames), stats)


def _duration_error(duration: float, limits: MediaLimits) -> MediaLimitError:
    return MediaLimitError(
        f"The video lasts {duration / 60:.1f} minutes; the limit is "
        f"{limits.max_duration_s / 60:.1f} minutes."
    )


def _rate_error(fps: float | None, frames: int, limits: MediaLimits) -> FrameRateLimitError:
    if fps is None:
        return FrameRateLimitError(
            f"The video holds {frames} frames at a single instant; the limit is "
            f"{limits.max_fps:.0f} frames per second."
        )
    return FrameRateLimitError(
        f"The video runs at {fps:.0f} frames per second; the limit is {limits.max_fps:.0f}."
    )


def decode_work(index: _VideoIndex, targets: Sequence[int]) -> int:
    """Frames decoded to reach ``targets`` (sorted pts): from the key frame
    before each one, or on from the previous target when no key frame lies
    between (as :func:`_decode_targets` reads them)."""
    work, reached = 0, -1
    for t in targets:
        pos = bisect.bisect_left(index.pts, t)
        key = index.keyframes[max(bisect.bisect_right(index.keyframes, t) - 1, 0)]
        start = bisect.bisect_left(index.pts, key)
        if start <= reached:
            start = reached + 1
        work += max(pos - start + 1, 0)
        reached = max(reached, pos)
    return work


def decode_budget(limits: MediaLimits, targets: int) -> int:
    """Pixels a read of ``targets`` sampled frames may decode (0: no limit)."""
    return limits.max_decode_pixels_per_frame * targets


# The running count in _decode_targets stops a read that decodes this many
# times what the index promised (frames that change size, damaged data).
DECODE_SLACK = 1.5
RE_ENCODE = (
    "Re-encoded with a key frame every few seconds (as cameras and editors do by default), "
    "it can be analysed."
)


def _check_decode_work(
    index: _VideoIndex, targets: Sequence[int], pixels: int, limits: MediaLimits
) -> None:
    budget = decode_budget(limits, len(targets))
    if not budget:
        return
    frames = decode_work(index, targets)
    if frames * pixels <= budget:
        return
    allowed = max(budget // max(pixels, 1), 1)
    keys = max(len(index.keyframes), 1)
    raise DecodeWorkLimitError(
        f"Reaching the {len(targets)} frames sampled over this video means decoding about "
        f"{frames:,} frames (it has {keys:,} key frame{'s' if keys > 1 else ''} in "
        f"{len(index.pts):,} frames); the limit at its picture size is {allowed:,}. " + RE_ENCODE
    )


def _count_error(frames: str, limits: MediaLimits) -> FrameCountLimitError:
    return FrameCountLimitError(
        f"The video has {frames} frames; the limit is {limits.max_video_frames}."
    )


def _check_declared_rate(stream: Any, limits: MediaLimits) -> None:
    """The frame rate and frame count the container declares, checked before
    the demux pass reads a packet. MP4 and MOV declare both; Matroska and
    AVI may declare neither, and :func:`_index_video` then checks what the
    timestamps show."""
    rate = stream.average_rate
    # Rounded as the message shows it: 240.2 fps (rounding in the container's
    # durations) is a 240 fps camera.
    if limits.max_fps and rate and round(float(rate)) > limits.max_fps:
        raise _rate_error(float(rate), 0, limits)
    count = stream.frames
    if limits.max_video_frames and count and count > limits.max_video_frames:
        raise _count_error(str(count), limits)


def _check_mp4_tables(path: Path, limits: MediaLimits) -> None:
    """Frame count and rate of each video track from an MP4/MOV's sample
    tables, before FFmpeg opens the file: its demuxer builds an index entry
    for every sample while opening (245 MB for an MP4 of 3 M tiny frames)."""
    for frames, duration_s in _mp4_video_tracks(path):
        if limits.max_video_frames and frames > limits.max_video_frames:
            raise _count_error(str(frames), limits)
        if limits.max_fps and duration_s and frames > limits.max_fps * (duration_s + RATE_SLACK_S):
            raise _rate_error(frames / duration_s, frames, limits)


def _mp4_boxes(
    fh: Any, start: int, end: int, budget: list[int]
) -> Iterator[tuple[bytes, int, int]]:
    """``(type, payload start, payload end)`` of each box between ``start``
    and ``end``, read from headers only (ISO/IEC 14496-12, 4.2)."""
    pos = start
    while pos + 8 <= end and budget[0] > 0:
        budget[0] -= 1
        fh.seek(pos)
        head = fh.read(16)
        if len(head) < 8:
            return
        size, kind = struct.unpack(">I4s", head[:8])
        header = 8
        if size == 1 and len(head) == 16:
            size, header = struct.unpack(">Q", head[8:16])[0], 16
        elif size == 0:
            size = end - pos
        if size < header:
            return  # damaged: FFmpeg says what is wrong
        yield kind, pos + header, min(pos + size, end)
        pos += size


def _mp4_leaves(fh: Any, start: int, end: int, budget: list[int], out: dict[bytes, bytes]) -> None:
    for kind, payload, stop in _mp4_boxes(fh, start, end, budget):
        if kind in (b"mdia", b"minf", b"stbl"):
            _mp4_leaves(fh, payload, stop, budget, out)
        elif kind in (b"mdhd", b"hdlr", b"stsz", b"stz2"):
            fh.seek(payload)
            out[kind] = fh.read(min(stop - payload, 32))


def _mp4_video_tracks(path: Path) -> list[tuple[int, float | None]]:
    """``(samples, duration in seconds or None)`` of each video track the
    ``moov`` box of an MP4/MOV declares; empty when there is none to read."""
    tracks: list[tuple[int, float | None]] = []
    budget = [MAX_MP4_BOXES]
    with path.open("rb") as fh:
        end = fh.seek(0, 2)
        for kind, start, stop in _mp4_boxes(fh, 0, end, budget):
            if kind != b"moov":
                continue
            for kind, payload, trak_end in _mp4_boxes(fh, start, stop, budget):
                if kind != b"trak":
                    continue
                leaves: dict[bytes, bytes] = {}
                _mp4_leaves(fh, payload, trak_end, budget, leaves)
                hdlr, mdhd = leaves.get(b"hdlr", b""), leaves.get(b"mdhd", b"")
                sizes = leaves.get(b"stsz") or leaves.get(b"stz2") or b""
                if hdlr[8:12] != b"vide" or len(sizes) < 12:
                    continue
                # Version/flags and one 32-bit field precede the sample count.
                (samples,) = struct.unpack(">I", sizes[8:12])
                tracks.append((samples, _mdhd_seconds(mdhd)))
            break
    return tracks


def _mdhd_seconds(mdhd: bytes) -> float | None:
    """The media duration an ``mdhd`` box declares (version 0 or 1)."""
    if mdhd[:1] == b"\x01" and len(mdhd) >= 32:
        timescale, duration = struct.unpack(">IQ", mdhd[20:32])
    elif len(mdhd) >= 20:
        timescale, duration = struct.unpack(">II", mdhd[12:20])
    else:
        return None
    return duration / timescale if timescale else None


def _declared_duration(container: object, stream: object) -> float | None:
    dur = getattr(stream, "duration", None)
    tb = getattr(stream, "time_base", None)
    if dur and tb:
        return float(dur * tb)
    # Matroska gives no duration per stream; the file's covers every stream,
    # so it is the video's only when the video is all the file holds (a short
    # clip with a long soundtrack is not a long video).
    cdur = getattr(container, "duration", None)
    streams = getattr(container, "streams", ())
    if cdur and len(streams) == 1:
        return float(cdur) / 1_000_000  # AV_TIME_BASE
    return None


def _index_video(container: Any, stream: Any, limits: MediaLimits) -> _VideoIndex:
    """One demux pass: every frame's pts and which are key frames. Reads
    packets only; nothing is decoded.

    The pass stops, refusing the video, at the first packet past any limit:
    more than ``max_video_frames`` packets read (those without data or
    timestamp count too), timestamps spanning more than ``max_duration_s``,
    or more frames than ``max_fps`` allows for the time their timestamps
    cover (plus ``RATE_SLACK_S``). So it keeps at most ``max_video_frames``
    timestamps, whatever the file holds or declares.
    """
    pts: list[int] = []
    keys: list[int] = []
    time_base: Fraction = stream.time_base
    seconds_per_tick = float(time_base) if time_base else 0.0
    # The loop runs once per packet (216,000 times at the limits): its
    # bounds are worked out here, with "no limit" as an unreachable value.
    unbounded = float("inf")
    max_ticks = limits.max_duration_s / seconds_per_tick if seconds_per_tick else unbounded
    max_frames = limits.max_video_frames or -1
    max_read = max_frames + FLUSH_PACKETS if limits.max_video_frames else unbounded
    # More than rate_base + rate_per_tick * span frames: over max_fps.
    rated = bool(limits.max_fps and seconds_per_tick)
    rate_base = limits.max_fps * RATE_SLACK_S if rated else unbounded
    rate_per_tick = limits.max_fps * seconds_per_tick if rated else 0.0
    read = 0
    low = high = 0
    for packet in container.demux(stream):
        read += 1
        if read > max_read:
            raise _count_error(f"more than {limits.max_video_frames}", limits)
        if packet.size == 0:
            continue  # the demuxer's flush packet
        ts = packet.pts
        if ts is None:
            ts = packet.dts
            if ts is None:
                continue
        if packet.is_discard:
            # Hidden by an edit list (a video cut without re-encoding starts
            # at a key frame before its first shown frame): the decoder
            # drops its frame, so it is no frame of the video and its time
            # is not the start. A key frame stays a seek point.
            if packet.is_keyframe:
                keys.append(ts)
            continue
        n = len(pts)
        if n == max_frames:
            raise _count_error(f"more than {limits.max_video_frames}", limits)
        if n == 0:
            low = high = ts
        elif ts > high:
            high = ts
        elif ts < low:
            low = ts
        pts.append(ts)
        if packet.is_keyframe:
            keys.append(ts)
        span = high - low
        if span > max_ticks:
            raise _duration_error(span * seconds_per_tick, limits)
        if n + 1 > rate_base + rate_per_tick * span:
            seconds = span * seconds_per_tick
            raise _rate_error(n / seconds if seconds else None, n + 1, limits)
    pts.sort()
    keys.sort()
    start = pts[0] if pts else 0
    if getattr(getattr(container, "format", None), "name", "") in _ANIMATION_DEMUXERS:
        # Each picture of an animation is drawn over the ones before it:
        # decoded from the first on, never from a seek.
        keys = []
    return _VideoIndex(tuple(pts), tuple(keys) or (start,), time_base, start)


def _cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def fit_pixels(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """The largest ``(width, height)`` with the same aspect ratio and at most
    ``max_pixels`` pixels (the size itself when it fits or ``max_pixels`` is 0)."""
    if not max_pixels or width * height <= max_pixels:
        return width, height
    scale = math.sqrt(max_pixels / (width * height))
    w, h = max(int(width * scale), 1), max(int(height * scale), 1)
    while w * h > max_pixels:  # float rounding
        if w >= h:
            w -= 1
        else:
            h -= 1
    return w, h


def display_rotation(frame: Any) -> int:
    """Degrees counterclockwise (0, 90, 180 or 270) by which a decoded frame
    must be turned to be shown upright, from its display matrix: the nearest
    quarter turn, since faces are only looked for upright."""
    try:
        degrees = float(frame.rotation or 0)
    except (AttributeError, TypeError, ValueError):  # no or unreadable side data
        return 0
    return round(degrees / 90.0) % 4 * 90


def display_mirrored(frame: Any) -> tuple[bool, int]:
    """Whether a decoded frame's display matrix mirrors it, and then the
    quarter turn (degrees counterclockwise, as :func:`display_rotation`)
    that shows it upright after it is mirrored left to right. A matrix that
    mirrors (negative determinant: a selfie app's left-right flip) read as a
    plain rotation gives a half turn, and the faces came out upside down."""
    matrix = None
    try:
        for side in frame.side_data:
            if side.type.name == "DISPLAYMATRIX":
                matrix = struct.unpack("<9i", bytes(side))
    except (AttributeError, TypeError, ValueError, struct.error):  # none, or unreadable
        matrix = None
    if matrix is None:
        return False, display_rotation(frame)
    a, b, _, c, d = matrix[:5]
    if a * d - b * c >= 0:
        return False, display_rotation(frame)
    # Mirrored first, what is left is a rotation: the matrix with its first
    # row negated, read as FFmpeg's av_display_rotation_get reads one.
    degrees = -math.degrees(math.atan2(-b / (math.hypot(b, d) or 1), -a / (math.hypot(a, c) or 1)))
    return True, round(degrees / 90.0) % 4 * 90


def upright(image: RGBImage, rotation: int, mirrored: bool = False) -> RGBImage:
    """``image`` mirrored left to right if ``mirrored``, then turned
    ``rotation`` degrees counterclockwise (a multiple of 90)."""
    turns = rotation // 90 % 4
    if mirrored:
        image = image[:, ::-1]
    elif not turns:
        return image
    return np.ascontiguousarray(np.rot90(image, k=turns))


# Sample aspect ratios outside this range are no video's (anamorphic ones are
# within 1/2 and 2): taken as square, so a crafted one cannot blow a frame up.
MAX_SAMPLE_ASPECT = 4


def shown_size(width: int, height: int, sar: Fraction | None) -> tuple[int, int]:
    """A picture's size as players show it: a stored ``width`` stretched by the
    sample aspect ratio (non-square pixels: 720x576 shown as 16:9, for one)."""
    if sar is None or sar == 1 or not 1 / MAX_SAMPLE_ASPECT <= sar <= MAX_SAMPLE_ASPECT:
        return width, height
    return max(round(width * sar), 1), height


def fit_inside(shown: tuple[int, int], box: tuple[int, int]) -> tuple[int, int]:
    """The size at which a picture of size ``shown`` fills ``box`` keeping its
    shape: ``box`` itself when the shapes agree (within 1%), else the largest
    size of ``shown``'s shape that fits inside it."""
    (sw, sh), (w, h) = shown, box
    if abs(sw * h - sh * w) <= 0.01 * sw * h:
        return box
    scale = min(w / sw, h / sh)
    return max(round(sw * scale), 1), max(round(sh * scale), 1)


def _to_rgb(
    frame: Any,
    max_pixels: int,
    size: tuple[int, int] | None = None,
    sar: Fraction | None = None,
    orientation: tuple[bool, int] | None = None,
) -> RGBImage:
    """A decoded frame as RGB, upright, at the shape it is shown at (``sar``:
    the stream's sample aspect ratio), downscaled in the same swscale pass
    when it has more than ``max_pixels`` pixels: no full-size RGB copy is
    ever made. ``size`` (width, height before turning upright) scales it to
    that size instead; a frame of another shape (a stream that turned, or
    changed format) is scaled to fit inside it keeping its shape, centred
    on black, never stretched. HDR and BT.2020 video is tone-mapped to SDR
    BT.709 (:mod:`ensemble.hdr`). ``orientation`` (mirrored, quarter turns)
    stands in for a frame's missing display matrix (:meth:`_Decoder.orientation`)."""
    shown = shown_size(frame.width, frame.height, sar)
    width, height = size or fit_pixels(*shown, max_pixels)
    inner_w, inner_h = fit_inside(shown, (width, height))
    # HDR (PQ, HLG) and BT.2020 frames are converted at 16 bits and then
    # mapped to SDR BT.709, as a screen shows them (ensemble.hdr).
    mapping = display_mapping(frame)
    # Transparent parts (a GIF's or APNG's, a video with alpha) are shown
    # on the page's white, as pictures' are.
    alpha = _has_alpha(frame)
    if mapping is None:
        pixel_format = "rgba" if alpha else "rgb24"
    else:
        pixel_format = "rgba64le" if alpha else "rgb48le"
    if (inner_w, inner_h) == (frame.width, frame.height):
        decoded = frame.to_ndarray(format=pixel_format)
    else:
        decoded = frame.to_ndarray(
            format=pixel_format,
            width=inner_w,
            height=inner_h,
            interpolation=DOWNSCALE_INTERPOLATION,
        )
    if mapping is not None:
        # Mapped to SDR first, then over the white, as a browser composites.
        sdr = mapping.to_sdr(np.ascontiguousarray(decoded[..., :3]))
        if alpha:
            # The high byte: swscale widens 8-bit alpha as a << 8 (opaque is 65280).
            opacity = (decoded[..., 3:4] >> 8).astype(np.uint8)
            decoded = np.concatenate([sdr, opacity], axis=2)
        else:
            decoded = sdr
    image: RGBImage = _over_white(decoded) if alpha else decoded
    if (inner_w, inner_h) != (width, height):
        canvas = np.zeros((height, width, 3), np.uint8)
        top, left = (height - inner_h) // 2, (width - inner_w) // 2
        canvas[top : top + inner_h, left : left + inner_w] = image
        image = canvas
    mirrored, rotation = orientation or display_mirrored(frame)
    return upright(image, rotation, mirrored)


def _has_alpha(frame: Any) -> bool:
    try:
        return any(c.is_alpha for c in frame.format.components)
    except AttributeError:
        return False


def _over_white(rgba: npt.NDArray[np.uint8]) -> RGBImage:
    """``[H, W, 4]`` RGBA composited over :data:`TRANSPARENT_SHOWN_ON`, rounded."""
    a = rgba[..., 3:4].astype(np.uint16)
    under = np.asarray(TRANSPARENT_SHOWN_ON, np.uint16)
    mixed = (rgba[..., :3].astype(np.uint16) * a + under * (255 - a) + 127) // 255
    return np.ascontiguousarray(mixed, dtype=np.uint8)


def _sample_aspect(stream: Any) -> Fraction | None:
    """The stream's sample aspect ratio (the decoder's, else the container's);
    ``None`` when unset or unreadable (square pixels)."""
    for source in (stream.codec_context, stream):
        try:
            sar = source.sample_aspect_ratio
        except (AttributeError, ValueError):
            continue
        if sar:
            return Fraction(sar)
    return None


def _decode_targets(
    container: Any,
    stream: Any,
    index: _VideoIndex,
    targets: Sequence[int],
    limits: MediaLimits,
) -> tuple[list[Frame], DecodeStats]:
    """Decode only what is needed to reach each target frame, as RGB of at
    most ``limits.max_video_pixels`` pixels (0: the decoded size).

    Every decoded frame is held to the picture limits (``_check_pixels``): a
    stream may change its size after the first frame, which is all the
    declared size describes. Frames after the first are scaled to the first
    one's size (one of another shape fitted inside it, see :func:`_to_rgb`),
    so face boxes of every frame are in one frame size. Non-square pixels
    are shown square (the stream's sample aspect ratio). The
    pixels decoded are counted as they are, against ``DECODE_SLACK`` times
    the read's budget (:func:`decode_budget`; the index's estimate was
    checked before, at the declared size). A target whose data is damaged
    (the decoder fails before reaching it) is left out and counted
    (``DecodeStats.missing``); decoding goes on at the next one, and targets
    past the same failure in the same key-frame stretch are not decoded again.

    When the targets are sparse, the decoder also skips frames that no other
    frame references (FFmpeg's ``skip_frame=NONREF``): that saves their decoding
    cost and cannot damage any other frame. A target that falls on such a frame
    is served by the next decoded frame, a frame or two later, whose own index
    and time are reported.
    """
    import av

    decoder = _Decoder(container, stream)
    pictures = 2 if decoder.alpha else 1  # an alpha WebM decodes two pictures a frame
    positions = [bisect.bisect_left(index.pts, t) for t in targets]
    gaps = np.diff(positions) if len(positions) > 1 else np.array([])
    if len(gaps) and float(np.mean(gaps)) >= SPARSE_GAP_FRAMES:
        decoder.context.skip_frame = "NONREF"
    frames: list[Frame] = []
    decoded = converted = seeks = rotation = missing = spent = 0
    budget = int(decode_budget(limits, len(targets)) * DECODE_SLACK)
    i = 0
    last: Any = None
    checked: tuple[int, int] | None = None
    size: tuple[int, int] | None = None  # of the first converted frame
    sar: Fraction | None = None  # the stream's sample aspect ratio, read then
    # key frame -> pts of the last frame decoded before damaged data after it
    damaged_after: dict[int, int] = {}

    def check(frame: Any) -> None:
        nonlocal checked, spent
        if (frame.width, frame.height) != checked:
            _check_pixels(frame.width, frame.height, limits)
            checked = (frame.width, frame.height)
        spent += frame.width * frame.height * pictures
        if budget and spent > budget:
            raise DecodeWorkLimitError(
                f"Decoding this video to reach its {len(targets)} sampled frames went past "
                f"the limit ({decoded:,} frames decoded, {spent / 1e9:,.0f} gigapixels). "
                + RE_ENCODE
            )

    def take(frame: Any) -> None:
        nonlocal i, converted, rotation, size, sar, missing
        consumed = served = 0
        while i < len(targets) and targets[i] <= frame.pts:
            consumed += 1
            if targets[i] < index.keyframes[0] and (
                _frames_between(index, targets[i], frame.pts) > SERVED_WITHIN
            ):
                # Before the stream's first key frame (a capture joined
                # inside a key-frame stretch): its data cannot be decoded,
                # and a frame this much later is another moment. Further on,
                # a target is only passed over as a skipped non-reference
                # frame, whatever the run of them.
                missing += 1
            else:
                served += 1
            i += 1
        if consumed and not served:
            return  # the first decodable frame, no sampled moment's
        if size is None:
            sar = _sample_aspect(stream)
            shown = shown_size(frame.width, frame.height, sar)
            size = fit_pixels(*shown, limits.max_video_pixels)
        turned = decoder.orientation(frame)
        image = _to_rgb(frame, limits.max_video_pixels, size, sar, turned)
        rotation = turned[1]
        converted += 1
        pos = min(bisect.bisect_left(index.pts, frame.pts), len(index.pts) - 1)
        time_s = float((frame.pts - index.start_pts) * index.time_base)
        frames.append(Frame(pos, time_s, image))

    while i < len(targets):
        key = index.keyframes[max(bisect.bisect_right(index.keyframes, targets[i]) - 1, 0)]
        if key in damaged_after and targets[i] > damaged_after[key]:
            missing += 1  # behind damaged data already met in this stretch
            i += 1
            continue
        progressed = damaged = False
        reached = key - 1
        try:
            # Inside the try: a seek that fails on damaged data costs this
            # target, not the whole video.
            decoder.seek(key)
            seeks += 1
            for frame in decoder.frames():
                decoded += 1
                check(frame)
                if frame.pts is None:
                    continue
                last = frame
                reached = max(reached, frame.pts)
                if frame.pts < targets[i]:
                    continue  # decoded to reach a target, never converted
                take(frame)
                progressed = True
                if i == len(targets):
                    break
                next_key = index.keyframes[bisect.bisect_right(index.keyframes, targets[i]) - 1]
                if next_key > frame.pts:
                    break  # a key frame lies between: seeking skips the stretch
        except av.error.FFmpegError as e:
            _machine_fault(e)
            # Damaged data: keep what we have and go on at the next target.
            logger.warning("decoding stopped at a damaged packet", exc_info=True)
            damaged = True
            damaged_after[key] = reached
        if not progressed:
            if not damaged:
                break  # the decoder has nothing further: end of a skipped or truncated stream
            missing += 1  # this target's data is damaged
            i += 1
    if (
        i < len(targets)
        and last is not None
        and (not frames or last.pts > _pts_of(frames[-1], index))
    ):
        take(last)  # the last target was skipped or missing: use the last frame decoded
    stats = DecodeStats(
        packets=len(index.pts),
        decoded=decoded,
        converted=converted,
        seeks=seeks,
        rotation=rotation,
        requested=len(targets),
        missing=missing,
    )
    return frames, stats


def _pts_of(frame: Frame, index: _VideoIndex) -> int:
    return index.pts[frame.index]


# A skipped non-reference frame is served by the next decoded one, at most
# this many frames on (runs of B-frames); a frame further on is past damage.
SERVED_WITHIN = 4


def _frames_between(index: _VideoIndex, first: int, later: int) -> int:
    """Frames from pts ``first`` to pts ``later`` in the index (positions)."""
    return bisect.bisect_left(index.pts, later) - bisect.bisect_left(index.pts, first)


def frames_at_times(
    path: Path, limits: MediaLimits, times: Sequence[float]
) -> dict[float, RGBImage]:
    """The video's frame nearest to each of ``times`` (seconds from its first
    frame), as RGB, upright, and bounded by ``max_video_pixels``: decoded as
    :func:`read_video` samples, seeking to the key frame before each one, so
    a long reference costs what its sampled frames cost. Left out of the
    result: a time more than one frame past the video's last frame (a shorter
    reference has no frame of that moment: its last frame is another one), and
    a time whose frame could not be decoded (damaged data), which is never
    served by a frame further on than the decoder's skipping of non-reference
    frames explains (``SERVED_WITHIN`` frames)."""
    import av

    if not times:
        return {}
    _check_size(path, limits)
    media_type = sniff(path)
    if media_type.kind != "video":
        raise UnsupportedMediaError("Frames at given times come from a video, not an image.")
    if media_type.format in _PILLOW_ANIMATIONS:
        return _animation_at_times(path, media_type, limits, times)
    if media_type.format in ("mp4", "mov"):
        _check_mp4_tables(path, limits)
    container = _open_container(path)
    try:
        stream = _video_stream(container)
        _check_pixels(stream.codec_context.width, stream.codec_context.height, limits)
        _check_declared_rate(stream, limits)
        index = _index_video(container, stream, limits)
        if not index.pts:
            raise EmptyMediaError("The video contains no frames.")
        seconds = [float((p - index.start_pts) * index.time_base) for p in index.pts]

        def nearest(t: float) -> int:
            i = bisect.bisect_left(seconds, t)
            if i == len(seconds):
                return i - 1
            if i > 0 and t - seconds[i - 1] <= seconds[i] - t:
                return i - 1
            return i

        # The last frame lasts until the next would start (its own gap); a
        # one-frame video serves every time, as a still image does.
        last_s = seconds[-1] - seconds[-2] if len(seconds) > 1 else math.inf
        wanted = {t: index.pts[nearest(t)] for t in times if t <= seconds[-1] + last_s}
        frames, _ = _decode_targets(container, stream, index, sorted(set(wanted.values())), limits)
    except av.error.FFmpegError as e:
        _machine_fault(e)
        raise UnreadableMediaError(
            "The video could not be read: the file is corrupt or truncated."
        ) from e
    finally:
        container.close()
    by_pts = {index.pts[f.index]: f.image for f in frames}
    decoded = sorted(by_pts)
    out: dict[float, RGBImage] = {}
    for t, target in wanted.items():
        # A target the decoder skipped (a non-reference frame) is served by
        # the next decoded frame, as in read_video; one past damaged data is
        # not (the next decoded frame may be a key-frame stretch later).
        i = bisect.bisect_left(decoded, target)
        if i < len(decoded) and _frames_between(index, target, decoded[i]) <= SERVED_WITHIN:
            out[t] = by_pts[decoded[i]]
    return out


# Animated pictures FFmpeg cannot read whole (it cannot decode an animated
# WebP, nor an opaque APNG that blends its frames over the last), read with
# Pillow, which composes every frame as a browser does.
_PILLOW_ANIMATIONS = frozenset({"apng", "webp"})


def _animation_times(path: Path, media_type: MediaType, limits: MediaLimits) -> list[float]:
    """When each frame of an APNG or animated WebP starts (seconds), within
    the video limits."""
    size = _check_size(path, limits)
    if media_type.format == "webp" and size > MAX_ANIMATED_WEBP_BYTES:
        raise MediaLimitError(
            f"The animated WebP is {size / 1024**2:,.0f} MB; animated WebP is read whole into "
            f"memory, so the limit for it is {MAX_ANIMATED_WEBP_BYTES / 1024**2:,.0f} MB. "
            "Upload the animation as a video (MP4 or WebM)."
        )
    delays = _apng_delays(path) if media_type.format == "apng" else _webp_delays(path)
    if not delays:
        raise UnreadableMediaError("The animation has no frames: the file is corrupt or truncated.")
    if limits.max_video_frames and len(delays) > limits.max_video_frames:
        raise _count_error(f"{len(delays):,}", limits)
    starts = np.concatenate([[0.0], np.cumsum(delays)])
    if starts[-1] > limits.max_duration_s:
        raise _duration_error(float(starts[-1]), limits)
    return [float(t) for t in starts]  # one more than the frames: the end


def _open_animation(path: Path, limits: MediaLimits) -> Image.Image:
    """The animation opened with Pillow (nothing decoded yet), its picture
    size within the limits."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except Image.DecompressionBombError as e:
        raise MediaLimitError(
            f"The animation declares an enormous picture size; the limit is "
            f"{limits.max_pixels / 1e6:.0f} megapixels."
        ) from e
    try:
        _check_pixels(im.width, im.height, limits)
    except MediaLimitError:
        im.close()
        raise
    return im


def _check_animation_work(wanted: Collection[int], area: int, limits: MediaLimits) -> None:
    """Reaching the ``wanted`` frames decodes every frame up to the last of
    them: bounded as a video's sampling is (``decode_budget``)."""
    if not wanted:
        return
    last = max(wanted)
    budget = decode_budget(limits, len(wanted))
    if budget and (last + 1) * area > budget:
        allowed = max(budget // max(area, 1), 1)
        raise DecodeWorkLimitError(
            f"Reaching the {len(wanted)} frames sampled over this animation means decoding "
            f"{last + 1:,} frames; the limit at its picture size is {allowed:,}. "
            "Re-encoded as a video (MP4 or WebM), it can be analysed."
        )


def _animation_frames(
    path: Path, media_type: MediaType, limits: MediaLimits, wanted: Collection[int]
) -> Iterator[tuple[int, Image.Image]]:
    """The animation's frames at ``wanted`` indices, as Pillow composes them
    (RGBA), decoding from the first frame on; the decoding work is bounded
    as a video's is."""
    if not wanted:
        return
    with _open_animation(path, limits) as im:
        # A default image before an APNG's animation is Pillow's frame 0.
        skip = 1 if media_type.format == "apng" and im.info.get("default_image") else 0
        last = max(wanted)
        _check_animation_work(wanted, im.width * im.height, limits)
        if getattr(im, "n_frames", 1) - skip <= last:
            raise UnreadableMediaError(
                "The animation holds fewer frames than it declares: the file is corrupt "
                "or truncated."
            )
        for i in range(last + 1):
            im.seek(i + skip)
            if i in wanted:
                yield i, im.convert("RGBA")


def _animation_rgb(frame: Image.Image, limits: MediaLimits) -> RGBImage:
    """An animation frame over the page's white, bounded as video frames are."""
    width, height = fit_pixels(frame.width, frame.height, limits.max_video_pixels)
    if (width, height) != frame.size:
        frame = frame.resize((width, height), Image.Resampling.BOX)
    return _rgb_array(frame)


def read_animation(
    path: Path, limits: MediaLimits, n_frames: int, media_type: MediaType, plan_frames: int = 0
) -> LoadedMedia:
    """An APNG or animated WebP sampled as :func:`read_video` samples a video:
    ``n_frames`` frames evenly over its time, from each frame's own delay."""
    if n_frames > limits.max_frames:
        raise MediaLimitError(f"{n_frames} frames requested; the limit is {limits.max_frames}.")
    starts = _animation_times(path, media_type, limits)
    ticks = [round(t * 1000) for t in starts[:-1]]  # milliseconds: whole ticks
    targets = sample_positions(ticks, n_frames)
    planned = sample_positions(ticks, plan_frames)
    frames: list[Frame] = []
    try:
        with _open_animation(path, limits) as im:
            width, height = im.size
        # The upload probe decodes one frame but answers for the analysis's sampling.
        _check_animation_work(planned, width * height, limits)
        for i, picture in _animation_frames(path, media_type, limits, set(targets)):
            frames.append(Frame(i, starts[i], _animation_rgb(picture, limits)))
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as e:
        _machine_fault(e)
        raise UnreadableMediaError(
            "The animation could not be read: the file is corrupt or truncated."
        ) from e
    decoded_h, decoded_w = frames[0].image.shape[:2]
    downscaled = (decoded_w, decoded_h) != (width, height)
    count = len(starts) - 1
    info = MediaInfo(
        kind="video",
        format=media_type.format,
        width=width,
        height=height,
        size_bytes=path.stat().st_size,
        sha256=file_sha256(path),
        duration_s=starts[-1],
        fps=count / starts[-1] if starts[-1] else None,
        frame_count=count,
        decoded_width=decoded_w if downscaled else None,
        decoded_height=decoded_h if downscaled else None,
        frames_requested=len(targets),
        frames_missing=0,
    )
    stats = DecodeStats(
        packets=count,
        decoded=max(targets) + 1,
        converted=len(frames),
        seeks=0,
        requested=len(targets),
    )
    return LoadedMedia(info, tuple(frames), stats)


def _animation_at_times(
    path: Path, media_type: MediaType, limits: MediaLimits, times: Sequence[float]
) -> dict[float, RGBImage]:
    """:func:`frames_at_times` for an APNG or animated WebP: the frame shown at
    each time; none past the animation's end."""
    starts = _animation_times(path, media_type, limits)
    # As frames_at_times serves a video: the first frame before the start,
    # nothing past the end.
    shown = {
        t: min(max(bisect.bisect_right(starts, t) - 1, 0), len(starts) - 2)
        for t in times
        if t <= starts[-1]
    }
    if not shown:
        return {}
    try:
        pictures = {
            i: _animation_rgb(p, limits)
            for i, p in _animation_frames(path, media_type, limits, set(shown.values()))
        }
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as e:
        _machine_fault(e)
        raise UnreadableMediaError(
            "The animation could not be read: the file is corrupt or truncated."
        ) from e
    return {t: pictures[i] for t, i in shown.items()}


def gray_thumbnails(
    path: Path, limits: MediaLimits, side: int, max_decode_pixels: int, max_frames: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.uint8]] | None:
    """Every frame of a video as a small upright grey picture (``side``
    pixels square, the whole frame squeezed in): the frames' times (seconds
    from the first frame, as :func:`frames_at_times` counts them) and the
    pictures ``[N, side, side]``. For telling which moment of one video
    another shows (``explain.reference``). ``None`` when the video has more
    than ``max_frames`` frames, or decoding every frame costs more than
    ``max_decode_pixels`` (frames times pixels, counted as decoded: a
    stream may grow past its declared size). Frames past damaged data are
    left out."""
    import av

    _check_size(path, limits)
    media_type = sniff(path)
    if media_type.kind != "video":
        raise UnsupportedMediaError("Frame thumbnails come from a video, not an image.")
    if media_type.format in _PILLOW_ANIMATIONS:
        starts = _animation_times(path, media_type, limits)
        count = len(starts) - 1
        try:
            with _open_animation(path, limits) as im:
                area = im.width * im.height
            if count > max_frames or count * area > max_decode_pixels:
                return None
            thumbs = []
            for _, picture in _animation_frames(path, media_type, limits, range(count)):
                # Over the page's white first, as the compared frames are.
                shown = Image.fromarray(_over_white(np.asarray(picture)), "RGB")
                small = shown.convert("L").resize((side, side), Image.Resampling.BOX)
                thumbs.append(np.asarray(small, np.uint8))
        except (OSError, SyntaxError, ValueError, EOFError, struct.error) as e:
            _machine_fault(e)
            raise UnreadableMediaError(
                "The animation could not be read: the file is corrupt or truncated."
            ) from e
        return np.asarray(starts[:-1]), np.stack(thumbs)
    if media_type.format in ("mp4", "mov"):
        _check_mp4_tables(path, limits)
    container = _open_container(path)
    times: list[float] = []
    pictures: list[npt.NDArray[np.uint8]] = []
    try:
        stream = _video_stream(container)
        width, height = stream.codec_context.width, stream.codec_context.height
        _check_pixels(width, height, limits)
        _check_declared_rate(stream, limits)
        index = _index_video(container, stream, limits)
        if not index.pts:
            raise EmptyMediaError("The video contains no frames.")
        area = width * height * _pictures_per_frame(stream)
        if len(index.pts) > max_frames or len(index.pts) * area > max_decode_pixels:
            return None
        decoder = _Decoder(container, stream)
        # Scaled in two steps: swscale to a few times the side (cheap, from
        # the decoder's own planes), then an area average.
        first = side * 4
        try:
            # Back to the start: indexing read every packet.
            decoder.seek(index.keyframes[0] if index.keyframes else index.start_pts)
            spent = 0
            for frame in decoder.frames():
                spent += frame.width * frame.height * (2 if decoder.alpha else 1)
                if spent > max_decode_pixels or len(pictures) >= max_frames:
                    return None
                if frame.pts is None:
                    continue
                mirrored, rotation = decoder.orientation(frame)
                if _has_alpha(frame):
                    # Over the page's white first, as the compared frames are.
                    rgba = frame.reformat(width=first, height=first, format="rgba")
                    shown = Image.fromarray(_over_white(rgba.to_ndarray()), "RGB")
                    grey = np.asarray(shown.convert("L"), np.uint8)
                else:
                    grey = frame.reformat(width=first, height=first, format="gray").to_ndarray()
                small = grey.reshape(side, 4, side, 4).mean(axis=(1, 3))
                pictures.append(upright(np.rint(small).astype(np.uint8), rotation, mirrored))
                times.append(float((frame.pts - index.start_pts) * index.time_base))
        except av.error.FFmpegError as e:
            _machine_fault(e)
            if not pictures:
                raise
            logger.info("thumbnails of %s stop at %.2f s (damaged data)", path.name, times[-1])
    except av.error.FFmpegError as e:
        raise UnreadableMediaError(
            "The video could not be read: the file is corrupt or truncated."
        ) from e
    finally:
        container.close()
    if not pictures:
        raise UnreadableMediaError(
            "No frame of the video could be decoded: the file is corrupt or truncated."
        )
    order = np.argsort(np.asarray(times), kind="stable")
    return np.asarray(times)[order], np.stack(pictures)[order]


def load_media(
    path: Path, limits: MediaLimits, n_frames: int, *, plan_frames: int = 0
) -> LoadedMedia:
    """Read an image (one frame) or sample a video, deciding by content
    (``plan_frames``: see :func:`read_video`)."""
    if not path.is_file():
        raise UnreadableMediaError(f"{path.name} does not exist or is not a file.")
    media_type = sniff(path)
    if media_type.kind == "image":
        return read_image(path, limits, media_type)
    if media_type.format in _PILLOW_ANIMATIONS:
        return read_animation(path, limits, n_frames, media_type, plan_frames)
    return read_video(path, limits, n_frames, media_type, plan_frames=plan_frames)


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
