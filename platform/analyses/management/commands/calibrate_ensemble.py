"""``python manage.py calibrate_ensemble --scores CSV [CSV ...]``: fit the
ensemble's calibration (``weights/ensemble.json``).

The CSVs come from ``evaluate --faces DATA --split val --scores CSV`` (one
run for all members, or one per member on the same crops). Every member of
the configured ensemble (or ``--members``) must be scored, with the weights
installed now, and mirrored where analyses mirror it (settings
``TRUSTTRACE['MIRROR']``): a table scored otherwise is refused, so the file
always describes the members that will use it, as they will run.

``--method weighted`` (the default) fits a weighted mean of the members'
logits before the Platt layer; ``--method mean`` only recalibrates the plain
mean (no ranking changes). Prints the plain mean's metrics, the calibrated
ensemble's cross-validated
metrics (5 folds by source video: the honest figures) and the in-sample
ones, then writes the file (not with ``--dry-run``). Running workers pick it
up at their next job.

``--candidate MEMBER=RUN`` measures what a training run that is not
installed would do for the ensemble: the run's best-epoch validation logits
(``RUN/val_predictions.csv``) stand in for the member's scores, calibrated as
an export would calibrate them. It implies ``--dry-run``: nothing is written,
since the run's weights are not the installed ones.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser


class Command(BaseCommand):
    help = "Fit the ensemble's calibration on per-crop member scores from evaluate --scores."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--scores",
            type=Path,
            nargs="+",
            required=True,
            help="CSVs written by evaluate --faces ... --scores",
        )
        parser.add_argument("--members", help="comma-separated members (default from settings)")
        parser.add_argument(
            "--method",
            choices=["weighted", "mean"],
            default="weighted",
            help="weighted: a fitted weighted mean of the members' logits, then Platt "
            "(default); mean: Platt on the logit of the plain mean",
        )
        parser.add_argument("--description", default="", help="what the scores were computed on")
        parser.add_argument("--json", type=Path, help="also write the fit's report to FILE")
        parser.add_argument("--dry-run", action="store_true", help="report only; write nothing")
        parser.add_argument(
            "--candidate",
            action="append",
            default=[],
            metavar="MEMBER=RUN",
            help="score MEMBER with the training run folder RUN's validation predictions "
            "instead of its installed weights (before exporting it); implies --dry-run",
        )
        parser.add_argument(
            "--any-split",
            action="store_true",
            help="accept scores of crops outside the validation split (a held-out set no "
            "member was trained on, split by hash into train/val)",
        )

    @staticmethod
    def _candidate_runs(
        specs: list[str], members: tuple[str, ...], mirror: tuple[str, ...]
    ) -> dict[str, Path]:
        """``--candidate MEMBER=RUN`` values as ``{member: run folder}``."""
        runs: dict[str, Path] = {}
        for spec in specs:
            name, sep, run = spec.partition("=")
            name = name.strip()
            if not sep or not name or not run:
                raise CommandError(f"--candidate takes MEMBER=RUN, not {spec!r}")
            if name not in members:
                raise CommandError(
                    f"--candidate {name}: not a member of this ensemble ({', '.join(members)})"
                )
            if name in runs:
                raise CommandError(f"--candidate {name} is given twice")
            if name in mirror:
                raise CommandError(
                    f"--candidate {name}: analyses here score each face as is and mirrored "
                    "(settings TRUSTTRACE['MIRROR']), but a run validates crops as is only"
                )
            runs[name] = Path(run).expanduser()
        return runs

    def handle(self, *args: Any, **o: Any) -> None:
        import numpy as np

        from analyses.config import analysis_config, analysis_registry
        from ensemble.calibration import MEAN_METHOD, WEIGHTED_METHOD, write_calibration
        from ensemble.errors import TrusttraceError
        from ensemble.scoring import calibrate
        from ensemble.training.ensemble_fit import (
            Candidate,
            fit_ensemble,
            read_scores,
            with_candidate,
        )
        from ensemble.weights import read_manifest

        members = [m.strip() for m in o["members"].split(",")] if o["members"] else None
        try:
            config = analysis_config(members=members)
        except TrusttraceError as e:
            raise CommandError(str(e)) from e
        registry = analysis_registry()
        runs = self._candidate_runs(o["candidate"], config.members, config.mirror)
        try:
            table = read_scores(o["scores"], any_split=o["any_split"])
            candidates: dict[str, Candidate] = {}
            for name, run in runs.items():
                table, candidates[name] = with_candidate(table, name, run)
            temperatures: dict[str, float] = {}
            biases: dict[str, float] = {}
            inputs: dict[str, dict[str, Any]] = {}
            for name in config.members:
                registry.get(name)
                if name in candidates:
                    temperatures[name] = candidates[name].temperature
                    biases[name] = candidates[name].bias
                    continue
                manifest = read_manifest(config.weights_dir, name)
                installed = manifest.weights_sha256
                scored = table.weights.get(name)
                if scored is None:
                    raise CommandError(f"the scores do not include {name}")
                if scored != installed:
                    raise CommandError(
                        f"{name} was scored with weights {scored[:12]}, but {installed[:12]} "
                        "are installed: run evaluate --scores again"
                    )
                temperatures[name] = manifest.temperature
                biases[name] = manifest.bias
                inputs[name] = manifest.inputs
                raw = table.logits.get(name)
                # A re-export of the same checkpoint (or calibrate_member)
                # keeps the weights' hash but may change the temperature and
                # bias the probabilities carry: checked against the logits,
                # so a table without them cannot be checked.
                if raw is None:
                    raise CommandError(
                        f"the scores hold {name}'s calibrated probabilities but not its "
                        "logits, so their calibration cannot be checked against the "
                        "installed one: run evaluate --scores again"
                    )
                if not np.allclose(
                    table.probs[name],
                    calibrate(raw, manifest.temperature, manifest.bias),
                    rtol=0,
                    atol=1e-6,
                ):
                    raise CommandError(
                        f"{name}'s scores were calibrated otherwise than the installed "
                        f"calibration (temperature {manifest.temperature:.4f}, bias "
                        f"{manifest.bias:.4f}): run evaluate --scores again"
                    )
            scored_mirrored = sorted(table.mirrored & set(config.members))
            wanted = sorted(set(config.mirror) & set(config.members))
            if scored_mirrored != wanted:
                raise CommandError(
                    "the scores mirrored "
                    f"{', '.join(scored_mirrored) or 'no member'} but analyses here mirror "
                    f"{', '.join(wanted) or 'no member'} (settings TRUSTTRACE['MIRROR']): "
                    "run evaluate --scores again with the same settings"
                )
            provenance: dict[str, Any] = {
                "fitted": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "scores": [p.name for p in o["scores"]],
                "data": o["description"],
            }
            if candidates:
                provenance["candidates"] = {m: str(c.run) for m, c in candidates.items()}
            method = WEIGHTED_METHOD if o["method"] == "weighted" else MEAN_METHOD
            fit = fit_ensemble(
                table,
                config.members,
                provenance,
                method=method,
                temperatures=temperatures,
                biases=biases,
                inputs=inputs,
            )
        except TrusttraceError as e:
            raise CommandError(str(e)) from e
        c = fit.calibration
        for name, cand in candidates.items():
            m = cand.metrics
            self.stdout.write(
                f"candidate {name}: {cand.run} (best epoch's validation logits, as is; "
                f"temperature {cand.temperature:.3f}, bias {cand.bias:+.3f} as an export would "
                f"fit): AUC {m['auc']:.4f}, log loss {m['log_loss']:.4f}, ECE {m['ece']:.4f}"
            )
        self.stdout.write(
            f"{len(table.files)} crops, members {', '.join(config.members)}: "
            f"{c.method}, slope {c.slope:.4f}, bias {c.bias:.4f}"
        )
        if c.member_weights is not None:
            self.stdout.write(
                "member weights: "
                + ", ".join(f"{m} {w:.3f}" for m, w in sorted(c.member_weights.items()))
            )
        for label, m in [
            ("plain mean", fit.before),
            (f"calibrated, {c.metrics['folds']}-fold cross-validated", fit.cross_validated),
            ("calibrated, in-sample", fit.in_sample),
        ]:
            self.stdout.write(
                f"{label}: AUC {m['auc']:.4f}, log loss {m['log_loss']:.4f}, "
                f"ECE {m['ece']:.4f}, accuracy {m['accuracy']:.4f}, F1 {m['f1']:.4f}"
            )
        if o["json"]:
            report = {**c.to_dict(), "in_sample": fit.in_sample}
            o["json"].parent.mkdir(parents=True, exist_ok=True)
            o["json"].write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        if o["dry_run"] or candidates:
            if candidates:
                self.stdout.write("a candidate is not installed: nothing written")
            return
        path = write_calibration(config.weights_dir, c)
        self.stdout.write(f"wrote {path}")
