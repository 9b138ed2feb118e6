"""Uploads that cost far more than their size (issue 17), generated here,
each refused at the edge with its limit; the probe runs in a capped child.
The frame-rate and frame-count limits are ensemble.media's, so the worker
applies them too."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from django.urls import reverse
from PIL import Image

from analyses import services
from analyses.models import Status, Submission
from tests import media_factory as mf
from tests.platform.conftest import replace_stored, upload

pytestmark = pytest.mark.django_db


def flat_png(path: Path, width: int, height: int) -> Path:
    Image.new("RGB", (width, height)).save(path, "PNG")
    return path


def _post(clients: dict[str, Any], path: Path) -> Any:
    with path.open("rb") as fh:
        return clients["submitter"].post(reverse("analyses:submit"), {"file": fh})


def _limits(settings: Any, **values: Any) -> None:
    settings.TRUSTTRACE = {**settings.TRUSTTRACE, **values}


def _refused(response: Any, site: Path, text: str) -> None:
    page = response.content.decode()
    assert response.status_code == 400 and "Upload refused" in page, page[-2000:]
    assert text in page, page[-2000:]
    assert not Submission.objects.exists()
    assert not any(p.is_file() for p in (site / "uploads").rglob("*"))
    assert not any(p.is_file() for p in (site / "staging").rglob("*"))


def test_video_at_50000_fps_is_refused_by_the_frame_rate_limit(
    site: Path, clients: dict[str, Any], tmp_path: Path
) -> None:
    clip = mf.tiny_frames_clip(tmp_path / "tiny.mp4", frames=2000, fps=50_000)
    # Before: accepted, and the worker walked every packet of it.
    _refused(_post(clients, clip), site, "50000 frames per second; the limit is 240")


def test_video_with_more_frames_than_the_limit_is_refused(
    site: Path, clients: dict[str, Any], tmp_path: Path, settings: Any
) -> None:
    _limits(settings, MAX_VIDEO_FRAMES=1000, MAX_FPS=0)
    clip = mf.tiny_frames_clip(tmp_path / "long.mp4", frames=2000, fps=200)
    _refused(_post(clients, clip), site, "has 2000 frames; the limit is 1000")


def test_video_frames_have_a_lower_pixel_bound_than_images(
    site: Path, clients: dict[str, Any], tmp_path: Path, settings: Any
) -> None:
    # 4096x2304 (9.4 Mpx) is above the video bound (3840x2160, 8.3 Mpx)...
    clip = mf.black_video(tmp_path / "big.mkv", 4096, 2304, frames=2)
    # Before: accepted; a 6400x6000 MKV then took 3.96 GB to decode 32 frames.
    _refused(_post(clients, clip), site, "megapixels")
    # ...and below the image bound (40 Mpx): the same size as a PNG is accepted.
    response = _post(clients, flat_png(tmp_path / "big.png", 4096, 2304))
    assert response.status_code == 302, response.content.decode()[-2000:]


def test_probe_past_its_memory_cap_is_stopped_and_refused(
    site: Path, clients: dict[str, Any], tmp_path: Path, settings: Any
) -> None:
    # A cap below what any decoder process holds: the child is stopped at once.
    _limits(settings, PROBE_MAX_RSS_BYTES=1)
    _refused(_post(clients, flat_png(tmp_path / "a.png", 64, 64)), site, "of memory")


def test_probe_past_its_time_cap_is_stopped_and_refused(
    site: Path, clients: dict[str, Any], tmp_path: Path, settings: Any
) -> None:
    _limits(settings, PROBE_TIMEOUT_S=1e-9)
    _refused(_post(clients, flat_png(tmp_path / "a.png", 64, 64)), site, "took longer than")


def test_probe_child_reports_the_decoders_reason(
    site: Path, clients: dict[str, Any], tmp_path: Path
) -> None:
    notes = tmp_path / "notes.mp4"
    notes.write_text("not a video\n" * 20)
    _refused(_post(clients, notes), site, "text file")


def test_a_machine_fault_while_probing_is_the_sites_503_not_the_files_400(
    site: Path, clients: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk failed or memory ran out while the probe read the upload: said
    as the site's fault (503, try again), as the worker says it (read_fault),
    not "the decoder failed" on the file (400)."""
    import multiprocessing

    from analyses import probe_child
    from analyses.services import probing
    from ensemble import media
    from ensemble.config import MediaLimits
    from ensemble.errors import MediaReadFaultError

    def disk_fault(*args: Any, **kwargs: Any) -> None:
        raise MediaReadFaultError("Reading the file failed: Input/output error.")

    monkeypatch.setattr(media, "load_media", disk_fault)
    receive, send = multiprocessing.Pipe(duplex=False)
    probe_child.probe(str(tmp_path / "a.png"), MediaLimits(), 1, send)
    assert receive.recv() == ("fault", "Reading the file failed: Input/output error.")
    # The parent's answer to it (the child runs in its own process).
    monkeypatch.setattr(probing._Child, "answer", lambda self, deadline: ("fault", "MemoryError"))
    response = _post(clients, flat_png(tmp_path / "a.png", 64, 64))
    page = response.content.decode()
    assert response.status_code == 503 and "not your file" in page, page[-2000:]
    assert "Upload refused" not in page
    assert not Submission.objects.exists()
    assert not any(p.is_file() for p in (site / "uploads").rglob("*"))
    assert not any(p.is_file() for p in (site / "staging").rglob("*"))


def test_worker_refuses_a_stored_video_over_the_frame_rate_limit(
    site: Path, users: Any, media_dir: Path, tmp_path: Path
) -> None:
    sub = services.create_submission(users["submitter"], upload(media_dir / "person.mp4"))
    # Stored before the limit existed (or under another setting): the
    # analysis refuses it from the declared rate instead of walking every
    # packet (before: done; the 3 M-frame file took 19 s in the worker).
    fast = mf.tiny_frames_clip(tmp_path / "fast.mp4", frames=2000, fps=50_000)
    replace_stored(sub, fast.read_bytes())
    services.run_submission(sub.pk)
    sub.refresh_from_db()
    assert sub.status == Status.REJECTED and sub.reason_code == "frame_rate", sub.reason
    assert "50000 frames per second; the limit is 240" in sub.reason


def test_video_with_key_frames_too_far_apart_is_refused_at_upload_and_in_the_worker(
    site: Path, clients: dict[str, Any], users: Any, media_dir: Path, tmp_path: Path, settings: Any
) -> None:
    """The probe decodes one frame but checks the work of the analysis's
    sampling; a stored file (uploaded under another setting) is refused by
    the worker with the same reason."""
    small = {"frames": 100, "width": 128, "height": 96}
    one_key = mf.write_clip(tmp_path / "one_key.mp4", gop=1000, **small)
    keyed = mf.write_clip(tmp_path / "keyed.mp4", gop=5, **small)
    _limits(settings, MAX_DECODE_PIXELS_PER_FRAME=128 * 96 * 60 // 16, FRAMES=16)
    _refused(_post(clients, one_key), site, "key frame")
    sub = services.create_submission(users["submitter"], upload(keyed))
    assert sub.status == Status.PENDING
    replace_stored(sub, one_key.read_bytes())  # as if stored under another setting
    services.run_submission(sub.pk)
    sub.refresh_from_db()
    assert sub.status == Status.REJECTED and sub.reason_code == "decode_work", sub.reason
    assert "Re-encoded with a key frame every few seconds" in sub.reason


def test_an_answer_sent_just_before_the_probe_exits_is_kept() -> None:
    """The child answers and exits between the parent's poll and its
    liveness check: the answer still counts (it is not a dead probe)."""
    from analyses.services.probing import _Child

    class Conn:
        polls = 0

        def poll(self, timeout: float) -> bool:
            self.polls += 1
            return self.polls > 1  # nothing at the first poll, the answer after

        def recv(self) -> tuple[str, str]:
            return ("info", "the answer")

    class Exited:
        pid = None
        exitcode = 0

        def is_alive(self) -> bool:
            return False

    child = _Child(Exited(), Conn(), 0)  # type: ignore[arg-type]
    assert child.answer(time.monotonic() + 30) == ("info", "the answer")
