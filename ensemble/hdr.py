"""HDR and wide-gamut video frames shown as an SDR BT.709 screen shows them.

The detectors were trained on SDR video (BT.709 primaries, a BT.1886 display,
8 bits). A phone's HDR video is not that: an iPhone records HLG (ARIB STD-B67)
in BT.2020 primaries by default, and HDR10 is PQ (SMPTE ST 2084). Converted to
RGB with the right matrix but nothing else, such a frame is analysed flatter,
darker (PQ) and less saturated (BT.2020 read as BT.709) than any viewer shows
it. FFmpeg's ``zscale`` filter is not in PyAV's build and its ``colorspace``
filter knows neither transfer, so this module does the conversion itself, on
the 16-bit R'G'B' that swscale gives for the frame (its matrix and range
already applied):

1. The transfer is undone to display light in cd/m2: PQ's EOTF; for HLG the
   inverse OETF and then the OOTF of ITU-R BT.2100 for a 1,000 cd/m2 display
   (system gamma 1.2). An SDR BT.2020 frame is taken through BT.1886 (gamma
   2.4), scaled so its white is reference white.
2. BT.2020 primaries become BT.709 ones (the linear-light matrix of ITU-R
   BT.2087).
3. Tone mapping: HDR reference white (203 cd/m2, ITU-R BT.2408) is SDR white
   before the curve. Up to 75% of it nothing changes; above, the rest of the
   range up to the format's peak (1,000 cd/m2 for HLG, 10,000 for PQ, so no
   highlight is ever cut) is compressed smoothly into the remaining quarter
   (an extended Reinhard curve whose slope is 1 at the knee). The curve is
   applied to each pixel's largest channel and the pixel scaled by it, so
   hues do not shift. Reference white lands at 95% of SDR's code range, as
   in broadcast HDR-to-SDR conversion.
4. Colours outside BT.709 are clipped to it, and the light is encoded for
   a BT.1886 display (gamma 1/2.4) into 8 bits.

The work goes in bands of rows so a 4K frame never needs more than a few
tens of MB of float scratch space.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import numpy.typing as npt

# FFmpeg's AVColorTransferCharacteristic / AVColorPrimaries codes (as PyAV's
# VideoFrame.color_trc and color_primaries give them).
TRC_PQ = 16  # SMPTE ST 2084: HDR10, Dolby Vision
TRC_HLG = 18  # ARIB STD-B67: phones' and broadcast HDR
PRIMARIES_BT2020 = 9

REFERENCE_WHITE = 203.0  # cd/m2, ITU-R BT.2408: HDR's reference (graphics) white
HLG_PEAK = 1000.0  # cd/m2: the nominal display the HLG OOTF is computed for
PQ_PEAK = 10000.0  # cd/m2: the most PQ can encode
KNEE = 0.75  # of reference white: below it light is passed unchanged

# ITU-R BT.2087: linear BT.2020 RGB to linear BT.709 RGB.
_BT2020_TO_BT709 = np.array(
    [
        [1.6605, -0.5876, -0.0728],
        [-0.1246, 1.1329, -0.0083],
        [-0.0182, -0.1006, 1.1187],
    ],
    dtype=np.float32,
)
# BT.2020 luminance weights, for the HLG OOTF.
_BT2020_LUMA = np.array([0.2627, 0.6780, 0.0593], dtype=np.float32)
# BT.709 luminance weights, for HLG in BT.709 primaries (rare, but legal).
_BT709_LUMA = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)
_ROWS_PER_BAND = 128

RGB16 = npt.NDArray[np.uint16]
RGB8 = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class DisplayMapping:
    """How a frame's colours are brought to SDR BT.709: its transfer
    (``"pq"``, ``"hlg"`` or ``"sdr"``) and whether its primaries are
    BT.2020."""

    transfer: str
    bt2020: bool

    @property
    def peak(self) -> float:
        """The brightest light the transfer can carry, in cd/m2."""
        return {"pq": PQ_PEAK, "hlg": HLG_PEAK}.get(self.transfer, REFERENCE_WHITE)

    def to_sdr(self, rgb16: RGB16) -> RGB8:
        """``rgb16``, (H, W, 3) 16-bit R'G'B' of the frame, as 8-bit SDR
        BT.709 R'G'B'."""
        if rgb16.ndim != 3 or rgb16.shape[2] != 3 or rgb16.dtype != np.uint16:
            raise ValueError(f"expected (H, W, 3) uint16, got {rgb16.shape} {rgb16.dtype}")
        out = np.empty(rgb16.shape, np.uint8)
        lut = _linear_lut(self.transfer)
        for top in range(0, rgb16.shape[0], _ROWS_PER_BAND):
            band = slice(top, top + _ROWS_PER_BAND)
            out[band] = self._band(lut[rgb16[band]])
        return out

    def _band(self, light: npt.NDArray[np.float32]) -> RGB8:
        # light: display light relative to reference white for PQ and SDR;
        # scene light (0-1) for HLG, which the OOTF makes display light
        if self.transfer == "hlg":
            luma = light @ (_BT2020_LUMA if self.bt2020 else _BT709_LUMA)
            gain = np.power(np.maximum(luma, 0.0), 0.2) * np.float32(HLG_PEAK / REFERENCE_WHITE)
            light *= gain[..., None]
        relative = light @ _BT2020_TO_BT709.T if self.bt2020 else light
        if self.transfer != "sdr":
            relative = tone_map(relative, self.peak / REFERENCE_WHITE)
        np.clip(relative, 0.0, 1.0, out=relative)
        coded = np.power(relative, np.float32(1 / 2.4))
        return np.rint(coded * 255.0).astype(np.uint8)


def tone_map(relative: npt.NDArray[np.float32], peak: float) -> npt.NDArray[np.float32]:
    """Light relative to reference white, with each pixel's largest channel
    above ``KNEE`` compressed so that ``peak`` (relative too) lands on 1.0;
    the pixel is scaled by the same factor, so its hue is kept. Scales
    ``relative`` in place and returns it."""
    largest = np.maximum(np.maximum(relative[..., 0], relative[..., 1]), relative[..., 2])
    excess = np.maximum(largest - KNEE, 0.0) * (1 / (1 - KNEE))
    room = (peak - KNEE) / (1 - KNEE)
    mapped = KNEE + (1 - KNEE) * excess * (1 + excess * (1 / room**2)) / (1 + excess)
    # at or below the knee excess is 0, mapped is KNEE, and the scale 1
    relative *= (mapped / np.maximum(largest, KNEE))[..., None]
    return relative


def pq_eotf(coded: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """SMPTE ST 2084: signal (0-1) to display light in cd/m2."""
    m1, m2 = 2610 / 16384, 2523 / 4096 * 128
    c1, c2, c3 = 3424 / 4096, 2413 / 4096 * 32, 2392 / 4096 * 32
    p = np.power(np.clip(np.asarray(coded, np.float64), 0.0, 1.0), 1 / m2)
    return 10000.0 * np.power(np.maximum(p - c1, 0.0) / (c2 - c3 * p), 1 / m1)


def hlg_inverse_oetf(coded: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """ARIB STD-B67 / BT.2100: signal (0-1) to scene light (0-1)."""
    a = 0.17883277
    b = 1 - 4 * a
    c = 0.5 - a * np.log(4 * a)
    e = np.clip(np.asarray(coded, np.float64), 0.0, 1.0)
    low = e * e / 3
    high = (np.exp((np.maximum(e, 0.5) - c) / a) + b) / 12
    return np.where(e <= 0.5, low, high)


@cache
def _linear_lut(transfer: str) -> npt.NDArray[np.float32]:
    """Every 16-bit code value's light: display light relative to reference
    white for PQ and SDR (whose white is reference white), scene light 0-1
    for HLG."""
    coded = np.arange(65536, dtype=np.float64) / 65535.0
    if transfer == "pq":
        light = pq_eotf(coded) / REFERENCE_WHITE
    elif transfer == "hlg":
        light = hlg_inverse_oetf(coded)
    else:
        light = np.power(coded, 2.4)
    return light.astype(np.float32)


def display_mapping(frame: Any) -> DisplayMapping | None:
    """The conversion a decoded frame needs before it is analysed, from its
    colour tags; ``None`` for ordinary SDR BT.709 (or untagged) video, which
    is read as it always was."""
    trc = getattr(frame, "color_trc", None)
    bt2020 = getattr(frame, "color_primaries", None) == PRIMARIES_BT2020
    if trc == TRC_PQ:
        return DisplayMapping("pq", bt2020)
    if trc == TRC_HLG:
        return DisplayMapping("hlg", bt2020)
    if bt2020:
        return DisplayMapping("sdr", True)
    return None
