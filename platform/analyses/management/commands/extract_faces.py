"""``python manage.py extract_faces --videos DIR --labels CSV --out DIR``.

Crops every tracked face of labelled videos for each member with the
serving pipeline's stages (``ensemble.training.extract``), as a dataset per
member: ``OUT/<member>/{real,fake}/<video>_p<person>_f<frame>.png`` and
``OUT/<member>/metadata.csv`` with ``file,label,split,original,video,keypoints``.
``--labels`` has ``file,label`` and optionally ``split`` and ``original`` (the
real video a fake was made from).
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

logger = logging.getLogger(__name__)

FIELDS = ("file", "label", "split", "original", "video", "frame", "person", "keypoints")


class Command(BaseCommand):
    help = "Extract member face crops from labelled videos with the inference face pipeline."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--videos", required=True, type=Path)
        parser.add_argument(
            "--labels", required=True, type=Path, help="CSV: file,label[,split][,original]"
        )
        parser.add_argument("--out", required=True, type=Path)
        parser.add_argument("--members", help="comma-separated members (default from settings)")
        parser.add_argument("--frames", type=int, help="frames sampled per video")

    def handle(self, *args: Any, **o: Any) -> None:
        import cv2

        from analyses.config import analysis_config, analysis_registry
        from ensemble.errors import InvalidMediaError, TrusttraceError, WeightsError
        from ensemble.faces import FaceDetector
        from ensemble.training.data import DatasetError, format_keypoints, parse_label
        from ensemble.training.extract import extract_faces
        from ensemble.weights import read_manifest

        members = [m.strip() for m in o["members"].split(",")] if o["members"] else None
        try:
            config = analysis_config(members=members, frames=o["frames"])
            registry = analysis_registry()
            specs = [registry.get(m) for m in config.members]
        except TrusttraceError as e:  # a bad member list or frame count, an unknown member
            raise CommandError(str(e)) from e
        sizes = []
        for spec in specs:
            try:
                manifest = read_manifest(config.weights_dir, spec.name)
                sizes.append((spec, manifest.input_size, manifest.crop_policy(spec.crop)))
            except WeightsError:
                # Not installed yet: the registry's size and crop.
                sizes.append((spec, spec.input_size, spec.crop))
        if not o["labels"].is_file():
            raise CommandError(f"{o['labels']} does not exist")
        with o["labels"].open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        detector = FaceDetector.load(config.faces, config.cache_dir, config.device)
        out: Path = o["out"]
        table: dict[str, list[dict[str, str]]] = {s.name: [] for s in specs}
        n_done = 0
        for row in rows:
            path = o["videos"] / row["file"].strip()
            try:
                label = parse_label(row["label"], str(o["labels"]))
            except DatasetError as e:
                raise CommandError(str(e)) from e
            try:
                crops = extract_faces(path, config, detector, sizes)
            except InvalidMediaError as e:
                self.stderr.write(f"{path.name}: skipped: {e}")
                continue
            if not crops:
                self.stderr.write(f"{path.name}: no face found")
                continue
            n_done += 1
            kind = "fake" if label else "real"
            for c in crops:
                rel = Path(kind) / f"{path.stem}_p{c.person}_f{c.frame:05d}.png"
                target = out / c.member / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(target), cv2.cvtColor(c.image, cv2.COLOR_RGB2BGR))
                table[c.member].append(
                    {
                        "file": rel.as_posix(),
                        "label": kind.upper(),
                        "split": (row.get("split") or "").strip(),
                        "original": (row.get("original") or "").strip(),
                        "video": row["file"].strip(),
                        # A fake crop's original is the real crop of the same
                        # frame and face (ensemble.training.data).
                        "frame": str(c.frame),
                        "person": str(c.person),
                        "keypoints": format_keypoints(c.keypoints),
                    }
                )
        for name, entries in table.items():
            folder = out / name
            folder.mkdir(parents=True, exist_ok=True)
            with (folder / "metadata.csv").open("w", newline="", encoding="utf-8") as fh:
                writer = csv.DictWriter(fh, fieldnames=FIELDS)
                writer.writeheader()
                writer.writerows(entries)
        self.stdout.write(
            f"Extracted faces from {n_done} of {len(rows)} videos into {out} "
            f"({', '.join(f'{k}: {len(v)} crops' for k, v in table.items())})"
        )
