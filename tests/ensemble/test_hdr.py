"""HDR (PQ, HLG) and BT.2020 frames are shown as an SDR BT.709 screen shows them."""

from __future__ import annotations

import struct
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import av
import numpy as np
import pytest

from ensemble.config import MediaLimits
from ensemble.errors import UnsupportedMediaError
from ensemble.hdr import (
    PRIMARIES_BT709,
    PRIMARIES_BT2020,
    PRIMARIES_P3_D65,
    TRC_HLG,
    TRC_PQ,
    DisplayMapping,
    display_mapping,
    hlg_inverse_oetf,
    pq_eotf,
    pq_peak_nits,
    rgb_to_xyz,
    to_bt709,
)
from ensemble.media import load_media

# ITU-R BT.2087's inverse: linear BT.709 RGB in BT.2020 coordinates.
BT709_TO_BT2020 = np.array(
    [[0.6274, 0.3293, 0.0433], [0.0691, 0.9195, 0.0114], [0.0164, 0.0880, 0.8956]]
)

HLG = DisplayMapping("hlg", PRIMARIES_BT2020)
PQ = DisplayMapping("pq", PRIMARIES_BT2020)
SDR2020 = DisplayMapping("sdr", PRIMARIES_BT2020)
# ITU-R BT.2087: linear BT.2020 RGB to linear BT.709 RGB (published, 4 places).
BT2087 = np.array(
    [[1.6605, -0.5876, -0.0728], [-0.1246, 1.1329, -0.0083], [-0.0182, -0.1006, 1.1187]]
)


def flat(value: float | tuple[float, float, float], size: int = 4) -> np.ndarray:
    """A (size, size, 3) 16-bit frame of one colour given as signal 0-1."""
    rgb = np.broadcast_to(np.asarray(value, np.float64), (3,))
    return np.broadcast_to(np.rint(rgb * 65535).astype(np.uint16), (size, size, 3)).copy()


def pixel(mapping: DisplayMapping, value: float | tuple[float, float, float]) -> np.ndarray:
    return mapping.to_sdr(flat(value))[0, 0].astype(int)


def test_pq_eotf_matches_the_standard() -> None:
    # SMPTE ST 2084: 0 is black, 1 is 10,000 cd/m2, about 50.8% is 100 and 58% about 203.
    light = pq_eotf(np.array([0.0, 0.5081, 0.58, 1.0]))
    assert light[0] == 0.0
    assert light[1] == pytest.approx(100.0, abs=0.5)
    assert light[2] == pytest.approx(203.0, abs=2.0)
    assert light[3] == pytest.approx(10000.0)


def test_hlg_inverse_oetf_matches_the_standard() -> None:
    # BT.2100: E' = sqrt(3 E) up to E = 1/12, logarithmic above, continuous at 0.5.
    scene = hlg_inverse_oetf(np.array([0.0, 0.25, 0.5, 0.5 + 1e-9, 1.0]))
    assert scene[0] == 0.0
    assert scene[1] == pytest.approx(0.25**2 / 3)
    assert scene[2] == pytest.approx(1 / 12)
    assert scene[3] == pytest.approx(1 / 12, abs=1e-8)
    assert scene[4] == pytest.approx(1.0, abs=1e-6)


def test_reference_white_is_the_same_in_pq_and_hlg() -> None:
    # BT.2408: reference white is 203 cd/m2, PQ 58% and HLG 75% (on a 1,000
    # cd/m2 display). Both must come out the same SDR grey, near the top.
    hlg, pq = pixel(HLG, 0.75), pixel(PQ, 0.5807)
    assert abs(hlg[0] - pq[0]) <= 1
    assert 236 <= hlg[0] <= 246
    assert hlg[0] == hlg[1] == hlg[2]


@pytest.mark.parametrize("mapping", [HLG, PQ, SDR2020], ids=["hlg", "pq", "sdr-bt2020"])
def test_black_stays_black_peak_is_white_and_greys_never_darken(mapping: DisplayMapping) -> None:
    ramp = np.repeat(np.arange(0, 65536, 32, dtype=np.uint16)[:, None], 3, axis=1)[None]
    out = mapping.to_sdr(ramp)[0, :, 0].astype(int)
    assert out[0] == 0
    assert mapping.to_sdr(flat(1.0))[0, 0].tolist() == [255, 255, 255]
    assert (np.diff(out) >= 0).all()
    # and the whole code range is used, not a compressed part of it
    assert len(np.unique(out)) > 200


def test_sdr_bt2020_colours_come_back_as_their_bt709_code_values() -> None:
    # A BT.709 colour written in BT.2020 primaries (gamma 2.4 both ways).
    rng = np.random.default_rng(0)
    for coded709 in rng.uniform(0.05, 0.95, size=(20, 3)):
        linear2020 = BT709_TO_BT2020 @ coded709**2.4
        out = pixel(SDR2020, tuple(linear2020 ** (1 / 2.4)))
        assert np.abs(out - np.rint(coded709 * 255)).max() <= 2, coded709


def test_a_pure_bt709_red_in_bt2020_is_pure_red_again() -> None:
    linear2020 = BT709_TO_BT2020 @ np.array([1.0, 0.0, 0.0])
    red = pixel(SDR2020, tuple(linear2020 ** (1 / 2.4)))
    # (read as BT.709 with no conversion it was (210, 84, 46), duller and pinker)
    assert red[0] >= 253 and red[1] <= 3 and red[2] <= 3


def test_primaries_matrices_come_from_the_chromaticities() -> None:
    assert np.abs(to_bt709(PRIMARIES_BT2020) - BT2087).max() < 1e-4
    assert np.abs(rgb_to_xyz(PRIMARIES_BT2020)[1] - [0.2627, 0.6780, 0.0593]).max() < 1e-4
    assert np.abs(rgb_to_xyz(PRIMARIES_BT709)[1] - [0.2126, 0.7152, 0.0722]).max() < 1e-4
    assert np.allclose(to_bt709(PRIMARIES_BT709), np.eye(3), atol=1e-6)
    # Display P3 (a phone's): white stays white, its red lies outside BT.709.
    p3 = to_bt709(PRIMARIES_P3_D65)
    assert np.allclose(p3.sum(axis=1), 1.0, atol=1e-5)
    assert p3[0, 0] == pytest.approx(1.2249, abs=1e-3) and p3[1, 0] < 0


def _hlg_reference(coded: np.ndarray) -> np.ndarray:
    """One HLG BT.2020 pixel to 8-bit BT.709, written out step by step from
    the standards, apart from the module: BT.2100's inverse OETF and OOTF
    (1,000 cd/m2, gamma 1.2, BT.2020 luminance), the tone curve, BT.2087,
    BT.1886."""
    a, b = 0.17883277, 0.28466892
    c = 0.55991073
    scene = np.array([e * e / 3 if e <= 0.5 else (np.exp((e - c) / a) + b) / 12 for e in coded])
    luminance = 0.2627 * scene[0] + 0.6780 * scene[1] + 0.0593 * scene[2]
    light = 1000.0 * luminance**0.2 * scene / 203.0
    light709 = BT2087 @ light
    largest, room = light709.max(), (1000 / 203 - 0.75) / 0.25
    if largest > 0.75:
        x = (largest - 0.75) / 0.25
        light709 = light709 * (0.75 + 0.25 * x * (1 + x / room**2) / (1 + x)) / largest
    return np.rint(np.clip(light709, 0, 1) ** (1 / 2.4) * 255)


def test_coloured_hlg_pixels_match_the_standards_step_by_step() -> None:
    rng = np.random.default_rng(1)
    codes = np.vstack([rng.uniform(0, 1, (40, 3)), [[0.2, 0.75, 0.3], [0.9, 0.4, 0.1]]])
    for coded in codes:
        got = pixel(HLG, tuple(coded))
        assert np.abs(got - _hlg_reference(coded)).max() <= 1, coded


def test_tone_mapping_keeps_a_bright_colour_s_hue() -> None:
    # A bright orange (BT.709 linear 3 : 1.2 : 0.3 of reference white) in PQ.
    linear709 = np.array([3.0, 1.2, 0.3]) * 203.0
    coded = _pq_encode(BT709_TO_BT2020 @ linear709)
    out = pixel(PQ, tuple(coded)) / 255.0
    light = out**2.4
    assert light[1] / light[0] == pytest.approx(0.4, rel=0.03)
    assert light[2] / light[0] == pytest.approx(0.1, rel=0.1)
    assert 0.9 < light[0] < 1.0  # compressed, not clipped


def test_light_below_the_knee_passes_unchanged() -> None:
    # Half of reference white in PQ is half of SDR white.
    coded = _pq_encode(np.full(3, 0.5 * 203.0))
    out = pixel(PQ, tuple(coded))
    assert out[0] == round(0.5 ** (1 / 2.4) * 255)


def test_to_sdr_refuses_what_is_not_16_bit_rgb() -> None:
    with pytest.raises(ValueError, match="uint16"):
        HLG.to_sdr(np.zeros((4, 4, 3), np.uint8))


def test_a_4k_frame_is_mapped_in_bands_exactly_as_row_by_row() -> None:
    frame = np.random.default_rng(2).integers(0, 65536, (300, 40, 3), dtype=np.uint16)
    for mapping in (HLG, PQ, SDR2020):
        whole = mapping.to_sdr(frame)
        rows = np.concatenate([mapping.to_sdr(frame[r : r + 1]) for r in range(300)])
        assert np.array_equal(whole, rows)
        # the shared tables were not written to by the first call
        assert np.array_equal(mapping.to_sdr(frame), whole)


def test_display_mapping_reads_the_frame_s_tags() -> None:
    def frame(trc: int, primaries: int, space: int = 9, **more: object) -> SimpleNamespace:
        return SimpleNamespace(color_trc=trc, color_primaries=primaries, colorspace=space, **more)

    assert display_mapping(frame(TRC_HLG, PRIMARIES_BT2020)) == HLG
    assert display_mapping(frame(TRC_PQ, PRIMARIES_BT2020)) == PQ
    assert display_mapping(frame(TRC_PQ, 1)) == DisplayMapping("pq", PRIMARIES_BT709)
    # HDR without primaries is BT.2020, as players take it
    assert display_mapping(frame(TRC_HLG, 2, 2)) == HLG
    assert display_mapping(frame(14, PRIMARIES_BT2020)) == SDR2020  # bt2020-10
    assert display_mapping(frame(1, PRIMARIES_P3_D65, 1)) == DisplayMapping("sdr", PRIMARIES_P3_D65)
    assert display_mapping(frame(1, 1, 1)) is None  # BT.709
    assert display_mapping(frame(14, 1, 1)) is None  # BT.2020's transfer is BT.709's
    assert display_mapping(frame(2, 2, 2)) is None  # untagged
    assert display_mapping(object()) is None
    # An iPhone's Dolby Vision 8.4 has a standard HLG base layer.
    dovi = _side_data("DOVI_RPU_BUFFER", "DOVI_METADATA")
    assert display_mapping(frame(TRC_HLG, PRIMARIES_BT2020, side_data=dovi)) == HLG
    # Side data PyAV cannot name (a newer FFmpeg's) is no reason to fail an SDR frame.
    assert display_mapping(frame(2, 2, 2, side_data=_Unreadable())) is None
    assert display_mapping(frame(2, 2, 2, side_data=_side_data("DISPLAYMATRIX"))) is None


def _side_data(*names: str) -> list[SimpleNamespace]:
    """Side data as PyAV 18 yields it: objects whose ``type`` has a ``name``."""
    return [SimpleNamespace(type=SimpleNamespace(name=name)) for name in names]


class _Unreadable:
    def __iter__(self) -> Any:
        raise ValueError("18 is not a valid Type")


@pytest.mark.parametrize(
    ("space", "side_data", "what"),
    [
        (10, [], "constant luminance"),
        (14, [], "ICtCp"),
        (2, _side_data("DOVI_RPU_BUFFER"), "Dolby Vision profile 5"),
        (15, [], "Dolby Vision profile 5"),  # IPT-C2, as newer FFmpeg tags it
    ],
)
def test_colour_that_cannot_be_read_correctly_is_refused_with_a_reason(
    space: int, side_data: list[SimpleNamespace], what: str
) -> None:
    frame = SimpleNamespace(color_trc=2, color_primaries=2, colorspace=space, side_data=side_data)
    with pytest.raises(UnsupportedMediaError, match=what) as refused:
        display_mapping(frame)
    assert "Export it as standard (SDR) video, or as HDR10 or HLG" in str(refused.value)


def _pq_encode(nits: np.ndarray) -> np.ndarray:
    m1, m2 = 2610 / 16384, 2523 / 4096 * 128
    c1, c2, c3 = 3424 / 4096, 2413 / 4096 * 32, 2392 / 4096 * 32
    y = np.clip(nits / 10000.0, 0, 1) ** m1
    return ((c1 + c2 * y) / (1 + c3 * y)) ** m2


def _video(
    path: Path, rgb16: tuple[int, int, int], trc: int, primaries: int, space: int, full: bool
) -> Path:
    """Four lossless 10-bit 4:4:4 frames of one colour (16-bit R'G'B',
    turned into Y'CbCr by the ``space`` matrix in ``full`` or limited range), tagged."""
    container = av.open(str(path), "w")
    stream = container.add_stream("libx264", rate=10, options={"qp": "0"})
    stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv444p10le"
    context = stream.codec_context
    context.color_trc, context.color_primaries, context.colorspace = trc, primaries, space
    context.color_range = 2 if full else 1
    rgb = av.VideoFrame.from_ndarray(np.full((64, 64, 3), rgb16, np.uint16), format="rgb48le")
    yuv = rgb.reformat(
        format="yuv444p10le",
        dst_colorspace="bt2020" if space == 9 else "itu709",
        dst_color_range=2 if full else 1,
    )
    for pts in range(4):
        yuv.pts = pts
        container.mux(stream.encode(yuv))
    container.mux(stream.encode())
    container.close()
    return path


@pytest.mark.parametrize(
    ("signal", "trc", "primaries", "space", "expected"),
    [
        (0.75, TRC_HLG, PRIMARIES_BT2020, 9, 241),  # an iPhone's HDR: reference white
        (0.5807, TRC_PQ, PRIMARIES_BT2020, 9, 241),  # HDR10: reference white
        (0.75, 1, 1, 1, 191),  # the same codes in SDR BT.709 are read as before
    ],
    ids=["hlg", "pq", "bt709"],
)
def test_videos_are_analysed_as_a_screen_shows_them(
    tmp_path: Path, signal: float, trc: int, primaries: int, space: int, expected: int
) -> None:
    grey = (round(signal * 65535),) * 3
    video = _video(tmp_path / "grey.mp4", grey, trc, primaries, space, full=False)  # type: ignore[arg-type]
    loaded = load_media(video, MediaLimits(), 2)
    assert len(loaded.frames) == 2
    for frame in loaded.frames:
        assert frame.image.dtype == np.uint8 and frame.image.shape == (64, 64, 3)
        assert np.abs(frame.image.astype(int) - expected).max() <= 2


@pytest.mark.parametrize("full", [False, True], ids=["limited", "full-range"])
def test_a_coloured_hlg_video_is_read_through_the_bt2020_matrix(tmp_path: Path, full: bool) -> None:
    # A skin tone and a saturated green, each its own clip.
    for coded in ((0.62, 0.45, 0.35), (0.2, 0.75, 0.3)):
        rgb16 = tuple(round(v * 65535) for v in coded)
        video = _video(tmp_path / f"c{full}{coded[0]}.mp4", rgb16, TRC_HLG, 9, 9, full)  # type: ignore[arg-type]
        (frame,) = load_media(video, MediaLimits(), 1).frames
        expected = _hlg_reference(np.array(coded))
        assert np.abs(frame.image[32, 32].astype(int) - expected).max() <= 3, (coded, full)


def test_unreadable_colour_in_a_video_is_refused_not_called_damaged(tmp_path: Path) -> None:
    # Tagged BT.2020 constant luminance (the Y'CbCr written as non-constant:
    # only the tag matters). Before, swscale refused each frame and the video
    # was reported as damaged data.
    video = _video(tmp_path / "cl.mp4", (30000,) * 3, TRC_HLG, 9, 10, full=False)
    with av.open(str(video)) as container:
        assert next(container.decode(video=0)).colorspace == 10
    with pytest.raises(UnsupportedMediaError, match="constant luminance"):
        load_media(video, MediaLimits(), 2)


class _Side:
    """A side data entry as PyAV gives one: a named type, and its bytes."""

    def __init__(self, name: str, data: bytes) -> None:
        self.type = SimpleNamespace(name=name)
        self._data = data

    def __bytes__(self) -> bytes:
        return self._data


def _mastering(max_nits: float, has_luminance: int = 1) -> _Side:
    fields = [0] * 16 + [50, 10000, int(max_nits * 10000), 10000, 1, has_luminance]
    return _Side("MASTERING_DISPLAY_METADATA", struct.pack("<22i", *fields))


def _light(max_cll: int, max_fall: int = 400) -> _Side:
    return _Side("CONTENT_LIGHT_LEVEL", struct.pack("<2I", max_cll, max_fall))


def test_a_pq_video_s_peak_comes_from_its_hdr10_metadata() -> None:
    """Before, every PQ video was tone-mapped as if it held 10,000 cd/m2,
    so a video mastered at 1,000 had its highlights pressed far below white."""

    def frame(*side: _Side) -> SimpleNamespace:
        return SimpleNamespace(color_trc=TRC_PQ, color_primaries=9, colorspace=9, side_data=side)

    assert pq_peak_nits(frame(_light(1000), _mastering(4000))) == 1000.0  # the content's own
    assert pq_peak_nits(frame(_light(0), _mastering(4000))) == 4000.0  # MaxCLL unknown
    assert pq_peak_nits(frame(_mastering(1000))) == 1000.0
    assert pq_peak_nits(frame(_mastering(1000, has_luminance=0))) is None
    assert pq_peak_nits(frame(_light(50_000))) is None  # past what PQ carries: nonsense
    assert pq_peak_nits(frame(_Side("CONTENT_LIGHT_LEVEL", b"\x01"))) is None  # truncated
    assert pq_peak_nits(frame()) is None
    assert display_mapping(frame(_light(1000))) == DisplayMapping("pq", PRIMARIES_BT2020, 1000.0)
    assert display_mapping(frame()) == PQ
    # HLG has its nominal 1,000 cd/m2 display whatever the metadata says.
    hlg = SimpleNamespace(
        color_trc=TRC_HLG, color_primaries=9, colorspace=9, side_data=[_light(600)]
    )
    assert display_mapping(hlg) == HLG
    # Mastered at 1,000: its peak is white (the 10,000 assumption left it
    # one code short), and no light comes out darker. The knee curve is
    # already close to white well below either peak, so that is all it moves.
    mastered = DisplayMapping("pq", PRIMARIES_BT2020, 1000.0)
    assert pixel(mastered, _pq_encode(np.array(1000.0))).tolist() == [255, 255, 255]
    assert pixel(PQ, _pq_encode(np.array(1000.0))).tolist() == [254, 254, 254]
    for nits in (100.0, 203.0, 400.0, 600.0, 800.0):
        ours, before = (pixel(m, _pq_encode(np.array(nits)))[0] for m in (mastered, PQ))
        assert before <= ours <= before + 1, nits


@pytest.mark.skipif("libx265" not in av.codecs_available, reason="PyAV's FFmpeg has no libx265")
def test_the_peak_is_read_from_an_hdr10_hevc_video(tmp_path: Path) -> None:
    path = tmp_path / "hdr10.mp4"
    params = (
        "log-level=error:hdr10=1:colorprim=bt2020:transfer=smpte2084:colormatrix=bt2020nc:"
        "master-display=G(13250,34500)B(7500,3000)R(34000,16000)WP(15635,16450)"
        "L(40000000,50):max-cll=1000,400"
    )
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx265", rate=10, options={"x265-params": params})
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p10le"
        grey = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 128, np.uint8), format="rgb24")
        for pts in range(3):
            frame = grey.reformat(format="yuv420p10le")
            frame.pts = pts
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
    assert frames and all(pq_peak_nits(f) == 1000.0 for f in frames)  # MaxCLL, not the 4,000
    assert display_mapping(frames[-1]) == DisplayMapping("pq", PRIMARIES_BT2020, 1000.0)
