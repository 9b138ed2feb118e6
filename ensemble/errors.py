"""Typed errors of the detection core.

Every error carries a message written for the person who uploaded the media:
it says what was wrong and, where it helps, what to do. Web and CLI layers show
``str(error)`` as the reason.
"""

from __future__ import annotations


class TrusttraceError(Exception):
    """Base class of every error raised on purpose (the detection core's, the
    explanations' and the site's).

    As DRF's ``APIException``: ``code`` is a short machine-readable name set
    on the class, which one call may override (``MyError(message, code=...)``);
    ``str(error)`` is the message for a person. The site maps errors to HTTP
    statuses in one table (``analyses.services.errors.HTTP_STATUS``).
    """

    code: str = "error"

    def __init__(self, *args: object, code: str | None = None) -> None:
        super().__init__(*args)
        if code is not None:
            self.code = code


class ConfigError(TrusttraceError, ValueError):
    """A configuration value out of range or unknown (a member list, a backend
    or precision this machine cannot run). Still a ``ValueError`` for callers
    that caught that before it existed."""

    code = "config"


# --- Media -----------------------------------------------------------------


class InvalidMediaError(TrusttraceError):
    """The input cannot be analysed. Final: retrying the same file cannot help."""

    code = "invalid_media"


class UnsupportedMediaError(InvalidMediaError):
    """The bytes are not an image or video format we read."""

    code = "unsupported_format"


class UnreadableMediaError(InvalidMediaError):
    """The format is recognised but the data is corrupt, truncated or empty."""

    code = "unreadable"


class MediaLimitError(InvalidMediaError):
    """The media exceeds a configured limit (pixels, duration, frames, bytes)."""

    code = "too_large"


class PictureShapeError(InvalidMediaError):
    """The picture is too thin to hold a face, or too elongated to be searched."""

    code = "picture_shape"


class FrameRateLimitError(MediaLimitError):
    """The video declares or shows more frames per second than the limit."""

    code = "frame_rate"


class FrameCountLimitError(MediaLimitError):
    """The video declares or holds more frames than the limit."""

    code = "frame_count"


class DecodeWorkLimitError(MediaLimitError):
    """Reaching the sampled frames of the video means decoding more than the
    limit allows (key frames far apart)."""

    code = "decode_work"


class DamagedMediaError(UnreadableMediaError):
    """Too few of the sampled frames of a video decode: most of it is damaged."""

    code = "damaged"


class EmptyMediaError(UnreadableMediaError):
    """A well-formed container that holds no frame."""

    code = "no_frames"


class NoVideoStreamError(UnreadableMediaError):
    """A container without any video stream (for example audio only)."""

    code = "no_video_stream"


class MediaReadFaultError(TrusttraceError):
    """Reading the media stopped for a fault of the machine (memory ran out,
    the disk failed to read), not of the file: never reported as bad input,
    so the analysis fails and may be run again instead of being rejected."""

    code = "read_fault"


# --- Models and weights ----------------------------------------------------


class RegistryError(TrusttraceError):
    """A detector name is unknown or declared twice."""


class WeightsError(TrusttraceError):
    """Weights are missing, damaged or do not fit the architecture."""


class MissingWeightsError(WeightsError):
    """No weights installed for a member."""


class WeightsIntegrityError(WeightsError):
    """A weights file does not match the sha256 recorded in its manifest."""


class IncompatibleCheckpointError(WeightsError):
    """A checkpoint's keys or shapes do not match the member's architecture."""


# --- Training --------------------------------------------------------------


class NonFiniteScoreError(TrusttraceError, ArithmeticError):
    """A member returned a logit that is not a finite number, or the face
    detector a box or score that is not (a numerical fault of the model or its
    runtime). Our fault, never a score nor "no face": the analysis fails."""

    code = "non_finite_score"


class TrainingError(TrusttraceError):
    """A training run that cannot start or continue, with the reason in words."""
