"""The upload probe, run in a child process with a time and a memory cap.

The probe decodes untrusted media (type by content, one frame, the pixel,
duration and frame-rate limits). Some small files cost far more than their
size to read: a 37 MB MP4 of 3 M tiny frames took 10 s and 326 MB, a 114 KB
8000x5000 PNG 725 MB. In a child (a forkserver child: no threads, no
Django, no database connection inherited) such a file is stopped at
``PROBE_TIMEOUT_S`` or ``PROBE_MAX_RSS_BYTES`` and refused with its reason,
and whatever it allocated goes with the child instead of staying in the web
process. The frame-rate and frame-count limits (``MAX_FPS``,
``MAX_VIDEO_FRAMES``) reach ``ensemble.media`` through ``analysis_config``,
which refuses such a video from what the container declares, before it is
opened or demuxed, and stops its demux pass at those limits.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext, SpawnContext
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from analyses.config import analysis_config, trusttrace_settings
from analyses.services.errors import StorageUnavailable, UploadRejected

if TYPE_CHECKING:
    from ensemble.media import MediaInfo

logger = logging.getLogger(__name__)

PROBE_FAULT_REASON = (
    "The site could not read this file just now (its memory or disk failed, not your "
    "file); it was logged and nothing was kept. Please try again later."
)

POLL_S = 0.05
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_CONTEXT: list[ForkServerContext | SpawnContext] = []


def _context() -> ForkServerContext | SpawnContext:
    if not _CONTEXT:
        method = (
            "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        )
        if method == "forkserver":
            ctx: ForkServerContext | SpawnContext = multiprocessing.get_context("forkserver")
            # ensemble.provenance loads c2pa's native library once, in the
            # server, not per upload (and never raises if it cannot).
            ctx.set_forkserver_preload(
                ["analyses.probe_child", "ensemble.media", "ensemble.provenance"]
            )
        else:
            ctx = multiprocessing.get_context("spawn")
        _CONTEXT.append(ctx)
    return _CONTEXT[0]


def _rss(pid: int) -> int:
    """Resident bytes of ``pid`` (Linux ``/proc``; 0 where unavailable)."""
    try:
        statm = Path(f"/proc/{pid}/statm").read_text(encoding="ascii")
        return int(statm.split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def _mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


@dataclass(frozen=True)
class ProbeOutcome:
    """What the upload probe learnt: the media's ``MediaInfo`` and its C2PA
    Content Credentials (``ensemble.provenance`` summary dict; empty when not
    read)."""

    info: MediaInfo
    provenance: dict[str, Any]


def probe_media(path: Path, n_frames: int) -> MediaInfo:
    """``ensemble.media.load_media(path)`` in a capped child; its ``MediaInfo``.

    Raises :class:`UploadRejected` with the decoder's reason, or when the
    child runs past a cap (``probe_timeout``, ``probe_memory``).
    """
    return _run_probe(path, n_frames, provenance=False).info


def probe_upload(path: Path, n_frames: int) -> ProbeOutcome:
    """:func:`probe_media`, then the file's C2PA Content Credentials read and
    verified in the same child (``ensemble.provenance.read_provenance``).

    The media answer decides whether the upload is accepted; the manifest
    read never refuses it: past its own time or memory cap, or when the child
    dies while reading, the summary is ``unchecked`` with the reason.
    """
    return _run_probe(path, n_frames, provenance=True)


def c2pa_trust_anchors() -> str | None:
    """PEM root certificates trusted for C2PA signers on top of the library's
    defaults: the file named by ``TRUSTTRACE["C2PA_TRUST_ANCHORS"]`` (unset: none)."""
    path = trusttrace_settings().c2pa_trust_anchors
    if path is None:
        return None
    try:
        return path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        logger.exception("C2PA trust anchors %s unreadable; using the library's defaults", path)
        return None


def _run_probe(path: Path, n_frames: int, *, provenance: bool) -> ProbeOutcome:
    from analyses import probe_child

    config = analysis_config()
    limits = config.limits
    s = trusttrace_settings()
    timeout_s, max_rss, video_pixels = s.probe_timeout_s, s.probe_max_rss_bytes, s.max_video_pixels
    if video_pixels and _is_video(path):
        # Every sampled frame of a video is held in memory by the analysis.
        limits = dataclasses.replace(limits, max_pixels=min(limits.max_pixels, video_pixels))
    options = {"trust_anchors": c2pa_trust_anchors()} if provenance else None
    ctx = _context()
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(
        target=probe_child.probe,
        args=(str(path), limits, n_frames, send, options, config.frames),
    )
    child = _Child(proc, receive, max_rss)
    started = time.monotonic()
    proc.start()
    send.close()
    summary: dict[str, Any] = {}
    try:
        message = child.answer(started + timeout_s)
        if message[0] == "cap":
            raise UploadRejected(
                f"Reading this file {message[2]}, the limit for one upload; "
                + (
                    "try a smaller or lower-resolution version."
                    if message[1] == "probe_memory"
                    else "try a shorter or re-encoded version."
                ),
                message[1],
            )
        if message[0] == "ok" and provenance:
            # The media answer is in: from here on nothing refuses the upload.
            # The manifest read gets caps of its own, as long as the probe's.
            summary = _provenance_answer(child.answer(time.monotonic() + timeout_s))
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join()
        receive.close()
    logger.info(
        "probe of %s: %.2f s, peak RSS %s", path.name, time.monotonic() - started, _mib(child.peak)
    )
    if message[0] == "invalid":
        raise UploadRejected(message[1], message[2])
    if message[0] == "fault":
        # The site's fault, as the worker counts it (read_fault): not the file's.
        logger.error("upload probe: the machine failed to read the file: %s", message[1])
        raise StorageUnavailable(PROBE_FAULT_REASON)
    if message[0] != "ok":
        logger.error("upload probe failed: %s", message[1])
        raise UploadRejected(
            "This file could not be read (the decoder failed); it was logged.", "probe_failed"
        )
    return ProbeOutcome(message[1], summary)


class _Child:
    """The probe's child process as its parent watches it: its messages, and
    its resident memory (the peak is logged)."""

    def __init__(self, proc: BaseProcess, receive: Connection, max_rss: int) -> None:
        self.proc, self.receive, self.max_rss = proc, receive, max_rss
        self.peak = 0

    def answer(self, deadline: float) -> tuple[Any, ...]:
        """The child's next message; ``("cap", code, why)`` past the memory cap
        or ``deadline``; ``("error", why)`` when it ended without one."""
        try:
            while True:
                # The caps first: an answer that comes after them is not waited for.
                self.peak = max(self.peak, _rss(self.proc.pid or 0))
                if self.max_rss and self.peak > self.max_rss:
                    return (
                        "cap",
                        "probe_memory",
                        f"needs more than {_mib(self.max_rss)} of memory",
                    )
                if time.monotonic() > deadline:
                    timeout_s = trusttrace_settings().probe_timeout_s
                    return ("cap", "probe_timeout", f"took longer than {timeout_s:g} s")
                if self.receive.poll(POLL_S):
                    message: tuple[Any, ...] = self.receive.recv()
                    return message
                if not self.proc.is_alive():
                    # It may have answered and exited since the poll above.
                    if self.receive.poll(0):
                        last: tuple[Any, ...] = self.receive.recv()
                        return last
                    return ("error", f"the probe process ended with code {self.proc.exitcode}")
        except EOFError:
            return ("error", "the probe process ended without an answer")


def _provenance_answer(message: tuple[Any, ...]) -> dict[str, Any]:
    """The child's Content Credentials summary; an ``unchecked`` one saying why
    when it did not come (a cap, the child died)."""
    from ensemble.provenance import unchecked

    if message[0] == "provenance" and isinstance(message[1], dict):
        return dict(message[1])
    why = str(message[-1])
    logger.warning("Content Credentials of an upload not read: %s", why)
    if message[0] == "cap":
        return unchecked(f"Reading the Content Credentials stopped: it {why}.").to_dict()
    return unchecked(f"Reading the Content Credentials failed: {why}.").to_dict()


def _is_video(path: Path) -> bool:
    from ensemble.errors import InvalidMediaError
    from ensemble.media import sniff

    try:
        return sniff(path).kind == "video"
    except InvalidMediaError:
        return False  # the child says why
