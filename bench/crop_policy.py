"""Which face crop should analysis cut for a trained member? Measured both ways.

    python -m bench.crop_policy --member resnet50 --json var/crop_policy.json

For each candidate policy (default: the one the member's manifest records and
the registry's), with the installed weights:

- validation AUC / log loss / ECE on the dataset's validation crops framed as
  that policy would frame them. The training crops are tight (about 1.1
  BlazeFace box widths, ``python -m bench.crop_framing``); a wider policy
  shows the face smaller with context around it, which the dataset cannot supply, so
  the crop is shrunk onto a black canvas by the ratio of the two framings
  (what the model would see if it were served that crop of that face);
- the full pipeline (BlazeFace, tracks, crops, calibrated scores) on the
  labelled development videos, per video, with the manifest's crop replaced
  by the policy in a temporary copy of the weights folder.

The dataset framing is read from ``--framing`` (the JSON written by
``python -m bench.crop_framing``).
"""

from __future__ import annotations

import csv
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from bench import common
from ensemble.config import AnalysisConfig
from ensemble.crops import CropPolicy
from ensemble.evaluation import binary_metrics
from ensemble.media import RGBImage
from ensemble.members import load_member
from ensemble.pipeline import Analyzer
from ensemble.registry import REGISTRY
from ensemble.scoring import calibrate
from ensemble.training.data import labels_array, load_samples, read_rgb, select
from ensemble.weights import MANIFEST_NAME, read_manifest

BATCH = 64


def reframe(image: RGBImage, framing: dict[str, float], policy: CropPolicy, size: int) -> RGBImage:
    """A tight dataset crop as ``policy`` would frame the same face (square
    policies; what lies outside the dataset crop is black)."""
    side = 1 + 2 * policy.margin  # policy crop side in box widths
    scale = framing["side"] / side
    # Where the dataset crop's centre lies in the policy crop, in its sides.
    cy = 0.5 + (framing["dy"] - policy.shift) / side
    cx = 0.5 + framing["dx"] / side
    inner = max(round(size * scale), 1)
    small = cv2.resize(image, (inner, inner), interpolation=cv2.INTER_AREA)
    canvas = np.zeros((size, size, 3), np.uint8)
    x0, y0 = round(cx * size - inner / 2), round(cy * size - inner / 2)
    sx0, sy0 = max(-x0, 0), max(-y0, 0)
    dx0, dy0 = max(x0, 0), max(y0, 0)
    w = min(inner - sx0, size - dx0)
    h = min(inner - sy0, size - dy0)
    if w > 0 and h > 0:
        canvas[dy0 : dy0 + h, dx0 : dx0 + w] = small[sy0 : sy0 + h, sx0 : sx0 + w]
    return canvas


def val_metrics(
    member_name: str, weights: Path, data: Path, framing: dict[str, float], policy: CropPolicy
) -> dict[str, Any]:
    member = load_member(member_name, weights, backend="torch")
    samples = select(load_samples(data), "val")
    logits = []
    for start in range(0, len(samples), BATCH):
        crops = [
            reframe(read_rgb(s.path), framing, policy, member.input_size)
            for s in samples[start : start + BATCH]
        ]
        logits.append(member.logits(crops, BATCH))
    probs = calibrate(np.concatenate(logits), member.temperature, member.bias)
    m = binary_metrics(probs, labels_array(samples))
    return {
        "auc": m.auc,
        "log_loss": m.log_loss,
        "ece": m.ece,
        "accuracy": m.accuracy,
        "n": len(samples),
    }


def video_scores(
    member_name: str, weights: Path, videos: Path, labels: Path, policy: CropPolicy
) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="crop-policy-") as tmp:
        copy = Path(tmp) / member_name
        shutil.copytree(weights / member_name, copy)
        manifest = json.loads((copy / MANIFEST_NAME).read_text(encoding="utf-8"))
        manifest["crop"] = policy.to_dict()
        (copy / MANIFEST_NAME).write_text(json.dumps(manifest), encoding="utf-8")
        # Faces as is, as the crop-level arm scores them (load_member's default).
        config = AnalysisConfig(
            weights_dir=Path(tmp),
            members=(member_name,),
            cache_dir=common.ROOT / "var" / "cache",
            mirror=(),
        )
        analyzer = Analyzer(config, REGISTRY)
        analyzer.prepare()
        rows = []
        with labels.open(newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                result = analyzer.analyze(videos / row["file"])
                entry = {
                    "file": row["file"],
                    "label": row["label"],
                    "status": result.status,
                    "score": result.score,
                    "verdict": result.verdict,
                    "faces": len(result.faces),
                }
                rows.append(entry)
        return rows


def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__)
    common.add_member(parser, "resnet50")
    parser.add_argument("--data", type=Path, default=common.DFDC_FACES, help="face-crop dataset")
    parser.add_argument("--videos", type=Path, default=common.VIDEOS, help="labelled videos")
    parser.add_argument("--framing", type=Path, default=common.ROOT / "var/crop_framing.json")
    parser.add_argument(
        "--policies", help="comma-separated KIND:MARGIN[:SHIFT] (default: manifest's, registry's)"
    )
    args = parser.parse_args(argv)
    spec = REGISTRY.get(args.member)
    manifest = read_manifest(args.weights, args.member)
    if args.policies:
        policies = [CropPolicy.parse(p) for p in args.policies.split(",")]
    else:
        policies = [manifest.crop_policy(spec.crop), spec.crop]
    measured = json.loads(args.framing.read_text(encoding="utf-8"))
    framing = {
        "side": measured["side_in_box_widths"]["median"],
        "dx": measured["centre_dx"]["median"],
        "dy": measured["centre_dy"]["median"],
    }
    results = []
    for policy in policies:
        entry = {
            "policy": policy.to_dict(),
            "val": val_metrics(args.member, args.weights, args.data, framing, policy),
            "videos": video_scores(
                args.member, args.weights, args.videos, args.videos / "labels.csv", policy
            ),
        }
        print(json.dumps(entry), flush=True)
        results.append(entry)
    out = {
        "member": args.member,
        "weights": manifest.weights_sha256,
        "framing": framing,
        "results": results,
    }
    common.write_json(args.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
