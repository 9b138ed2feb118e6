"""What the result page's frame viewer shows, built from a submission's chart
series and its stored artifacts (the explainer's index, one row per entry).

One entry per person and sampled frame: its time, scores and face box, the
face crop, the whole frame, and one layer per explanation (a member's
Grad-CAM, the attention map, the SSIM masks). The page renders the most
suspicious entry on the server and hands all of them to ``viewer.js``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from analyses.models import Artifact, ArtifactKind, Submission

# Frames in the filmstrip of most suspicious frames (per person).
TOP_K = 8
# Kinds drawn on the face crop (laid over it at the viewer's opacity), and
# kinds that are pictures of their own (the SSIM panels: first | second | difference).
HEAT_KINDS = (ArtifactKind.GRADCAM, ArtifactKind.ATTENTION)
PANEL_KINDS = (ArtifactKind.SSIM_TEMPORAL, ArtifactKind.SSIM_REFERENCE)
TAB_ORDER = (*HEAT_KINDS, *PANEL_KINDS)
TAB_LABELS = {
    ArtifactKind.GRADCAM: "Grad-CAM",
    ArtifactKind.ATTENTION: "Attention",
    ArtifactKind.SSIM_TEMPORAL: "SSIM temporal",
    ArtifactKind.SSIM_REFERENCE: "SSIM vs reference",
}
# Why a tab has nothing for some frames (shown in the viewer instead of an image).
TAB_ABSENT = {
    ArtifactKind.GRADCAM: "Grad-CAM is computed for each person's most suspicious frames "
    "and the least suspicious one; pick one in the filmstrip.",
    ArtifactKind.ATTENTION: "No attention map for this face.",
    ArtifactKind.SSIM_TEMPORAL: "A person's first frame has no previous frame to compare with.",
    ArtifactKind.SSIM_REFERENCE: "No face in the reference at this time.",
}
VERDICT_SENTENCES = {
    "fake": "The detectors' calibrated score is above the uncertain band: the faces look "
    "manipulated to them. Check the frames below before acting on it.",
    "uncertain": "The score lies within the uncertain band around the threshold: the detectors "
    "cannot tell. A person should look at the frames below.",
    # gan_faces measured it (README, "Fully generated faces"): the detectors
    # learned face swaps and score StyleGAN2 faces as real most of the time.
    "real": "The score is below the uncertain band: the detectors found no sign of the face "
    "swaps they were trained on. That is not proof the media is authentic: they do not "
    "recognise faces generated whole by an image model.",
    "no_face": "No face was found, so the detectors, which judge faces only, gave no score.",
}
STATUS_SENTENCES = {
    "pending": "Queued; the analysis starts when a worker is free.",
    "running": "Being analysed.",
    "rejected": "The file could not be analysed; no score was given.",
    "failed": "The analysis failed on our side; no score was given.",
}
HEAT_NOTE = (
    "A heat map shows where a model looked when it scored the face: not proof of where, or "
    "whether, the face was manipulated. A real face gets one too: each Grad-CAM map is "
    "stretched from its own lowest to its own highest value, so it shows where the model "
    "looked most within that face, not how strongly. The attention map is the B4 model's own "
    "weighting, from 0 to 1, not stretched. "
    "The SSIM masks are no model's opinion: they show where two aligned faces differ."
)


@dataclass(frozen=True)
class Tab:
    key: str
    kind: str
    member: str
    label: str
    overlay: bool  # laid over the face crop (heat maps) or shown alone (SSIM panels)


@dataclass
class Entry:
    """One person in one sampled frame."""

    person: int
    frame: int
    time: float
    score: float
    members: dict[str, float]
    box: list[float] | None = None
    face: str = ""
    whole: str = ""
    layers: dict[str, dict[str, str]] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "person": self.person,
            "frame": self.frame,
            "time": self.time,
            "score": self.score,
            "members": self.members,
            "box": self.box,
            "face": self.face,
            "whole": self.whole,
            "layers": self.layers,
        }


@dataclass
class Viewer:
    """Everything the viewer shows, and what the server renders first."""

    entries: list[Entry]
    tabs: list[Tab]
    persons: list[int]
    selected: int | None  # index into entries: the most suspicious face
    top: dict[int, list[int]]  # person -> indices into entries, most suspicious first
    threshold: float | None
    band: float | None

    @property
    def current(self) -> Entry | None:
        return None if self.selected is None else self.entries[self.selected]

    def select_person(self, person: int) -> None:
        """Select ``person``'s most suspicious face (nothing changes for an unknown person)."""
        if self.top.get(person):
            self.selected = self.top[person][0]

    def count(self, person: int | None) -> int:
        """How many frames show ``person``."""
        return sum(e.person == person for e in self.entries)

    def filmstrip(self, person: int | None, everything: bool = False) -> list[Entry]:
        """The person's ``TOP_K`` most suspicious frames (or all, in time order)."""
        if person is None:
            return []
        if everything:
            return [e for e in self.entries if e.person == person]
        return [self.entries[i] for i in self.top.get(person, [])]

    def as_json(self) -> dict[str, Any]:
        return {
            "entries": [e.as_json() for e in self.entries],
            "tabs": [t.__dict__ for t in self.tabs],
            "absent": {k.value: v for k, v in TAB_ABSENT.items()},
            "persons": self.persons,
            "selected": self.selected,
            "top": {str(k): v for k, v in self.top.items()},
            "threshold": self.threshold,
            "band": self.band,
        }


def _tab_key(kind: str, member: str) -> str:
    return f"{kind}:{member}" if member else kind


def build_viewer(
    series: dict[str, Any], artifacts: Iterable[Artifact], url: Callable[[Artifact], str]
) -> Viewer:
    """The viewer of a submission from its chart ``series`` and ``artifacts``."""
    entries: list[Entry] = []
    for person in series.get("persons", []) if isinstance(series, dict) else []:
        for pt in person.get("points", []):
            entries.append(
                Entry(
                    person=int(person["id"]),
                    frame=int(pt["frame"]),
                    time=float(pt["time"]),
                    score=float(pt["score"]),
                    members=dict(pt.get("members") or {}),
                    box=pt.get("box"),
                )
            )
    entries.sort(key=lambda e: (e.person, e.frame))
    at = {(e.person, e.frame): e for e in entries}
    tabs: dict[str, Tab] = {}
    for a in artifacts:
        if a.frame is None:
            continue
        if a.kind == ArtifactKind.FRAME:
            for e in entries:
                if e.frame == a.frame:
                    e.whole = url(a)
            continue
        entry = at.get((a.person if a.person is not None else -1, a.frame))
        if entry is None:
            continue
        if a.kind == ArtifactKind.FACE:
            entry.face = url(a)
        elif a.kind in TAB_ORDER:
            key = _tab_key(a.kind, a.member)
            if key not in tabs:
                label = TAB_LABELS[ArtifactKind(a.kind)] + (f" · {a.member}" if a.member else "")
                tabs[key] = Tab(key, a.kind, a.member, label, a.kind in HEAT_KINDS)
            entry.layers[key] = {"url": url(a), "caption": a.caption}
    ordered = sorted(tabs.values(), key=lambda t: (TAB_ORDER.index(ArtifactKind(t.kind)), t.member))
    top: dict[int, list[int]] = {}
    for i in sorted(range(len(entries)), key=lambda i: (-entries[i].score, entries[i].frame)):
        ranked = top.setdefault(entries[i].person, [])
        if len(ranked) < TOP_K:
            ranked.append(i)
    selected = (
        min(
            range(len(entries)),
            key=lambda i: _rank(entries[i].score, entries[i].person, entries[i].frame),
        )
        if entries
        else None
    )
    return Viewer(
        entries=entries,
        tabs=ordered,
        persons=sorted(top),
        selected=selected,
        top=top,
        threshold=series.get("threshold") if isinstance(series, dict) else None,
        band=series.get("uncertain_band") if isinstance(series, dict) else None,
    )


@dataclass(frozen=True)
class Bar:
    """A score drawn as a bar against the threshold band (percentages of the width)."""

    name: str
    score: float
    side: str  # "fake", "uncertain" or "real": where the score falls

    @property
    def percent(self) -> float:
        return round(max(0.0, min(1.0, self.score)) * 100, 1)


def score_bars(sub: Submission) -> list[Bar]:
    """Each member's calibrated score, ordered by name, with the side of the band it is on."""
    threshold = sub.threshold if sub.threshold is not None else 0.5
    band = sub.uncertain_band or 0.0
    out = []
    for name in sorted(sub.members):
        score = float(sub.members[name])
        # The verdict's own rule (ensemble.scoring.verdict_for): fake at or
        # above the band's top edge, real below its bottom edge.
        side = (
            "fake"
            if score >= threshold + band
            else "real"
            if score < threshold - band
            else ("uncertain")
        )
        out.append(Bar(name, score, side))
    return out


def band_percent(sub: Submission) -> tuple[float, float, float]:
    """Low edge, width and threshold of the uncertain band, as percentages."""
    threshold = sub.threshold if sub.threshold is not None else 0.5
    band = sub.uncertain_band or 0.0
    low, high = max(0.0, threshold - band), min(1.0, threshold + band)
    return round(low * 100, 1), round((high - low) * 100, 1), round(threshold * 100, 1)


def verdict_sentence(sub: Submission) -> str:
    """One sentence on what the outcome means."""
    if sub.status == "done":
        return VERDICT_SENTENCES.get(sub.verdict, "")
    return STATUS_SENTENCES.get(sub.status, "")


def badge(sub: Submission) -> tuple[str, str]:
    """The badge's class suffix and text: the verdict when done, else the status."""
    if sub.status == "done" and sub.verdict:
        return sub.verdict, sub.get_verdict_display()
    return sub.status, sub.get_status_display()


def most_suspicious(series: dict[str, Any]) -> tuple[int, int] | None:
    """``(person, frame)`` of the highest-scoring point of a chart series:
    the face the result and review pages open on (ties as :func:`_rank`)."""
    best: tuple[float, int, int] | None = None
    for person in series.get("persons", []) if isinstance(series, dict) else []:
        for pt in person.get("points", []):
            key = _rank(float(pt["score"]), int(person["id"]), int(pt["frame"]))
            if best is None or key < best:
                best = key
    return None if best is None else (best[2], best[1])


def _rank(score: float, person: int, frame: int) -> tuple[float, int, int]:
    """Most suspicious first; among equal scores the earlier frame, then the
    lower person: one order for the viewer's first face and the thumbnails."""
    return (-score, frame, person)


def thumbnails(subs: Sequence[Submission]) -> dict[UUID, int]:
    """Submission pk -> the artifact id of its most suspicious face crop."""
    wanted = {s.pk: most_suspicious(s.series) for s in subs}
    rows = Artifact.objects.filter(
        submission__in=[pk for pk, w in wanted.items() if w], kind=ArtifactKind.FACE
    ).values_list("submission_id", "person", "frame", "pk")
    out: dict[UUID, int] = {}
    for sub_id, person, frame, pk in rows:
        if wanted.get(sub_id) == (person, frame):
            out[sub_id] = pk
    return out
