"""``python manage.py import_weights --member NAME FILE``: install a published
checkpoint (polimi's EfficientNetAutoAttB4, selimsef's B7) for a member.

The checkpoint is read with ``torch.load(weights_only=True)``, its keys and
shapes are checked against the member's architecture, and only then is it
copied into the weights folder with a manifest. Imported weights are not
calibrated (temperature 1, bias 0) until ``calibrate_member`` fits them on
validation scores (``evaluate --faces ... --split val --scores``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser


class Command(BaseCommand):
    help = (
        "Import an external checkpoint for a detector member (validated, hashed, with a manifest)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("checkpoint", type=Path)
        parser.add_argument("--member", required=True)
        parser.add_argument(
            "--input-size", type=int, help="input size the checkpoint was trained at"
        )
        parser.add_argument("--note", default="", help="provenance note stored in the manifest")
        parser.add_argument(
            "--weights-dir", type=Path, help="default: settings.TRUSTTRACE['WEIGHTS_DIR']"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        from analyses.config import analysis_registry, trusttrace_settings
        from ensemble.errors import TrusttraceError
        from ensemble.weights import import_checkpoint

        weights_dir = options["weights_dir"] or trusttrace_settings().weights_dir
        try:
            spec = analysis_registry().get(options["member"])
            manifest = import_checkpoint(
                spec,
                options["checkpoint"],
                weights_dir,
                input_size=options["input_size"],
                note=options["note"],
            )
        except TrusttraceError as e:
            raise CommandError(str(e)) from e
        self.stdout.write(
            f"Imported {options['checkpoint'].name} for {spec.name}: "
            f"{manifest.files[0].sha256[:16]}..., input {manifest.input_size} px, "
            f"manifest {weights_dir / spec.name / 'manifest.json'}"
        )
