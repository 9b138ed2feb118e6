"""``python manage.py evaluate``: accuracy of the installed members and the ensemble.

- ``--faces CSV_or_DIR [--split val]``: frame level, on a face-crop dataset.
  A folder made by ``extract_faces`` (one sub-dataset per member) gives each
  member its own crops; any other dataset gives every member the same crops,
  resized to its input size. The ensemble is the members' mean, calibrated
  by ``weights/ensemble.json`` when that was fitted for these members and
  weights (``calibrate_ensemble``; fitted on val, so val figures of the
  calibrated ensemble are in-sample: ``calibrate_ensemble`` reports
  cross-validated ones). ``--scores FILE`` writes each crop's logit and
  probability per member, the input of ``calibrate_ensemble``.
- ``--videos DIR --labels labels.csv``: video level, through the full
  pipeline (``ensemble.pipeline.Analyzer``); videos with no face or rejected
  are left out and listed.

Reports AUC, log loss, expected calibration error (``ECE_BINS`` = 15 bins),
accuracy, precision, recall, F1 and the confusion matrix. With ``--json FILE``
writes ``{"ensemble": {...}, "members": {...}, "n": {...}}`` (``'-'``: stdout).

Figures: ``roc.png``/``roc.svg``, ``reliability.png``/``reliability.svg``
(reliability diagram), ``confusion-<member>.png``, ``confusion-ensemble.png``,
and ``threshold.json`` (the validation rule's threshold and band for these
scores) go to the figures folder: ``--out`` when given; else, when ``--json``
names a file, the JSON's folder (beside it); else ``var/evaluation``.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from django.core.management.base import BaseCommand, CommandError, CommandParser

if TYPE_CHECKING:
    from ensemble.calibration import Combiner
    from ensemble.config import AnalysisConfig
    from ensemble.registry import Registry

Probs = dict[str, npt.NDArray[np.float64]]
Labels = npt.NDArray[np.float64]

logger = logging.getLogger(__name__)

DEFAULT_OUT = Path("var/evaluation")
EVAL_BATCH = 32


def figures_dir(out: Path | None, json_arg: str | None) -> Path:
    """Where the figures and ``threshold.json`` go: ``--out`` when given, else
    beside ``--json FILE`` (not for ``-``, stdout), else ``DEFAULT_OUT``."""
    if out is not None:
        return out
    if json_arg and json_arg != "-":
        return Path(json_arg).parent
    return DEFAULT_OUT


def write_scores(path: Path, rows: list[dict[str, Any]]) -> None:
    """One CSV row per crop: ``file,label,group,split`` then, for each member in
    evaluation order, ``logit:<member>``, ``prob:<member>`` (calibrated),
    ``weights:<member>`` (sha256) and ``mirrored:<member>`` (1: the logit is the
    mean of the crop's and its mirror image's)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


class Command(BaseCommand):
    help = "Evaluate the installed detectors on labelled face crops or videos."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--faces", type=Path, help="face-crop dataset (CSV or folder)")
        parser.add_argument("--split", help="only this split of --faces (train/val/test)")
        parser.add_argument("--videos", type=Path, help="folder of videos")
        parser.add_argument("--labels", type=Path, help="CSV with file,label for --videos")
        parser.add_argument("--members", help="comma-separated members (default from settings)")
        parser.add_argument("--frames", type=int, help="frames sampled per video")
        parser.add_argument(
            "--precision",
            choices=["auto", "fp32", "bf16"],
            help="member precision (default: settings; auto: bf16 where the CPU has it)",
        )
        parser.add_argument(
            "--limit",
            type=int,
            help="at most N samples (--faces: balanced, seed 0; --videos: the first N rows)",
        )
        parser.add_argument(
            "--threshold", type=float, help="decision threshold (default: settings)"
        )
        parser.add_argument("--json", help="write the metrics JSON to FILE ('-' for stdout)")
        parser.add_argument(
            "--scores",
            type=Path,
            help=(
                "with --faces: write each crop's raw logit and calibrated probability per "
                "member to this CSV (the input of calibrate_ensemble)"
            ),
        )
        parser.add_argument(
            "--out",
            type=Path,
            help=(
                "folder for the figures and threshold.json (default: the folder of "
                f"--json FILE, else {DEFAULT_OUT})"
            ),
        )

    def handle(self, *args: Any, **o: Any) -> None:
        from analyses.config import analysis_config, analysis_registry
        from ensemble.errors import TrusttraceError
        from ensemble.evaluation import choose_threshold, report, write_report_figures

        if bool(o["faces"]) == bool(o["videos"]):
            raise CommandError("give either --faces or --videos (with --labels)")
        if o["videos"] and not o["labels"]:
            raise CommandError("--videos needs --labels labels.csv (file,label)")
        if o["scores"] and not o["faces"]:
            raise CommandError("--scores is for --faces (per-crop scores)")
        members = [m.strip() for m in o["members"].split(",")] if o["members"] else None
        try:
            overrides = {"precision": o["precision"]} if o["precision"] else {}
            config = analysis_config(members=members, frames=o["frames"], **overrides)
        except TrusttraceError as e:
            raise CommandError(str(e)) from e
        threshold = o["threshold"] if o["threshold"] is not None else config.scoring.threshold
        out = figures_dir(o["out"], o["json"])
        registry = analysis_registry()
        ensemble_probs = None
        try:
            if o["faces"]:
                probs, labels, rows, combiner = self._faces(config, registry, o)
                if o["scores"]:
                    write_scores(o["scores"], rows)
                # The ensemble as analyses combine it: the calibration of
                # weights/ensemble.json when it fits these members.
                ensemble_probs = combiner(probs)
            else:
                probs, labels, ensemble_probs, videos, combiner = self._videos(config, registry, o)
            result = report(probs, labels, threshold, ensemble_probs)
            # How the ensemble figures were combined, for videos too: a plain
            # mean (no fitting weights/ensemble.json) must not pass for the fit.
            result["combination"] = combiner.describe()
            if o["videos"]:
                result["videos"] = videos
            write_report_figures(probs, labels, result, out, ensemble_probs)
            choice = choose_threshold(ensemble_probs, labels)
        except TrusttraceError as e:
            # Registry, weights, dataset and metrics errors, and a backend or
            # precision this machine cannot run (ConfigError).
            raise CommandError(str(e)) from e
        # What the threshold was chosen on goes with it: chosen on crops the
        # members trained on, it would be set from scores they have memorised.
        if o["faces"]:
            chosen_on = f"faces, split {o['split']}" if o["split"] else "faces, every split"
        else:
            chosen_on = "videos"
        trained_on = bool(o["faces"]) and o["split"] not in ("val", "test")
        (out / "threshold.json").write_text(
            json.dumps({**choice.__dict__, "chosen_on": chosen_on}, indent=2) + "\n",
            encoding="utf-8",
        )
        text = json.dumps(result, indent=2) + "\n"
        if o["json"] == "-":
            self.stdout.write(text)
        elif o["json"]:
            Path(o["json"]).parent.mkdir(parents=True, exist_ok=True)
            Path(o["json"]).write_text(text, encoding="utf-8")
        # With --json - the JSON alone goes to stdout, so it can be piped.
        summary = self.stderr if o["json"] == "-" else self.stdout
        for name, m in [("ensemble", result["ensemble"]), *result["members"].items()]:
            auc = "n/a" if m["auc"] is None else f"{m['auc']:.4f}"
            summary.write(
                f"{name}: AUC {auc}, log loss {m['log_loss']:.4f}, ECE {m['ece']:.4f}, "
                f"accuracy {m['accuracy']:.4f}, precision {m['precision']:.4f}, "
                f"recall {m['recall']:.4f}, F1 {m['f1']:.4f}"
            )
        for row in result.get("videos", []):
            by_member = ", ".join(f"{k} {v:.3f}" for k, v in row["members"].items())
            summary.write(
                f"{row['file']} ({row['label']}): score {row['score']:.3f}, "
                f"{row['verdict']} ({by_member})"
            )
        summary.write(
            f"n: {result['n']['real']} real, {result['n']['fake']} fake; figures in {out}; "
            f"validation rule: threshold {choice.threshold}, band {choice.uncertain_band}"
        )
        if trained_on:
            self.stderr.write(
                f"threshold.json was chosen on {chosen_on}, training crops included: set "
                "TRUSTTRACE_THRESHOLD from a run with --split val"
            )

    def _faces(
        self, config: AnalysisConfig, registry: Registry, o: dict[str, Any]
    ) -> tuple[Probs, Labels, list[dict[str, Any]], Combiner]:
        """Each member's calibrated probabilities on the crops, their labels,
        one score row per crop, and how analyses combine these members."""
        from ensemble.calibration import Combiner, read_calibration
        from ensemble.members import load_member
        from ensemble.scoring import calibrate
        from ensemble.training.data import (
            DatasetError,
            labels_array,
            limit_balanced,
            load_samples,
            read_rgb,
            resize_to,
            select,
        )

        root: Path = o["faces"]
        per_member = root.is_dir() and all(
            (root / m / "metadata.csv").is_file() for m in config.members
        )
        probs: Probs = {}
        reference: list[str] | None = None
        labels: Labels = np.zeros(0)
        rows: list[dict[str, Any]] = []
        shas: dict[str, str | None] = {}
        temperatures: dict[str, float] = {}
        biases: dict[str, float] = {}
        inputs: dict[str, dict[str, Any]] = {}
        for name in config.members:
            member = load_member(
                name,
                config.weights_dir,
                config.device,
                registry,
                backend=config.backend,
                cache_dir=config.cache_dir,
                threads=config.threads,
                precision=config.precision,
                mirror=name in config.mirror,
            )
            source = root / name if per_member else root
            samples = select(load_samples(source), o["split"])
            samples = limit_balanced(samples, o["limit"], seed=0)
            if not samples:
                raise DatasetError(f"{source} has no samples in split {o['split']!r}")
            keys = [
                str(s.path.relative_to(source if source.is_dir() else source.parent))
                for s in samples
            ]
            if reference is None:
                reference, labels = keys, labels_array(samples)
                rows = [
                    {"file": k, "label": s.label, "group": s.group, "split": s.split}
                    for k, s in zip(keys, samples, strict=True)
                ]
            elif keys != reference:
                raise DatasetError(f"the crops of {name} do not match the other members'")
            logits = []
            for start in range(0, len(samples), EVAL_BATCH):
                crops = [
                    resize_to(read_rgb(s.path), None, member.input_size)[0]
                    for s in samples[start : start + EVAL_BATCH]
                ]
                logits.append(member.logits(crops, EVAL_BATCH))
            raw = np.concatenate(logits)
            probs[name] = calibrate(raw, member.temperature, member.bias)
            for row, z, p in zip(rows, raw, probs[name], strict=True):
                row[f"logit:{name}"] = float(z)
                row[f"prob:{name}"] = float(p)
                row[f"weights:{name}"] = member.weights_sha256
                row[f"mirrored:{name}"] = int(member.mirror)
            shas[name] = member.weights_sha256
            temperatures[name] = member.temperature
            biases[name] = member.bias
            inputs[name] = member.inputs
        combiner = Combiner.for_members(
            read_calibration(config.weights_dir),
            shas,
            temperatures,
            [n for n in config.members if n in config.mirror],
            biases,
            inputs,
        )
        return probs, labels, rows, combiner

    def _videos(
        self, config: AnalysisConfig, registry: Registry, o: dict[str, Any]
    ) -> tuple[Probs, Labels, npt.NDArray[np.float64], list[dict[str, Any]], Combiner]:
        from ensemble.pipeline import Analyzer
        from ensemble.training.data import parse_label

        labels_path: Path = o["labels"]
        if not labels_path.is_file():
            raise CommandError(f"{labels_path} does not exist")
        with labels_path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        analyzer = Analyzer(config, registry)
        analyzer.prepare()
        probs: dict[str, list[float]] = {m: [] for m in config.members}
        labels: list[int] = []
        scores: list[float] = []
        videos: list[dict[str, Any]] = []
        for row in rows[: o["limit"] or None]:
            path = o["videos"] / row["file"].strip()
            label = parse_label(row["label"], str(labels_path))
            result = analyzer.analyze(path)
            if result.status != "done" or result.score is None:
                self.stderr.write(f"{path.name}: left out ({result.status}: {result.reason})")
                continue
            labels.append(label)
            scores.append(result.score)
            for m in config.members:
                probs[m].append(result.members[m])
            videos.append(
                {
                    "file": row["file"].strip(),
                    "label": "fake" if label else "real",
                    "score": result.score,
                    "verdict": result.verdict,
                    "threshold": result.threshold,
                    "members": {m: result.members[m] for m in config.members},
                }
            )
        return (
            {k: np.asarray(v) for k, v in probs.items()},
            np.asarray(labels, dtype=np.float64),
            np.asarray(scores),
            videos,
            analyzer.combiner,
        )
