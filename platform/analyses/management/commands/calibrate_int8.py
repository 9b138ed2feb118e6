"""``python manage.py calibrate_int8 PATH [PATH ...]``: int8 graphs for the members.

Analyses the given media with the installed fp32 members (ONNX Runtime on
CPU), keeps the face crops each member was fed, and quantizes each member
statically on them (``ensemble.quantize``). The int8 graphs are stored in the
cache folder under the weights' sha256, where ``TRUSTTRACE_PRECISION=int8``
(or ``analyze --precision int8``) finds them. Calibrate on media like what
will be analysed: a handful of videos with real and manipulated faces.

For each member it prints how far int8 moved the calibrated probabilities on
those crops; ``evaluate --precision int8`` measures the accuracy on labelled
media. Run it again after installing new weights.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Make the members' int8 graphs from the faces in the given media."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("paths", nargs="+", type=Path, help="media files or folders")
        parser.add_argument("--members", help="comma-separated members (default from settings)")
        parser.add_argument("--frames", type=int, help="frames sampled per video")
        parser.add_argument(
            "--max-crops",
            type=int,
            default=64,
            help="face crops per member to calibrate on, spread over the media (default 64)",
        )

    def handle(self, *args: Any, **o: Any) -> None:
        from analyses.config import analysis_config, analysis_registry
        from ensemble.errors import RegistryError, WeightsError
        from ensemble.media import list_media
        from ensemble.pipeline import Analyzer
        from ensemble.quantize import calibrate_int8

        if o["max_crops"] < 1:
            raise CommandError("--max-crops must be at least 1")
        members = [m.strip() for m in o["members"].split(",")] if o["members"] else None
        try:
            config = analysis_config(members=members, frames=o["frames"])
            # Calibration runs the fp32 graphs, whatever the configured precision.
            config = dataclasses.replace(config, precision="fp32", backend="onnxruntime")
        except ValueError as e:
            raise CommandError(str(e)) from e
        if config.device != "cpu":
            raise CommandError("int8 graphs are for CPU workers; set TRUSTTRACE_DEVICE=cpu")
        files = list_media(o["paths"])
        if not files:
            raise CommandError("no media files found in the given paths")
        analyzer = Analyzer(config, analysis_registry())
        try:
            analyzer.prepare()
        except (RegistryError, WeightsError, ValueError) as e:
            raise CommandError(str(e)) from e

        crops: dict[str, list[Any]] = {m: [] for m in config.members}
        for path in files:
            result, data = analyzer.analyze_with_data(path)
            if data is None:
                self.stderr.write(f"{path.name}: no faces used ({result.reason or result.status})")
                continue
            for name in config.members:
                crops[name] += data.crops[name]
            self.stdout.write(f"{path.name}: {len(result.faces)} faces")
        if not any(crops.values()):
            raise CommandError("no face was found in the given media; int8 needs face crops")
        for name in config.members:
            chosen = _spread(crops[name], o["max_crops"])
            report = calibrate_int8(analyzer.members[name], chosen, config.batch_size)
            self.stdout.write(
                f"{name}: int8 graph from {report.crops} crops in {report.seconds:.1f} s; "
                f"probability change on them: mean {report.mean_abs_change:.4f}, "
                f"max {report.max_abs_change:.4f}; {report.path}"
            )


def _spread(items: list[Any], n: int) -> list[Any]:
    """At most ``n`` items, evenly spaced (crops of every video, not the first)."""
    if len(items) <= n:
        return items
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]
