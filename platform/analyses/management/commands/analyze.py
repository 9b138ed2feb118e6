"""``python manage.py analyze PATH [PATH ...]``: verdicts for media files.

A folder means every media file in it. Rejected media (corrupt, too large, not
media) and media without faces are reported with their reason; an internal
error is reported as ``failed`` (and makes the command exit non-zero), never as
a score.

Every file's C2PA Content Credentials are read and verified too
(``ensemble.provenance``); ``--json`` gives each result a ``provenance``
object (its ``state``: valid, untrusted, invalid, absent or unchecked).

``--explain DIR`` also writes the explanations (Grad-CAM and attention
overlays, SSIM masks, charts) and their ``index.json`` into DIR, in one
subfolder per input file when there are several; ``--reference REF`` adds SSIM
masks against a reference (claimed original) image or video.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from django.core.management.base import BaseCommand, CommandError, CommandParser

from reports.csvexport import safe_cell

if TYPE_CHECKING:
    # Loaded in handle(): web processes that import the commands never load torch.
    from ensemble.pipeline import Analyzer
    from ensemble.results import AnalysisResult

logger = logging.getLogger(__name__)

CSV_FIELDS = ("file", "status", "verdict", "score", "reason")


def _members_arg(value: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise ValueError("empty member list")
    return names


def _explain_folders(root: Path, files: list[Path]) -> dict[Path, Path]:
    """DIR itself for one file; DIR/<file stem> for several (made unique
    when two files share a stem)."""
    if len(files) == 1:
        return {files[0]: root}
    out: dict[Path, Path] = {}
    used: set[str] = set()
    for path in files:
        name = path.stem or "media"
        candidate, n = name, 2
        while candidate in used:
            candidate = f"{name}-{n}"
            n += 1
        used.add(candidate)
        out[path] = root / candidate
    return out


class Command(BaseCommand):
    help = "Analyse images and videos with the detector ensemble and print verdicts."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("paths", nargs="+", type=Path, help="media files or folders")
        parser.add_argument(
            "--json", type=str, help="write results as JSON to FILE ('-' for stdout)"
        )
        parser.add_argument(
            "--csv", type=str, help="write one CSV row per file to FILE ('-' for stdout)"
        )
        parser.add_argument(
            "--frames", type=int, help="frames sampled per video (default from settings)"
        )
        parser.add_argument("--members", type=_members_arg, help="comma-separated members to run")
        parser.add_argument(
            "--precision",
            choices=["auto", "fp32", "bf16"],
            help="member precision (default from settings; auto: bf16 where the CPU has it)",
        )
        parser.add_argument(
            "--explain",
            type=Path,
            metavar="DIR",
            help="write explanations and index.json into DIR (a subfolder per file if several)",
        )
        parser.add_argument(
            "--reference",
            type=Path,
            metavar="REF",
            help="reference (claimed original) image or video for SSIM masks; needs --explain",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        from analyses.config import analysis_config, analysis_registry
        from analyses.services.probing import c2pa_trust_anchors
        from ensemble.errors import TrusttraceError
        from ensemble.media import list_media
        from ensemble.pipeline import Analyzer
        from ensemble.provenance import read_provenance
        from ensemble.results import AnalysisResult

        try:
            overrides = {"precision": options["precision"]} if options["precision"] else {}
            config = analysis_config(
                members=options["members"], frames=options["frames"], **overrides
            )
        except TrusttraceError as e:
            raise CommandError(str(e)) from e
        files = list_media(options["paths"])
        if not files:
            raise CommandError("no media files found in the given paths")
        explain_dir: Path | None = options["explain"]
        reference: Path | None = options["reference"]
        if reference is not None and explain_dir is None:
            raise CommandError("--reference needs --explain DIR (the masks are explanations)")
        analyzer = Analyzer(config, analysis_registry())
        try:
            analyzer.prepare()
        except TrusttraceError as e:
            # A missing member or weights, or a backend or precision this
            # machine cannot run (ConfigError).
            raise CommandError(str(e)) from e
        run = self._analysis(analyzer, explain_dir, reference, files)

        results: list[AnalysisResult] = []
        provenance: dict[str, dict[str, Any]] = {}
        anchors = c2pa_trust_anchors()
        for path in files:
            try:
                result = run(path)
            except TrusttraceError as e:
                logger.exception("analysis of %s failed", path)
                result = AnalysisResult(
                    file=str(path), status="failed", reason=str(e), reason_code="error"
                )
            except Exception as e:  # a bug: reported as a failure, never as a score
                logger.exception("analysis of %s failed", path)
                result = AnalysisResult(
                    file=str(path),
                    status="failed",
                    reason=f"internal error ({type(e).__name__}); see the log",
                    reason_code="internal_error",
                )
            results.append(result)
            self.stdout.write(self._summary(result))
            # Never raises: an unreadable manifest is reported in the summary.
            summary = read_provenance(path, trust_anchors=anchors)
            provenance[result.file] = summary.to_dict()
            if summary.present:
                ai = ", says AI-generated" if summary.ai_generated else ""
                self.stdout.write(f"{path.name}: Content Credentials {summary.state}{ai}")

        members = list(config.members)
        if options["json"]:
            self._write(options["json"], lambda fh: self._json(fh, results, provenance))
        if options["csv"]:
            self._write(options["csv"], lambda fh: self._csv(fh, results, members))
        failed = sum(r.status == "failed" for r in results)
        if failed:
            raise CommandError(f"{failed} of {len(results)} files failed; see the log")

    def _analysis(
        self,
        analyzer: Analyzer,
        explain_dir: Path | None,
        reference: Path | None,
        files: list[Path],
    ) -> Callable[[Path], AnalysisResult]:
        """``path -> AnalysisResult``: the analysis alone, or with explanations."""
        if explain_dir is None:
            return analyzer.analyze
        from explain import Explainer, InvalidReferenceError
        from explain.reference import check_reference

        if reference is not None:
            try:
                check_reference(reference, analyzer.config.limits)
            except InvalidReferenceError as e:
                raise CommandError(str(e)) from e
        explainer = Explainer(analyzer)
        folders = _explain_folders(explain_dir, files)

        def run(path: Path) -> AnalysisResult:
            result, index = explainer.run(path, folders[path], reference=reference)
            if index is not None:
                self.stdout.write(
                    f"{path.name}: {len(index.artifacts)} explanation files in {folders[path]}"
                )
            return result

        return run

    @staticmethod
    def _summary(result: AnalysisResult) -> str:
        name = Path(result.file).name
        if result.status != "done":
            return f"{name}: {result.status}: {result.reason}"
        if result.score is None:
            return f"{name}: {result.verdict}: {result.reason}"
        members = ", ".join(f"{k} {v:.3f}" for k, v in result.members.items())
        return f"{name}: {result.verdict} (score {result.score:.3f}; {members})"

    def _write(self, target: str, writer: Callable[[TextIO], None]) -> None:
        if target == "-":
            writer(sys.stdout)
            return
        path = Path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8", newline="") as fh:
            writer(fh)

    @staticmethod
    def _json(fh: TextIO, results: Sequence[AnalysisResult], provenance: dict[str, Any]) -> None:
        rows = [{**r.to_dict(), "provenance": provenance.get(r.file)} for r in results]
        json.dump({"results": rows}, fh, indent=2)
        fh.write("\n")

    @staticmethod
    def _csv(fh: TextIO, results: Sequence[AnalysisResult], members: list[str]) -> None:
        writer = csv.writer(fh)
        writer.writerow([*CSV_FIELDS, *members])
        for r in results:
            score = "" if r.score is None else f"{r.score:.6f}"
            member_cells = [f"{r.members[m]:.6f}" if m in r.members else "" for m in members]
            # The file name is the user's and may read as a formula (=HYPERLINK(...).mp4).
            writer.writerow(
                [
                    safe_cell(r.file),
                    r.status,
                    r.verdict or "",
                    score,
                    safe_cell(r.reason or ""),
                    *member_cells,
                ]
            )
