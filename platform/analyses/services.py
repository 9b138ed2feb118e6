"""The only place the site meets the detection core (``ensemble`` and
``explain``; both imported lazily, in the worker only).

It owns a submission's status: ``pending -> running -> done | rejected |
failed``. ``rejected`` is bad input (final, the reason is shown, never
retried); ``failed`` is our fault (logged with its traceback, a moderator may
retry). A crash is never turned into a score.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.db import DatabaseError, transaction
from django.utils import timezone

from analyses.config import analysis_config, analysis_registry, trusttrace_setting
from analyses.models import Artifact, ArtifactKind, Status, Submission, WeightsVersion

logger = logging.getLogger(__name__)

UPLOAD_DIR = "uploads"
ARTIFACT_DIR = "artifacts"
STAGING_DIR = "staging"
INDEX_VERSION = 1
# Frames decoded by the upload probe: enough to prove the file decodes.
PROBE_FRAMES = 1
_COPY_CHUNK = 1 << 20
_SUFFIX = {
    "jpeg": ".jpg", "png": ".png", "webp": ".webp", "bmp": ".bmp", "mp4": ".mp4",
    "mov": ".mov", "webm": ".webm", "mkv": ".mkv", "avi": ".avi",
}  # fmt: skip
INTERNAL_ERROR_REASON = (
    "The analysis stopped because of an internal error ({name}). This is our fault, "
    "not your file's; it was logged and a moderator can run it again."
)


class UploadRejected(Exception):  # noqa: N818 (a refusal, not an error of ours)
    """An upload refused at the edge; ``str(error)`` is shown to the user."""

    def __init__(self, reason: str, code: str) -> None:
        super().__init__(reason)
        self.code = code


class ModelsUnavailable(UploadRejected):
    """The site cannot analyse anything: weights are missing or broken."""


# --- Which models the site runs ------------------------------------------------


@dataclass(frozen=True)
class MemberStatus:
    """One ensemble member as installed on this site."""

    name: str
    installed: bool
    weights_sha256: str | None
    architecture: str
    input_size: int
    provenance: dict[str, Any]
    problem: str | None


def models_status() -> list[MemberStatus]:
    """Every configured member with its installed weights (manifest only: cheap)."""
    from ensemble.errors import TrusttraceError
    from ensemble.weights import read_manifest

    config = analysis_config()
    registry = analysis_registry()
    out = []
    for name in config.members:
        try:
            registry.get(name)
            manifest = read_manifest(config.weights_dir, name)
        except TrusttraceError as e:
            out.append(MemberStatus(name, False, None, "", 0, {}, str(e)))
            continue
        out.append(
            MemberStatus(
                name,
                True,
                manifest.weights_sha256,
                manifest.architecture,
                manifest.input_size,
                dict(manifest.provenance),
                None,
            )
        )
    return out


@dataclass(frozen=True)
class RuntimeStatus:
    """What a worker started with these settings on this machine runs the
    members on, and how their scores are combined."""

    backend: str
    precision: str
    combination: str
    problem: str | None = None


def runtime_status() -> RuntimeStatus:
    """The backend and precision the settings resolve to here, and whether
    ``weights/ensemble.json`` fits the installed members."""
    from ensemble.calibration import Combiner, read_calibration
    from ensemble.errors import TrusttraceError
    from ensemble.runtime import resolve_backend, resolve_precision
    from ensemble.weights import read_manifest

    config = analysis_config()
    try:
        backend = resolve_backend(config.backend, config.device)
        precision = resolve_precision(config.precision, backend, config.device)
    except ValueError as e:
        return RuntimeStatus(config.backend, config.precision, "", str(e))
    try:
        installed = {n: read_manifest(config.weights_dir, n).weights_sha256 for n in config.members}
        combiner = Combiner.for_members(read_calibration(config.weights_dir), installed)
    except TrusttraceError as e:
        return RuntimeStatus(backend, precision, "mean of the members", str(e))
    if combiner.calibration is not None:
        c = combiner.calibration
        cv = c.metrics.get("cross_validated", {})
        figures = (
            f" (validation log loss {cv['log_loss']:.3f}, ECE {cv['ece']:.3f}, cross-validated)"
            if "log_loss" in cv and "ece" in cv
            else ""
        )
        bias = f"{'+' if c.bias >= 0 else '-'} {abs(c.bias):.3f}"
        if c.member_weights is None:
            combination = (
                f"mean of the members, recalibrated: sigmoid({c.slope:.3f} * logit(mean) "
                f"{bias}){figures}"
            )
        else:
            terms = " + ".join(f"{w:.2f} * logit({m})" for m, w in sorted(c.member_weights.items()))
            combination = (
                f"weighted mean of the members' logits, recalibrated: "
                f"sigmoid({c.slope:.3f} * ({terms}) {bias}){figures}"
            )
    elif combiner.skipped:
        combination = f"mean of the members (ensemble calibration not applied: {combiner.skipped})"
    else:
        combination = "mean of the members (no ensemble calibration installed)"
    return RuntimeStatus(backend, precision, combination)


def require_models() -> list[MemberStatus]:
    """The members, or :class:`ModelsUnavailable` saying what is missing."""
    members = models_status()
    problems = [m.problem for m in members if m.problem]
    if problems:
        raise ModelsUnavailable(
            "This site cannot analyse media yet: " + " ".join(problems), "no_weights"
        )
    return members


def record_weights_versions(members: list[MemberStatus]) -> None:
    """Remember each weights version seen (shown read-only in the admin)."""
    for m in members:
        if m.weights_sha256:
            WeightsVersion.objects.get_or_create(
                member=m.name,
                weights_sha256=m.weights_sha256,
                defaults={
                    "architecture": m.architecture,
                    "input_size": m.input_size,
                    "provenance": m.provenance,
                },
            )


# --- Uploads ---------------------------------------------------------------------


@dataclass(frozen=True)
class Probed:
    """What the edge check learnt about an upload."""

    kind: str
    format: str
    sha256: str
    size_bytes: int


def display_name(name: str | None) -> str:
    """The client's file name as harmless display text (never a path)."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    clean = "".join(c for c in base if c.isprintable()).strip()
    return clean[:255] or "upload"


def check_name(name: str | None) -> None:
    """Refuse file names that did not survive decoding (non-UTF-8 bytes)."""
    if name and "\ufffd" in name:
        raise UploadRejected(
            "The file name is not valid UTF-8 text; please rename the file and try again.",
            "bad_name",
        )


def _limits_text(limit: int) -> str:
    return f"{limit / 2**20:.0f} MiB" if limit >= 2**20 else f"{limit} bytes"


def check_size(size: int | None) -> None:
    """Refuse anything over ``MAX_UPLOAD_BYTES`` (checked before saving)."""
    limit = int(trusttrace_setting("MAX_UPLOAD_BYTES"))
    if size is not None and size > limit:
        raise UploadRejected(
            f"The upload is {_limits_text(size)}; the limit is {_limits_text(limit)}.",
            "too_large",
        )


def probe(path: Path) -> Probed:
    """Type by content, a decode probe and the pixel/duration limits."""
    from ensemble.errors import InvalidMediaError
    from ensemble.media import load_media

    config = analysis_config()
    try:
        media = load_media(path, config.limits, PROBE_FRAMES)
    except InvalidMediaError as e:
        raise UploadRejected(str(e), e.code) from e
    info = media.info
    return Probed(info.kind, info.format, info.sha256, info.size_bytes)


def _media_root() -> Path:
    return Path(settings.MEDIA_ROOT)


def _stage(upload: UploadedFile) -> Path:
    folder = _media_root() / STAGING_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / uuid.uuid4().hex
    with path.open("wb") as fh:
        for chunk in upload.chunks(_COPY_CHUNK):
            fh.write(chunk)
    return path


def _accept(upload: UploadedFile) -> tuple[Path, Probed]:
    """Stage, check and move one upload under a random name; nothing is left
    behind when it is refused."""
    check_name(upload.name)
    check_size(upload.size)
    staged = _stage(upload)
    try:
        check_size(staged.stat().st_size)
        probed = probe(staged)
        final = _media_root() / UPLOAD_DIR / f"{uuid.uuid4().hex}{_SUFFIX[probed.format]}"
        final.parent.mkdir(parents=True, exist_ok=True)
        staged.replace(final)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    return final, probed


def create_submission(
    owner: Any,
    upload: UploadedFile,
    *,
    title: str = "",
    reference: UploadedFile | None = None,
) -> Submission:
    """Check an upload at the edge, save it, then queue its analysis.

    Raises :class:`UploadRejected` (nothing saved) when the models are missing
    or the file is refused.
    """
    record_weights_versions(require_models())
    path, probed = _accept(upload)
    ref_path: Path | None = None
    try:
        ref_probed: Probed | None = None
        if reference is not None:
            ref_path, ref_probed = _accept(reference)
        with transaction.atomic():
            sub = Submission(
                owner=owner,
                title=title.strip()[:200],
                original_name=display_name(upload.name),
                sha256=probed.sha256,
                size_bytes=probed.size_bytes,
                kind=probed.kind,
                media_format=probed.format,
            )
            sub.file.name = path.relative_to(_media_root()).as_posix()
            if ref_path is not None and ref_probed is not None and reference is not None:
                sub.reference_file.name = ref_path.relative_to(_media_root()).as_posix()
                sub.reference_name = display_name(reference.name)
                sub.reference_sha256 = ref_probed.sha256
            sub.save()
            enqueue(sub)
    except BaseException:
        path.unlink(missing_ok=True)
        if ref_path is not None:
            ref_path.unlink(missing_ok=True)
        raise
    logger.info("submission %s saved (%s, %s)", sub.pk, sub.kind, sub.sha256[:12])
    return sub


def enqueue(sub: Submission) -> None:
    """Queue the analysis once the row is committed (ids only)."""
    from analyses.tasks import analyse_submission

    sub_id = str(sub.pk)
    transaction.on_commit(lambda: analyse_submission.delay(sub_id))


# --- Running an analysis ---------------------------------------------------------

_ANALYZERS: dict[Any, Any] = {}


def _analyzer() -> Any:
    """One loaded :class:`ensemble.pipeline.Analyzer` per worker process and
    configuration: models load on the first job, in the child process."""
    from ensemble.pipeline import Analyzer

    config = analysis_config()
    key = (config, trusttrace_setting("REGISTRY"))
    analyzer = _ANALYZERS.get(key)
    if analyzer is None:
        analyzer = Analyzer(config, analysis_registry())
        analyzer.prepare()
        _ANALYZERS.clear()  # settings changed: drop the old models
        _ANALYZERS[key] = analyzer
    return analyzer


class _RejectedInput(Exception):  # noqa: N818 (a verdict on the input, not our error)
    """Bad input found during the job (e.g. an unusable reference): final."""

    def __init__(self, reason: str, code: str) -> None:
        super().__init__(reason)
        self.code = code


_EXPLAINERS: dict[Any, Any] = {}


def _explainer() -> Any:
    """One ``explain.Explainer`` per worker process around :func:`_analyzer`."""
    from explain import ExplainConfig, Explainer

    analyzer = _analyzer()
    explainer = _EXPLAINERS.get(id(analyzer))
    if explainer is None:
        _EXPLAINERS.clear()
        explainer = _EXPLAINERS[id(analyzer)] = Explainer(analyzer, ExplainConfig())
    return explainer


def _analyse(
    path: Path, out_dir: Path, reference: Path | None, progress: Callable[[str, float], None]
) -> tuple[Any, dict[str, Any] | None]:
    """Run the analysis with its explanations.

    Returns the AnalysisResult and the explanation index (index.json as a
    dict) when there is one (only for a "done" result). An unusable
    reference is bad input: :class:`_RejectedInput` with its reason.
    """
    from explain import InvalidReferenceError

    explainer = _explainer()
    try:
        result, index = explainer.run(path, out_dir, reference=reference, progress=progress)
    except InvalidReferenceError as e:
        raise _RejectedInput(str(e), e.code) from e
    if index is None:
        return result, None
    index_path = index.write(out_dir)
    return result, json.loads(Path(index_path).read_text(encoding="utf-8"))


def _progress_writer(sub_id: Any) -> Callable[[str, float], None]:
    interval = float(trusttrace_setting("PROGRESS_INTERVAL_S"))
    last = [0.0, -1]

    def report(stage: str, fraction: float) -> None:
        percent = max(0, min(100, int(fraction * 100)))
        now = time.monotonic()
        if percent != last[1] and (now - last[0] >= interval or percent >= 100):
            last[0], last[1] = now, percent
            Submission.objects.filter(pk=sub_id).update(stage=stage[:64], percent=percent)

    return report


def series_from_result(result: dict[str, Any]) -> dict[str, Any]:
    """The chart data of index.json's ``series`` built from a result dict
    (used when no explanation index exists)."""
    persons: dict[int, list[dict[str, Any]]] = {}
    for row in result.get("frames", []):
        persons.setdefault(int(row["person"]), []).append(
            {
                "frame": row["frame"],
                "time": row["time"],
                "score": row["score"],
                "members": row["members"],
            }
        )
    return {
        "threshold": result.get("threshold"),
        "uncertain_band": result.get("uncertain_band"),
        "persons": [{"id": pid, "points": pts} for pid, pts in sorted(persons.items())],
    }


WORKER_LOST_CODE = "worker_lost"
WORKER_LOST_REASON = (
    "The analysis stopped twice because its worker process died (out of memory or over the "
    "time limit). This was logged; a moderator can run it again."
)


class RerunRefused(Exception):  # noqa: N818 (a refusal shown to the moderator)
    """A re-run that is not allowed; ``str(error)`` is shown to the moderator."""


def run_submission(submission_id: Any) -> None:
    """Analyse one submission and store the outcome (the Celery task's body).

    A message redelivered while the submission is still ``running`` means the
    worker died mid-job (acks_late + reject_on_worker_lost): it is run once
    more, and failed the second time, so a file that kills the worker cannot
    loop forever. A submission deleted during its analysis is left deleted
    and the files the job wrote are removed.
    """
    sub = Submission.objects.filter(pk=submission_id).first()
    if sub is None:
        logger.warning("submission %s vanished before its analysis", submission_id)
        return
    if sub.status not in (Status.PENDING, Status.RUNNING):
        logger.info("submission %s is %s; not analysing again", sub.pk, sub.status)
        return
    if sub.status == Status.RUNNING:
        if sub.reason_code == WORKER_LOST_CODE:
            logger.error("submission %s: worker died twice; marking it failed", sub.pk)
            _fail(sub, WORKER_LOST_REASON, WORKER_LOST_CODE)
            return
        logger.warning("submission %s redelivered after its worker died; once more", sub.pk)
        sub.reason_code = WORKER_LOST_CODE
    sub.status, sub.stage, sub.percent = Status.RUNNING, "queued", 0
    sub.started, sub.finished = timezone.now(), None
    sub.attempts += 1
    sub.save(
        update_fields=[
            "status",
            "stage",
            "percent",
            "started",
            "finished",
            "attempts",
            "reason_code",
        ]
    )
    out_dir = artifact_dir(sub)
    try:
        try:
            reference = Path(sub.reference_file.path) if sub.reference_file else None
            result, index = _analyse(
                Path(sub.file.path), out_dir, reference, _progress_writer(sub.pk)
            )
            _store(sub, result.to_dict(), index, out_dir)
        except _RejectedInput as e:
            logger.info("submission %s rejected: %s", sub.pk, e)
            _finish_rejected(sub, str(e), e.code)
        except Submission.DoesNotExist:
            raise
        except Exception as e:
            if not Submission.objects.filter(pk=sub.pk).exists():
                raise Submission.DoesNotExist from e
            logger.exception("analysis of submission %s failed", sub.pk)
            _fail(sub, INTERNAL_ERROR_REASON.format(name=type(e).__name__), "internal_error")
    except Submission.DoesNotExist:
        logger.info("submission %s was deleted during its analysis; dropping it", sub.pk)
        shutil.rmtree(out_dir, ignore_errors=True)


def _save_existing(sub: Submission) -> None:
    """Save a row that must still exist (never re-insert a deleted submission)."""
    try:
        sub.save(force_update=True)
    except DatabaseError as e:
        if Submission.objects.filter(pk=sub.pk).exists():
            raise
        raise Submission.DoesNotExist from e


def _finish_rejected(sub: Submission, reason: str, code: str) -> None:
    sub.refresh_from_db()
    sub.status, sub.reason, sub.reason_code = Status.REJECTED, reason, code
    sub.verdict, sub.score = "", None
    sub.finished = timezone.now()
    _save_existing(sub)


def _fail(sub: Submission, reason: str, code: str) -> None:
    sub.refresh_from_db()
    sub.status, sub.reason, sub.reason_code = Status.FAILED, reason, code
    sub.verdict, sub.score = "", None
    sub.finished = timezone.now()
    _save_existing(sub)


def _store(
    sub: Submission, result: dict[str, Any], index: dict[str, Any] | None, out_dir: Path
) -> None:
    sub.refresh_from_db()
    status = result["status"]
    sub.result = result
    sub.reason = result.get("reason") or ""
    sub.reason_code = result.get("reason_code") or ""
    sub.timings = result.get("timings", {})
    sub.model_versions = {m["name"]: m["weights_sha256"] for m in result.get("models", [])}
    sub.threshold = result.get("threshold")
    sub.uncertain_band = result.get("uncertain_band")
    sub.finished = timezone.now()
    if status == "done":
        sub.status = Status.DONE
        sub.verdict = result.get("verdict") or ""
        sub.score = result.get("score")
        sub.members = result.get("members", {})
        sub.stage, sub.percent = "done", 100
    elif status == "rejected":
        sub.status = Status.REJECTED
    else:
        sub.status = Status.FAILED
    with transaction.atomic():
        sub.artifacts.all().delete()
        if index is not None and sub.status == Status.DONE:
            store_index(sub, index, out_dir)
        elif sub.status == Status.DONE:
            sub.series = series_from_result(result)
        _save_existing(sub)


def artifact_dir(sub: Submission) -> Path:
    """Where a submission's explanation files live (under MEDIA_ROOT)."""
    return _media_root() / ARTIFACT_DIR / str(sub.pk)


def store_index(sub: Submission, index: dict[str, Any], out_dir: Path) -> list[Artifact]:
    """Artifacts and chart series from an explainer index.json (version 1).

    Paths must stay inside ``out_dir``; entries of unknown kind or pointing
    outside are skipped with a warning.
    """
    if index.get("version") != INDEX_VERSION:
        raise ValueError(f"unsupported explanation index version {index.get('version')}")
    root = out_dir.resolve()
    kinds = set(ArtifactKind.values)
    rows = []
    for entry in index.get("artifacts", []):
        target = (root / str(entry["path"])).resolve()
        if (
            entry.get("kind") not in kinds
            or not target.is_relative_to(root)
            or not target.is_file()
        ):
            logger.warning("skipping artifact %r of submission %s", entry.get("path"), sub.pk)
            continue
        rows.append(
            Artifact(
                submission=sub,
                kind=entry["kind"],
                file=target.relative_to(_media_root().resolve()).as_posix(),
                frame=entry.get("frame"),
                time=entry.get("time"),
                person=entry.get("person"),
                member=entry.get("member") or "",
                caption=str(entry.get("caption") or "")[:300],
                width=int(entry.get("width") or 0),
                height=int(entry.get("height") or 0),
                media_type=str(entry.get("media_type") or "image/png"),
            )
        )
    Artifact.objects.bulk_create(rows)
    sub.series = index.get("series") or series_from_result(sub.result)
    return rows


def load_index_file(sub: Submission, out_dir: Path) -> list[Artifact]:
    """Read ``out_dir/index.json`` and store it (see :func:`store_index`)."""
    index = json.loads((out_dir / "index.json").read_text(encoding="utf-8"))
    with transaction.atomic():
        sub.artifacts.all().delete()
        rows = store_index(sub, index, out_dir)
        sub.save(update_fields=["series"])
    return rows


# --- Re-running and deleting -----------------------------------------------------


RERUNNABLE = (Status.DONE, Status.FAILED)


def rerun(sub: Submission) -> Submission:
    """Analyse again with the current models (moderators; done or failed jobs).

    Refused (:class:`RerunRefused`) for ``rejected`` submissions (bad input is
    final) and for jobs still pending or running (a second message would run
    the same submission twice at once).
    """
    if sub.status not in RERUNNABLE:
        raise RerunRefused(
            f"This submission is {sub.status}; only finished (done or failed) analyses can "
            "be run again, and a rejected file stays rejected."
        )
    require_models()
    with transaction.atomic():
        # Only one moderator's re-run wins when two click at once.
        claimed = Submission.objects.filter(pk=sub.pk, status__in=RERUNNABLE).update(
            status=Status.PENDING
        )
        if not claimed:
            raise RerunRefused("This submission was queued again meanwhile.")
        sub.artifacts.all().delete()
        shutil.rmtree(artifact_dir(sub), ignore_errors=True)
        sub.status, sub.stage, sub.percent = Status.PENDING, "", 0
        sub.reason = sub.reason_code = sub.verdict = ""
        sub.score = None
        sub.members, sub.result, sub.series, sub.timings, sub.model_versions = {}, {}, {}, {}, {}
        sub.started = sub.finished = None
        sub.save()
        enqueue(sub)
    return sub


def delete_submission(sub: Submission) -> None:
    """Delete a submission with its upload, reference and artifacts (the files
    go in :func:`analyses.signals.remove_submission_files`)."""
    sub.delete()
