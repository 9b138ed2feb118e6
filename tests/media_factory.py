"""Generated media for tests: clips, images and a bad-media corpus."""

from __future__ import annotations

import struct
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
from PIL import Image
from skimage.data import astronaut

CODECS = {"mp4": "libx264", "mov": "libx264", "mkv": "libx264", "webm": "libvpx", "avi": "mpeg4"}


def _write(container: Any, stream: Any, frames: Iterable[Any]) -> None:
    """Encode ``frames`` into ``stream``, flush the encoder and close the file."""
    for frame in frames:
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()


def face_image(size: int = 256) -> np.ndarray:
    """A real face: skimage's astronaut, cropped around her head."""
    img = astronaut()[0:300, 110:410]
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)


def noise_frame(width: int, height: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=(height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    return cv2.resize(base, (width, height), interpolation=cv2.INTER_LINEAR)


def write_clip(
    path: Path,
    frames: int = 30,
    width: int = 320,
    height: int = 240,
    fps: int = 10,
    gop: int = 10,
    face_at: tuple[int, int, int] | None = None,
    codec: str | None = None,
    audio: bool = False,
    more_faces: tuple[tuple[int, int, int], ...] = (),
    display_rotation: int | None = None,
    sample_aspect: Fraction | None = None,
    mirrored: bool = False,
) -> Path:
    """A clip of moving noise, optionally with a face of ``size`` pixels at
    ``(x, y, size)`` (and one more at each of ``more_faces``), moving slightly
    from frame to frame. Frame ``i``'s red channel in two 16x16 blocks at the
    top left encodes ``i`` (see :func:`marker`). With ``display_rotation``
    (degrees counterclockwise) the clip is stored as phones store portrait
    video: the picture described above, turned the other way, with a display
    matrix that turns it back upright. ``sample_aspect``: its pixels are
    that much wider than tall when shown (non-square pixels). ``mirrored``
    (with ``display_rotation``): the display matrix also mirrors it left to
    right (a selfie app's), and the picture is stored mirrored to match."""
    turns = (display_rotation or 0) // 90 % 4
    coded_width, coded_height = (height, width) if turns % 2 else (width, height)
    fmt = path.suffix.lstrip(".")
    container = av.open(str(path), mode="w")
    stream = container.add_stream(codec or CODECS[fmt], rate=fps)
    stream.width, stream.height = coded_width, coded_height
    stream.pix_fmt = "yuv420p"
    stream.gop_size = gop
    if stream.codec_context.name == "libx264":
        stream.options = {"preset": "ultrafast", "crf": "18"}
    else:
        stream.bit_rate = 20_000_000
    stream.codec_context.time_base = Fraction(1, fps)
    if display_rotation is not None:
        stream.set_display_rotation(display_rotation, hflip=mirrored)
    if sample_aspect is not None:
        stream.codec_context.sample_aspect_ratio = sample_aspect
    placed = [(at, face_image(at[2])) for at in ((face_at,) if face_at else ()) + more_faces]

    def frame(i: int) -> av.VideoFrame:
        img = noise_frame(width, height, seed=i % 7)
        for (x, y, s), face in placed:
            dx = i % 5
            img[y : y + s, x + dx : x + dx + s] = face
        img[:16, :16] = (i % 32) * MARKER_STEP
        img[:16, 16:32] = (i // 32) * MARKER_STEP
        # Shown: the stored picture turned, then mirrored (FFmpeg's matrix).
        shown = img[:, ::-1] if mirrored else img
        coded = np.ascontiguousarray(np.rot90(shown, k=-turns))
        return av.VideoFrame.from_ndarray(coded, format="rgb24")

    _write(container, stream, (frame(i) for i in range(frames)))
    return path


MARKER_STEP = 8


def vfr_clip(path: Path, times_ms: Iterable[int], width: int = 160, height: int = 120) -> Path:
    """A variable-frame-rate MP4 (H.264): frame ``i`` (marked ``i``, see
    :func:`marker`) is shown from ``times_ms[i]`` milliseconds, as a phone
    records when it drops its rate in dim light."""
    container = av.open(str(path), mode="w")
    stream = container.add_stream("libx264")
    stream.width, stream.height = width, height
    stream.pix_fmt = "yuv420p"
    stream.gop_size = 10
    stream.options = {"preset": "ultrafast", "crf": "18"}
    stream.codec_context.time_base = Fraction(1, 1000)

    def frame(i: int, ms: int) -> av.VideoFrame:
        img = noise_frame(width, height, seed=i % 7)
        img[:16, :16] = (i % 32) * MARKER_STEP
        img[:16, 16:32] = (i // 32) * MARKER_STEP
        out = av.VideoFrame.from_ndarray(img, format="rgb24")
        out.pts, out.time_base = ms, Fraction(1, 1000)
        return out

    _write(container, stream, (frame(i, ms) for i, ms in enumerate(times_ms)))
    return path


def cut_clip(src: Path, path: Path, first: int) -> Path:
    """``src`` (a :func:`write_clip` MP4) cut without re-encoding to start at
    its frame ``first``, as ``ffmpeg -ss ... -c copy`` cuts: the packets from
    the key frame before ``first`` are kept, those before ``first`` get
    negative times, and the muxer writes an edit list that hides them."""
    with av.open(str(src)) as inp:
        stream = inp.streams.video[0]
        tb = stream.time_base
        fps = stream.average_rate
        lead = round(first / fps / tb)
        packets = [p for p in inp.demux(stream) if p.size]
        key = max(p.pts for p in packets if p.is_keyframe and p.pts <= lead)
        with av.open(str(path), mode="w") as out:
            o = out.add_stream_from_template(stream)
            for p in packets:
                if p.pts < key:
                    continue
                p.pts -= lead
                p.dts -= lead
                p.stream = o
                out.mux(p)
    return path


def cut_mid_gop(src: Path, path: Path, drop: int) -> Path:
    """``src`` (a :func:`write_clip` clip) with its first ``drop`` packets
    left out and no edit list: the stream starts inside a key-frame
    stretch, as a capture joined mid-broadcast does, and its first frames
    cannot be decoded."""
    with av.open(str(src)) as inp:
        stream = inp.streams.video[0]
        packets = [p for p in inp.demux(stream) if p.size]
        with av.open(str(path), mode="w") as out:
            o = out.add_stream_from_template(stream)
            for p in packets[drop:]:
                p.stream = o
                out.mux(p)
    return path


def marker(image: np.ndarray) -> int:
    """The frame number (0-1023) a :func:`write_clip` frame carries."""
    low = round(float(image[4:12, 4:12, 0].mean()) / MARKER_STEP)
    high = round(float(image[4:12, 20:28, 0].mean()) / MARKER_STEP)
    return high * 32 + low


def write_image(
    path: Path, image: np.ndarray, fmt: str, exif_orientation: int | None = None
) -> Path:
    im = Image.fromarray(image)
    kwargs: dict = {}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif.tobytes()
    im.save(path, format=fmt, **kwargs)
    return path


# --- The bad-media corpus --------------------------------------------------------


def empty_file(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def truncated_mp4(path: Path, source: Path) -> Path:
    data = source.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return path


def text_as_mp4(path: Path) -> Path:
    path.write_text("This is not a video.\nJust some notes someone renamed.\n")
    return path


def strip_image(path: Path, width: int, height: int, fmt: str = "PNG") -> Path:
    """A real picture of noise, ``width`` x ``height``: a strip or a panorama."""
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)).save(
        path, format=fmt
    )
    return path


def huge_png_header(path: Path, width: int = 100_000, height: int = 100_000) -> Path:
    """A tiny PNG file whose header declares an enormous picture."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return (
            struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
    return path


def audio_only_mp4(path: Path, seconds: float = 1.0, *, cover: bool = False) -> Path:
    """A song as MP4; with ``cover``, with its album art, which FFmpeg shows
    as a video stream of one picture with the ``attached_pic`` disposition."""
    container = av.open(str(path), mode="w", format="mp4")
    stream = container.add_stream("aac", rate=44100)
    stream.layout = "mono"
    if cover:
        art = container.add_stream("mjpeg")
        art.width, art.height = 256, 256
        art.pix_fmt = "yuvj420p"
        art.disposition = av.stream.Disposition.attached_pic
        picture = av.VideoFrame.from_ndarray(face_image(256), "rgb24").reformat(format="yuvj420p")
        for packet in [*art.encode(picture), *art.encode(None)]:
            container.mux(packet)
    samples = int(44100 * seconds)
    t = np.arange(samples) / 44100
    data = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]

    def frame(start: int) -> av.AudioFrame:
        out = av.AudioFrame.from_ndarray(
            data[:, start : start + 1024].copy(), format="fltp", layout="mono"
        )
        out.sample_rate = 44100
        return out

    _write(container, stream, (frame(start) for start in range(0, samples, 1024)))
    return path


def zero_frame_video(path: Path) -> Path:
    """A container that declares a video track holding no frame at all."""
    container = av.open(str(path), mode="w")
    stream = container.add_stream("libx264", rate=10)
    stream.width, stream.height = 64, 64
    stream.pix_fmt = "yuv420p"
    container.start_encoding()
    _write(container, stream, ())
    return path


def black_video(path: Path, width: int, height: int, frames: int, fps: int = 10) -> Path:
    """``frames`` black frames (MPEG-4 Part 2) at ``fps``; the container follows
    the suffix."""
    container = av.open(str(path), mode="w")
    stream = container.add_stream("mpeg4", rate=fps)
    stream.width, stream.height = width, height
    stream.pix_fmt = "yuv420p"
    stream.codec_context.time_base = Fraction(1, fps)
    black = np.zeros((height, width, 3), np.uint8)
    _write(container, stream, (av.VideoFrame.from_ndarray(black, "rgb24") for _ in range(frames)))
    return path


def tiny_frames_clip(path: Path, frames: int, fps: int, size: int = 32) -> Path:
    """Black ``size``x``size`` frames at ``fps`` (issue 17's hostile file had
    3 M of them, 16x16, at 50,000 fps in 37 MB; frames under
    ``MediaLimits.min_side`` are now refused for their size first, so the
    default is the smallest size the frame-rate checks still see)."""
    return black_video(path, size, size, frames, fps)


def size_change_mkv(
    path: Path, first: tuple[int, int], then: tuple[int, int], frames: int = 5, fps: int = 10
) -> Path:
    """A Matroska MJPEG video whose frames change size halfway: ``frames``
    grey frames of ``first`` (width, height), the size the stream declares,
    then ``frames`` of ``then`` (each MJPEG packet is a picture of its own
    size, so the decoder returns the new size)."""
    container = av.open(str(path), mode="w")
    stream = container.add_stream("mjpeg", rate=fps)
    stream.width, stream.height = first
    stream.pix_fmt = "yuvj420p"
    stream.codec_context.time_base = Fraction(1, fps)
    later = av.CodecContext.create("mjpeg", "w")
    later.width, later.height = then
    later.pix_fmt = "yuvj420p"
    later.time_base = Fraction(1, fps)
    for part, (codec, (width, height)) in enumerate(((stream.codec_context, first), (later, then))):
        for i in range(frames):
            image = np.full((height, width, 3), 60 + 40 * part, np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuvj420p")
            frame.pts, frame.time_base = part * frames + i, Fraction(1, fps)
            for packet in codec.encode(frame):
                packet.stream = stream
                container.mux(packet)
        for packet in codec.encode():
            packet.stream = stream
            container.mux(packet)
    container.close()
    return path


def unknown_codec_avi(path: Path) -> Path:
    """An AVI whose video track names a codec FFmpeg has no decoder for: a
    good MPEG-4 AVI with its FourCC (``FMP4``, in the stream header and the
    format chunk) replaced by one no codec uses."""
    good = black_video(path.with_name(f"{path.stem}-source.avi"), 64, 64, 5)
    data = good.read_bytes()
    good.unlink()
    assert data.count(b"FMP4") == 2, "the muxer wrote another FourCC"
    path.write_bytes(data.replace(b"FMP4", b"QQQQ"))
    return path


def clip_with_long_audio(path: Path, video_frames: int, audio_s: float, fps: int = 10) -> Path:
    """A Matroska clip of ``video_frames`` frames whose soundtrack runs on
    to ``audio_s`` seconds (its last audio packets are that late): the
    file's duration is the soundtrack's, not the video's."""
    container = av.open(str(path), mode="w")
    audio = container.add_stream("aac", rate=8000)
    audio.layout = "mono"
    video = container.add_stream("libx264", rate=fps)
    video.width, video.height, video.pix_fmt = 160, 120, "yuv420p"
    for i in range(video_frames):
        frame = av.VideoFrame.from_ndarray(noise_frame(160, 120, seed=i % 7), format="rgb24")
        frame.pts = i
        for packet in video.encode(frame):
            container.mux(packet)
    for packet in video.encode():
        container.mux(packet)
    packets = []
    for k in range(8):
        samples = av.AudioFrame.from_ndarray(
            np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
        )
        samples.sample_rate, samples.pts = 8000, k * 1024
        packets += audio.encode(samples)
    packets += audio.encode()
    late = round(8000 * audio_s) - 8 * 1024
    for j, packet in enumerate(packets):
        if j >= len(packets) // 2:
            packet.pts = packet.dts = packet.pts + late
        container.mux(packet)
    container.close()
    return path


def two_video_streams_mkv(path: Path, default_size: tuple[int, int]) -> Path:
    """A Matroska file with two video streams: the first 80x60 and not the
    default, the second ``default_size`` and flagged default (the one a
    player shows)."""
    container = av.open(str(path), mode="w")
    sizes = ((80, 60), default_size)
    streams = []
    for width, height in sizes:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        streams.append(stream)
    streams[0].disposition = av.stream.Disposition(0)
    streams[1].disposition = av.stream.Disposition.default
    for i in range(10):
        for stream, (width, height) in zip(streams, sizes, strict=True):
            frame = av.VideoFrame.from_ndarray(noise_frame(width, height, i), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
    for stream in streams:
        for packet in stream.encode():
            container.mux(packet)
    container.close()
    return path


def _s15(x: float) -> bytes:
    return struct.pack(">i", round(x * 65536))


_D50_WHITE = (0.9642, 1.0, 0.82491)


def _xyz_tag(x: float, y: float, z: float) -> bytes:
    return b"XYZ \0\0\0\0" + _s15(x) + _s15(y) + _s15(z)


def _curve_tag(gamma: float) -> bytes:
    return b"curv\0\0\0\0" + struct.pack(">IH", 1, round(gamma * 256)) + b"\0\0"


def _icc_profile(colour_space: bytes, description: str, tags: list[tuple[bytes, bytes]]) -> bytes:
    """An ICC profile (v2, display class, XYZ connection space) of ``tags``
    besides its description, copyright and white point."""
    text = description.encode() + b"\0"
    tags = [
        (b"desc", b"desc\0\0\0\0" + struct.pack(">I", len(text)) + text + b"\0" * 81),
        (b"cprt", b"text\0\0\0\0none\0"),
        (b"wtpt", _xyz_tag(*_D50_WHITE)),
        *tags,
    ]
    offset = 128 + 4 + 12 * len(tags)
    table = data = b""
    for sig, body in tags:
        data += b"\0" * (-(offset + len(data)) % 4)
        table += sig + struct.pack(">II", offset + len(data), len(body))
        data += body
    body = struct.pack(">I", len(tags)) + table + data
    header = (
        struct.pack(">I", 128 + len(body))
        + b"none"
        + bytes([2, 0x10, 0, 0])
        + b"mntr"
        + colour_space
        + b"XYZ "
        + b"\0" * 12
        + b"acsp"
        + b"APPL"
        + b"\0" * 4
        + b"none"  # manufacturer
        + b"\0" * 16  # model, attributes, rendering intent
        + b"".join(_s15(v) for v in _D50_WHITE)
        + b"none"
        + b"\0" * 44
    )
    assert len(header) == 128
    return header + body


def rgb_icc_profile(
    description: str, primaries: tuple[tuple[float, float, float], ...], gamma: float
) -> bytes:
    """A matrix/TRC RGB ICC profile: ``primaries`` are the red, green and
    blue colorants' XYZ (D50), ``gamma`` the curve of each channel."""
    colorants = zip((b"rXYZ", b"gXYZ", b"bXYZ"), primaries, strict=True)
    return _icc_profile(
        b"RGB ",
        description,
        [
            *((tag, _xyz_tag(*xyz)) for tag, xyz in colorants),
            *((tag, _curve_tag(gamma)) for tag in (b"rTRC", b"gTRC", b"bTRC")),
        ],
    )


def grey_icc_profile(description: str, gamma: float) -> bytes:
    """A grey ICC profile whose tone curve is ``gamma``."""
    return _icc_profile(b"GRAY", description, [(b"kTRC", _curve_tag(gamma))])


# A linear grey: its 100 is a lighter grey than sRGB's 100.
LINEAR_GREY = grey_icc_profile("Linear grey", 1.0)


# Adobe RGB (1998)'s colorants (D50-adapted) and gamma: a wider gamut than sRGB.
ADOBE_RGB_LIKE = rgb_icc_profile(
    "Adobe RGB (1998) compatible",
    ((0.60974, 0.31111, 0.01947), (0.20528, 0.62567, 0.06087), (0.14919, 0.06322, 0.74457)),
    2.19921875,
)


def lossless_jpeg(path: Path, codec: str) -> Path:
    """A lossless JPEG (``codec`` "ljpeg", SOF3) or a JPEG-LS (``"jpegls"``,
    SOF55) picture of 64x48, encoded by FFmpeg."""
    context = av.codec.CodecContext.create(codec, "w")
    context.width, context.height = 64, 48
    context.pix_fmt = {"ljpeg": "bgr24", "jpegls": "rgb24"}[codec]
    context.time_base = Fraction(1, 25)
    frame = av.VideoFrame.from_ndarray(noise_frame(64, 48), format="rgb24")
    frame = frame.reformat(format=context.pix_fmt)
    path.write_bytes(b"".join(bytes(p) for p in [*context.encode(frame), *context.encode()]))
    return path
