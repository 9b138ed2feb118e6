from __future__ import annotations

import errno
import io
import itertools
import struct
import zlib
from collections.abc import Iterator
from dataclasses import replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from ensemble import media
from ensemble.config import MediaLimits
from ensemble.errors import (
    EmptyMediaError,
    FrameCountLimitError,
    FrameRateLimitError,
    InvalidMediaError,
    MediaLimitError,
    MediaReadFaultError,
    NoVideoStreamError,
    PictureShapeError,
    UnreadableMediaError,
    UnsupportedMediaError,
)
from ensemble.media import MediaType, list_media, load_media, sample_indices, sniff
from tests import media_factory as mf

LIMITS = MediaLimits()


@pytest.mark.parametrize(
    "fmt,pil", [("jpeg", "JPEG"), ("png", "PNG"), ("webp", "WEBP"), ("bmp", "BMP")]
)
def test_each_image_format_is_read_as_rgb(tmp_path: Path, fmt: str, pil: str) -> None:
    image = mf.face_image(96)
    path = mf.write_image(tmp_path / f"face.{fmt}", image, pil)
    media = load_media(path, LIMITS, 32)
    assert media.info.kind == "image" and media.info.format == fmt
    assert len(media.frames) == 1
    frame = media.frames[0].image
    assert frame.shape == (96, 96, 3) and frame.dtype == np.uint8
    tolerance = 12 if fmt in ("jpeg", "webp") else 0
    assert np.abs(frame.astype(int) - image.astype(int)).mean() <= tolerance


def test_a_16_bit_grey_png_is_scaled_to_8_bits_not_clipped_to_white(tmp_path: Path) -> None:
    """Pillow opens it as mode I;16, and its convert("RGB") turns every value
    over 255 white: a visible face became a blank picture and "no face"."""
    grey = mf.face_image(96).mean(axis=2).round().astype(np.uint16)
    path = tmp_path / "scan.png"
    Image.fromarray(grey * 257).save(path)  # the 16-bit value of each 8-bit grey
    with Image.open(path) as im:
        assert im.mode == "I;16"
    frame = load_media(path, LIMITS, 32).frames[0].image
    assert frame.shape == (96, 96, 3) and frame.dtype == np.uint8
    assert np.array_equal(frame[:, :, 0], grey) and np.array_equal(frame[:, :, 2], grey)


def test_a_camera_jpeg_with_a_second_picture_is_read_as_its_primary_jpeg(tmp_path: Path) -> None:
    """Cameras and phones append previews or gain maps (an MPF block); Pillow
    calls such a JPEG "MPO"."""
    primary = mf.face_image(96)
    preview = np.zeros((48, 48, 3), dtype=np.uint8)
    path = tmp_path / "camera.jpg"
    Image.fromarray(primary).save(
        path, format="MPO", save_all=True, append_images=[Image.fromarray(preview)]
    )
    with Image.open(path) as im:
        assert im.format == "MPO"
    media = load_media(path, LIMITS, 32)
    assert media.info.kind == "image" and media.info.format == "jpeg"
    frame = media.frames[0].image
    assert frame.shape == (96, 96, 3)
    assert np.abs(frame.astype(int) - primary.astype(int)).mean() <= 12


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    image = np.zeros((40, 80, 3), dtype=np.uint8)
    image[:, :40] = 255  # left half white
    path = mf.write_image(tmp_path / "rotated.jpg", image, "JPEG", exif_orientation=6)
    frame = load_media(path, LIMITS, 1).frames[0].image
    # Orientation 6 means "rotate 90 degrees clockwise to display".
    assert frame.shape[:2] == (80, 40)
    assert frame[:40].mean() > 200 and frame[40:].mean() < 50


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("exif", [b"MM\x00*\x00\x00", b"abcdefgh"], ids=["short", "not-tiff"])
def test_a_damaged_exif_block_costs_the_orientation_not_the_picture(
    tmp_path: Path, fmt: str, exif: bytes
) -> None:
    """The pixels decode; only the EXIF block (parsed after them) is damaged:
    a truncated TIFF header raised struct.error, which escaped as a crash, and
    a foreign one got the picture called corrupt."""
    image = np.zeros((40, 80, 3), dtype=np.uint8)
    image[:, :40] = 255
    path = tmp_path / f"face.{fmt.lower()}"
    prefix = b"Exif\x00\x00" if fmt == "JPEG" else b""
    # A JPEG with a resolution in its JFIF header skips Pillow's own EXIF check.
    Image.fromarray(image).save(path, fmt, exif=prefix + exif, dpi=(72, 72))
    frame = load_media(path, LIMITS, 1).frames[0].image
    assert frame.shape[:2] == (40, 80)
    assert frame[:, :40].mean() > 200 and frame[:, 40:].mean() < 50


@pytest.mark.parametrize("ext", ["mp4", "mov", "webm", "avi", "mkv"])
def test_each_video_container_is_sampled_evenly_with_timestamps(tmp_path: Path, ext: str) -> None:
    path = mf.write_clip(tmp_path / f"clip.{ext}", frames=40, fps=10, gop=10)
    media = load_media(path, LIMITS, 8)
    assert media.info.kind == "video" and media.info.format == ext
    assert media.info.frame_count == 40
    assert media.info.duration_s == pytest.approx(4.0, abs=0.15)
    assert media.info.fps == pytest.approx(10.0, rel=0.02)
    indices = [f.index for f in media.frames]
    assert len(indices) == 8 and indices[0] == 0 and indices[-1] == 39
    assert all(b > a for a, b in itertools.pairwise(indices))
    # Each returned frame really is the frame its index names.
    assert [mf.marker(f.image) for f in media.frames] == indices
    for f in media.frames:
        assert f.time_s == pytest.approx(f.index / 10, abs=1e-6)


def test_a_video_cut_without_re_encoding_starts_at_its_first_shown_frame(tmp_path: Path) -> None:
    """An edit list hides the frames between the key frame before the cut and
    the cut: they are no frames of the video (the decoder drops them), and
    time 0 is the first frame shown, as players show it. Counted in, they
    made every time late by their length and pulled samples onto frame 0."""
    src = mf.write_clip(tmp_path / "src.mp4", frames=40, fps=10, gop=10)
    path = mf.cut_clip(src, tmp_path / "cut.mp4", first=15)
    whole = load_media(path, LIMITS, 25)
    assert whole.info.frame_count == 25
    assert whole.info.duration_s == pytest.approx(2.5, abs=0.15)
    assert [f.index for f in whole.frames] == list(range(25))
    assert [mf.marker(f.image) for f in whole.frames] == list(range(15, 40))
    for f in whole.frames:
        assert f.time_s == pytest.approx(f.index / 10, abs=1e-6)
    sparse = load_media(path, LIMITS, 4)
    assert [mf.marker(f.image) - 15 for f in sparse.frames] == [f.index for f in sparse.frames]
    assert sparse.frames[0].index == 0 and sparse.frames[-1].index == 24
    # A reference cut so is compared at the moments a player shows.
    at = media.frames_at_times(path, LIMITS, [0.0, 1.0])
    assert {t: mf.marker(im) for t, im in at.items()} == {0.0: 15, 1.0: 25}


def test_short_video_yields_all_its_frames(tmp_path: Path) -> None:
    path = mf.write_clip(tmp_path / "short.mp4", frames=5)
    media = load_media(path, LIMITS, 32)
    assert [f.index for f in media.frames] == [0, 1, 2, 3, 4]


def test_sparse_sampling_skips_stretches_and_converts_only_samples(tmp_path: Path) -> None:
    path = mf.write_clip(tmp_path / "long.mp4", frames=300, fps=30, gop=30, width=160, height=120)
    media = load_media(path, LIMITS, 6)
    assert media.stats.converted == len(media.frames) == 6
    assert media.stats.decoded < 300 // 2, media.stats
    assert media.stats.seeks >= 2
    assert [mf.marker(f.image) for f in media.frames] == [f.index for f in media.frames]


def test_sample_indices_are_even_and_unique() -> None:
    assert sample_indices(300, 4) == [0, 100, 199, 299]
    assert sample_indices(3, 10) == [0, 1, 2]
    assert sample_indices(0, 4) == []


def test_a_constant_rate_video_is_sampled_by_time_as_by_frame_count() -> None:
    """Evenly spaced timestamps: the same frames as before, ties included
    (index 3.5 of 0-7 rounds to 4, as ``sample_indices`` rounds it)."""
    for count, n in [(8, 3), (300, 4), (396, 32), (40, 8), (588, 7)]:
        pts = [512 * i + 1024 for i in range(count)]
        assert media.sample_positions(pts, n) == sample_indices(count, n)
    # 30 fps in milliseconds (33, 33, 34, ...): constant rate too; by time,
    # a tie at 293.5 would have gone to 293.
    jittered = [round(1000 * i / 30) for i in range(588)]
    assert media.sample_positions(jittered, 7) == sample_indices(588, 7)
    assert 294 in sample_indices(588, 7)
    assert media.sample_positions([5, 6, 7], 10) == [0, 1, 2]
    assert media.sample_positions([], 4) == []
    assert media.sample_positions([0, 1, 2, 3, 100], 1) == [0]


def test_a_variable_rate_video_is_sampled_at_evenly_spaced_moments() -> None:
    """The frame nearest each moment; a frame held past the spacing is
    sampled once, not repeated."""
    assert media.sample_positions([0, 1, 2, 3, 100], 4) == [0, 3, 4]
    # 50 frames in the first second, then one every 100 ticks until 1,000.
    pts = list(range(0, 50)) + list(range(100, 1001, 100))
    assert media.sample_positions(pts, 6) == [0, 51, 53, 55, 57, 59]
    assert sample_indices(len(pts), 6) == [0, 12, 24, 35, 47, 59]  # what frame count gave


def test_a_variable_frame_rate_video_is_sampled_evenly_over_its_time(tmp_path: Path) -> None:
    """Two seconds at 50 fps, then eight at 5 fps (a phone in dim light):
    sampled by frame count, six of eight samples fell in the first two
    seconds; sampled by time, they are about 1.4 s apart throughout."""
    times = [20 * i for i in range(100)] + [2000 + 200 * i for i in range(40)]
    path = mf.vfr_clip(tmp_path / "vfr.mp4", times)
    loaded = load_media(path, LIMITS, 8)
    assert loaded.info.frame_count == 140
    assert [mf.marker(f.image) for f in loaded.frames] == [f.index for f in loaded.frames]
    seconds = [f.time_s for f in loaded.frames]
    assert len(seconds) == 8 and seconds[0] == 0.0 and seconds[-1] == pytest.approx(9.8, abs=1e-3)
    spacing = 9.8 / 7
    for a, b in itertools.pairwise(seconds):
        assert abs((b - a) - spacing) <= 0.2 + 1e-6, seconds  # within one slow frame
    assert sum(t < 2.0 for t in seconds) == 2


def test_folder_expands_to_media_files_only(tmp_path: Path) -> None:
    (tmp_path / "a.mp4").write_bytes(b"x")
    (tmp_path / "b.JPG").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in list_media([tmp_path])] == ["a.mp4", "b.JPG"]


# --- limits ---------------------------------------------------------------------


def test_image_over_pixel_limit_is_refused_before_decoding(tmp_path: Path) -> None:
    path = mf.write_image(tmp_path / "big.png", np.zeros((100, 200, 3), np.uint8), "PNG")
    with pytest.raises(MediaLimitError, match="megapixels"):
        load_media(path, MediaLimits(max_pixels=10_000), 1)


def test_video_over_duration_limit_is_refused(tmp_path: Path) -> None:
    path = mf.write_clip(tmp_path / "long.mp4", frames=50, fps=10)
    with pytest.raises(MediaLimitError, match="minutes"):
        load_media(path, MediaLimits(max_duration_s=2.0), 8)


def test_video_frame_over_pixel_limit_is_refused(tmp_path: Path) -> None:
    path = mf.write_clip(tmp_path / "wide.mp4", frames=3, width=320, height=240)
    with pytest.raises(MediaLimitError):
        load_media(path, MediaLimits(max_pixels=320 * 240 - 1), 3)


def test_too_many_frames_requested_is_refused(tmp_path: Path) -> None:
    path = mf.write_clip(tmp_path / "c.mp4", frames=3)
    with pytest.raises(MediaLimitError, match="limit is 16"):
        load_media(path, MediaLimits(max_frames=16), 17)


def test_a_phone_panorama_and_a_small_picture_are_within_the_shape_limits(tmp_path: Path) -> None:
    panorama = load_media(mf.strip_image(tmp_path / "pano.jpg", 2400, 200, "JPEG"), LIMITS, 1)
    assert panorama.frames[0].image.shape == (200, 2400, 3)
    small = load_media(mf.strip_image(tmp_path / "small.png", 32, 32), LIMITS, 1)
    assert small.frames[0].image.shape == (32, 32, 3)


def test_file_over_byte_limit_is_refused(tmp_path: Path) -> None:
    path = mf.write_clip(tmp_path / "c.mp4", frames=3)
    with pytest.raises(MediaLimitError, match="MiB"):
        load_media(path, MediaLimits(max_bytes=100), 3)


# --- the bad-media corpus -------------------------------------------------------------


@pytest.fixture
def good_mp4(tmp_path: Path) -> Path:
    return mf.write_clip(tmp_path / "good.mp4", frames=30)


@pytest.mark.parametrize(
    "make,error,reason",
    [
        (lambda d, g: mf.empty_file(d / "empty.mp4"), UnreadableMediaError, "empty"),
        (
            lambda d, g: mf.truncated_mp4(d / "cut.mp4", g),
            UnreadableMediaError,
            "corrupt, truncated",
        ),
        (
            lambda d, g: mf.text_as_mp4(d / "notes.mp4"),
            UnsupportedMediaError,
            "looks like a text file",
        ),
        (lambda d, g: mf.huge_png_header(d / "huge.png"), MediaLimitError, "megapixels"),
        (lambda d, g: mf.audio_only_mp4(d / "song.mp4"), NoVideoStreamError, "only audio"),
        (
            lambda d, g: mf.audio_only_mp4(d / "song.mp4", cover=True),
            NoVideoStreamError,
            "only audio and a cover picture",
        ),
        (
            lambda d, g: mf.unknown_codec_avi(d / "odd.avi"),
            UnsupportedMediaError,
            "codec is not one this site can decode",
        ),
        (lambda d, g: mf.zero_frame_video(d / "nothing.mp4"), EmptyMediaError, "no frames"),
        (
            lambda d, g: mf.strip_image(d / "strip.png", 65000, 1),
            PictureShapeError,
            "65000x1 pixels: too small to hold a face",
        ),
        (
            lambda d, g: mf.huge_png_header(d / "strip.png", 400_000, 4),
            PictureShapeError,
            "too small to hold a face",
        ),
        (
            lambda d, g: mf.strip_image(d / "panorama.jpg", 4000, 100, "JPEG"),
            PictureShapeError,
            "40 times longer than it is wide",
        ),
        (
            lambda d, g: mf.write_clip(d / "strip.mp4", frames=3, width=1280, height=16),
            PictureShapeError,
            "1280x16 pixels: too small",
        ),
    ],
    ids=[
        "empty",
        "truncated_mp4",
        "text_renamed_mp4",
        "png_100000x100000",
        "audio_only",
        "audio_with_cover_art",
        "avi_unknown_codec",
        "zero_frames",
        "png_strip_65000x1",
        "png_header_400000x4",
        "jpeg_panorama_40_to_1",
        "mp4_strip_1280x16",
    ],
)
def test_bad_media_raises_typed_error_with_reason(
    tmp_path: Path, good_mp4: Path, make, error: type[Exception], reason: str
) -> None:
    path = make(tmp_path, good_mp4)
    before = path.read_bytes()
    with pytest.raises(error, match=reason):
        load_media(path, LIMITS, 8)
    assert path.read_bytes() == before  # the upload is untouched


def test_missing_file_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(UnreadableMediaError, match="does not exist"):
        load_media(tmp_path / "nope.mp4", LIMITS, 8)


def test_heic_image_is_unsupported_with_advice(tmp_path: Path) -> None:
    path = tmp_path / "photo.heic"
    path.write_bytes(b"\x00\x00\x00\x18ftypheic" + b"\x00" * 32)
    with pytest.raises(UnsupportedMediaError, match="convert to JPEG"):
        sniff(path)


def test_jpeg_renamed_mp4_is_read_as_image(tmp_path: Path) -> None:
    path = mf.write_image(tmp_path / "disguised.mp4", mf.face_image(64), "JPEG")
    assert load_media(path, LIMITS, 8).info.kind == "image"


def test_truncated_jpeg_is_unreadable(tmp_path: Path) -> None:
    path = mf.write_image(tmp_path / "face.jpg", mf.face_image(128), "JPEG")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UnreadableMediaError, match="corrupt or truncated"):
        load_media(path, LIMITS, 1)


# --- decoding costs (issue 17) ----------------------------------------------------


class _CountingContainer:
    """An open container whose demuxed packets are counted."""

    def __init__(self, container: Any) -> None:
        self.container = container
        self.read = 0

    def demux(self, stream: Any) -> Iterator[Any]:
        for packet in self.container.demux(stream):
            self.read += 1
            yield packet


def _index(path: Path, limits: MediaLimits) -> tuple[int, Any]:
    """Packets the index pass read, and its index or the error it raised."""
    container = av.open(str(path))
    counting = _CountingContainer(container)
    try:
        outcome: Any = media._index_video(counting, container.streams.video[0], limits)
    except MediaLimitError as e:
        outcome = e
    finally:
        container.close()
    return counting.read, outcome


def _never(*args: object, **kwargs: object) -> None:
    raise AssertionError("reached a step the limits should have stopped before")


def test_mp4_declaring_more_frames_than_the_limit_is_refused_before_it_is_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = mf.tiny_frames_clip(tmp_path / "many.mp4", frames=300, fps=25)
    # FFmpeg's MP4 demuxer indexes every sample as it opens a file (245 MB
    # for 3 M frames): the sample table is read before it.
    monkeypatch.setattr(media, "_open_container", _never)
    with pytest.raises(FrameCountLimitError, match="has 300 frames; the limit is 200") as e:
        load_media(path, MediaLimits(max_video_frames=200), 8)
    assert e.value.code == "frame_count"


def test_mp4_declaring_50000_fps_is_refused_before_it_is_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = mf.tiny_frames_clip(tmp_path / "fast.mp4", frames=2000, fps=50_000)
    monkeypatch.setattr(media, "_open_container", _never)
    with pytest.raises(FrameRateLimitError, match="50000 frames per second; the limit is 240"):
        load_media(path, LIMITS, 8)


@pytest.mark.parametrize(
    "limits,reason",
    [
        (MediaLimits(), "1000 frames per second; the limit is 240"),
        (MediaLimits(max_fps=0, max_video_frames=400), "has 500 frames; the limit is 400"),
    ],
)
def test_avi_declared_rate_and_count_are_refused_before_the_demux_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limits: MediaLimits, reason: str
) -> None:
    # (The AVI muxer takes no more than a few thousand frames per second.)
    path = mf.tiny_frames_clip(tmp_path / "fast.avi", frames=500, fps=1000)
    monkeypatch.setattr(media, "_index_video", _never)
    with pytest.raises(MediaLimitError, match=reason):
        load_media(path, limits, 8)


def test_index_pass_keeps_no_more_packets_than_the_frame_limit(tmp_path: Path) -> None:
    path = mf.tiny_frames_clip(tmp_path / "many.mkv", frames=300, fps=25)
    read, outcome = _index(path, MediaLimits(max_video_frames=100))
    assert isinstance(outcome, FrameCountLimitError), outcome
    assert "more than 100 frames; the limit is 100" in str(outcome)
    assert read == 101  # before: all 300 (and the flush packet), every one kept
    # A video of exactly the limit passes, every frame indexed.
    read, outcome = _index(path, MediaLimits(max_video_frames=300))
    assert len(outcome.pts) == 300 and read == 301


def test_index_pass_stops_when_timestamps_show_a_rate_over_the_limit(tmp_path: Path) -> None:
    # Whatever the container declares, 50,000 fps timestamps stop the pass
    # within its first 240 frames (plus one second's worth of slack).
    path = mf.tiny_frames_clip(tmp_path / "fast.mp4", frames=2000, fps=50_000)
    read, outcome = _index(path, MediaLimits(max_video_frames=0))
    assert isinstance(outcome, FrameRateLimitError), outcome
    assert read <= 242, read  # before: all 2000


def test_a_240_fps_camera_is_within_the_rate_limit(tmp_path: Path) -> None:
    path = mf.tiny_frames_clip(tmp_path / "slowmo.mp4", frames=600, fps=240)
    loaded = load_media(path, LIMITS, 8)
    assert loaded.info.frame_count == 600 and loaded.info.fps == pytest.approx(240)


def test_fit_pixels_keeps_the_aspect_ratio_within_the_bound() -> None:
    bound = 3840 * 2160
    assert media.fit_pixels(1920, 1080, bound) == (1920, 1080)
    assert media.fit_pixels(3840, 2160, bound) == (3840, 2160)
    w, h = media.fit_pixels(6400, 6000, bound)
    assert w * h <= bound and w * h > 0.999 * bound
    assert w / h == pytest.approx(6400 / 6000, rel=1e-3)
    assert media.fit_pixels(6400, 6000, 0) == (6400, 6000)


def test_video_frames_over_the_pixel_bound_are_downscaled_while_decoding(tmp_path: Path) -> None:
    path = mf.write_clip(tmp_path / "wide.mp4", frames=12, width=320, height=240)
    full = load_media(path, MediaLimits(max_video_pixels=0), 4)
    small = load_media(path, MediaLimits(max_video_pixels=160 * 120), 4)
    assert [f.image.shape for f in small.frames] == [(120, 160, 3)] * 4
    assert (small.info.width, small.info.height) == (320, 240)  # the source's size
    assert small.info.frame_size == (160, 120)
    assert [f.index for f in small.frames] == [f.index for f in full.frames]
    for a, b in zip(small.frames, full.frames, strict=True):
        # The whole picture at half size (swscale converts the colours at
        # the new size, so it differs a little from resizing the RGB frame)...
        expected = cv2.resize(b.image, (160, 120), interpolation=cv2.INTER_AREA).astype(int)
        assert np.abs(a.image.astype(int) - expected).mean() < 10
        # ...not a part of it at full size.
        assert np.abs(b.image[:120, :160].astype(int) - expected).mean() > 30


def test_video_frames_within_the_pixel_bound_are_decoded_unchanged(tmp_path: Path) -> None:
    path = mf.write_clip(tmp_path / "clip.mp4", frames=12, width=320, height=240)
    full = load_media(path, MediaLimits(max_video_pixels=0), 4)
    same = load_media(path, MediaLimits(max_video_pixels=320 * 240), 4)
    assert same.info.decoded_width is None and same.info.frame_size == (320, 240)
    for a, b in zip(same.frames, full.frames, strict=True):
        assert np.array_equal(a.image, b.image)


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_phone_video_is_turned_upright_as_its_display_matrix_asks(
    tmp_path: Path, rotation: int
) -> None:
    upright = load_media(mf.write_clip(tmp_path / "upright.mp4", frames=12), LIMITS, 4)
    phone = mf.write_clip(tmp_path / "phone.mp4", frames=12, display_rotation=rotation)
    with av.open(str(phone)) as container:  # stored sideways or upside down
        stored = container.streams.video[0].codec_context
        assert (stored.width, stored.height) == ((240, 320) if rotation % 180 else (320, 240))
    media = load_media(phone, LIMITS, 4)
    assert media.info.rotation == rotation % 360
    assert (media.info.width, media.info.height) == (320, 240) == media.info.frame_size
    for a, b in zip(media.frames, upright.frames, strict=True):
        assert a.image.shape == (240, 320, 3)
        assert mf.marker(a.image) == a.index  # the marker is back at the top left
        assert np.abs(a.image.astype(int) - b.image.astype(int)).mean() < 8


@pytest.mark.parametrize("rotation", [0, 90, 180])
def test_a_mirroring_display_matrix_is_mirrored_not_turned_upside_down(
    tmp_path: Path, rotation: int
) -> None:
    """A display matrix that mirrors the picture left to right (a selfie
    app's), alone or with a turn: shown as players show it. Read as a plain
    rotation, a mirror alone was a half turn: faces upside down, none found."""
    upright = load_media(mf.write_clip(tmp_path / "upright.mp4", frames=12), LIMITS, 4)
    selfie = mf.write_clip(
        tmp_path / "selfie.mp4", frames=12, display_rotation=rotation, mirrored=True
    )
    media = load_media(selfie, LIMITS, 4)
    assert (media.info.width, media.info.height) == (320, 240) == media.info.frame_size
    for a, b in zip(media.frames, upright.frames, strict=True):
        assert a.image.shape == (240, 320, 3)
        assert mf.marker(a.image) == a.index  # the marker is back at the top left
        assert np.abs(a.image.astype(int) - b.image.astype(int)).mean() < 8


def test_downscaled_phone_video_is_upright_at_the_bounded_size(tmp_path: Path) -> None:
    phone = mf.write_clip(tmp_path / "phone.mp4", frames=12, display_rotation=-90)
    media = load_media(phone, MediaLimits(max_video_pixels=160 * 120), 4)
    assert (media.info.width, media.info.height) == (320, 240)
    assert media.info.frame_size == (160, 120)
    assert [f.image.shape for f in media.frames] == [(120, 160, 3)] * 4


def test_frames_at_times_are_the_nearest_frames_bounded_and_upright(tmp_path: Path) -> None:
    clip = mf.write_clip(tmp_path / "ref.mp4", frames=40, fps=10, gop=8, display_rotation=90)
    bounded = MediaLimits(max_video_pixels=160 * 120)
    frames = media.frames_at_times(clip, bounded, [0.0, 1.04, 2.5, 3.95, 9.0])
    assert {t: mf.marker(cv2.resize(im, (320, 240))) for t, im in frames.items()} == {
        0.0: 0,
        1.04: 10,
        2.5: 25,
        3.95: 39,  # within a frame of the last one (3.9 s)
        # 9.0 s: far past the end (before: the last frame, another moment)
    }
    assert {im.shape for im in frames.values()} == {(120, 160, 3)}  # upright, bounded


def test_frames_at_times_refuses_an_image(tmp_path: Path) -> None:
    path = mf.write_image(tmp_path / "face.png", mf.face_image(64), "PNG")
    with pytest.raises(UnsupportedMediaError, match="not an image"):
        media.frames_at_times(path, LIMITS, [0.0])


# --- Frames that change size, key frames far apart, damaged stretches -------------


def test_a_frame_past_the_picture_limits_after_the_first_is_refused(tmp_path: Path) -> None:
    """The declared size describes the first frame only: a 1280x32 strip
    (40:1) after five 320x240 frames is refused for its shape."""
    path = mf.size_change_mkv(tmp_path / "strip.mkv", (320, 240), (1280, 32))
    with av.open(str(path)) as c:
        assert (
            c.streams.video[0].codec_context.width,
            c.streams.video[0].codec_context.height,
        ) == (
            320,
            240,
        )
    with pytest.raises(PictureShapeError, match="1280x32"):
        load_media(path, LIMITS, 8)


def test_frames_that_change_size_come_out_at_the_first_frames_size(tmp_path: Path) -> None:
    """A size change within the limits (a stream switching resolution) gives
    every frame the first one's size, the size face boxes are given in."""
    path = mf.size_change_mkv(tmp_path / "switch.mkv", (320, 240), (640, 480))
    loaded = load_media(path, LIMITS, 10)
    assert len(loaded.frames) == 10
    assert {f.image.shape for f in loaded.frames} == {(240, 320, 3)}
    assert loaded.frames[-1].image.mean() > loaded.frames[0].image.mean() + 20  # the later part


def test_a_frame_of_another_shape_is_fitted_inside_not_stretched(tmp_path: Path) -> None:
    """A stream that turns from landscape to portrait halfway (a screen
    recording, a call): the later frames keep their shape inside the first
    one's size, centred on black. They were stretched to it, faces squashed
    to a third of their width."""
    path = mf.size_change_mkv(tmp_path / "turn.mkv", (320, 240), (240, 320))
    loaded = load_media(path, LIMITS, 10)
    assert {f.image.shape for f in loaded.frames} == {(240, 320, 3)}
    first, last = loaded.frames[0].image.astype(int), loaded.frames[-1].image.astype(int)
    assert abs(first.mean() - 60) < 8
    # 240x320 fitted inside 320x240: 180 wide, columns 70 to 249.
    assert last[:, :65].max() < 20 and last[:, 255:].max() < 20
    assert abs(last[:, 75:245].mean() - 100) < 8


def test_non_square_pixels_are_analysed_as_shown(tmp_path: Path) -> None:
    """A stream whose pixels are twice as wide as tall when shown (anamorphic
    video): its frames come out at the shape players show, not squeezed."""
    plain = mf.write_clip(tmp_path / "plain.mp4", frames=6, width=160, height=120)
    wide = mf.write_clip(
        tmp_path / "wide.mp4", frames=6, width=160, height=120, sample_aspect=Fraction(2, 1)
    )
    shown = load_media(wide, LIMITS, 3).frames
    stored = load_media(plain, LIMITS, 3).frames
    assert {f.image.shape for f in shown} == {(120, 320, 3)}
    for a, b in zip(shown, stored, strict=True):
        squeezed = cv2.resize(a.image, (160, 120), interpolation=cv2.INTER_AREA).astype(int)
        assert np.abs(squeezed - b.image.astype(int)).mean() < 12
    # Bounded by the pixel limit at the shape shown.
    small = load_media(wide, MediaLimits(max_video_pixels=320 * 120 // 4), 1).frames[0]
    assert small.image.shape == (60, 160, 3)
    assert media.shown_size(720, 576, Fraction(64, 45)) == (1024, 576)  # PAL 16:9
    # One no video has is taken as square: it cannot blow a frame up.
    assert media.shown_size(1920, 1080, Fraction(255, 1)) == (1920, 1080)
    assert media.shown_size(1920, 1080, Fraction(1, 255)) == (1920, 1080)


def _video_index(path: Path) -> Any:
    with av.open(str(path)) as c:
        return media._index_video(c, c.streams.video[0], LIMITS)


def test_decode_work_counts_frames_from_each_key_frame(tmp_path: Path) -> None:
    one_key = _video_index(mf.write_clip(tmp_path / "one.mp4", frames=100, gop=1000))
    keyed = _video_index(mf.write_clip(tmp_path / "keyed.mp4", frames=100, gop=10))
    assert len(one_key.keyframes) == 1 and len(keyed.keyframes) == 10
    targets = [one_key.pts[i] for i in (5, 50, 99)]
    assert media.decode_work(one_key, targets) == 100  # on from frame 0 to frame 99
    targets = [keyed.pts[i] for i in (5, 50, 99)]
    assert media.decode_work(keyed, targets) == 6 + 1 + 10  # from frames 0, 50 and 90
    # Targets sharing a stretch are not counted twice.
    assert media.decode_work(keyed, [keyed.pts[i] for i in (2, 4, 8)]) == 9


def test_a_video_whose_key_frames_are_too_far_apart_is_refused_with_the_reason(
    tmp_path: Path,
) -> None:
    one_key = mf.write_clip(tmp_path / "one.mp4", frames=100, gop=1000)
    keyed = mf.write_clip(tmp_path / "keyed.mp4", frames=100, gop=10)
    limits = MediaLimits(max_decode_pixels_per_frame=320 * 240 * 90 // 8)  # 90 frames for 8
    assert len(load_media(keyed, limits, 8).frames) == 8  # at most 10 frames per target
    with pytest.raises(MediaLimitError, match="key frame") as refused:
        load_media(one_key, limits, 8)
    assert refused.value.code == "decode_work"
    assert "decoding about 100 frames" in str(refused.value) and "90" in str(refused.value)
    # The upload probe decodes one frame (frame 0, a key frame) but answers
    # for the analysis's sampling.
    assert len(load_media(one_key, limits, 1).frames) == 1
    with pytest.raises(MediaLimitError, match="key frame"):
        load_media(one_key, limits, 1, plan_frames=8)
    assert len(load_media(one_key, MediaLimits(max_decode_pixels_per_frame=0), 8).frames) == 8


class _FakeFrame:
    def __init__(self, pts: int, width: int = 64, height: int = 48) -> None:
        self.pts, self.width, self.height, self.rotation = pts, width, height, 0

    def to_ndarray(self, width: int = 0, height: int = 0, **_: Any) -> np.ndarray:
        return np.full((height or self.height, width or self.width, 3), self.pts % 256, np.uint8)


class _FakeContainer:
    """Frames 0..n-1 (pts = index), a key frame every ``gop``; decoding
    through a frame in ``damaged`` raises as FFmpeg does on bad data; frames
    from ``grow_at`` on are ``grown`` (width, height). Counts what it decodes."""

    def __init__(
        self,
        n: int,
        gop: int,
        damaged: set[int] = frozenset(),  # type: ignore[assignment]
        grow_at: int | None = None,
        grown: tuple[int, int] = (640, 480),
    ) -> None:
        self.n, self.gop, self.damaged, self.at = n, gop, damaged, 0
        self.grow_at, self.grown = grow_at, grown
        self.decoded = self.seeks = 0

    def seek(self, pts: int, **_: Any) -> None:
        self.at, self.seeks = pts, self.seeks + 1

    def decode(self, _stream: Any) -> Iterator[_FakeFrame]:
        for pts in range(self.at, self.n):
            if pts in self.damaged:
                raise av.error.InvalidDataError(1094995529, "Invalid data found")
            self.decoded += 1
            grown = self.grow_at is not None and pts >= self.grow_at
            yield _FakeFrame(pts, *self.grown) if grown else _FakeFrame(pts)


class _Codec:
    skip_frame = "DEFAULT"


class _Stream:
    codec_context = _Codec()


def _decode_fake(
    container: _FakeContainer, targets: list[int], limits: MediaLimits = LIMITS
) -> Any:
    from fractions import Fraction

    index = media._VideoIndex(
        pts=tuple(range(container.n)),
        keyframes=tuple(range(0, container.n, container.gop)),
        time_base=Fraction(1, 10),
        start_pts=0,
    )
    return media._decode_targets(container, _Stream(), index, targets, limits)


def _decode_damaged(damaged: set[int], targets: list[int]) -> Any:
    return _decode_fake(_FakeContainer(100, 10, damaged), targets)


def test_a_damaged_stretch_costs_its_own_targets_only() -> None:
    """Decoding goes on at the next target after damaged data: the targets
    after the stretch are still read, and the missing ones are counted."""
    frames, stats = _decode_damaged({33}, [5, 35, 55, 75, 95])
    assert [f.index for f in frames] == [5, 55, 75, 95]
    assert (stats.requested, stats.missing) == (5, 1)
    frames, stats = _decode_damaged(set(), [5, 35, 55, 75, 95])
    assert [f.index for f in frames] == [5, 35, 55, 75, 95] and stats.missing == 0


def test_targets_behind_damage_in_one_key_frame_stretch_are_not_decoded_again() -> None:
    """One key frame for 100 frames, damaged data at frame 33: the targets
    after it cannot be reached; before, each one seeked back to frame 0 and
    decoded up to the damage again (five times the work for five targets)."""
    container = _FakeContainer(100, 100, {33})
    frames, stats = _decode_fake(container, [5, 35, 55, 75, 95])
    assert [f.index for f in frames] == [5] and (stats.requested, stats.missing) == (5, 4)
    assert container.decoded == 33 and container.seeks == 1


def test_frames_decoded_larger_than_declared_count_against_the_budget() -> None:
    """The index prices the work at the declared (first) size: 640x480
    frames after 64x48 ones are counted as decoded, and the read stops."""
    limits = MediaLimits(max_decode_pixels_per_frame=64 * 48 * 40)  # 40 small frames each
    with pytest.raises(MediaLimitError, match="went past the limit") as refused:
        _decode_fake(_FakeContainer(100, 100, grow_at=5), [2, 50, 90], limits)
    assert refused.value.code == "decode_work"
    frames, _ = _decode_fake(_FakeContainer(100, 100), [2, 50, 90], limits)  # all small: fine
    assert len(frames) == 3
    # Within the budget, the grown frames come out at the first frame's size.
    frames, _ = _decode_fake(_FakeContainer(100, 100, grow_at=5), [2, 8], LIMITS)
    assert [f.image.shape for f in frames] == [(48, 64, 3), (48, 64, 3)]


def test_a_video_with_most_sampled_frames_damaged_is_refused(
    monkeypatch: Any, tmp_path: Path
) -> None:
    path = mf.write_clip(tmp_path / "clip.mp4", frames=100, gop=10)
    real = media._decode_targets

    def damaged_after_frame_20(
        container: Any, stream: Any, index: Any, targets: Any, limits: Any
    ) -> Any:
        frames, stats = real(container, stream, index, targets, limits)
        kept = [f for f in frames if f.index < 20]
        missing = len(frames) - len(kept)
        from dataclasses import replace

        return kept, replace(stats, missing=missing)

    monkeypatch.setattr(media, "_decode_targets", damaged_after_frame_20)
    with pytest.raises(UnreadableMediaError, match="damaged") as refused:
        load_media(path, LIMITS, 8)
    assert refused.value.code == "damaged"
    loaded = load_media(path, LIMITS, 2)  # frames 0 and 99: one of two missing, not most
    assert loaded.info.frames_missing == 1 and len(loaded.frames) == 1


class _DecodeFails:
    """A real container whose decoding raises ``error`` (what FFmpeg raises
    when an allocation fails or the disk fails a read)."""

    def __init__(self, real: Any, error: Exception) -> None:
        self._real, self._error = real, error

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def decode(self, *args: Any, **kwargs: Any) -> Any:
        raise self._error


@pytest.mark.parametrize(
    "error,why",
    [
        (av.error.MemoryError(errno.ENOMEM, "Cannot allocate memory"), "out of memory"),
        (av.error.OSError(errno.EIO, "Input/output error"), "Input/output error"),
    ],
    ids=["out_of_memory", "disk_read_error"],
)
def test_a_machine_fault_while_decoding_a_video_is_not_reported_as_a_damaged_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception, why: str
) -> None:
    """FFmpeg's out-of-memory and I/O errors are FFmpegErrors like a damaged
    packet's: they were counted as damaged frames and the good file was
    rejected for good as "damaged" or "corrupt"."""
    path = mf.write_clip(tmp_path / "clip.mp4", frames=20)
    real_open = media._open_container
    monkeypatch.setattr(media, "_open_container", lambda p: _DecodeFails(real_open(p), error))
    with pytest.raises(MediaReadFaultError, match=f"\\({why}\\). This is a fault of the site"):
        load_media(path, LIMITS, 8)


def test_damaged_data_is_still_the_files_fault(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = mf.write_clip(tmp_path / "clip.mp4", frames=20)
    real_open = media._open_container
    damaged = av.error.InvalidDataError(-1094995529, "Invalid data found when processing input")
    monkeypatch.setattr(media, "_open_container", lambda p: _DecodeFails(real_open(p), damaged))
    with pytest.raises(UnreadableMediaError):
        load_media(path, LIMITS, 8)


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.EIO, "Input/output error"),
        OSError("out of memory error when reading image file"),
    ],
    ids=["disk_read_error", "decoder_out_of_memory"],
)
def test_a_machine_fault_while_decoding_an_image_is_not_reported_as_a_corrupt_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: OSError
) -> None:
    path = mf.write_image(tmp_path / "face.png", mf.face_image(96), "PNG")

    def load(self: Any) -> Any:
        raise error

    monkeypatch.setattr(Image.Image, "load", load)
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", load)
    with pytest.raises(MediaReadFaultError, match="This is a fault of the site"):
        load_media(path, LIMITS, 8)


def test_a_wide_gamut_picture_is_read_in_srgb_as_a_browser_shows_it(tmp_path: Path) -> None:
    """An Adobe RGB (or a phone's Display P3) picture's numbers mean more
    saturated colours than the same numbers in sRGB; taken as sRGB, they
    were analysed duller than they are shown."""
    from PIL import ImageCms

    pixels = np.zeros((32, 48, 3), np.uint8)
    pixels[:, :24] = (200, 0, 0)
    pixels[:, 24:] = (200, 150, 120)
    profile = ImageCms.ImageCmsProfile(io.BytesIO(mf.ADOBE_RGB_LIKE))
    shown = np.asarray(
        ImageCms.profileToProfile(Image.fromarray(pixels), profile, ImageCms.createProfile("sRGB"))
    )
    assert shown[0, 0].tolist() != [200, 0, 0]  # the profile changes the colours
    for ext, fmt in (("png", "PNG"), ("jpg", "JPEG")):
        path = tmp_path / f"adobe.{ext}"
        Image.fromarray(pixels).save(path, fmt, icc_profile=mf.ADOBE_RGB_LIKE, quality=100)
        read = load_media(path, LIMITS, 1).frames[0].image
        assert np.abs(read.astype(int) - shown.astype(int))[:, 2:22].max() <= 3, ext
        assert np.abs(read.astype(int) - shown.astype(int))[:, 26:46].max() <= 3, ext


def test_an_unreadable_icc_profile_costs_the_profile_not_the_picture(tmp_path: Path) -> None:
    path = tmp_path / "broken-profile.png"
    Image.new("RGB", (48, 48), (10, 200, 30)).save(path, icc_profile=b"not a profile at all")
    assert load_media(path, LIMITS, 1).frames[0].image[8, 8].tolist() == [10, 200, 30]


def test_transparent_parts_are_analysed_as_shown_on_the_white_page(tmp_path: Path) -> None:
    """Dropping the alpha channel analysed whatever the encoder left under
    it: the hidden colour in a PNG, black in a WebP."""
    rgba = np.zeros((48, 96, 4), np.uint8)
    rgba[..., :3] = (30, 30, 220)
    rgba[:, :24, 3] = 255  # left quarter opaque
    rgba[:, 24:48, 3] = 128  # then half see-through, then transparent
    for name, options in (("a.png", {}), ("a.webp", {"lossless": True})):
        path = tmp_path / name
        Image.fromarray(rgba).save(path, **options)
        image = load_media(path, LIMITS, 1).frames[0].image
        assert image[8, 2].tolist() == [30, 30, 220], name
        assert image[8, 80].tolist() == [255, 255, 255], name
        assert np.abs(image[8, 36].astype(int) - [142, 142, 237]).max() <= 2, name
    # A palette picture with a transparent entry, and grey with alpha.
    palette = Image.new("P", (48, 48), 0)
    palette.putpalette([0, 0, 0, 250, 10, 10] + [0, 0, 0] * 254)
    palette.paste(1, (0, 0, 24, 48))
    palette.save(tmp_path / "p.png", transparency=0)
    image = load_media(tmp_path / "p.png", LIMITS, 1).frames[0].image
    assert image[4, 1].tolist() == [250, 10, 10] and image[4, 40].tolist() == [255, 255, 255]
    Image.new("LA", (48, 48), (40, 0)).save(tmp_path / "la.png")
    assert load_media(tmp_path / "la.png", LIMITS, 1).frames[0].image[4, 4].tolist() == [255] * 3


def test_one_frame_saved_as_an_animation_is_a_still(tmp_path: Path) -> None:
    for fmt in ("PNG", "WEBP", "GIF"):
        path = tmp_path / f"one.{fmt.lower()}"
        Image.new("RGB", (64, 48), "red").save(path, fmt, save_all=True)
        assert load_media(path, LIMITS, 8).info.kind == "image", fmt


def test_tiff_is_refused_by_name_with_what_to_upload(tmp_path: Path) -> None:
    path = tmp_path / "picture.tiff"
    Image.new("RGB", (16, 16), "red").save(path, "TIFF")
    with pytest.raises(UnsupportedMediaError, match=r"TIFF images are not supported.*JPEG or PNG"):
        load_media(path, LIMITS, 1)


def _animation(n: int) -> list[Image.Image]:
    """``n`` RGBA pictures where only a small square moves over a fixed
    scene (so encoders store each picture as the rectangle that changed),
    with a transparent corner."""
    yy, xx = np.mgrid[:96, :128]
    scene = np.dstack([xx * 2, yy * 2, 255 - xx]).astype(np.uint8)  # few colours: a GIF's palette
    scene[60:80, 80:110] = (20, 200, 40)
    out = []
    for i in range(n):
        rgba = np.dstack([scene, np.full((96, 128), 255, np.uint8)])
        rgba[30:46, 10 + 8 * i : 26 + 8 * i, :3] = (250, 20, 20)
        rgba[:12, :12, 3] = 0
        out.append(Image.fromarray(rgba, "RGBA"))
    return out


def _shown(picture: Image.Image) -> np.ndarray:
    """A picture as a browser shows it: over the page's white."""
    page = Image.new("RGB", picture.size, (255, 255, 255))
    page.paste(picture, mask=picture.getchannel("A"))
    return np.asarray(page)


@pytest.mark.parametrize(("fmt", "suffix"), [("GIF", "gif"), ("PNG", "apng"), ("WEBP", "webp")])
def test_an_animated_gif_png_or_webp_is_read_as_a_video_of_its_pictures(
    tmp_path: Path, fmt: str, suffix: str
) -> None:
    """Before, GIFs were refused, and APNGs and animated WebPs refused as
    animated. Each picture is drawn over the ones before it and shown for
    its own time."""
    pictures = _animation(8)
    durations = [100] * 4 + [300] * 4
    path = tmp_path / f"moving.{'gif' if fmt == 'GIF' else fmt.lower()}"
    options: dict[str, Any] = {"GIF": {"disposal": 1}, "WEBP": {"lossless": True}}.get(fmt, {})
    pictures[0].save(
        path, fmt, save_all=True, append_images=pictures[1:], duration=durations, loop=0, **options
    )
    loaded = load_media(path, LIMITS, 8)
    info = loaded.info
    assert (info.kind, info.format, info.frame_count) == ("video", suffix, 8)
    assert (info.width, info.height) == (128, 96)
    starts = np.cumsum([0, *durations[:-1]]) / 1000
    assert info.duration_s == pytest.approx(sum(durations) / 1000, abs=0.02)
    assert [f.index for f in loaded.frames] == list(range(8))
    for frame in loaded.frames:
        assert frame.time_s == pytest.approx(starts[frame.index], abs=0.011)
        expected = _shown(pictures[frame.index])
        if fmt == "GIF":  # a palette of 256 colours: close, not equal
            assert np.abs(frame.image.astype(int) - expected).mean() < 12
        else:
            assert np.array_equal(frame.image, expected)
        assert frame.image[2, 2].tolist() == [255, 255, 255]  # transparent: the page
        assert frame.image[38, 18 + 8 * frame.index].tolist() == pytest.approx(
            [250, 20, 20], abs=12
        )
    # Sampled fewer: the frames at those times, decoded from the first on.
    few = load_media(path, LIMITS, 3)
    for frame in few.frames:
        assert np.array_equal(frame.image, loaded.frames[frame.index].image)


def test_an_opaque_apng_that_blends_its_frames_over_the_last_is_read(tmp_path: Path) -> None:
    """FFmpeg refuses to blend frames without alpha (APNG_BLEND_OP_OVER on
    RGB or grey), so such files were called corrupt; Pillow composes them."""
    for mode, shape in (("RGB", (48, 64, 3)), ("L", (48, 64))):
        frames = [Image.fromarray(np.full(shape, v, np.uint8), mode) for v in (10, 120, 240)]
        path = tmp_path / f"over-{mode}.png"
        frames[0].save(path, "PNG", save_all=True, append_images=frames[1:], duration=100, blend=1)
        loaded = load_media(path, LIMITS, 3)
        assert (loaded.info.kind, loaded.info.format) == ("video", "apng")
        assert [f.image[0, 0, 0] for f in loaded.frames] == [10, 120, 240]


def test_a_still_gif_is_an_image_and_its_transparency_is_the_page(tmp_path: Path) -> None:
    picture = _animation(1)[0]
    path = tmp_path / "still.gif"
    picture.save(path, "GIF")
    loaded = load_media(path, LIMITS, 8)
    assert (loaded.info.kind, loaded.info.format) == ("image", "gif")
    assert loaded.frames[0].image[2, 2].tolist() == [255, 255, 255]
    assert np.abs(loaded.frames[0].image.astype(int) - _shown(picture)).mean() < 12


def test_a_gif_of_millions_of_tiny_blocks_is_refused_without_walking_them_all(
    tmp_path: Path,
) -> None:
    """Finding a second picture walks the first one's data blocks: a crafted
    file of one-byte blocks used to cost minutes of a web worker's CPU."""
    screen = bytes([10, 0, 10, 0, 0, 0, 0])
    picture = b"\x2c" + bytes(9) + b"\x02" + b"\x01\x00" * 3_000_000 + b"\x00"
    path = tmp_path / "blocks.gif"
    path.write_bytes(b"GIF89a" + screen + picture + b"\x3b")
    with pytest.raises(UnsupportedMediaError, match="more blocks than any encoder"):
        sniff(path)


def test_a_truncated_apng_or_animated_webp_is_read_as_far_as_it_goes_or_refused(
    tmp_path: Path,
) -> None:
    """An APNG cut short is read as the frames it still holds whole, as a
    cut video is; an animated WebP cut short (its frame index is up front)
    is refused as corrupt, never reported as a crash."""
    pictures = _animation(6)
    for fmt in ("PNG", "WEBP"):
        path = tmp_path / f"moving.{fmt.lower()}"
        pictures[0].save(path, fmt, save_all=True, append_images=pictures[1:], duration=100)
        data = path.read_bytes()
        cut = tmp_path / f"cut.{fmt.lower()}"
        cut.write_bytes(data[: int(len(data) * 0.7)])
        if fmt == "PNG":
            loaded = load_media(cut, LIMITS, 6)
            assert loaded.info.kind == "video" and 1 < loaded.info.frame_count < 6
            whole = load_media(path, LIMITS, 6)
            for frame in loaded.frames:
                assert np.array_equal(frame.image, whole.frames[frame.index].image)
        else:
            with pytest.raises(UnreadableMediaError, match="corrupt or truncated"):
                load_media(cut, LIMITS, 6)


def test_crafted_block_and_chunk_floods_are_refused_quickly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Extensions without data did not count towards the GIF walk's cap;
    PNG and WebP chunk walks had none."""
    screen = bytes([10, 0, 10, 0, 0, 0, 0])
    gif = tmp_path / "extensions.gif"
    gif.write_bytes(b"GIF89a" + screen + b"\x21\xf9\x00" * 2_100_000 + b"\x3b")
    with pytest.raises(UnsupportedMediaError, match="more blocks than any encoder"):
        sniff(gif)
    monkeypatch.setattr(media, "MAX_CHUNKS", 1000)
    vp8x = b"VP8X" + struct.pack("<I", 10) + bytes([0x02]) + bytes(9)
    empty = b"JUNK" + struct.pack("<I", 0)
    body = b"WEBP" + vp8x + empty * 2000
    webp = tmp_path / "chunks.webp"
    webp.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    with pytest.raises(UnsupportedMediaError, match="more chunks than any encoder"):
        sniff(webp)


def test_webp_and_apng_frames_are_those_their_headers_declare(tmp_path: Path) -> None:
    """A still WebP (no animation flag) is a still whatever follows it; an
    APNG plays the frames its acTL declares, not every fcTL it carries."""
    still = tmp_path / "still.webp"
    Image.new("RGB", (32, 32), "red").save(still, "WEBP")
    data = still.read_bytes()
    anmf = b"ANMF" + struct.pack("<I", 16) + bytes(16)
    still.write_bytes(data + anmf * 3)  # past the RIFF size, as libwebp reads it
    assert sniff(still) == MediaType("image", "webp")
    pictures = _animation(3)
    path = tmp_path / "three.png"
    pictures[0].save(path, "PNG", save_all=True, append_images=pictures[1:], duration=100)
    raw = bytearray(path.read_bytes())
    at = raw.index(b"acTL")
    raw[at + 4 : at + 8] = struct.pack(">I", 2)  # declares 2 frames of the 3
    raw[at + 12 : at + 16] = struct.pack(">I", zlib.crc32(bytes(raw[at : at + 12])))
    path.write_bytes(bytes(raw))
    loaded = load_media(path, LIMITS, 8)
    assert loaded.info.frame_count == 2 and [f.index for f in loaded.frames] == [0, 1]


def test_an_animation_over_its_size_limit_is_refused_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pictures = _animation(4)
    path = tmp_path / "big.webp"
    pictures[0].save(path, "WEBP", save_all=True, append_images=pictures[1:], duration=100)
    monkeypatch.setattr(media, "MAX_ANIMATED_WEBP_BYTES", path.stat().st_size - 1)
    with pytest.raises(MediaLimitError, match="animated WebP is read whole into memory"):
        load_media(path, LIMITS, 4)


def test_the_upload_probe_decodes_one_frame_of_an_animation(tmp_path: Path) -> None:
    """It answers for the analysis's sampling from the frames' count and
    size, as for a video, without decoding the whole animation."""
    pictures = _animation(8)
    path = tmp_path / "moving.png"
    pictures[0].save(path, "PNG", save_all=True, append_images=pictures[1:], duration=100)
    probed = load_media(path, LIMITS, 1, plan_frames=8)
    assert len(probed.frames) == 1 and probed.stats.decoded == 1
    tight = replace(LIMITS, max_decode_pixels_per_frame=128 * 96)
    with pytest.raises(MediaLimitError, match="decoding 8 frames"):
        load_media(path, tight, 1, plan_frames=2)


def test_thumbnails_of_a_transparent_animation_are_over_the_page_white(tmp_path: Path) -> None:
    pictures = _animation(3)
    path = tmp_path / "moving.webp"
    pictures[0].save(
        path, "WEBP", save_all=True, append_images=pictures[1:], duration=100, lossless=True
    )
    thumbs = media.gray_thumbnails(path, LIMITS, 32, 10**12, 10**6)
    assert thumbs is not None
    times, grey = thumbs
    assert times.tolist() == pytest.approx([0.0, 0.1, 0.2])
    assert (grey[:, 0, 0] >= 250).all()  # the transparent corner, shown on white


def test_a_damaged_animated_gif_is_refused_with_a_reason(tmp_path: Path) -> None:
    pictures = _animation(6)
    path = tmp_path / "moving.gif"
    pictures[0].save(path, "GIF", save_all=True, append_images=pictures[1:], duration=100)
    data = path.read_bytes()
    (tmp_path / "cut.gif").write_bytes(data[:60])  # the header and little else
    with pytest.raises(InvalidMediaError) as caught:
        load_media(tmp_path / "cut.gif", LIMITS, 4)
    assert "corrupt or truncated" in str(caught.value) or "damaged" in str(caught.value)
    # Cut in its fourth picture: still a video, the pictures before it read.
    (tmp_path / "half.gif").write_bytes(data[: int(len(data) * 0.6)])
    assert sniff(tmp_path / "half.gif") == MediaType("video", "gif")
    try:
        loaded = load_media(tmp_path / "half.gif", LIMITS, 4)
    except InvalidMediaError as e:
        assert "corrupt or truncated" in str(e) or "damaged" in str(e)
    else:
        assert loaded.info.kind == "video" and loaded.frames


def test_a_short_clip_with_a_long_soundtrack_is_as_long_as_its_video(tmp_path: Path) -> None:
    """Matroska gives no duration per stream, and the file's is the
    soundtrack's: a 2 s clip with 20 minutes of audio was refused as a
    20-minute video."""
    path = mf.clip_with_long_audio(tmp_path / "talk.mkv", video_frames=20, audio_s=1200)
    with av.open(str(path)) as container:
        assert container.duration / 1e6 > 1000  # what the file says
    loaded = load_media(path, LIMITS, 8)
    assert loaded.info.duration_s == pytest.approx(2.0, abs=0.05)
    assert loaded.info.frame_count == 20 and len(loaded.frames) == 8


def test_the_video_stream_a_player_shows_is_the_one_analysed(tmp_path: Path) -> None:
    path = mf.two_video_streams_mkv(tmp_path / "two.mkv", default_size=(160, 120))
    loaded = load_media(path, LIMITS, 4)
    assert (loaded.info.width, loaded.info.height) == (160, 120)
    assert loaded.frames[0].image.shape[:2] == (120, 160)


@pytest.mark.parametrize("codec", ["ljpeg", "jpegls"])
def test_a_lossless_jpeg_is_unsupported_not_called_corrupt(tmp_path: Path, codec: str) -> None:
    path = mf.lossless_jpeg(tmp_path / f"{codec}.jpg", codec)
    with pytest.raises(
        UnsupportedMediaError, match=r"cannot decode \(lossless, JPEG-LS.*standard JPEG or as PNG"
    ):
        load_media(path, LIMITS, 1)


def test_a_hierarchical_jpeg_is_known_by_its_dhp_segment(tmp_path: Path) -> None:
    """A hierarchical JPEG starts with a DHP segment; its first frame may
    carry an ordinary (baseline or progressive) frame header after it."""
    plain = tmp_path / "plain.jpg"
    Image.fromarray(mf.noise_frame(64, 48)).save(plain)
    data = plain.read_bytes()
    dhp = b"\xff\xde\x00\x0b\x08\x00\x30\x00\x40\x01\x01\x11\x00"  # 8 bits, 48x64, 1 component
    path = tmp_path / "hierarchical.jpg"
    path.write_bytes(data[:2] + dhp + data[2:])
    assert media._jpeg_frame_marker(path) == 0xDE
    with pytest.raises(UnsupportedMediaError, match="hierarchical"):
        load_media(path, LIMITS, 1)


def test_the_frame_marker_of_baseline_and_progressive_jpegs_is_found(tmp_path: Path) -> None:
    """Past APP segments (EXIF, ICC) to the frame header; the files read."""
    picture = Image.fromarray(mf.noise_frame(64, 48))
    for progressive, marker in ((False, 0xC0), (True, 0xC2)):
        path = tmp_path / f"p{progressive}.jpg"
        picture.save(path, progressive=progressive, icc_profile=mf.ADOBE_RGB_LIKE, exif=b"")
        assert media._jpeg_frame_marker(path) == marker
        assert load_media(path, LIMITS, 1).info.format == "jpeg"
    assert media._jpeg_frame_marker(mf.write_clip(tmp_path / "c.mp4", frames=2)) is None


def _in_srgb(pixels: npt.NDArray[np.uint8], icc: bytes, mode: str) -> npt.NDArray[np.uint8]:
    """What LittleCMS makes of ``pixels`` under the profile ``icc``, in sRGB."""
    from PIL import ImageCms

    profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    srgb = ImageCms.createProfile("sRGB")
    image = Image.fromarray(pixels).convert(mode)
    return np.asarray(ImageCms.profileToProfile(image, profile, srgb, outputMode="RGB"))


def test_the_profile_is_applied_whatever_the_pictures_mode(tmp_path: Path) -> None:
    """Palette, grey, grey with alpha, RGBA and a turned JPEG: each gets its
    profile's colours; before, palette and grey-with-alpha pictures kept
    their numbers (the transform did not fit their mode and was dropped)."""
    red = np.full((48, 48, 3), (200, 0, 0), np.uint8)
    want = _in_srgb(red, mf.ADOBE_RGB_LIKE, "RGB")[0, 0].tolist()
    assert want != [200, 0, 0]
    Image.fromarray(red).quantize(2).save(tmp_path / "p.png", icc_profile=mf.ADOBE_RGB_LIKE)
    rgba = np.dstack([red, np.full((48, 48), 255, np.uint8)])
    rgba[:, 24:, 3] = 0
    Image.fromarray(rgba).save(tmp_path / "rgba.png", icc_profile=mf.ADOBE_RGB_LIKE)
    for name in ("p.png", "rgba.png"):
        image = load_media(tmp_path / name, LIMITS, 1).frames[0].image
        assert np.abs(image[4, 4].astype(int) - want).max() <= 1, name
    assert load_media(tmp_path / "rgba.png", LIMITS, 1).frames[0].image[4, 40].tolist() == [255] * 3
    grey = np.full((48, 48, 3), 100, np.uint8)
    want_grey = _in_srgb(grey, mf.LINEAR_GREY, "L")[0, 0].tolist()
    assert want_grey[0] > 150  # linear 100 is a light grey
    Image.fromarray(grey).convert("L").save(tmp_path / "l.png", icc_profile=mf.LINEAR_GREY)
    Image.fromarray(grey).convert("LA").save(tmp_path / "la.png", icc_profile=mf.LINEAR_GREY)
    for name in ("l.png", "la.png"):
        image = load_media(tmp_path / name, LIMITS, 1).frames[0].image
        assert np.abs(image[4, 4].astype(int) - want_grey).max() <= 1, name
    # Turned upright by its EXIF orientation, and converted.
    exif = Image.Exif()
    exif[0x0112] = 6
    tall = np.zeros((48, 64, 3), np.uint8)
    tall[:] = (200, 0, 0)
    path = tmp_path / "turned.jpg"
    Image.fromarray(tall).save(
        path, exif=exif.tobytes(), icc_profile=mf.ADOBE_RGB_LIKE, quality=100
    )
    image = load_media(path, LIMITS, 1).frames[0].image
    assert image.shape[:2] == (64, 48) and np.abs(image[30, 20].astype(int) - want).max() <= 3


def test_an_srgb_profile_is_not_converted_again(tmp_path: Path, monkeypatch: Any) -> None:
    from PIL import ImageCms

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    path = tmp_path / "srgb.png"
    Image.new("RGB", (48, 48), (200, 150, 120)).save(path, icc_profile=srgb)

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("an sRGB picture was transformed")

    monkeypatch.setattr(ImageCms, "profileToProfile", never)
    assert load_media(path, LIMITS, 1).frames[0].image[8, 8].tolist() == [200, 150, 120]


def test_an_apng_whose_default_image_stands_outside_one_frame_is_a_still(tmp_path: Path) -> None:
    still, frame = Image.new("RGB", (64, 48), "red"), Image.new("RGB", (64, 48), "blue")
    path = tmp_path / "default.png"
    still.save(path, save_all=True, append_images=[frame], default_image=True)
    with Image.open(path) as im:
        assert im.n_frames == 2 and im.info.get("default_image")
    assert load_media(path, LIMITS, 1).frames[0].image[4, 4].tolist() == [255, 0, 0]


def test_bigtiff_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "big.tif"
    path.write_bytes(b"II+\x00\x08\x00\x00\x00" + bytes(64))
    with pytest.raises(UnsupportedMediaError, match="TIFF images are not supported"):
        load_media(path, LIMITS, 1)


def test_fill_bytes_before_a_jpeg_marker_are_skipped(tmp_path: Path) -> None:
    plain = tmp_path / "plain.jpg"
    Image.fromarray(mf.noise_frame(64, 48)).save(plain)
    data = plain.read_bytes()
    padded = tmp_path / "padded.jpg"
    padded.write_bytes(data[:2] + b"\xff\xff\xff" + data[2:])
    assert media._jpeg_frame_marker(padded) == 0xC0
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data[:40])
    assert media._jpeg_frame_marker(truncated) is None


def test_frames_before_the_first_key_frame_are_counted_missing_not_folded(tmp_path: Path) -> None:
    """A stream cut inside a key-frame stretch: its first frames cannot be
    decoded. Their sampled moments were served by the first key frame,
    seconds later, and counted as read; they are missing."""
    src = mf.write_clip(tmp_path / "src.mkv", frames=60, fps=10, gop=30)
    path = mf.cut_mid_gop(src, tmp_path / "joined.mkv", drop=5)
    loaded = load_media(path, LIMITS, 8)
    assert loaded.info.frame_count == 55
    first_key = 25  # frame 30 of the source
    assert loaded.frames[0].index == first_key
    assert [mf.marker(f.image) - 5 for f in loaded.frames] == [f.index for f in loaded.frames]
    targets = media.sample_positions(list(range(55)), 8)
    assert targets[:5] == [0, 8, 15, 23, 31]
    # 23 is as near the key frame as a skipped non-reference frame would be.
    assert first_key - 23 <= media.SERVED_WITHIN
    assert loaded.info.frames_missing == 3 and len(loaded.frames) == 5
    # Sparser: the first decodable frame serves no sampled moment and is
    # not analysed as if it were one.
    sparse = load_media(path, LIMITS, 4)
    assert media.sample_positions(list(range(55)), 4) == [0, 18, 36, 54]
    assert [f.index for f in sparse.frames] == [36, 54] and sparse.info.frames_missing == 2


def _alpha_webm(
    path: Path,
    codec: str,
    frames: int = 12,
    pix_fmt: str = "yuva420p",
    gop: int = 0,
    colour: dict[str, int] | None = None,
    rotation: int = 0,
    mirrored: bool = False,
) -> Path:
    """A WebM (or a MOV, by ``path``'s suffix) whose left half is opaque blue
    and right half transparent, over a red the encoder keeps under the
    transparency (what is seen when the alpha channel is dropped); shown
    turned by ``rotation`` degrees and mirrored by its display matrix."""
    out = av.open(str(path), "w")
    stream = out.add_stream(codec, rate=10)
    stream.width, stream.height, stream.pix_fmt = 96, 64, pix_fmt
    if rotation or mirrored:
        stream.set_display_rotation(rotation, hflip=mirrored)
    if gop:
        stream.codec_context.gop_size = gop
    for tag, value in (colour or {}).items():
        setattr(stream.codec_context, tag, value)
    if codec.startswith("libvpx"):
        stream.options = {"auto-alt-ref": "0"}  # VP8 encodes no alpha with alt-ref frames
    elif codec == "prores_ks":
        stream.options = {"profile": "4"}  # 4444, the ProRes that holds alpha
    for _ in range(frames):
        rgba = np.zeros((64, 96, 4), np.uint8)
        rgba[..., :3] = (200, 0, 0)
        rgba[:, :48] = (0, 0, 220, 255)
        rgba[:, 40:48, :3] = 128  # an opaque grey stripe
        for packet in stream.encode(av.VideoFrame.from_ndarray(rgba, format="rgba")):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)
    out.close()
    return path


@pytest.mark.parametrize("codec", ["libvpx", "libvpx-vp9"], ids=["vp8", "vp9"])
def test_a_webm_with_alpha_is_analysed_as_shown_on_the_white_page(
    tmp_path: Path, codec: str
) -> None:
    """FFmpeg's own VP8/VP9 decoders drop WebM's alpha (the encoder's red
    came through); libvpx reads it, for the analysis, the frames at given
    times and the reference thumbnails alike."""
    path = _alpha_webm(tmp_path / "a.webm", codec)
    loaded = load_media(path, LIMITS, 4)
    assert len(loaded.frames) == 4
    for frame in loaded.frames:
        assert np.abs(frame.image[32, 10].astype(int) - [0, 0, 220]).max() <= 6
        assert np.abs(frame.image[32, 86].astype(int) - [255, 255, 255]).max() <= 3
    at = media.frames_at_times(path, LIMITS, [0.0, 0.55])
    assert sorted(at) == [0.0, 0.55]
    assert all(np.abs(im[32, 86].astype(int) - 255).max() <= 3 for im in at.values())
    thumbs = media.gray_thumbnails(path, LIMITS, 8, 10**12, 10**6)
    assert thumbs is not None and len(thumbs[0]) == 12
    assert (thumbs[1][:, 4, 7] >= 250).all()  # the transparent half: white, not red


@pytest.mark.parametrize(
    "codec,rotation,mirrored",
    [("libvpx", 90, False), ("libvpx-vp9", -90, False), ("libvpx-vp9", 180, True)],
    ids=["vp8-90", "vp9-270", "vp9-180-mirrored"],
)
def test_a_turned_webm_with_alpha_is_shown_upright_as_its_display_matrix_asks(
    tmp_path: Path, codec: str, rotation: int, mirrored: bool
) -> None:
    """libvpx's frames carry no display matrix (FFmpeg attaches the stream's
    to its own decoder's frames only): a phone's WebM with alpha was analysed
    lying on its side. It is turned as FFmpeg's own decoder turns it, with
    the transparent parts on white where that decoder shows the encoder's red."""
    path = _alpha_webm(tmp_path / "a.webm", codec, rotation=rotation, mirrored=mirrored)
    loaded = load_media(path, LIMITS, 2)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(media, "_ALPHA_DECODERS", {})
        native = load_media(path, LIMITS, 2)
    assert loaded.info.rotation == native.info.rotation == rotation % 360
    assert (loaded.info.width, loaded.info.height) == (native.info.width, native.info.height)
    for ours, theirs in zip(loaded.frames, native.frames, strict=True):
        assert ours.image.shape == theirs.image.shape == native.frames[0].image.shape
        red = np.all(np.abs(theirs.image.astype(int) - [200, 0, 0]) <= 12, axis=2)
        assert 0.3 < red.mean() < 0.6  # the transparent half, wherever it was turned to
        assert (ours.image[red] >= 250).all()
        assert np.abs(ours.image[~red].astype(int) - theirs.image[~red]).mean() < 4
    thumbs = media.gray_thumbnails(path, LIMITS, 8, 10**12, 10**6)
    assert thumbs is not None
    small_red = cv2.resize(red.astype(np.uint8), (8, 8), interpolation=cv2.INTER_AREA) == 1
    assert (thumbs[1][0][small_red] >= 250).all()
    if rotation % 180:
        # The transparent half is the top or bottom one once turned: not a column.
        assert not (thumbs[1][0][:, 7] >= 250).all()


def test_without_ffmpegs_own_decoder_a_turned_alpha_webm_is_read_upright(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An FFmpeg built with libvpx alone has no decoder of its own to read
    the display matrix from (PyAV says ValueError, not an FFmpeg error): the
    video is still analysed, as stored, rather than failing."""
    path = _alpha_webm(tmp_path / "a.webm", "libvpx-vp9", rotation=90)

    class NoDecoder:
        is_open = False
        thread_count = 0

        def decode(self, packet: Any = None) -> Any:
            raise ValueError("cannot decode unknown codec")

        def flush_buffers(self) -> None:
            pass

    monkeypatch.setattr(media._Decoder, "_native", lambda self: NoDecoder())
    loaded = load_media(path, LIMITS, 2)
    assert loaded.info.rotation == 0 and loaded.frames[0].image.shape == (64, 96, 3)
    assert np.abs(loaded.frames[0].image[32, 86].astype(int) - 255).max() <= 3


def test_without_libvpx_a_webms_alpha_is_lost_not_the_video(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _alpha_webm(tmp_path / "a.webm", "libvpx-vp9")
    monkeypatch.setattr(media, "_ALPHA_DECODERS", {})
    image = load_media(path, LIMITS, 2).frames[0].image
    assert np.abs(image[32, 86].astype(int) - [200, 0, 0]).max() <= 12


def test_a_truncated_webm_with_alpha_is_read_as_far_as_it_goes(tmp_path: Path) -> None:
    path = _alpha_webm(tmp_path / "a.webm", "libvpx-vp9", frames=40)
    cut = tmp_path / "cut.webm"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size * 6 // 10])
    loaded = load_media(cut, LIMITS, 4)
    assert 0 < len(loaded.frames) <= 4
    assert loaded.info.frame_count < 40
    assert np.abs(loaded.frames[-1].image[32, 86].astype(int) - 255).max() <= 3


@pytest.mark.parametrize(
    "codec,pix_fmt", [("prores_ks", "yuva444p10le"), ("qtrle", "argb"), ("png", "rgba")]
)
def test_a_mov_with_alpha_is_analysed_as_shown_on_the_white_page(
    tmp_path: Path, codec: str, pix_fmt: str
) -> None:
    path = _alpha_webm(tmp_path / "a.mov", codec, frames=4, pix_fmt=pix_fmt)
    image = load_media(path, LIMITS, 2).frames[0].image
    assert np.abs(image[32, 10].astype(int) - [0, 0, 220]).max() <= 3
    assert np.abs(image[32, 86].astype(int) - [255, 255, 255]).max() <= 3


def test_a_webm_with_alpha_is_sought_frame_by_frame_through_its_key_frames(
    tmp_path: Path,
) -> None:
    """A key frame every 4 frames: every sampled frame is reached by its own
    seek, and the decoder (libvpx, outside the container's own flushing) gives
    that moment's frame, not one left over from before the seek."""
    path = _alpha_webm(tmp_path / "a.webm", "libvpx-vp9", frames=40, gop=4)
    loaded = load_media(path, LIMITS, 8)
    assert loaded.stats.seeks >= 4
    assert [round(f.time_s, 1) for f in loaded.frames] == [
        round(f.index / 10, 1) for f in loaded.frames
    ]
    assert len({f.index for f in loaded.frames}) == 8
    assert all(np.abs(f.image[32, 86].astype(int) - 255).max() <= 3 for f in loaded.frames)
    # Times asked for out of order, the last frame among them.
    at = media.frames_at_times(path, LIMITS, [3.9, 0.2, 2.1])
    assert sorted(at) == [0.2, 2.1, 3.9]


def test_an_hdr_webm_with_alpha_is_tone_mapped_then_shown_on_white(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """libvpx's frames lacked the container's colour description (BT.2020,
    PQ here), so such a WebM was analysed without its tone mapping."""
    hdr = {"color_primaries": 9, "color_trc": 16, "colorspace": 9}
    path = _alpha_webm(tmp_path / "a.webm", "libvpx-vp9", frames=4, colour=hdr)
    image = load_media(path, LIMITS, 1).frames[0].image
    assert np.abs(image[32, 86].astype(int) - 255).max() <= 3
    with monkeypatch.context() as m:
        m.setattr(media, "_ALPHA_DECODERS", {})  # FFmpeg's own decoder: tags, no alpha
        mapped = load_media(path, LIMITS, 1).frames[0].image
    assert np.abs(mapped[32, 44].astype(int) - 128).min() > 20  # the grey was tone-mapped
    # swscale's RGBA and RGB paths round differently (0.6% at 16 bits here).
    assert np.abs(image[32, 44].astype(int) - mapped[32, 44]).max() <= 6
    assert np.abs(image[32, 10].astype(int) - mapped[32, 10]).max() <= 6  # opaque: unmixed


def test_a_machine_fault_in_the_alpha_decoder_is_not_reported_as_a_damaged_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _alpha_webm(tmp_path / "a.webm", "libvpx-vp9")
    real = media._alpha_context

    class Failing:
        def __init__(self, context: Any) -> None:
            self._context = context

        def __getattr__(self, name: str) -> Any:
            return getattr(self._context, name)

        def __setattr__(self, name: str, value: Any) -> None:
            if name == "_context":
                object.__setattr__(self, name, value)
            else:
                setattr(self._context, name, value)

        def decode(self, packet: Any) -> Any:
            raise av.error.MemoryError(errno.ENOMEM, "Cannot allocate memory")

    monkeypatch.setattr(media, "_alpha_context", lambda stream: Failing(real(stream)))
    with pytest.raises(MediaReadFaultError, match="out of memory"):
        load_media(path, LIMITS, 4)


def test_an_alpha_webm_counts_its_alpha_pictures_in_the_decoding_work(tmp_path: Path) -> None:
    path = _alpha_webm(tmp_path / "a.webm", "libvpx-vp9", frames=12)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert media._pictures_per_frame(stream) == 2
    # A budget that the frames' pixels fit once but not twice.
    area = 96 * 64
    limits = replace(LIMITS, max_decode_pixels_per_frame=area * 12 // 4 * 3 // 2)
    with pytest.raises(media.DecodeWorkLimitError):
        load_media(path, limits, 4)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(media, "_ALPHA_DECODERS", {})
        assert len(load_media(path, limits, 4).frames) == 4
