"""``analyze()``: media in, :class:`AnalysisResult` out.

Collaborators (the face detector and the loaded members) come in as
arguments, so the pipeline runs in tests with tiny models and in a worker
with models loaded once per process (:class:`Analyzer`).

Bad input is a result, not a crash: an :class:`InvalidMediaError` becomes a
``rejected`` result with the error's message as the reason, and a video
without faces is ``done`` with the verdict ``no_face``. Any other exception is
a bug and propagates; it is never turned into a score.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from ensemble.calibration import Combiner, read_calibration
from ensemble.config import AnalysisConfig
from ensemble.crops import crop_face
from ensemble.errors import InvalidMediaError, NonFiniteScoreError, RegistryError
from ensemble.faces import FaceDetector
from ensemble.media import LoadedMedia, RGBImage, load_media
from ensemble.members import TAP_ATTENTION, TAP_GRADCAM, LoadedMember, load_member
from ensemble.registry import REGISTRY, Registry
from ensemble.results import (
    AnalysisResult,
    FaceResult,
    FrameInfo,
    ModelInfo,
    PersonResult,
)
from ensemble.runtime import release_memory
from ensemble.scoring import aggregate, calibrate, verdict_for
from ensemble.tracks import all_tracks, faces_left_out, keep_tracks, looks_of
from ensemble.weights import read_manifest

logger = logging.getLogger(__name__)

ProgressFn = Callable[[str, float], None]

# Grad-CAM layer outputs are kept for at most this many faces (32 frames x 8
# faces, the defaults' most; about 0.5 MB a face for B7). Beyond it the
# explanations compute them again for the few faces they show, rather than
# hold them for every face of a long video.
MAX_TAPPED_FACES = 256

# Share of the progress bar each stage fills; the members share the rest.
_PROGRESS = {"decode": 0.10, "detect": 0.20, "track": 0.22, "crop": 0.25, "score": 1.0}


class _Clock:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start


@dataclass(frozen=True)
class AnalysisData:
    """What an analysis decoded, cut and computed, kept for explanations so
    nothing is decoded or run twice: the sampled frames; each member's crops,
    raw logits of the crops as is (the pass the taps come from, also for a
    member that scores faces mirrored too) and (when asked for) taps, in the
    order of ``AnalysisResult.faces``."""

    media: LoadedMedia
    crops: Mapping[str, list[RGBImage]]
    logits: Mapping[str, npt.NDArray[np.float64]] = field(default_factory=dict)
    # member -> tap name -> ``[faces, ...]`` (see ``LoadedMember.infer``).
    taps: Mapping[str, Mapping[str, npt.NDArray[np.float32]]] = field(default_factory=dict)


def analyze(
    path: Path,
    config: AnalysisConfig,
    *,
    members: Mapping[str, LoadedMember],
    detector: FaceDetector,
    progress: ProgressFn | None = None,
    combiner: Combiner | None = None,
) -> AnalysisResult:
    """Analyse one image or video with the members named in ``config.members``;
    ``combiner`` turns their probabilities into the ensemble's (default: the
    plain mean)."""
    result, _ = analyze_with_data(
        path, config, members=members, detector=detector, progress=progress, combiner=combiner
    )
    return result


def analyze_with_data(
    path: Path,
    config: AnalysisConfig,
    *,
    members: Mapping[str, LoadedMember],
    detector: FaceDetector,
    progress: ProgressFn | None = None,
    keep_taps: bool = False,
    combiner: Combiner | None = None,
) -> tuple[AnalysisResult, AnalysisData | None]:
    """:func:`analyze`, also returning the decoded frames, the crops and the
    logits when faces were scored (``None`` otherwise); with ``keep_taps``,
    also the members' taps from the same pass."""
    missing = [m for m in config.members if m not in members]
    if missing:
        raise RegistryError(f"members not loaded: {', '.join(missing)}")
    selected = [members[m] for m in config.members]
    report = progress or (lambda stage, fraction: None)
    clock = _Clock()
    started = time.perf_counter()
    scoring = config.scoring
    combine = combiner or Combiner()

    def finish(
        data: AnalysisData | None = None, **fields: object
    ) -> tuple[AnalysisResult, AnalysisData | None]:
        clock.timings["total"] = time.perf_counter() - started
        report("done", 1.0)
        return AnalysisResult(
            file=str(path),
            threshold=scoring.threshold,
            uncertain_band=scoring.uncertain_band,
            models=tuple(
                ModelInfo(
                    m.name,
                    m.weights_sha256,
                    m.input_size,
                    m.temperature,
                    m.backend,
                    m.compute_precision,
                    m.mirror,
                    m.bias,
                )
                for m in selected
            ),
            combination=combine.describe(),
            timings=dict(clock.timings),
            **fields,  # type: ignore[arg-type]
        ), data

    report("decode", 0.0)
    try:
        with clock.stage("decode"):
            media = load_media(path, config.limits, config.frames)
    except InvalidMediaError as e:
        logger.info("rejected %s: %s", path, e)
        return finish(status="rejected", reason=str(e), reason_code=e.code)
    report("detect", _PROGRESS["decode"])

    images = [f.image for f in media.frames]
    with clock.stage("detect"):
        too_small: list[int] = []
        found = detector.detect_all(images, too_small)
    limit = config.faces.max_faces_per_frame
    detections = [faces[:limit] for faces in found]
    report("track", _PROGRESS["detect"])
    with clock.stage("track"):
        looks = looks_of(images, detections)
        times = [f.time_s for f in media.frames]
        every = all_tracks(detections, config.faces.track_iou, looks, times)
        tracks = keep_tracks(every, len(detections), config.faces.min_track_fraction)
    frames = tuple(
        FrameInfo(pos, f.index, f.time_s, len(detections[pos]))
        for pos, f in enumerate(media.frames)
    )
    damage = _damage_note(media.info.frames_missing, media.info.frames_requested, len(frames))
    brief = faces_left_out(every, tracks)
    crowded = sum(1 for faces in found if len(faces) > limit)
    where = "image" if media.info.kind == "image" else None
    notes = " ".join(filter(None, (damage, _faces_note(brief, crowded, limit, len(frames), where))))
    if not tracks:
        what = "image" if media.info.kind == "image" else f"{len(frames)} sampled frames"
        found_none = f"No face was found in the {what}."
        if any(too_small):
            # Not "no face": there were faces, too small to judge.
            seen = "the face seen was" if sum(too_small) == 1 else "the faces seen were"
            found_none = (
                f"No face large enough to judge was found in the {what}: {seen} smaller "
                f"than {config.faces.min_face_px} pixels across."
            )
        return finish(
            status="done",
            verdict="no_face",
            reason=" ".join(filter(None, (found_none, damage))),
            reason_code="no_face",
            media=media.info,
            frames=frames,
        )
    report("crop", _PROGRESS["track"])

    faces = [(track.id, pos, det) for track in tracks for pos, det in track.detections]
    with clock.stage("crop"):
        crops = {
            m.name: [crop_face(images[pos], det.box, m.crop, m.input_size) for _, pos, det in faces]
            for m in selected
        }
    report(selected[0].name, _PROGRESS["crop"])

    # The attention map is small (one channel); the Grad-CAM layer is not.
    wanted: tuple[str, ...] = ()
    if keep_taps:
        wanted = (TAP_ATTENTION,) + ((TAP_GRADCAM,) if len(faces) <= MAX_TAPPED_FACES else ())
    probs: dict[str, np.ndarray] = {}
    raw_logits: dict[str, npt.NDArray[np.float64]] = {}
    taps: dict[str, Mapping[str, npt.NDArray[np.float32]]] = {}
    done = 0
    total = len(faces) * len(selected)
    span = _PROGRESS["score"] - _PROGRESS["crop"]
    for member in selected:

        def on_batch(n: int, name: str = member.name) -> None:
            nonlocal done
            done += n
            report(name, _PROGRESS["crop"] + span * done / total * 0.98)

        with clock.stage(f"member:{member.name}"):
            inference = member.infer(crops[member.name], config.batch_size, on_batch, taps=wanted)
        if len(inference.logits) != len(faces):
            # A model with more than one output per crop would shift every
            # face's score onto another face.
            raise NonFiniteScoreError(
                f"{member.name} returned {len(inference.logits)} logit(s) for "
                f"{len(faces)} face(s); no score is given."
            )
        bad = ~np.isfinite(inference.logits)
        if bad.any():
            # NaN compares false against both edges of the band: it would
            # read as "uncertain", a score nobody measured.
            raise NonFiniteScoreError(
                f"{member.name} returned {int(bad.sum())} non-finite logit(s) for "
                f"{len(faces)} face(s); no score is given."
            )
        raw_logits[member.name] = inference.tapped_logits
        if inference.taps:
            taps[member.name] = inference.taps
        probs[member.name] = calibrate(inference.logits, member.temperature, member.bias)
    report("score", _PROGRESS["crop"] + span * 0.98)

    with clock.stage("score"):
        face_scores = combine({m.name: probs[m.name] for m in selected})
        if not np.isfinite(face_scores).all():
            raise NonFiniteScoreError(
                "the combined score of a face is not a number (a member's calibration or "
                "the ensemble's fit is broken); no score is given."
            )
        face_results = tuple(
            FaceResult(
                position=pos,
                person=track_id,
                box=det.box,
                detection_score=det.score,
                keypoints=det.keypoints,
                members={m.name: float(probs[m.name][i]) for m in selected},
                score=float(face_scores[i]),
            )
            for i, (track_id, pos, det) in enumerate(faces)
        )
        persons = []
        for track in tracks:
            idx = [i for i, (tid, _, _) in enumerate(faces) if tid == track.id]
            score = aggregate(face_scores[idx], scoring.aggregation)
            persons.append(
                PersonResult(
                    id=track.id,
                    positions=track.frames,
                    members={
                        m.name: aggregate(probs[m.name][idx], scoring.aggregation) for m in selected
                    },
                    score=score,
                    verdict=verdict_for(score, scoring),
                )
            )
        worst = max(persons, key=lambda p: p.score)
    return finish(
        AnalysisData(media, crops, raw_logits, taps),
        status="done",
        media=media.info,
        frames=frames,
        faces=face_results,
        persons=tuple(persons),
        members=dict(worst.members),
        score=worst.score,
        verdict=worst.verdict,
        reason=notes or None,
    )


def _faces_note(
    brief: int, crowded: int, limit: int, sampled: int, image: str | None = None
) -> str | None:
    """What a result says of faces it did not score (``None``: none)."""
    parts = []
    if brief:
        parts.append(
            f"{brief} face{'s' if brief > 1 else ''} seen in only a few of the {sampled} "
            "sampled frames (beside faces seen throughout) "
            f"{'were' if brief > 1 else 'was'} not analysed."
        )
    if crowded and image:
        parts.append(
            f"The {image} held more than {limit} faces; the {limit} found most surely "
            "were analysed."
        )
    elif crowded:
        parts.append(
            f"{crowded} sampled frame{'s' if crowded > 1 else ''} held more than {limit} faces; "
            f"the {limit} found most surely in each were analysed."
        )
    return " ".join(parts) or None


def _damage_note(missing: int, requested: int, decoded: int) -> str | None:
    """What a result says when some sampled frames were damaged (``None``: none were)."""
    if not missing:
        return None
    return (
        f"{missing} of the {requested} frames sampled could not be decoded (damaged data); "
        f"the result rests on the {decoded} that were."
    )


class Analyzer:
    """Loads the detector and the members once, then analyses many files.

    A worker process keeps one of these; nothing is loaded until first use.
    """

    def __init__(self, config: AnalysisConfig, registry: Registry = REGISTRY) -> None:
        self.config = config
        self.registry = registry
        self._detector: FaceDetector | None = None
        self._members: dict[str, LoadedMember] = {}
        self._combiner: Combiner | None = None

    def prepare(self) -> None:
        """Load everything now (raises :class:`MissingWeightsError` early)."""
        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        for name in self.config.members:
            self.registry.get(name)  # unknown names fail before any loading
            if name not in self._members:
                read_manifest(self.config.weights_dir, name)  # so do missing weights
        # And a damaged ensemble.json, before minutes of loading.
        calibration = read_calibration(self.config.weights_dir) if self._combiner is None else None
        if self._detector is None:
            unknown = [n for n in self.config.mirror if n not in self.registry]
            if unknown:
                # Not an error: a registry of other members (tests, a custom
                # one) meets the default; but a misspelt name would otherwise
                # silently mirror nothing. Said once, on the first load.
                logger.warning(
                    "TRUSTTRACE_MIRROR names no detector of this registry: %s", ", ".join(unknown)
                )
            self._detector = FaceDetector.load(
                self.config.faces,
                self.config.cache_dir,
                self.config.device,
                backend=self.config.backend,
                threads=self.config.threads,
            )
        for name in self.config.members:
            if name not in self._members:
                self._members[name] = load_member(
                    name,
                    self.config.weights_dir,
                    self.config.device,
                    self.registry,
                    backend=self.config.backend,
                    cache_dir=self.config.cache_dir,
                    threads=self.config.threads,
                    precision=self.config.precision,
                    mirror=name in self.config.mirror,
                )
                # Loading freed the weights the compiled graph and the
                # Grad-CAM replay do not need, and compiling left duplicates
                # mapped: handed back before the next member's are read.
                release_memory()
        if self._combiner is None:
            self._combiner = Combiner.for_members(
                calibration,
                {n: self._members[n].weights_sha256 for n in self.config.members},
                {n: self._members[n].temperature for n in self.config.members},
                [n for n in self.config.members if self._members[n].mirror],
                {n: self._members[n].bias for n in self.config.members},
                {n: self._members[n].inputs for n in self.config.members},
            )
            if self._combiner.skipped:
                logger.warning("ensemble calibration not applied: %s", self._combiner.skipped)

    @property
    def combiner(self) -> Combiner:
        """How member probabilities become the ensemble's (loaded on first use)."""
        self.prepare()
        assert self._combiner is not None
        return self._combiner

    def analyze(self, path: Path, progress: ProgressFn | None = None) -> AnalysisResult:
        return self.analyze_with_data(path, progress)[0]

    def analyze_with_data(
        self, path: Path, progress: ProgressFn | None = None, *, keep_taps: bool = False
    ) -> tuple[AnalysisResult, AnalysisData | None]:
        """:meth:`analyze`, also returning the decoded frames, crops, logits
        and, with ``keep_taps``, the members' taps."""
        self.prepare()
        assert self._detector is not None
        # A worker's memory between jobs: what the last analysis freed (its
        # frames, crops and buffers) goes back to the OS before this one
        # allocates its own, and afterwards.
        release_memory()
        try:
            return analyze_with_data(
                path,
                self.config,
                members=self._members,
                detector=self._detector,
                progress=progress,
                keep_taps=keep_taps,
                combiner=self._combiner,
            )
        finally:
            release_memory()

    @property
    def detector(self) -> FaceDetector:
        """The face detector (loaded on first use)."""
        self.prepare()
        assert self._detector is not None
        return self._detector

    @property
    def members(self) -> Mapping[str, LoadedMember]:
        """The loaded members, by name (loaded on first use)."""
        self.prepare()
        return self._members
