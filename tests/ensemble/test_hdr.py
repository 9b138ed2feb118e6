"""HDR (PQ, HLG) and BT.2020 frames are shown as an SDR BT.709 screen shows them."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest

from ensemble.config import MediaLimits
from ensemble.hdr import (
    PRIMARIES_BT2020,
    TRC_HLG,
    TRC_PQ,
    DisplayMapping,
    display_mapping,
    hlg_inverse_oetf,
    pq_eotf,
)
from ensemble.media import load_media

# ITU-R BT.2087's inverse: linear BT.709 RGB in BT.2020 coordinates.
BT709_TO_BT2020 = np.array(
    [[0.6274, 0.3293, 0.0433], [0.0691, 0.9195, 0.0114], [0.0164, 0.0880, 0.8956]]
)

HLG = DisplayMapping("hlg", bt2020=True)
PQ = DisplayMapping("pq", bt2020=True)
SDR2020 = DisplayMapping("sdr", bt2020=True)


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
    # Read as 8-bit code values with nothing done, HLG's white was 191.
    assert round(0.75 * 255) == 191


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
    assert red[0] >= 253 and red[1] <= 3 and red[2] <= 3
    # Read as BT.709 with no conversion it was a duller, pinker red: (210, 84, 46).
    naive = np.rint(linear2020 ** (1 / 2.4) * 255)
    assert naive[0] < 220 and naive[1] > 60 and naive[2] > 30


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


def test_display_mapping_reads_the_frame_s_tags() -> None:
    def frame(trc: int, primaries: int) -> SimpleNamespace:
        return SimpleNamespace(color_trc=trc, color_primaries=primaries)

    assert display_mapping(frame(TRC_HLG, PRIMARIES_BT2020)) == HLG
    assert display_mapping(frame(TRC_PQ, PRIMARIES_BT2020)) == PQ
    assert display_mapping(frame(TRC_PQ, 1)) == DisplayMapping("pq", bt2020=False)
    assert display_mapping(frame(14, PRIMARIES_BT2020)) == SDR2020  # bt2020-10
    assert display_mapping(frame(1, 1)) is None  # BT.709
    assert display_mapping(frame(2, 2)) is None  # untagged
    assert display_mapping(object()) is None


def _pq_encode(nits: np.ndarray) -> np.ndarray:
    m1, m2 = 2610 / 16384, 2523 / 4096 * 128
    c1, c2, c3 = 3424 / 4096, 2413 / 4096 * 32, 2392 / 4096 * 32
    y = np.clip(nits / 10000.0, 0, 1) ** m1
    return ((c1 + c2 * y) / (1 + c3 * y)) ** m2


def _grey_video(path: Path, signal: float, trc: int, primaries: int, space: int) -> Path:
    """Four lossless 10-bit frames of one grey (limited range), tagged."""
    container = av.open(str(path), "w")
    stream = container.add_stream("libx264", rate=10, options={"qp": "0"})
    stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p10le"
    context = stream.codec_context
    context.color_trc, context.color_primaries, context.colorspace = trc, primaries, space
    context.color_range = 1
    luma = round(64 + signal * 876)
    for pts in range(4):
        frame = av.VideoFrame(64, 64, "yuv420p10le")
        for plane, value in zip(frame.planes, (luma, 512, 512), strict=True):
            plane.update(np.full(plane.buffer_size // 2, value, np.uint16).tobytes())
        frame.pts = pts
        container.mux(stream.encode(frame))
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
    video = _grey_video(tmp_path / "grey.mp4", signal, trc, primaries, space)
    loaded = load_media(video, MediaLimits(), 2)
    assert len(loaded.frames) == 2
    for frame in loaded.frames:
        assert frame.image.dtype == np.uint8 and frame.image.shape == (64, 64, 3)
        assert np.abs(frame.image.astype(int) - expected).max() <= 2
