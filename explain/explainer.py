"""The :class:`Explainer`: one analysis, then its explanations as files."""

from __future__ import annotations

import logging
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

from ensemble.errors import TrusttraceError
from ensemble.media import RGBImage
from ensemble.members import TAP_ATTENTION, TAP_GRADCAM, LoadedMember
from ensemble.pipeline import AnalysisData, Analyzer, ProgressFn
from ensemble.results import AnalysisResult, FaceResult
from explain.attention import attention_maps, has_attention
from explain.charts import chart_size, render_png, render_svg, score_figure, score_series
from explain.config import ArtifactKind, ExplainConfig
from explain.errors import ExplainError
from explain.geometry import FloatMap, placement
from explain.gradcam import gradcam_maps
from explain.index import OUT_OF_TIME, Artifact, ExplanationIndex
from explain.reference import TimeOffset, check_reference, frames_at, reference_offset
from explain.render import (
    cut_square,
    face_square,
    fit,
    heat_on_square,
    image_media_type,
    image_suffix,
    resized,
    write_image,
)
from explain.ssim import matching_face, ssim_mask

logger = logging.getLogger(__name__)

# Share of the progress bar the analysis fills when explanations follow it.
ANALYSIS_SHARE = 0.6
# How the rest is shared between the explanation stages (by expected cost).
_STAGE_WEIGHT: dict[ArtifactKind, float] = {
    "face": 0.05,
    "frame": 0.05,
    "gradcam": 0.5,
    "attention": 0.25,
    "ssim_temporal": 0.1,
    "ssim_reference": 0.1,
    "chart": 0.05,
}

# Kinds drawn on the face crop (the ``face`` artifact of the same person and frame).
HEAT_KINDS: tuple[ArtifactKind, ...] = ("gradcam", "attention")


def _when(result: AnalysisResult, face: FaceResult) -> tuple[int, float]:
    frame = result.frames[face.position]
    return frame.index, round(frame.time_s, 4)


def select_faces(result: AnalysisResult, top_k: int, include_least: bool) -> dict[int, list[int]]:
    """Per person, indices into ``result.faces``: the ``top_k`` most
    suspicious faces and (optionally) the least suspicious one."""
    by_person: dict[int, list[int]] = defaultdict(list)
    for i, face in enumerate(result.faces):
        by_person[face.person].append(i)
    out: dict[int, list[int]] = {}
    for person, idx in by_person.items():
        ranked = sorted(idx, key=lambda i: (-result.faces[i].score, result.faces[i].position))
        chosen = ranked[:top_k]
        if include_least and ranked[-1] not in chosen:
            chosen.append(ranked[-1])
        out[person] = chosen
    return out


class _PartlyMadeError(ExplainError):
    """Some members' explanations of one kind failed; the others' were made
    and stay. The message lists the failures, each "Class: member: message"."""


class _Writer:
    """Writes artifact files under ``out_dir`` and collects their entries."""

    def __init__(self, out_dir: Path, config: ExplainConfig) -> None:
        self.out_dir = out_dir
        self.config = config
        self.artifacts: list[Artifact] = []

    def image(
        self,
        kind: ArtifactKind,
        name: str,
        image: RGBImage,
        *,
        frame: int | None,
        time_s: float | None,
        person: int | None,
        member: str | None,
        caption: str,
    ) -> None:
        rel = f"{name}{image_suffix(self.config)}"
        width, height = write_image(self.out_dir / rel, image, self.config)
        media_type = image_media_type(self.config)
        size = (width, height)
        entry = Artifact(kind, rel, frame, time_s, person, member, caption, *size, media_type)
        self.artifacts.append(entry)

    def raw(
        self,
        kind: ArtifactKind,
        rel: str,
        data: bytes,
        media_type: str,
        size: tuple[int, int],
        caption: str,
    ) -> None:
        path = self.out_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.artifacts.append(
            Artifact(kind, rel, None, None, None, None, caption, size[0], size[1], media_type)
        )


def _remove_new(folder: Path, before: set[Path] | None) -> None:
    """Remove what is under ``folder`` now and was not in ``before`` (a
    :func:`_files_under` listing); nothing when a listing failed: what is
    new is unknown."""
    after = _files_under(folder) if before is not None else None
    for made in sorted((after or set()) - (before or set()), reverse=True):
        if made.is_file():
            made.unlink(missing_ok=True)
        elif made.is_dir():
            shutil.rmtree(made, ignore_errors=True)


def _files_under(folder: Path) -> set[Path] | None:
    """Everything under ``folder``, or ``None`` when it cannot be listed."""
    try:
        return set(folder.rglob("*"))
    except OSError as e:
        logger.warning("could not list %s: %s", folder, e)
        return None


class Explainer:
    """Analyses a file with an :class:`Analyzer` and writes its explanations.

    The analysis is the same as ``analyzer.analyze``; the decoded frames and
    crops it made are reused, never decoded again.
    """

    def __init__(
        self,
        analyzer: Analyzer,
        config: ExplainConfig | None = None,
        *,
        interrupts: tuple[type[BaseException], ...] = (),
        deadlines: tuple[type[BaseException], ...] = (),
    ) -> None:
        """``interrupts``: exceptions that stop the run (the job is no longer
        this run's) instead of costing only the kind that was being made.
        ``deadlines``: exceptions that mean time is up (a task's soft time
        limit). Raised while the media is scored, they stop the run; raised
        while explanations are made, the verdict stands and the kind being
        made and those not yet made are listed missing (:data:`OUT_OF_TIME`)."""
        self.analyzer = analyzer
        self.config = config or ExplainConfig()
        self.interrupts = interrupts
        self.deadlines = deadlines

    def run(
        self,
        path: Path,
        out_dir: Path,
        reference: Path | None = None,
        progress: ProgressFn | None = None,
    ) -> tuple[AnalysisResult, ExplanationIndex | None]:
        """Analyse ``path`` and write the explanations and ``index.json`` into
        ``out_dir``. The index is ``None`` when the analysis is not ``done``.

        Raises :class:`~explain.errors.InvalidReferenceError` before any work
        when ``reference`` cannot be used.
        """
        report = progress or (lambda stage, fraction: None)
        limits = self.analyzer.config.limits
        still_reference = False
        if reference is not None and "ssim_reference" in self.config.kinds:
            still_reference = check_reference(reference, limits).info.kind == "image"

        def analysis_progress(stage: str, fraction: float) -> None:
            if stage != "done":
                report(stage, fraction * ANALYSIS_SHARE)

        # The taps let Grad-CAM and the attention maps reuse the scoring pass.
        result, data = self.analyzer.analyze_with_data(path, analysis_progress, keep_taps=True)
        if result.status != "done":
            report("done", 1.0)
            return result, None
        series = score_series(result)
        kinds = [k for k in self.config.kinds if k != "ssim_reference" or reference is not None]
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            # No folder for the files (a full disk, no permission): every
            # kind is missing, and the verdict stands.
            logger.error("no folder for %s's explanations: %s", path, e)
            reason = f"{type(e).__name__}: {e.strerror or e}"[:200]
            report("done", 1.0)
            return result, ExplanationIndex((), series, missing=dict.fromkeys(kinds, reason))
        writer = _Writer(out_dir, self.config)
        members = [self.analyzer.members[m] for m in self.analyzer.config.members]
        timings: dict[str, float] = {}
        total = sum(_STAGE_WEIGHT[k] for k in kinds) or 1.0
        done = 0.0
        missing: dict[str, str] = {}
        for kind in kinds:
            started = time.perf_counter()
            kept, files = len(writer.artifacts), None
            try:
                # (inside: time may run out while progress is written)
                report(kind, ANALYSIS_SHARE + (1 - ANALYSIS_SHARE) * done / total)
                files = _files_under(out_dir)
                if kind == "chart":
                    self._chart(writer, series, [m.name for m in members])
                elif data is not None:
                    if kind == "face":
                        self._faces(writer, result, data)
                    elif kind == "frame":
                        self._whole_frames(writer, result, data)
                    elif kind == "gradcam":
                        self._gradcam(writer, result, data, members)
                    elif kind == "attention":
                        self._attention(writer, result, data, members)
                    elif kind == "ssim_temporal":
                        self._ssim_temporal(writer, result, data)
                    elif kind == "ssim_reference" and reference is not None:
                        self._ssim_reference(writer, result, data, reference, still_reference)
            except _PartlyMadeError as e:
                missing[kind] = str(e)[:200]
            except BaseException as e:
                out_of_time = isinstance(e, self.deadlines)
                if isinstance(e, self.interrupts) or not (out_of_time or isinstance(e, Exception)):
                    raise
                if out_of_time:
                    # The verdict is made: it is kept, with what was explained
                    # in time, rather than lost with the job.
                    logger.warning("time limit reached explaining %s during %s", path, kind)
                    for late in kinds[kinds.index(kind) :]:
                        missing[late] = OUT_OF_TIME
                else:
                    # One kind's failure (out of memory, a full disk, a bug)
                    # costs that kind's files, not the verdict or the other kinds.
                    logger.exception("explanation %s of %s failed", kind, path)
                    missing[kind] = f"{type(e).__name__}: {e}"[:200]
                del writer.artifacts[kept:]
                _remove_new(out_dir, files)
                if out_of_time:
                    timings[kind] = time.perf_counter() - started
                    break
            timings[kind] = time.perf_counter() - started
            done += _STAGE_WEIGHT[kind]
        logger.info(
            "explained %s: %d artifacts, %s",
            path,
            len(writer.artifacts),
            ", ".join(f"{k} {v:.2f}s" for k, v in timings.items()),
        )
        index = ExplanationIndex(tuple(writer.artifacts), series, timings=timings, missing=missing)
        try:
            index.write(out_dir)
        except OSError:
            # A full disk costs the file on disk, not the verdict: the caller
            # has the index in memory (the site stores it in its database).
            logger.warning("could not write %s's explanation index", path, exc_info=True)
        report("done", 1.0)
        return result, index

    # -- face crops -------------------------------------------------------------

    def _face_crop(
        self, data: AnalysisData, face: FaceResult
    ) -> tuple[RGBImage, tuple[int, int, int]]:
        """The face's square crop (before resizing) and its square in the frame."""
        square = face_square(face.box, self.config.face_margin)
        return cut_square(data.media.frames[face.position].image, square), square

    def _overlays(
        self,
        writer: _Writer,
        kind: ArtifactKind,
        result: AnalysisResult,
        data: AnalysisData,
        member: LoadedMember,
        faces: Sequence[int],
        maps: Sequence[FloatMap],
        caption: Callable[[int, FaceResult, int, float], str],
    ) -> None:
        """Heat maps on the face crops, at the face crops' size and framing."""
        for i, heat in zip(faces, maps, strict=True):
            face = result.faces[i]
            crop, square = self._face_crop(data, face)
            full = data.media.frames[face.position].image
            where = placement(full.shape, face.box, member.crop, member.input_size)
            layer = heat_on_square(crop, square, heat, where)
            frame, t = _when(result, face)
            writer.image(
                kind,
                f"{kind}/{member.name}/p{face.person}_f{frame:06d}",
                resized(layer, self.config.face_side),
                frame=frame,
                time_s=t,
                person=face.person,
                member=member.name,
                caption=caption(i, face, frame, t),
            )

    # -- the kinds ---------------------------------------------------------------

    def _faces(self, writer: _Writer, result: AnalysisResult, data: AnalysisData) -> None:
        """Every analysed face, cropped as the heat maps are drawn."""
        for face in result.faces:
            crop, _ = self._face_crop(data, face)
            frame, t = _when(result, face)
            writer.image(
                "face",
                f"face/p{face.person}_f{frame:06d}",
                resized(crop, self.config.face_side),
                frame=frame,
                time_s=t,
                person=face.person,
                member=None,
                caption=f"Person {face.person} at {t:.2f} s (frame {frame}), as analysed.",
            )

    def _whole_frames(self, writer: _Writer, result: AnalysisResult, data: AnalysisData) -> None:
        """Each sampled frame with a face, small: the context of the face crops."""
        for position in sorted({f.position for f in result.faces}):
            info = result.frames[position]
            image, _ = fit(data.media.frames[position].image, self.config.frame_side)
            t = round(info.time_s, 4)
            writer.image(
                "frame",
                f"frame/f{info.index:06d}",
                image,
                frame=info.index,
                time_s=t,
                person=None,
                member=None,
                caption=f"The whole frame at {t:.2f} s (frame {info.index}).",
            )

    def _gradcam(
        self,
        writer: _Writer,
        result: AnalysisResult,
        data: AnalysisData,
        members: Sequence[LoadedMember],
    ) -> None:
        chosen = select_faces(result, self.config.top_k, self.config.include_least_suspicious)
        faces = [i for idx in chosen.values() for i in idx]
        # The person's least suspicious face is the last one chosen when it was chosen at all.
        least = {
            idx[-1]
            for person, idx in chosen.items()
            if len(idx) > 1
            and self.config.include_least_suspicious
            and result.faces[idx[-1]].score
            == min(f.score for f in result.faces if f.person == person)
        }

        def one(member: LoadedMember) -> None:
            crops = [data.crops[member.name][i] for i in faces]
            activations = data.taps.get(member.name, {}).get(TAP_GRADCAM)
            logits = data.logits.get(member.name)
            maps = gradcam_maps(
                member,
                crops,
                self.config.gradcam_batch,
                logits=None if logits is None or activations is None else logits[faces],
                activations=None if activations is None else activations[faces],
            )

            def caption(
                i: int,
                face: FaceResult,
                frame: int,
                t: float,
                name: str = member.name,
                m: LoadedMember = member,
            ) -> str:
                which = "least suspicious" if i in least else "one of the most suspicious"
                return (
                    f"Grad-CAM: where {name} looked (red most), person {face.person}, "
                    f"{which} frames ({name} {face.members[name]:.2f}{_mirror_note(m)})."
                )

            self._overlays(writer, "gradcam", result, data, member, faces, maps, caption)

        self._each_member(writer, members, one)

    def _each_member(
        self,
        writer: _Writer,
        members: Sequence[LoadedMember],
        make: Callable[[LoadedMember], None],
    ) -> None:
        """``make(member)`` for each member. One member's failure (out of
        memory in a fallback to the full network, a bug) costs that member's
        files of this kind, not the other members'; the failures are raised
        together at the end (:class:`_PartlyMadeError`)."""
        failures = []
        for member in members:
            kept, files = len(writer.artifacts), _files_under(writer.out_dir)
            try:
                make(member)
            except Exception as e:
                if isinstance(e, self.interrupts + self.deadlines):
                    raise
                logger.exception("explanation by %s failed", member.name)
                del writer.artifacts[kept:]
                _remove_new(writer.out_dir, files)
                failures.append(f"{type(e).__name__}: {member.name}: {e}")
        if failures:
            raise _PartlyMadeError("; ".join(failures))

    def _attention(
        self,
        writer: _Writer,
        result: AnalysisResult,
        data: AnalysisData,
        members: Sequence[LoadedMember],
    ) -> None:
        faces = list(range(len(result.faces)))

        def one(member: LoadedMember) -> None:
            maps = attention_maps(
                member,
                data.crops[member.name],
                self.analyzer.config.batch_size,
                raw=data.taps.get(member.name, {}).get(TAP_ATTENTION),
            )

            def caption(
                i: int,
                face: FaceResult,
                frame: int,
                t: float,
                name: str = member.name,
                m: LoadedMember = member,
            ) -> str:
                return (
                    f"Attention: {name}'s own learned weighting, where it looked (red most), "
                    f"person {face.person} ({name} {face.members[name]:.2f}{_mirror_note(m)})."
                )

            self._overlays(writer, "attention", result, data, member, faces, maps, caption)

        self._each_member(writer, [m for m in members if has_attention(m)], one)

    def _ssim_temporal(self, writer: _Writer, result: AnalysisResult, data: AnalysisData) -> None:
        by_person: dict[int, list[FaceResult]] = defaultdict(list)
        for face in result.faces:
            by_person[face.person].append(face)
        for person, faces in by_person.items():
            faces.sort(key=lambda f: f.position)
            for prev, face in pairwise(faces):
                mask = ssim_mask(
                    data.media.frames[prev.position].image,
                    prev.keypoints,
                    data.media.frames[face.position].image,
                    face.keypoints,
                    self.config.ssim_size,
                )
                frame, t = _when(result, face)
                prev_frame, _ = _when(result, prev)
                writer.image(
                    "ssim_temporal",
                    f"ssim_temporal/p{person}_f{frame:06d}",
                    mask.panel(),
                    frame=frame,
                    time_s=t,
                    person=person,
                    member=None,
                    caption=(
                        f"SSIM: frame {prev_frame} | frame {frame} | what changed (red), "
                        f"aligned by landmarks (mean {mask.mean:.3f})."
                    ),
                )

    def _ssim_reference(
        self,
        writer: _Writer,
        result: AnalysisResult,
        data: AnalysisData,
        reference: Path,
        still: bool,
    ) -> None:
        """``still``: the reference is an image, compared with every face (its
        captions name no time)."""
        limits = self.analyzer.config.limits
        times = sorted({round(result.frames[f.position].time_s, 4) for f in result.faces})
        # The reference passed its check before the analysis; what fails now
        # (damage further in) raises here and costs its masks, not the
        # analysis: run() names the kind in the index's missing, and the
        # result says so (before, the tab just did not appear).
        offset = TimeOffset(0.0, False, why="a still image")
        if not still:
            offset = self._reference_offset(result, data, reference)
        # The reference's moment for each of the submission's times; none
        # before the reference starts.
        shifted = {t: round(t + offset.seconds, 4) for t in times}
        shifted = {t: s for t, s in shifted.items() if s >= 0.0}
        ref_frames = frames_at(reference, sorted(set(shifted.values())), limits)
        keys = list(ref_frames)
        detections = dict(
            zip(keys, self.analyzer.detector.detect([ref_frames[k] for k in keys]), strict=True)
        )
        for face in result.faces:
            frame, t = _when(result, face)
            if t not in shifted:
                logger.info("the reference starts after %.2f s; no reference mask there", t)
                continue
            if shifted[t] not in ref_frames:
                logger.info(
                    "no reference frame at %.2f s (damaged, or past its end); no mask there",
                    shifted[t],
                )
                continue
            ref_image = ref_frames[shifted[t]]
            full = data.media.frames[face.position].image
            match = matching_face(face.box, full.shape, detections[shifted[t]], ref_image.shape)
            if match is None:
                logger.info(
                    "no face in the reference at %.2f s; no reference mask there", shifted[t]
                )
                continue
            mask = ssim_mask(
                full, face.keypoints, ref_image, match.keypoints, self.config.ssim_size
            )
            where = "reference image" if still else _reference_moment(shifted[t], offset)
            writer.image(
                "ssim_reference",
                f"ssim_reference/p{face.person}_f{frame:06d}",
                mask.panel(),
                frame=frame,
                time_s=t,
                person=face.person,
                member=None,
                caption=(
                    f"SSIM: submitted | {where} | where they differ (red), "
                    f"aligned by landmarks (mean {mask.mean:.3f})."
                ),
            )

    def _reference_offset(
        self, result: AnalysisResult, data: AnalysisData, reference: Path
    ) -> TimeOffset:
        """Where the submission's sampled frames lie in the reference video
        (``explain.reference``); no shift when that cannot be told."""
        frames = data.media.frames
        if len(frames) != len(result.frames):
            return TimeOffset(0.0, False, why="the sampled frames are not all at hand")
        try:
            offset = reference_offset(
                reference,
                [f.time_s for f in result.frames],
                [f.image for f in frames],
                self.analyzer.config.limits,
            )
        except (TrusttraceError, ValueError, OSError) as e:
            # Placing it is a refinement: the comparison at equal times
            # still runs (a reference frames_at cannot read fails there).
            logger.warning("reference not searched in time: %s", e, exc_info=True)
            return TimeOffset(0.0, False, why="the reference could not be searched")
        if offset.aligned:
            logger.info(
                "reference aligned in time: %+.2f s (mean correlation %.2f)",
                offset.seconds,
                offset.score,
            )
        else:
            logger.info("reference not aligned in time (%s); same times compared", offset.why)
        return offset

    def _chart(self, writer: _Writer, series: dict[str, Any], members: list[str]) -> None:
        fig = score_figure(series, members, self.config)
        size = chart_size(members, self.config)
        caption = (
            "Fake probability per sampled frame against time: the ensemble and each member, "
            "one line per person, with the decision threshold (dashed) and the uncertain band "
            "(shaded)."
        )
        writer.raw("chart", "chart.png", render_png(fig), "image/png", size, caption)
        writer.raw("chart", "chart.svg", render_svg(fig), "image/svg+xml", size, caption)


def _reference_moment(t: float, offset: TimeOffset) -> str:
    """The caption's name for the reference frame at ``t`` seconds."""
    if not offset.aligned:
        return f"reference at {t:.2f} s (the same time: not aligned, {offset.why})"
    if abs(offset.seconds) < 0.0005:
        return f"reference at {t:.2f} s (the same moment)"
    return f"reference at {t:.2f} s (the same moment: {offset.seconds:+.2f} s in the reference)"


def _mirror_note(member: LoadedMember) -> str:
    """For a member that scores each face mirrored too: its score is of both
    views, the map of the face as is."""
    return "; the score averages the face and its mirror image" if member.mirror else ""
