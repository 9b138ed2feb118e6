"""The analysis service owns the status: pending -> running -> done | rejected | failed."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from analyses import services
from analyses.models import Status, Submission
from explain import InvalidReferenceError
from tests import media_factory as mf
from tests.platform.conftest import replace_stored, upload

pytestmark = pytest.mark.django_db


def _submit(owner: Any, path: Path, **kw: Any) -> Submission:
    return services.create_submission(owner, upload(path), **kw)


def test_submission_is_saved_pending_and_queued_after_commit(
    site: Path, users, media_dir: Path, django_capture_on_commit_callbacks, monkeypatch
) -> None:
    queued: list[str] = []
    from analyses import tasks

    monkeypatch.setattr(
        tasks.analyze_submission, "apply_async", lambda args, **kw: queued.append(args[0])
    )
    with django_capture_on_commit_callbacks(execute=True):
        sub = _submit(users["submitter"], media_dir / "person.mp4", title="My clip")
        assert queued == []  # not before the row is committed
    assert queued == [str(sub.pk)]
    sub.refresh_from_db()
    assert sub.status == Status.PENDING and sub.kind == "video" and sub.title == "My clip"
    stored = Path(sub.file.path)
    assert stored.is_file() and stored.parent == site / "uploads"
    assert stored.name != "person.mp4" and len(stored.stem) == 32
    assert sub.original_name == "person.mp4"
    assert sub.sha256 == mf_sha256(media_dir / "person.mp4")


def mf_sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_video_analysis_goes_running_then_done_with_scores_and_versions(
    site: Path, users, media_dir: Path, monkeypatch
) -> None:
    sub = _submit(users["submitter"], media_dir / "person.mp4")
    seen: list[tuple[str, str, int]] = []
    real_writer = services.running._progress_writer

    def spy_writer(claimed: Submission):
        write = real_writer(claimed)

        def report(stage: str, fraction: float) -> None:
            write(stage, fraction)
            row = Submission.objects.get(pk=claimed.pk)
            seen.append((row.status, row.stage, row.percent))

        return report

    monkeypatch.setattr(services.running, "_progress_writer", spy_writer)
    services.run_submission(sub.pk)
    sub.refresh_from_db()
    assert sub.status == Status.DONE, sub.reason
    assert all(status == Status.RUNNING for status, _, _ in seen)
    assert {"decode", "detect"} <= {stage for _, stage, _ in seen}
    assert [p for _, _, p in seen] == sorted(p for _, _, p in seen)
    assert sub.percent == 100 and sub.started and sub.finished and sub.attempts == 1
    assert set(sub.model_versions) == {"tiny_a", "tiny_b"}
    assert all(len(v) == 64 for v in sub.model_versions.values())
    assert sub.verdict in {"fake", "real", "uncertain"}  # face.png has a face
    assert 0 <= sub.score <= 1 and set(sub.members) == {"tiny_a", "tiny_b"}
    assert sub.series["persons"] and sub.series["threshold"] == 0.5
    assert "total" in sub.timings


def test_input_that_fails_in_analysis_is_rejected_with_reason_and_not_retried(
    site: Path, users, media_dir: Path, settings, tmp_path: Path
) -> None:
    sub = _submit(users["submitter"], media_dir / "person.mp4")
    # A file the edge check passed but the analysis cannot use: the analysis
    # itself must reject it, with the decoder's reason. (Stand-in: the
    # stored file and its recorded hash and size are swapped for a text file.)
    replace_stored(sub, mf.text_as_mp4(tmp_path / "text.mp4").read_bytes())
    services.run_submission(sub.pk)
    sub.refresh_from_db()
    assert sub.status == Status.REJECTED and sub.score is None and sub.verdict == ""
    assert "text file" in sub.reason and sub.reason_code == "unsupported_format"
    # No progress stands (it said stage "done", 100%, of a rejected job).
    assert (sub.stage, sub.percent) == ("", 0)
    services.run_submission(sub.pk)  # a redelivered message does nothing
    sub.refresh_from_db()
    assert sub.attempts == 1


@pytest.mark.parametrize("fault", ["missing", "damaged", "truncated", "reference missing"])
def test_a_stored_file_that_is_not_what_was_received_fails_and_can_run_again(
    site: Path, users, media_dir: Path, settings, fault: str
) -> None:
    """The storage's fault, not the user's: the job fails (retryable) with a
    reason that says so, instead of rejecting the user's file for good."""
    from analyses.services import reruns

    sub = _submit(
        users["submitter"], media_dir / "person.mp4", reference=upload(media_dir / "face.png")
    )
    path = Path(sub.file.path)
    original = path.read_bytes()
    if fault == "missing":
        path.unlink()
    elif fault == "damaged":  # same size, other bytes
        flipped = bytes(b ^ 0xFF for b in original[100:200])
        path.write_bytes(original[:100] + flipped + original[200:])
    elif fault == "truncated":
        path.write_bytes(original[: len(original) // 2])
    else:
        Path(sub.reference_file.path).unlink()
    services.run_submission(sub.pk)
    sub.refresh_from_db()
    assert sub.status == Status.FAILED and sub.reason_code == "stored_file", sub.reason
    assert sub.score is None and sub.verdict == ""
    which = "reference" if fault.startswith("reference") else "file"
    assert f"uploaded {which} could not be read back" in sub.reason
    assert "not of your file" in sub.reason
    assert {"missing": "missing", "damaged": "content has changed", "truncated": "bytes, not the"}[
        fault.removeprefix("reference ")
    ] in sub.reason
    # Restored, it runs again and gets its result.
    if fault == "reference missing":
        Path(sub.reference_file.path).write_bytes((media_dir / "face.png").read_bytes())
    else:
        path.write_bytes(original)
    reruns.rerun(sub)
    services.run_submission(sub.pk)
    sub.refresh_from_db()
    assert sub.status == Status.DONE, sub.reason


def test_a_disk_that_fails_while_the_video_is_decoded_fails_the_job_and_it_can_run_again(
    site: Path, users, media_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An I/O error (or memory running out) inside FFmpeg was reported as a
    corrupt file, rejected for good; it is the site's fault."""
    import errno

    import av

    from analyses.services import reruns

    sub = _submit(users["submitter"], media_dir / "person.mp4")
    real_open = av.open

    def failing_disk(*args: Any, **kwargs: Any) -> Any:
        raise av.error.OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(av, "open", failing_disk)
    services.run_submission(sub.pk)
    sub.refresh_from_db()
    assert sub.status == Status.FAILED and sub.reason_code == "read_fault", sub.reason
    assert "(Input/output error)" in sub.reason and "not of your file" in sub.reason
    assert sub.score is None and sub.verdict == ""
    monkeypatch.setattr(av, "open", real_open)  # the disk is back
    reruns.rerun(sub)
    services.run_submission(sub.pk)
    sub.refresh_from_db()
    assert sub.status == Status.DONE, sub.reason


def test_an_explanation_index_that_cannot_be_written_costs_the_file_not_the_verdict(
    site: Path, users, media_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk at the last write (index.json) threw away a finished
    verdict: the whole job failed."""
    import errno

    from explain.index import ExplanationIndex

    def disk_full(self: Any, out_dir: Path) -> Path:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ExplanationIndex, "write", disk_full)
    sub = _submit(users["submitter"], media_dir / "person.mp4")
    services.run_submission(sub.pk)
    sub.refresh_from_db()
    assert sub.status == Status.DONE and sub.score is not None, sub.reason
    assert sub.artifacts.exists() and sub.series


def test_crash_is_failed_with_logged_traceback_never_a_score(
    site: Path, users, media_dir: Path, monkeypatch, caplog
) -> None:
    sub = _submit(users["submitter"], media_dir / "face.png")

    class Boom:
        def run(
            self, path: Path, out_dir: Path, reference: Any = None, progress: Any = None
        ) -> Any:
            raise ZeroDivisionError("bug")

    monkeypatch.setattr(services.running, "_explainer", lambda: Boom())
    services.run_submission(sub.pk)
    sub.refresh_from_db()
    assert sub.status == Status.FAILED and sub.score is None and sub.verdict == ""
    assert sub.reason_code == "internal_error" and "ZeroDivisionError" in sub.reason
    assert "moderator can run it again" in sub.reason
    assert any(r.exc_info and r.exc_info[0] is ZeroDivisionError for r in caplog.records)


def test_failed_submission_can_be_rerun_and_then_succeeds(
    site: Path, users, media_dir: Path, monkeypatch
) -> None:
    sub = _submit(users["submitter"], media_dir / "face.png")
    monkeypatch.setattr(
        services.running, "_explainer", lambda: (_ for _ in ()).throw(OSError("disk"))
    )
    services.run_submission(sub.pk)
    sub.refresh_from_db()
    assert sub.status == Status.FAILED
    monkeypatch.undo()
    services.rerun(sub)
    sub.refresh_from_db()
    assert sub.status == Status.PENDING and sub.reason == ""
    services.run_submission(sub.pk)
    sub.refresh_from_db()
    assert sub.status == Status.DONE and sub.attempts == 2


def test_a_rerun_that_is_rolled_back_keeps_the_results_files(
    site: Path, users, media_dir: Path, monkeypatch, django_capture_on_commit_callbacks
) -> None:
    """The folder went at once, inside the re-run's transaction: a re-run that
    failed to commit (the database gone at save) restored the done row and
    its artifact rows, with their files deleted."""
    from django.db import DatabaseError

    sub = _submit(users["submitter"], media_dir / "face.png")
    services.run_submission(sub.pk)
    sub.refresh_from_db()
    files = [Path(a.file.path) for a in sub.artifacts.all()]
    assert sub.status == Status.DONE and files

    def connection_lost(*args: Any, **kwargs: Any) -> None:
        raise DatabaseError("server closed the connection unexpectedly")

    with monkeypatch.context() as m:
        m.setattr(Submission, "save", connection_lost)
        with django_capture_on_commit_callbacks(execute=True), pytest.raises(DatabaseError):
            services.rerun(sub)
    sub.refresh_from_db()
    assert sub.status == Status.DONE and sub.artifacts.count() == len(files)
    assert all(f.is_file() for f in files)
    # Committed, it removes them, before the message goes out.
    sent: list[tuple[str, bool]] = []
    monkeypatch.setattr(
        services.queue, "send", lambda pk: sent.append((pk, any(f.exists() for f in files)))
    )
    with django_capture_on_commit_callbacks(execute=True):
        services.rerun(sub)
    assert sent == [(str(sub.pk), False)]


def test_models_are_loaded_once_per_process(site: Path, users, media_dir: Path) -> None:
    services._ANALYZERS.clear()
    first = services._analyzer()
    assert services._analyzer() is first


def test_a_worker_loads_the_members_again_when_what_is_installed_changes(
    site: Path, users, media_dir: Path, settings, tmp_path: Path, tiny_weights: Path
) -> None:
    """calibrate_member (or a new export) rewrites a manifest: the worker's
    next job loads the members again and scores with what is installed now,
    without a restart."""
    from ensemble.weights import read_manifest, recalibrate_manifest

    weights = tmp_path / "weights"
    shutil.copytree(tiny_weights, weights)
    settings.TRUSTTRACE = {**settings.TRUSTTRACE, "WEIGHTS_DIR": weights}
    services._ANALYZERS.clear()
    first = _submit(users["submitter"], media_dir / "face.png")
    services.run_submission(first.pk)
    loaded = services._analyzer()
    assert services._analyzer() is loaded  # nothing changed: kept
    manifest = read_manifest(weights, "tiny_a")
    recalibrate_manifest(
        weights,
        "tiny_a",
        temperature=manifest.temperature,
        bias=manifest.bias + 3.0,
        threshold=manifest.threshold,
        record={"description": "test"},
    )
    second = _submit(users["submitter"], media_dir / "face.png")
    services.run_submission(second.pk)
    assert services._analyzer() is not loaded
    first.refresh_from_db()
    second.refresh_from_db()
    assert first.status == second.status == Status.DONE, (first.reason, second.reason)
    models = {m["name"]: m for m in second.result["models"]}
    assert models["tiny_a"]["bias"] == pytest.approx(manifest.bias + 3.0)
    assert models["tiny_b"]["bias"] == manifest.bias  # only tiny_a was recalibrated
    # Same weights, same face: the score moved by the bias alone.
    assert second.model_versions == first.model_versions
    assert second.members["tiny_a"] > first.members["tiny_a"] + 0.05
    assert second.members["tiny_b"] == pytest.approx(first.members["tiny_b"])


def test_detectors_that_no_longer_load_fail_the_job_for_the_site_and_are_tried_again(
    site: Path, users, media_dir: Path, settings, tmp_path: Path, tiny_weights: Path
) -> None:
    """A damaged install met by a reload: the job fails with a reason that
    blames the site and names no server path, nothing half-loaded is kept,
    and once the install is repaired the next job loads it and scores."""
    from ensemble.weights import read_manifest, recalibrate_manifest

    weights = tmp_path / "weights"
    shutil.copytree(tiny_weights, weights)
    settings.TRUSTTRACE = {**settings.TRUSTTRACE, "WEIGHTS_DIR": weights}
    services._ANALYZERS.clear()
    services.run_submission(_submit(users["submitter"], media_dir / "face.png").pk)
    manifest = read_manifest(weights, "tiny_a")
    shard = weights / "tiny_a" / manifest.files[0].path
    good = shard.read_bytes()
    shard.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # one bit flipped
    recalibrate_manifest(  # the install changed: workers load it again
        weights, "tiny_a", temperature=1.1, bias=0.0, threshold=0.5, record={"n": 1}
    )
    broken = _submit(users["submitter"], media_dir / "face.png")
    services.run_submission(broken.pk)
    broken.refresh_from_db()
    assert broken.status == Status.FAILED and broken.score is None and broken.verdict == ""
    assert broken.reason_code == "models_unavailable"
    assert "do not match their manifest's checksums" in broken.reason
    assert "fault of the site, not of your file" in broken.reason
    assert str(weights) not in broken.reason and "tiny_a" not in broken.reason
    assert services._ANALYZERS == {}  # nothing half-loaded kept
    shard.write_bytes(good)  # repaired, manifest untouched: the next job loads it
    again = _submit(users["submitter"], media_dir / "face.png")
    services.run_submission(again.pk)
    again.refresh_from_db()
    assert again.status == Status.DONE, again.reason
    services.rerun(broken)
    services.run_submission(broken.pk)
    broken.refresh_from_db()
    assert broken.status == Status.DONE and broken.reason_code == ""


def test_a_worker_whose_backend_setting_cannot_be_met_fails_the_job_as_models_unavailable(
    site: Path, users, media_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TRUSTTRACE_BACKEND=openvino on a worker without OpenVINO: the site's
    configuration, said so, instead of "internal error (ConfigError)"."""
    from ensemble.errors import ConfigError

    def misconfigured() -> Any:
        raise ConfigError("backend 'openvino' was asked for but openvino is not installed")

    monkeypatch.setattr(services.running, "_explainer", misconfigured)
    sub = _submit(users["submitter"], media_dir / "face.png")
    services.run_submission(sub.pk)
    sub.refresh_from_db()
    assert sub.status == Status.FAILED and sub.reason_code == "models_unavailable", sub.reason
    assert "the worker's detector settings are invalid" in sub.reason


def test_a_worker_told_to_use_a_gpu_it_cannot_see_fails_the_job_as_its_settings(
    site: Path, users, media_dir: Path, settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TRUSTTRACE_DEVICE=cuda in a container not given the GPU: every job
    failed at the first tensor moved there, as an internal error with torch's
    message. Now the job says the worker's settings are at fault, and the log
    says what to change; the upload was accepted (the web has no GPU to check)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    settings.TRUSTTRACE = {**settings.TRUSTTRACE, "DEVICE": "cuda"}
    services._ANALYZERS.clear()
    sub = _submit(users["submitter"], media_dir / "face.png")
    services.run_submission(sub.pk)
    sub.refresh_from_db()
    assert sub.status == Status.FAILED and sub.reason_code == "models_unavailable", sub.reason
    assert "the worker's detector settings are invalid" in sub.reason
    assert services._ANALYZERS == {}


def test_missing_weights_refuse_uploads_clearly_and_save_nothing(
    no_weights_site: Path, site: Path, users, media_dir: Path
) -> None:
    with pytest.raises(services.ModelsUnavailable, match="No weights are installed for detector"):
        _submit(users["submitter"], media_dir / "face.png")
    assert Submission.objects.count() == 0
    assert not (site / "uploads").exists() or not any((site / "uploads").iterdir())


def test_explanation_index_becomes_artifacts_and_series(site: Path, finished, users) -> None:
    sub = finished(users["submitter"])
    arts = list(sub.artifacts.all())
    kinds = {"face", "frame", "gradcam", "ssim_temporal"}
    assert len(arts) == 10 and {a.kind for a in arts} == kinds
    assert {a.member for a in arts} == {"tiny_a", "tiny_b", ""}
    assert {a.person for a in arts if a.kind == "frame"} == {None}
    assert all(Path(a.file.path).is_file() for a in arts)
    assert sub.series["persons"][0]["points"][1]["frame"] == 5


def test_index_entries_escaping_the_folder_are_skipped(site: Path, finished, users) -> None:
    sub = finished(users["submitter"])
    out = services.artifact_dir(sub)
    (site / "secret.png").write_bytes(b"x")
    index = {
        "version": 1,
        "artifacts": [
            {"kind": "gradcam", "path": "../../secret.png", "frame": 0},
            {"kind": "bogus", "path": "gradcam-tiny_a-0.png", "frame": 0},
        ],
        "series": {},
    }
    assert services.store_index(sub, index, out) == []


@pytest.mark.django_db(transaction=True)
def test_the_heartbeat_touches_only_a_job_its_run_still_holds(
    site: Path, users, media_dir: Path
) -> None:
    """Before, an old run whose job the reaper had handed to another run kept
    that run's heartbeat fresh, so its death went unseen while the old one ran."""
    import time

    from django.conf import settings
    from django.test import override_settings

    sub = _submit(users["submitter"], media_dir / "face.png")
    Submission.objects.filter(pk=sub.pk).update(
        status=Status.RUNNING, worker="host-b:7", attempts=2, heartbeat=None
    )
    fast = {**settings.TRUSTTRACE, "HEARTBEAT_S": 0.05}
    with override_settings(TRUSTTRACE=fast):
        for worker, attempts in (("host-a:3", 1), ("host-b:7", 1), ("host-a:3", 2)):
            with services.running._heartbeat(sub.pk, worker, attempts):
                time.sleep(0.3)
            assert Submission.objects.get(pk=sub.pk).heartbeat is None, (worker, attempts)
        with services.running._heartbeat(sub.pk, "host-b:7", 2):
            time.sleep(0.3)
    assert Submission.objects.get(pk=sub.pk).heartbeat is not None


def test_delete_removes_row_upload_and_artifacts(
    site: Path, finished, users, django_capture_on_commit_callbacks
) -> None:
    sub = finished(users["submitter"])
    upload_path, folder = Path(sub.file.path), services.artifact_dir(sub)
    assert upload_path.is_file() and folder.is_dir()
    with django_capture_on_commit_callbacks(execute=True):
        services.delete_submission(sub)
    assert not upload_path.exists() and not folder.exists()
    assert not Submission.objects.filter(pk=sub.pk).exists()


def test_a_delete_that_does_not_commit_keeps_the_files(
    site: Path, finished, users, django_capture_on_commit_callbacks
) -> None:
    """On Postgres a delete can fail at commit (a worker's rows met it); the
    files went at once, before, leaving a row whose media was gone."""
    from django.db import transaction

    sub = finished(users["submitter"])
    upload_path, folder = Path(sub.file.path), services.artifact_dir(sub)
    with (
        django_capture_on_commit_callbacks(execute=True),
        pytest.raises(RuntimeError),
        transaction.atomic(),
    ):
        services.delete_submission(Submission.objects.get(pk=sub.pk))
        raise RuntimeError("the commit failed")
    assert upload_path.is_file() and folder.is_dir()
    assert Submission.objects.filter(pk=sub.pk).exists() and sub.artifacts.count() > 0


class _FakeIndex:
    def __init__(self, out_dir: Path, frames: tuple[int, ...]) -> None:
        from tests.platform.conftest import write_index

        self.data = write_index(out_dir, frames)

    def to_dict(self) -> dict[str, Any]:
        return self.data


def test_explainer_output_is_stored_as_artifacts(
    site: Path, users, media_dir: Path, monkeypatch
) -> None:
    calls = []

    class Explainer:
        def run(self, path, out_dir, reference=None, progress=None):
            calls.append((path, out_dir, reference))
            result = services._analyzer().analyze(path, progress=progress)
            frames = tuple(sorted({r["frame"] for r in result.frame_rows()}))
            return result, _FakeIndex(out_dir, frames)

    monkeypatch.setattr(services.running, "_explainer", Explainer)
    sub = _submit(users["submitter"], media_dir / "face.png")
    services.run_submission(sub.pk)
    sub.refresh_from_db()
    assert sub.status == Status.DONE, sub.reason
    assert calls == [(Path(sub.file.path), services.attempt_dir(sub), None)]
    assert services.attempt_dir(sub) == services.artifact_dir(sub) / "run-1"
    assert sub.verdict != "no_face"
    assert sub.artifacts.count() == 5 and sub.series["persons"]


def test_unusable_reference_is_rejected_not_failed(
    site: Path, users, media_dir: Path, monkeypatch
) -> None:
    class Explainer:
        def run(self, path, out_dir, reference=None, progress=None):
            raise InvalidReferenceError("The reference shows no face.", "reference_no_face")

    monkeypatch.setattr(services.running, "_explainer", Explainer)
    sub = services.create_submission(
        users["submitter"], upload(media_dir / "face.png"), reference=upload(media_dir / "face.png")
    )
    assert Path(sub.reference_file.path).is_file() and sub.reference_name == "face.png"
    services.run_submission(sub.pk)
    sub.refresh_from_db()
    assert sub.status == Status.REJECTED and sub.reason_code == "reference_no_face"
    assert sub.reason == "The reference shows no face." and sub.score is None


@pytest.mark.parametrize("status", [Status.REJECTED, Status.PENDING, Status.RUNNING])
def test_rerun_is_refused_for_rejected_and_unfinished_submissions(
    site: Path, users, media_dir: Path, status: str, django_capture_on_commit_callbacks
) -> None:
    from django.utils import timezone

    sub = _submit(users["submitter"], media_dir / "face.png")
    # A live job: queued or beating a moment ago in this (alive) process.
    Submission.objects.filter(pk=sub.pk).update(
        status=status,
        reason="kept",
        heartbeat=timezone.now(),
        worker=services.running.worker_id(),
    )
    sub.refresh_from_db()
    with django_capture_on_commit_callbacks() as queued, pytest.raises(services.RerunRefused):
        services.rerun(sub)
    sub.refresh_from_db()
    assert queued == [] and sub.status == status and sub.reason == "kept"


def test_worker_death_is_run_once_more_then_failed_not_looped(
    site: Path, users, media_dir: Path, monkeypatch
) -> None:
    sub = _submit(users["submitter"], media_dir / "face.png")
    seen: list[int] = []

    class DiesWithTheWorker:
        def run(
            self, path: Path, out_dir: Path, reference: Any = None, progress: Any = None
        ) -> Any:
            # What a redelivery looks like: the row is left "running".
            seen.append(1)
            raise SystemExit("worker killed")

    monkeypatch.setattr(services.running, "_explainer", lambda: DiesWithTheWorker())
    for _ in range(2):  # the worker dies during the first two deliveries
        with pytest.raises(SystemExit):
            services.run_submission(sub.pk)
        sub.refresh_from_db()
        assert sub.status == Status.RUNNING
    services.run_submission(sub.pk)  # the third delivery gives up
    services.run_submission(sub.pk)  # and a fourth does nothing
    sub.refresh_from_db()
    assert len(seen) == 2 and sub.attempts == 2
    assert sub.status == Status.FAILED and sub.reason_code == services.WORKER_LOST_CODE
    assert sub.score is None and "moderator can run it again" in sub.reason


def test_submission_deleted_during_analysis_stays_deleted_and_its_files_go(
    site: Path, users, media_dir: Path, monkeypatch, django_capture_on_commit_callbacks
) -> None:
    sub = _submit(users["submitter"], media_dir / "face.png")
    other = _submit(users["other"], media_dir / "face.png")
    real = services._analyzer()

    class DeletedMeanwhile:
        def run(
            self, path: Path, out_dir: Path, reference: Any = None, progress: Any = None
        ) -> Any:
            result = real.analyze(path, progress=progress)
            services.artifact_dir(sub).mkdir(parents=True, exist_ok=True)
            (services.artifact_dir(sub) / "late.png").write_bytes(b"x")
            services.delete_submission(Submission.objects.get(pk=sub.pk))
            return result, None

    monkeypatch.setattr(services.running, "_explainer", lambda: DeletedMeanwhile())
    with django_capture_on_commit_callbacks(execute=True):
        services.run_submission(sub.pk)
    assert not Submission.objects.filter(pk=sub.pk).exists()
    assert not services.artifact_dir(sub).exists()
    other.refresh_from_db()
    assert other.status == Status.PENDING and Path(other.file.path).is_file()


@pytest.mark.parametrize("change", ["deleted", "claimed_elsewhere"])
def test_a_run_stops_at_its_next_progress_report_once_the_job_is_not_its_own(
    site: Path, users, media_dir: Path, monkeypatch, change: str
) -> None:
    """Before, a run went on to the end (up to the time limit) for a job its
    owner had deleted or a reaper had handed to another run, holding a worker."""
    from django.conf import settings
    from django.test import override_settings

    sub = _submit(users["submitter"], media_dir / "person.mp4")
    real = services.running._explainer()
    stages: list[str] = []

    class ChangedMeanwhile:
        def run(self, path: Path, out_dir: Path, reference: Any = None, progress: Any = None):
            def watch(stage: str, fraction: float) -> None:
                stages.append(stage)
                if stage == "detect":
                    if change == "deleted":
                        services.delete_submission(Submission.objects.get(pk=sub.pk))
                    else:
                        Submission.objects.filter(pk=sub.pk).update(worker="elsewhere:1")
                progress(stage, fraction)

            return real.run(path, out_dir, reference=reference, progress=watch)

    monkeypatch.setattr(services.running, "_explainer", lambda: ChangedMeanwhile())
    every_report = {**settings.TRUSTTRACE, "PROGRESS_INTERVAL_S": 0}
    with override_settings(TRUSTTRACE=every_report):
        services.run_submission(sub.pk)
    # Stopped at the report after the change: no tracking, scoring or explaining.
    assert stages == ["decode", "detect"]
    if change == "deleted":
        assert not Submission.objects.filter(pk=sub.pk).exists()
    else:
        row = Submission.objects.get(pk=sub.pk)
        assert (row.status, row.worker, row.score) == (Status.RUNNING, "elsewhere:1", None)
        assert row.stage == "decode"  # the last this run wrote: nothing after the handover
        assert not row.artifacts.exists()


@pytest.mark.parametrize("outcome", ["result", "crash"])
@pytest.mark.parametrize("handover", ["claimed_elsewhere", "rerun_pending"])
def test_a_run_whose_job_was_handed_to_another_run_leaves_that_run_alone(
    site: Path, users, media_dir: Path, monkeypatch, outcome: str, handover: str
) -> None:
    """A job that looked stuck (a stalled host, a clock far off) is given to
    another run while this one still works: the other run's row is kept, not
    overwritten by this run's result, failure or progress."""
    from django.db.models import F

    sub = _submit(users["submitter"], media_dir / "face.png")
    real = services._analyzer()
    taken = (
        {"worker": "elsewhere:1", "attempts": F("attempts") + 1, "stage": "detect", "percent": 40}
        if handover == "claimed_elsewhere"
        else {"status": Status.PENDING, "stage": "", "percent": 0, "heartbeat": None}
    )

    class HandedOver:
        def run(
            self, path: Path, out_dir: Path, reference: Any = None, progress: Any = None
        ) -> Any:
            result = real.analyze(path)
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "late.png").write_bytes(b"x")
            Submission.objects.filter(pk=sub.pk).update(**taken)
            progress("score", 1.0)
            if outcome == "crash":
                raise ZeroDivisionError("bug")
            return result, None

    monkeypatch.setattr(services.running, "_explainer", lambda: HandedOver())
    other_run = services.artifact_dir(sub) / "run-2"  # the files of the run that took over
    other_run.mkdir(parents=True)
    (other_run / "kept.png").write_bytes(b"x")
    services.run_submission(sub.pk)
    sub.refresh_from_db()
    assert (other_run / "kept.png").is_file()
    assert not (services.artifact_dir(sub) / "run-1").exists()  # this run's own files go
    if handover == "claimed_elsewhere":
        assert (sub.status, sub.worker, sub.attempts) == (Status.RUNNING, "elsewhere:1", 2)
        assert (sub.stage, sub.percent) == ("detect", 40)
    else:
        assert (sub.status, sub.stage, sub.percent) == (Status.PENDING, "", 0)
    assert sub.score is None and sub.verdict == "" and sub.result == {} and sub.reason == ""


def test_deleting_an_account_removes_its_submissions_files_only(
    site: Path, users, media_dir: Path, finished, django_capture_on_commit_callbacks
) -> None:
    mine = finished(users["submitter"])
    theirs = finished(users["other"])
    mine_files = [Path(mine.file.path), services.artifact_dir(mine)]
    with django_capture_on_commit_callbacks(execute=True):
        users["submitter"].delete()  # e.g. from the admin: a cascade, not delete_submission
    assert not any(p.exists() for p in mine_files)
    theirs.refresh_from_db()
    assert Path(theirs.file.path).is_file() and services.artifact_dir(theirs).is_dir()
    assert theirs.artifacts.count() > 0


def test_a_finished_run_removes_the_folders_of_earlier_runs(
    site: Path, users, media_dir: Path, monkeypatch
) -> None:
    class Explainer:
        def run(self, path, out_dir, reference=None, progress=None):
            result = services._analyzer().analyze(path, progress=progress)
            frames = tuple(sorted({r["frame"] for r in result.frame_rows()}))
            return result, _FakeIndex(out_dir, frames)

    monkeypatch.setattr(services.running, "_explainer", Explainer)
    sub = _submit(users["submitter"], media_dir / "face.png")
    dead = services.artifact_dir(sub) / "run-0"  # a run whose worker died mid-way
    dead.mkdir(parents=True)
    (dead / "partial.png").write_bytes(b"x")
    services.run_submission(sub.pk)
    sub.refresh_from_db()
    assert sub.status == Status.DONE, sub.reason
    assert not dead.exists() and services.attempt_dir(sub).is_dir()
    stored = [Path(a.file.path) for a in sub.artifacts.all()]
    assert len(stored) == 5 and all(p.is_relative_to(services.attempt_dir(sub)) for p in stored)


@pytest.mark.parametrize("outcome", ["crash", "rejected"])
def test_a_failed_or_rejected_run_leaves_no_files(
    site: Path, users, media_dir: Path, monkeypatch, outcome: str
) -> None:
    from explain import InvalidReferenceError

    class Broken:
        def run(self, path, out_dir, reference=None, progress=None):
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "half.png").write_bytes(b"x")
            if outcome == "crash":
                raise ZeroDivisionError("bug")
            raise InvalidReferenceError("The reference is unusable.")

    monkeypatch.setattr(services.running, "_explainer", Broken)
    sub = _submit(users["submitter"], media_dir / "face.png")
    services.run_submission(sub.pk)
    sub.refresh_from_db()
    assert sub.status == (Status.FAILED if outcome == "crash" else Status.REJECTED)
    assert (sub.stage, sub.percent) == ("", 0)
    assert not services.artifact_dir(sub).exists()


def test_a_stored_file_that_cannot_be_read_is_a_storage_fault(tmp_path: Path) -> None:
    """A media volume mounted with the wrong owner: the OS refuses the read,
    which is the site's storage fault too (not an internal error)."""
    from analyses.services.running import _stored_fault

    path = tmp_path / "upload.mp4"
    path.write_bytes(b"x" * 10)

    def refused(_: Path) -> str:
        raise PermissionError(13, "Permission denied")

    assert _stored_fault(path, "a" * 64, 10, refused) == "it cannot be read: Permission denied"
    assert _stored_fault(path, "", 10, refused) is None  # nothing recorded to compare
    assert _stored_fault(path, "a" * 64, 11, refused) == "it is 10 bytes, not the 11 received"


def test_an_explanation_that_fails_leaves_the_verdict_and_says_so(
    site: Path, users, media_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, any explanation's failure (Grad-CAM out of memory, a full
    disk) failed the whole analysis and threw the computed verdict away."""
    from explain import Explainer

    def no_memory(*_: Any) -> None:
        raise MemoryError("cannot map /srv/trusttrace/media/artifacts/x/run-1/cam.png")

    monkeypatch.setattr(Explainer, "_gradcam", no_memory)
    sub = _submit(users["submitter"], media_dir / "person.mp4")
    services.run_submission(sub.pk)
    sub.refresh_from_db()
    assert sub.status == Status.DONE and sub.score is not None, sub.reason
    assert "Some explanations could not be made (Grad-CAM heatmaps)" in sub.reason
    kinds = set(sub.artifacts.values_list("kind", flat=True))
    assert "gradcam" not in kinds and "face" in kinds
    # Programs get which kinds and why, not only the sentence.
    from django.test import Client
    from rest_framework.authtoken.models import Token

    token = Token.objects.create(user=users["submitter"])
    api = Client(HTTP_AUTHORIZATION=f"Token {token.key}")
    # The error's class, not its message: that may name server files.
    index = api.get(f"/api/submissions/{sub.pk}/index/")
    assert index.json()["missing"] == {"gradcam": "MemoryError"}
    result = api.get(f"/api/submissions/{sub.pk}/result/")
    assert result.json()["result"]["explanations_missing"] == {"gradcam": "MemoryError"}
    assert b"/srv/" not in index.content + result.content
    assert "/srv/" not in sub.reason


def test_the_soft_time_limit_during_explanations_keeps_the_verdict(
    site: Path, users, media_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from celery.exceptions import SoftTimeLimitExceeded

    from explain import Explainer

    def out_of_time(*_: Any) -> None:
        raise SoftTimeLimitExceeded

    monkeypatch.setattr(Explainer, "_attention", out_of_time)
    sub = _submit(users["submitter"], media_dir / "person.mp4")
    services.run_submission(sub.pk)
    sub.refresh_from_db()
    # Before: failed, timed_out, and the verdict made before was lost.
    assert sub.status == Status.DONE and sub.score is not None, sub.reason
    assert sub.result["explanations_missing"]["attention"] == "TimedOut"
