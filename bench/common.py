"""What the benchmarks share: default paths, their common options, the JSON
report they write and a snapshot of what else is using the CPU."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DFDC_FACES = SHARED / "datasets" / "dfdc_faces"
VIDEOS = SHARED / "media" / "videos"
# The 10 s 1080p development clip the README's speed figures are measured on.
CLIP = VIDEOS / "aaronchong888_abofeumbvv.mp4"
# Other processes using more than this much CPU in all (percent of one core)
# make the machine busy for a measurement.
BUSY_PERCENT = 20.0
# A process below this share of a core is not listed as busy.
LISTED_PERCENT = 5.0


def parser(doc: str | None) -> argparse.ArgumentParser:
    """A benchmark's parser: ``--help`` shows its docstring as written (the
    command lines at its top included), and every benchmark takes ``--json``."""
    p = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    return p


def add_dataset(p: argparse.ArgumentParser, *, split: str, limit: int) -> None:
    """``--data`` (a labelled face-crop dataset), ``--split`` and ``--limit``."""
    p.add_argument("--data", type=Path, default=DFDC_FACES, help="face-crop dataset")
    p.add_argument("--split", default=split, help=f"dataset split (default {split})")
    p.add_argument("--limit", type=int, default=limit, help=f"at most this many crops ({limit})")


def add_member(p: argparse.ArgumentParser, default: str) -> None:
    """``--member`` and the ``--weights`` folder it is loaded from."""
    p.add_argument("--member", default=default, help=f"detector (default {default})")
    p.add_argument("--weights", type=Path, default=ROOT / "weights", help="weights folder")


def add_analysis(p: argparse.ArgumentParser, videos: Path, members: list[str]) -> None:
    """What an analysis benchmark runs: ``--videos``, ``--frames``, ``--members``
    and the torch ``--threads``."""
    p.add_argument("--videos", type=Path, default=videos, help="a video, or a folder of them")
    p.add_argument("--frames", type=int, default=32, help="frames sampled per video")
    p.add_argument("--members", default=",".join(members), help="comma-separated detectors")
    p.add_argument(
        "--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)"
    )


def names(text: str) -> list[str]:
    """The names of a comma-separated option, blanks dropped."""
    return [n.strip() for n in text.split(",") if n.strip()]


def write_json(path: Path | None, report: object) -> None:
    """Write ``report`` to ``path`` (``--json``), folders made; nothing without one."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def use_site(settings: str = "trusttrace.settings.local") -> None:
    """Let a benchmark import the Django site as ``manage.py`` does: ``platform/``
    (a plain folder, not a package) on ``sys.path`` and the settings module."""
    if str(ROOT / "platform") not in sys.path:
        sys.path.insert(0, str(ROOT / "platform"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", settings)


def cpu_snapshot(seconds: float = 2.0) -> dict[str, Any]:
    """Other processes' CPU use over ``seconds`` (psutil) and the load average:
    figures measured beside a busy process are not the machine's."""
    import psutil

    me = os.getpid()
    procs = [p for p in psutil.process_iter() if p.pid != me]
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.cpu_percent(None)
    time.sleep(seconds)
    busy = []
    for p in procs:
        try:
            pct = p.cpu_percent(None)
        except psutil.Error:
            continue
        if pct >= LISTED_PERCENT:
            busy.append({"pid": p.pid, "name": p.name()[:40], "cpu_percent": round(pct, 1)})
    other = sum(b["cpu_percent"] for b in busy)
    return {
        "idle": other < BUSY_PERCENT,
        "other_processes_cpu_percent": round(other, 1),
        "busy_processes": sorted(busy, key=lambda b: -b["cpu_percent"])[:5],
        "loadavg_1min": os.getloadavg()[0],
        "cpu_count": os.cpu_count(),
    }
