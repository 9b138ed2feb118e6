from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from ensemble.config import MediaLimits
from ensemble.errors import (
    EmptyMediaError,
    MediaLimitError,
    NoVideoStreamError,
    UnreadableMediaError,
    UnsupportedMediaError,
)
from ensemble.media import list_media, load_media, sample_indices, sniff
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


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    image = np.zeros((40, 80, 3), dtype=np.uint8)
    image[:, :40] = 255  # left half white
    path = mf.write_image(tmp_path / "rotated.jpg", image, "JPEG", exif_orientation=6)
    frame = load_media(path, LIMITS, 1).frames[0].image
    # Orientation 6 means "rotate 90 degrees clockwise to display".
    assert frame.shape[:2] == (80, 40)
    assert frame[:40].mean() > 200 and frame[40:].mean() < 50


@pytest.mark.parametrize("ext", ["mp4", "mov", "webm", "avi", "mkv"])
def test_each_video_container_is_sampled_evenly_with_timestamps(tmp_path: Path, ext: str) -> None:
    path = mf.write_clip(tmp_path / f"clip.{ext}", frames=40, fps=10, gop=10)
    media = load_media(path, LIMITS, 8)
    assert media.info.kind == "video" and media.info.format == ext
    assert media.info.frame_count == 40
    assert media.info.duration_s == pytest.approx(4.0, abs=0.15)
    indices = [f.index for f in media.frames]
    assert len(indices) == 8 and indices[0] == 0 and indices[-1] == 39
    assert all(b > a for a, b in itertools.pairwise(indices))
    # Each returned frame really is the frame its index names.
    assert [mf.marker(f.image) for f in media.frames] == indices
    for f in media.frames:
        assert f.time_s == pytest.approx(f.index / 10, abs=1e-6)


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
        (lambda d, g: mf.zero_frame_video(d / "nothing.mp4"), EmptyMediaError, "no frames"),
    ],
    ids=[
        "empty",
        "truncated_mp4",
        "text_renamed_mp4",
        "png_100000x100000",
        "audio_only",
        "zero_frames",
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
