"""HDR and wide-gamut video frames shown as an SDR BT.709 screen shows them.

The detectors were trained on SDR video (BT.709 primaries, a BT.1886 display,
8 bits). A phone's HDR video is not that: an iPhone records HLG (ARIB STD-B67)
in BT.2020 primaries by default, and HDR10 is PQ (SMPTE ST 2084). Converted to
RGB with the right matrix but nothing else, such a frame is analysed flatter,
darker (PQ) and less saturated (BT.2020 read as BT.709) than any viewer shows
it. FFmpeg's ``zscale`` filter is not in PyAV's build and its ``colorspace``
filter knows neither transfer, so this module does the conversion itself, on
the 16-bit R'G'B' that swscale gives for the frame (its Y'CbCr matrix and
range already applied, from the frame's own tags):

1. The transfer is undone to display light: PQ's EOTF; for HLG the inverse
   OETF and then the OOTF of ITU-R BT.2100 for a 1,000 cd/m2 display
   (system gamma 1.2, on the luminance of the frame's primaries). An SDR
   wide-gamut frame is taken through BT.1886 (gamma 2.4), its white at
   reference white.
2. BT.2020 or Display P3 primaries become BT.709 ones (a linear-light
   matrix from the primaries' chromaticities; for BT.2020 it is ITU-R
   BT.2087's).
3. Tone mapping: HDR reference white (203 cd/m2, ITU-R BT.2408) is SDR
   white before the curve. Up to 75% of it nothing changes; above, the rest
   of the range up to the picture's peak (1,000 cd/m2 for HLG; for PQ the
   brightest light the video says it holds, its MaxCLL, else its mastering
   display's peak, else the 10,000 PQ can carry: no highlight short of it
   is cut, and white at the peak is SDR white) is compressed smoothly into
   the remaining quarter (an extended
   Reinhard curve whose slope is 1 at the knee). The curve is applied to
   each pixel's largest channel and the pixel scaled by it, so hues do not
   shift. Reference white lands at 95% of SDR's code range, as in
   broadcast HDR-to-SDR conversion.
4. Colours outside BT.709 are clipped to it, and the light is encoded for
   a BT.1886 display (gamma 1/2.4) into 8 bits.

HDR tagged with no primaries is taken as BT.2020, as players take it.
Colour this cannot read correctly is refused with a reason rather than
analysed wrong: BT.2020 constant luminance and ICtCp (swscale has no
matrix for them, and the frames used to be reported as damaged), and Dolby
Vision profile 5, whose IPTPQc2 pictures carry no colour tags and would be
read as green and magenta Y'CbCr.

The work goes in bands of rows, so a 4K frame never needs more than a few
tens of MB of float scratch space.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import numpy.typing as npt

from ensemble.errors import UnsupportedMediaError

# FFmpeg's AVColorTransferCharacteristic / AVColorPrimaries / AVColorSpace
# codes (as PyAV's VideoFrame.color_trc, color_primaries and colorspace give them).
TRC_PQ = 16  # SMPTE ST 2084: HDR10, Dolby Vision
TRC_HLG = 18  # ARIB STD-B67: phones' and broadcast HDR
PRIMARIES_BT709 = 1
PRIMARIES_UNSPECIFIED = 2
PRIMARIES_BT2020 = 9
PRIMARIES_P3_D65 = 12  # SMPTE EG 432-1: Display P3
SPACE_UNSPECIFIED = 2
SPACE_BT2020_CL = 10  # BT.2020 constant luminance
SPACE_ICTCP = 14
SPACE_IPT_C2 = 15  # Dolby Vision profile 5's IPTPQc2, as newer FFmpeg tags it

REFERENCE_WHITE = 203.0  # cd/m2, ITU-R BT.2408: HDR's reference (graphics) white
HLG_PEAK = 1000.0  # cd/m2: the nominal display the HLG OOTF is computed for
PQ_PEAK = 10000.0  # cd/m2: the most PQ can encode
KNEE = 0.75  # of reference white: below it light is passed unchanged

# CIE 1931 xy of the red, green and blue primaries; all with a D65 white.
_D65 = (0.3127, 0.3290)
_CHROMATICITIES = {
    PRIMARIES_BT709: ((0.640, 0.330), (0.300, 0.600), (0.150, 0.060)),
    PRIMARIES_BT2020: ((0.708, 0.292), (0.170, 0.797), (0.131, 0.046)),
    PRIMARIES_P3_D65: ((0.680, 0.320), (0.265, 0.690), (0.150, 0.060)),
}
_ROWS_PER_BAND = 128
_ENCODE_STEPS = 65535  # of the square root of light, for the 8-bit encoding table

UNSUPPORTED_COLOUR = (
    "This video's colour is coded in a way this site cannot read correctly ({what}). "
    "Export it as standard (SDR) video, or as HDR10 or HLG, and upload that."
)

RGB16 = npt.NDArray[np.uint16]
RGB8 = npt.NDArray[np.uint8]


def rgb_to_xyz(primaries: int) -> npt.NDArray[np.float64]:
    """The linear RGB to CIE XYZ matrix of ``primaries`` (D65 white, Y of
    white 1); its middle row is the primaries' luminance weights."""
    xy = np.array(_CHROMATICITIES[primaries], np.float64)
    columns = np.stack([xy[:, 0] / xy[:, 1], np.ones(3), (1 - xy.sum(axis=1)) / xy[:, 1]])
    white = np.array([_D65[0] / _D65[1], 1.0, (1 - sum(_D65)) / _D65[1]])
    return columns * np.linalg.solve(columns, white)


@cache
def to_bt709(primaries: int) -> npt.NDArray[np.float32]:
    """The linear-light matrix from ``primaries`` to BT.709's."""
    matrix = np.linalg.solve(rgb_to_xyz(PRIMARIES_BT709), rgb_to_xyz(primaries))
    out = matrix.astype(np.float32)
    out.setflags(write=False)
    return out


@cache
def _luma(primaries: int) -> npt.NDArray[np.float32]:
    out: npt.NDArray[np.float32] = rgb_to_xyz(primaries)[1].astype(np.float32)
    out.setflags(write=False)
    return out


@dataclass(frozen=True)
class DisplayMapping:
    """How a frame's colours are brought to SDR BT.709: its transfer
    (``"pq"``, ``"hlg"`` or ``"sdr"``) and its primaries (an FFmpeg code:
    BT.709, BT.2020 or Display P3)."""

    transfer: str
    primaries: int = PRIMARIES_BT2020
    # PQ only: the brightest light the video holds, in cd/m2, from its
    # metadata (:func:`pq_peak_nits`); None: the most PQ can carry.
    peak_nits: float | None = None

    @property
    def peak(self) -> float:
        """The brightest light the picture can hold, relative to reference white."""
        if self.transfer == "pq" and self.peak_nits is not None:
            return self.peak_nits / REFERENCE_WHITE
        return {"pq": PQ_PEAK, "hlg": HLG_PEAK}.get(self.transfer, REFERENCE_WHITE) / (
            REFERENCE_WHITE
        )

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
        # light (a copy, never the table): display light relative to
        # reference white for PQ and SDR; scene light (0-1) for HLG, which
        # the OOTF makes display light
        if self.transfer == "hlg":
            luma = light @ _luma(self.primaries)
            gain = np.power(np.maximum(luma, 0.0), 0.2) * np.float32(HLG_PEAK / REFERENCE_WHITE)
            light *= gain[..., None]
        if self.primaries != PRIMARIES_BT709:
            light = light @ to_bt709(self.primaries).T
        if self.transfer != "sdr":
            # after the primaries: the curve sees the channels the picture
            # is shown with (only a saturated colour brighter than the
            # source's peak on its BT.709 channel is clipped)
            light = tone_map(light, self.peak)
        np.clip(light, 0.0, 1.0, out=light)
        steps = np.rint(np.sqrt(light) * np.float32(_ENCODE_STEPS)).astype(np.uint16)
        return _encode_lut()[steps]


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
    for HLG. Read-only: it is shared by every frame."""
    coded = np.arange(65536, dtype=np.float64) / 65535.0
    if transfer == "pq":
        light = pq_eotf(coded) / REFERENCE_WHITE
    elif transfer == "hlg":
        light = hlg_inverse_oetf(coded)
    else:
        light = np.power(coded, 2.4)
    out = light.astype(np.float32)
    out.setflags(write=False)
    return out


@cache
def _encode_lut() -> RGB8:
    """8-bit BT.1886 code values of light given as its square root in
    ``_ENCODE_STEPS`` steps (fine enough in the shadows: 8-bit code 1 is
    step 85)."""
    root = np.arange(_ENCODE_STEPS + 1, dtype=np.float64) / _ENCODE_STEPS
    out: RGB8 = np.rint(np.power(root * root, 1 / 2.4) * 255).astype(np.uint8)
    out.setflags(write=False)
    return out


def _has_dolby_vision(frame: Any) -> bool:
    """Whether the frame carries Dolby Vision metadata. PyAV yields side data
    objects whose ``type`` has the name; a type PyAV does not know (newer
    FFmpeg) raises ValueError while the container is read, and is no
    reason to fail the frame."""
    try:
        return any(
            side.type.name in ("DOVI_METADATA", "DOVI_RPU_BUFFER") for side in frame.side_data
        )
    except (AttributeError, TypeError, ValueError):  # none, or unreadable
        return False


def _side_data_bytes(frame: Any) -> dict[str, bytes]:
    """The frame's side data by type name (unreadable side data: none)."""
    out: dict[str, bytes] = {}
    try:
        for side in frame.side_data:
            out.setdefault(side.type.name, bytes(side))
    except (AttributeError, TypeError, ValueError):  # none, or unreadable
        return {}
    return out


def pq_peak_nits(frame: Any) -> float | None:
    """The brightest light a PQ frame's video holds (cd/m2), from its HDR10
    metadata: the content light level's MaxCLL, else the mastering display's
    peak luminance; ``None`` when it has neither (or they make no sense).
    FFmpeg attaches both to every decoded frame of a stream that has them."""
    side = _side_data_bytes(frame)
    light = side.get("CONTENT_LIGHT_LEVEL", b"")
    if len(light) >= 8:  # AVContentLightMetadata: MaxCLL, MaxFALL
        max_cll = struct.unpack_from("<I", light)[0]
        if REFERENCE_WHITE <= max_cll <= PQ_PEAK:
            return float(max_cll)
    mastering = side.get("MASTERING_DISPLAY_METADATA", b"")
    if len(mastering) >= 88:  # AVMasteringDisplayMetadata: 11 rationals, 2 flags
        fields = struct.unpack_from("<22i", mastering)
        num, den, has_luminance = fields[18], fields[19], fields[21]
        if has_luminance and den > 0 and REFERENCE_WHITE <= num / den <= PQ_PEAK:
            return float(num) / float(den)
    return None


def display_mapping(frame: Any) -> DisplayMapping | None:
    """The conversion a decoded frame needs before it is analysed, from its
    colour tags; ``None`` for ordinary SDR BT.709 (or untagged) video, which
    is read as it always was.

    Raises :class:`~ensemble.errors.UnsupportedMediaError` for colour that
    cannot be read correctly (see the module's docstring)."""
    space = getattr(frame, "colorspace", None)
    if space == SPACE_BT2020_CL:
        raise UnsupportedMediaError(UNSUPPORTED_COLOUR.format(what="BT.2020 constant luminance"))
    if space == SPACE_ICTCP:
        raise UnsupportedMediaError(UNSUPPORTED_COLOUR.format(what="ICtCp"))
    trc = getattr(frame, "color_trc", None)
    primaries = getattr(frame, "color_primaries", None)
    if space == SPACE_IPT_C2 or (space == SPACE_UNSPECIFIED and _has_dolby_vision(frame)):
        raise UnsupportedMediaError(
            UNSUPPORTED_COLOUR.format(what="Dolby Vision profile 5, without a standard base layer")
        )
    if trc in (TRC_PQ, TRC_HLG):
        if primaries not in _CHROMATICITIES:
            primaries = PRIMARIES_BT2020  # HDR is BT.2020 unless it says otherwise
        if trc == TRC_PQ:
            return DisplayMapping("pq", int(primaries), pq_peak_nits(frame))
        return DisplayMapping("hlg", int(primaries))
    if primaries in (PRIMARIES_BT2020, PRIMARIES_P3_D65):
        return DisplayMapping("sdr", int(primaries))
    return None
