"""``python manage.py calibrate_member --member NAME --scores CSV``: fit an
installed member's calibration again, without touching its weights.

A member's probability is ``sigmoid(logit / temperature + bias)``; export fits
both on the run's validation crops. This command fits them on the logits of a
score table from ``evaluate --faces DATA --split val --scores CSV``, which is
how a site calibrates an imported published checkpoint (installed with
temperature 1 and bias 0), or a member exported before members had a bias,
on its own validation data. The member's threshold is chosen again by the
same rule as at export (``ensemble.evaluation.choose_threshold``).

The table must hold the installed weights' scores, scored as analyses here
score them (mirrored or not, settings ``TRUSTTRACE['MIRROR']``). The figures
are printed for the installed calibration, the new one fitted on all crops
(in-sample) and cross-validated (5 folds by source video, as
``calibrate_ensemble`` reports them). Unless ``--dry-run``, the manifest gets
the new temperature, bias and threshold and records what they were fitted on
and what they replaced (``provenance.calibrations``); the weight files and
their hash stay as they are.

An ensemble calibration (``weights/ensemble.json``) fitted with the member's
old calibration no longer applies (analyses use the plain mean and say why)
until ``evaluate --scores`` and ``calibrate_ensemble`` are run again. Running
workers load the members again at their next job, when they see the manifest
changed.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

if TYPE_CHECKING:
    import numpy.typing as npt


class Command(BaseCommand):
    help = "Fit an installed member's temperature and bias again on scores from evaluate --scores."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--member", required=True, help="registry name of the member")
        parser.add_argument(
            "--scores",
            type=Path,
            nargs="+",
            required=True,
            help="CSVs written by evaluate --faces ... --scores (with the member's logits)",
        )
        parser.add_argument("--description", default="", help="what the scores were computed on")
        parser.add_argument("--json", type=Path, help="also write the report to FILE")
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="report only (and --json); the manifest is not changed",
        )
        parser.add_argument(
            "--any-split",
            action="store_true",
            help="accept scores of crops outside the validation split (a held-out set the "
            "member was not trained on)",
        )

    def handle(self, *args: Any, **o: Any) -> None:
        from analyses.config import analysis_config, analysis_registry
        from ensemble.calibration import read_calibration
        from ensemble.errors import RegistryError, TrusttraceError
        from ensemble.media import file_sha256
        from ensemble.weights import read_manifest, recalibrate_manifest

        name = o["member"]
        try:
            analysis_registry().get(name)
        except RegistryError as e:
            raise CommandError(str(e)) from e
        try:
            from ensemble.training.ensemble_fit import read_scores

            config = analysis_config()
            # Read first: a malformed file must stop the command before the
            # manifest changes, not after.
            ensemble = read_calibration(config.weights_dir)

            table = read_scores(o["scores"], any_split=o["any_split"])
            manifest = read_manifest(config.weights_dir, name)
            scored = table.weights.get(name)
            if scored is None:
                raise CommandError(f"the scores do not include {name}")
            if scored != manifest.weights_sha256:
                raise CommandError(
                    f"{name} was scored with weights {scored[:12]}, but "
                    f"{manifest.weights_sha256[:12]} are installed: run evaluate --scores again"
                )
            raw = table.logits.get(name)
            if raw is None:
                raise CommandError(
                    f"the scores hold {name}'s calibrated probabilities but not its logits "
                    "(a table from before logit columns): run evaluate --scores again"
                )
            mirrored = name in table.mirrored
            if mirrored != (name in config.mirror):
                raise CommandError(
                    f"the scores {'mirrored' if mirrored else 'did not mirror'} {name} but "
                    f"analyses here {'do not' if mirrored else 'do'} "
                    "(settings TRUSTTRACE['MIRROR']): run evaluate --scores again with the "
                    "same settings"
                )
            report = refit(raw, table.labels, table.groups, manifest.temperature, manifest.bias)
            record = {
                "fitted": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "method": "platt (temperature and bias)",
                "scores": [{"file": str(p), "sha256": file_sha256(p)} for p in o["scores"]],
                "data": o["description"],
                "n": report["n"],
                "mirrored": mirrored,
                "metrics": report["in_sample"],
            }
            if not o["dry_run"]:
                recalibrate_manifest(
                    config.weights_dir,
                    name,
                    temperature=report["temperature"],
                    bias=report["bias"],
                    threshold=report["threshold"],
                    record=record,
                    metrics=report["in_sample"],
                )
        except TrusttraceError as e:
            raise CommandError(str(e)) from e
        self._print(name, report, o["dry_run"])
        if not o["dry_run"] and ensemble is not None and name in ensemble.members:
            self.stdout.write(
                f"{config.weights_dir / 'ensemble.json'} was fitted with {name}'s old "
                "calibration and is not applied until it is fitted again: run evaluate "
                "--scores for every member, then calibrate_ensemble"
            )
        if not o["dry_run"]:
            self.stdout.write(
                "Running workers load the members again, with this calibration, at their next job"
            )
        if o["json"]:
            o["json"].parent.mkdir(parents=True, exist_ok=True)
            o["json"].write_text(
                json.dumps({"member": name, **report, "record": record}, indent=2) + "\n",
                encoding="utf-8",
            )

    def _print(self, name: str, report: dict[str, Any], dry_run: bool) -> None:
        self.stdout.write(
            f"{name}, {report['n']} crops: temperature {report['installed']['temperature']:.4f} "
            f"-> {report['temperature']:.4f}, bias {report['installed']['bias']:.4f} -> "
            f"{report['bias']:.4f}, threshold {report['threshold']:.3f}"
        )
        for label, m in [
            ("installed calibration", report["before"]),
            (f"refitted, {report['folds']}-fold cross-validated", report["cross_validated"]),
            ("refitted, in-sample", report["in_sample"]),
        ]:
            self.stdout.write(
                f"{label}: AUC {m['auc']:.4f}, log loss {m['log_loss']:.4f}, ECE {m['ece']:.4f}"
            )
        if dry_run:
            self.stdout.write("dry run: nothing written")


def refit(
    logits: npt.ArrayLike,
    labels: npt.ArrayLike,
    groups: Sequence[str],
    temperature: float,
    bias: float,
) -> dict[str, Any]:
    """The new calibration of ``logits`` and its figures: with the installed
    ``temperature`` and ``bias``, refitted on every crop (in-sample), and
    refitted on the other folds for each fold (cross-validated by group)."""
    import numpy as np

    from ensemble.evaluation import binary_metrics, choose_threshold
    from ensemble.scoring import calibrate
    from ensemble.training.calibrate import fit_member_calibration
    from ensemble.training.data import DatasetError
    from ensemble.training.ensemble_fit import CV_FOLDS, folds

    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    fold = folds(groups, CV_FOLDS)
    predicted = np.zeros_like(y)
    for f in range(CV_FOLDS):
        held = fold == f
        if not held.any():
            continue
        if len(np.unique(y[~held])) < 2:
            raise DatasetError(
                f"too few crops for {CV_FOLDS}-fold cross-validation: a fold's training part "
                "has only one label (score more validation crops)"
            )
        t, b = fit_member_calibration(z[~held], y[~held])
        predicted[held] = calibrate(z[held], t, b)
    new_t, new_b = fit_member_calibration(z, y)
    probs = calibrate(z, new_t, new_b)
    choice = choose_threshold(probs, y)
    return {
        "n": len(y),
        "folds": CV_FOLDS,
        "installed": {"temperature": temperature, "bias": bias},
        "temperature": new_t,
        "bias": new_b,
        "threshold": choice.threshold,
        "before": binary_metrics(calibrate(z, temperature, bias), y).to_dict(),
        "cross_validated": binary_metrics(predicted, y).to_dict(),
        "in_sample": {
            **binary_metrics(probs, y, choice.threshold).to_dict(),
            "uncertain_band": choice.uncertain_band,
        },
    }
