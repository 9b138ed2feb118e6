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
from multiprocessing.context import ForkServerContext, SpawnContext
from pathlib import Path
from typing import Any

from analyses.config import analysis_config, trusttrace_setting
from analyses.services.errors import UploadRejected

logger = logging.getLogger(__name__)

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
            ctx.set_forkserver_preload(["analyses.probe_child", "ensemble.media"])
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


def probe_media(path: Path, n_frames: int) -> Any:
    """``ensemble.media.load_media(path)`` in a capped child; its ``MediaInfo``.

    Raises :class:`UploadRejected` with the decoder's reason, or when the
    child runs past a cap (``probe_timeout``, ``probe_memory``).
    """
    from analyses import probe_child

    config = analysis_config()
    limits = config.limits
    timeout_s = float(trusttrace_setting("PROBE_TIMEOUT_S"))
    max_rss = int(trusttrace_setting("PROBE_MAX_RSS_BYTES"))
    video_pixels = int(trusttrace_setting("MAX_VIDEO_PIXELS"))
    if video_pixels and _is_video(path):
        # Every sampled frame of a video is held in memory by the analysis.
        limits = dataclasses.replace(limits, max_pixels=min(limits.max_pixels, video_pixels))
    ctx = _context()
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=probe_child.probe, args=(str(path), limits, n_frames, send))
    started = time.monotonic()
    peak = 0
    proc.start()
    send.close()
    try:
        while True:
            # The caps first: an answer that comes after them is not waited for.
            peak = max(peak, _rss(proc.pid or 0))
            if max_rss and peak > max_rss:
                raise UploadRejected(
                    f"Reading this file needs more than {_mib(max_rss)} of memory, the "
                    "limit for one upload; try a smaller or lower-resolution version.",
                    "probe_memory",
                )
            if time.monotonic() - started > timeout_s:
                raise UploadRejected(
                    f"Reading this file took longer than {timeout_s:g} s, the limit for one "
                    "upload; try a shorter or re-encoded version.",
                    "probe_timeout",
                )
            if receive.poll(POLL_S):
                message = receive.recv()
                break
            if not proc.is_alive():
                message = ("error", f"the probe process ended with code {proc.exitcode}")
                break
    except EOFError:
        message = ("error", "the probe process ended without an answer")
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join()
        receive.close()
    logger.info("probe of %s: %.2f s, peak RSS %s", path.name, time.monotonic() - started,
                _mib(peak))  # fmt: skip
    if message[0] == "invalid":
        raise UploadRejected(message[1], message[2])
    if message[0] != "ok":
        logger.error("upload probe failed: %s", message[1])
        raise UploadRejected(
            "This file could not be read (the decoder failed); it was logged.", "probe_failed"
        )
    return message[1]


def _is_video(path: Path) -> bool:
    from ensemble.errors import InvalidMediaError
    from ensemble.media import sniff

    try:
        return sniff(path).kind == "video"
    except InvalidMediaError:
        return False  # the child says why
