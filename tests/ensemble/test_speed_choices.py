"""Choices made for speed that must not change results: the decoder's
thread count, and BlazeFace's backend under ``auto``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ensemble import media
from ensemble.config import MediaLimits
from ensemble.errors import ConfigError
from ensemble.faces import detector_backend
from ensemble.media import load_media
from tests import media_factory as mf


def test_decoder_threads_give_the_same_frames_as_one_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = mf.write_clip(tmp_path / "clip.mp4", frames=120, fps=30, gop=30, width=320, height=240)
    threaded = load_media(path, MediaLimits(), 8)
    # One decoding thread (0 would be FFmpeg's own choice: several).
    monkeypatch.setattr(media, "DECODE_THREADS_PER_CORE", 1)
    monkeypatch.setattr(media, "_cores", lambda: 1)
    plain = load_media(path, MediaLimits(), 8)
    assert [f.index for f in threaded.frames] == [f.index for f in plain.frames]
    for a, b in zip(threaded.frames, plain.frames, strict=True):
        np.testing.assert_array_equal(a.image, b.image)


def test_auto_runs_blazeface_as_traced_torch_and_a_named_backend_as_asked() -> None:
    assert detector_backend("auto", "cpu") == "torch"
    assert detector_backend("auto", "cuda") == "torch"
    assert detector_backend("onnxruntime", "cpu") == "onnxruntime"
    assert detector_backend("torch", "cpu") == "torch"
    with pytest.raises(ConfigError):
        detector_backend("tensorrt", "cpu")
