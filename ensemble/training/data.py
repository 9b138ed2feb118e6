"""Labelled face-crop datasets: reading, splitting, digesting, keypoints.

Two layouts are read (README, "Training and evaluation"):

- a folder with ``real/`` and ``fake/`` (optionally under ``train/``,
  ``validation/`` (or ``val/``) and ``test/``; names in any case, as the
  seeds' ``Train/Real``); with ``train/`` but no ``validation/``, validation
  is carved out of ``train/`` by the hash rule below;
- a ``metadata.csv`` with ``file,label[,split][,original][,keypoints]``:
  ``file`` relative to the CSV's folder; ``label`` REAL/FAKE (any case) or
  0/1; ``split`` train/val/validation/test; ``original`` the real crop a fake
  was made from, as a file of the dataset or as the value of a ``video``
  column (the dfdc_faces layout); ``keypoints`` twelve numbers, the six
  BlazeFace keypoints in crop pixels, as written by ``extract_faces``.

Without a split column, 20% of the groups (a real crop and the fakes made
from it) go to validation, chosen by a hash of the group's name, so the split
never depends on the order of the rows and no source crosses splits.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from ensemble.errors import TrusttraceError
from ensemble.media import RGBImage

logger = logging.getLogger(__name__)

METADATA_NAME = "metadata.csv"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
VAL_FRACTION = 0.2
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
}
LABELS = {"real": 0, "fake": 1, "0": 0, "1": 1}
N_KEYPOINTS = 6

Keypoints = tuple[tuple[float, float], ...]


class DatasetError(TrusttraceError, ValueError):
    """A dataset that cannot be read, with what is wrong in words."""


@dataclass(frozen=True)
class Sample:
    """One labelled crop. ``label`` 1 is fake. ``original`` is the real crop a
    fake was made from, when known."""

    path: Path
    label: int
    split: str
    original: Path | None = None
    keypoints: Keypoints | None = None
    group: str = ""


def parse_label(value: str, where: str) -> int:
    """REAL/FAKE (any case) or 0/1 -> 0 or 1; ``where`` names the place in errors."""
    try:
        return LABELS[value.strip().lower()]
    except KeyError:
        raise DatasetError(f"{where}: label {value!r} is not REAL, FAKE, 0 or 1") from None


def _split(value: str, where: str) -> str:
    try:
        return SPLIT_ALIASES[value.strip().lower()]
    except KeyError:
        known = ", ".join(sorted(set(SPLIT_ALIASES)))
        raise DatasetError(f"{where}: split {value!r} is not one of {known}") from None


def parse_keypoints(text: str) -> Keypoints | None:
    """Twelve numbers (x y pairs) -> six keypoints; empty text -> None."""
    values = text.replace(",", " ").split()
    if not values:
        return None
    if len(values) != 2 * N_KEYPOINTS:
        raise DatasetError(f"keypoints need {2 * N_KEYPOINTS} numbers, got {len(values)}")
    nums = [float(v) for v in values]
    return tuple((nums[2 * i], nums[2 * i + 1]) for i in range(N_KEYPOINTS))


def format_keypoints(keypoints: Sequence[Sequence[float]] | None) -> str:
    if keypoints is None:
        return ""
    return " ".join(f"{v:.1f}" for point in keypoints for v in point)


def _hash_split(group: str) -> str:
    h = int.from_bytes(hashlib.sha256(group.encode()).digest()[:8], "big")
    return "val" if (h % 10_000) / 10_000 < VAL_FRACTION else "train"


def _int(text: str | None) -> int | None:
    try:
        return int((text or "").strip())
    except ValueError:
        return None


def _keypoint_distance(a: str | None, b: str | None) -> float:
    """Mean distance between two rows' keypoints (infinite when either has none)."""
    try:
        ka, kb = parse_keypoints(a or ""), parse_keypoints(b or "")
    except (DatasetError, ValueError):
        return math.inf
    if ka is None or kb is None:
        return math.inf
    return float(np.mean([math.dist(p, q) for p, q in zip(ka, kb, strict=True)]))


def _matching_real(reals: Sequence[dict[str, str]], fake: dict[str, str]) -> dict[str, str]:
    """The real crop a fake crop was made from, among its source video's real
    crops: the same frame (``frame`` column) or the nearest, then the face
    whose keypoints lie closest, then the same tracked person. Without frame
    numbers, the video's first real crop."""
    frame, person = _int(fake.get("frame")), _int(fake.get("person"))
    if frame is None:
        return reals[0]

    def cost(real: dict[str, str]) -> tuple[float, float, bool]:
        other = _int(real.get("frame"))
        gap = math.inf if other is None else abs(other - frame)
        near = _keypoint_distance(real.get("keypoints"), fake.get("keypoints"))
        return (gap, near, _int(real.get("person")) != person)

    return min(reals, key=cost)


def _read_csv(csv_path: Path) -> list[Sample]:
    root = csv_path.parent
    with csv_path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        fields = set(reader.fieldnames or [])
        if not {"file", "label"} <= fields:
            raise DatasetError(f"{csv_path} needs the columns file,label (has {sorted(fields)})")
        rows = list(reader)
    # Real crops by their source video, and each real crop's group, so that a
    # fake finds its original (by video name, by the video's file name, or by
    # the crop's own path) and shares its group, whichever way the CSV names it.
    reals_of: dict[str, list[dict[str, str]]] = {}
    real_group: dict[str, str] = {}
    for n, row in enumerate(rows, start=2):
        if parse_label(row["label"], f"{csv_path}:{n}") == 0:
            file, video = row["file"].strip(), (row.get("video") or "").strip()
            real_group[file] = video or file
            if video:
                reals_of.setdefault(video, []).append(row)
    by_name: dict[str, list[str]] = {}
    for video in reals_of:
        by_name.setdefault(Path(video).name, []).append(video)
    samples = []
    for n, row in enumerate(rows, start=2):
        where = f"{csv_path}:{n}"
        path = root / row["file"].strip()
        label = parse_label(row["label"], where)
        original: Path | None = None
        ref = (row.get("original") or "").strip()
        video = (row.get("video") or "").strip()
        group = video or row["file"].strip()
        if ref:
            same_name = by_name.get(Path(ref).name, [])
            source = ref if ref in reals_of else same_name[0] if len(same_name) == 1 else None
            if source is not None:
                original = root / _matching_real(reals_of[source], row)["file"].strip()
                group = source
            else:
                original = root / ref
                group = real_group.get(ref, ref)
            if not original.is_file():
                original = None  # the source crop is not part of the dataset
        split_text = (row.get("split") or "").strip()
        split = _split(split_text, where) if split_text else _hash_split(group)
        keypoints = parse_keypoints(row.get("keypoints") or "")
        samples.append(Sample(path, label, split, original, keypoints, group))
    return samples


def _images(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )


def _subdirs(folder: Path, names: dict[str, str]) -> list[tuple[Path, str]]:
    """``(subfolder, value)`` for the subfolders whose lower-cased name is a
    key of ``names`` (the seeds' datasets spell them ``Train/Real`` too)."""
    if not folder.is_dir():
        return []
    return [
        (d, names[d.name.lower()])
        for d in sorted(folder.iterdir())
        if d.is_dir() and d.name.lower() in names
    ]


def _read_folders(root: Path) -> list[Sample]:
    samples = []
    parts = _subdirs(root, SPLIT_ALIASES) or [(root, "")]
    # train/ without validation/: validation is carved out of train/ by hash.
    has_val = any(split == "val" for _, split in parts)
    for folder, split in parts:
        for class_dir, label_name in _subdirs(folder, {"real": "real", "fake": "fake"}):
            label = LABELS[label_name]
            for path in _images(class_dir):
                group = str(path.relative_to(root))
                chosen = split if split and (split != "train" or has_val) else _hash_split(group)
                samples.append(Sample(path, label, chosen, None, None, group))
    return samples


def split_leaks(samples: Iterable[Sample]) -> list[str]:
    """Groups (a source and the fakes made from it) found in more than one
    split: validation on them would measure memory, not detection."""
    splits: dict[str, set[str]] = {}
    for s in samples:
        if s.group:
            splits.setdefault(s.group, set()).add(s.split)
    return sorted(g for g, found in splits.items() if len(found) > 1)


def dataset_root(data: Path) -> Path:
    """The folder a dataset's crop paths are relative to (as
    :func:`load_samples` resolves them): ``data``, or the folder of its
    ``metadata.csv``."""
    return data.parent if data.is_file() else data


def load_samples(source: Path) -> list[Sample]:
    """Every sample of a dataset (CSV file, folder with metadata.csv, or a
    real/fake folder tree). Raises :class:`DatasetError` for bad layouts."""
    if source.is_file():
        samples = _read_csv(source)
    elif (source / METADATA_NAME).is_file():
        samples = _read_csv(source / METADATA_NAME)
    elif source.is_dir():
        samples = _read_folders(source)
    else:
        raise DatasetError(f"{source} is neither a dataset folder nor a metadata CSV")
    if not samples:
        raise DatasetError(
            f"{source} holds no labelled images (expected real/ and fake/ folders "
            f"or a {METADATA_NAME} with file,label)"
        )
    return samples


def select(samples: Iterable[Sample], split: str | None) -> list[Sample]:
    """The samples of one split (``None``: all)."""
    if split is None:
        return list(samples)
    wanted = _split(split, "--split")
    return [s for s in samples if s.split == wanted]


def limit_balanced(
    samples: Sequence[Sample], limit: int | None, seed: int, *, keep_pairs: bool = False
) -> list[Sample]:
    """At most ``limit`` samples, half of each class where possible, chosen
    reproducibly by ``seed``. By default reals and fakes are drawn
    independently, so a kept fake's original may be left out (the blackout
    then compares it with its original unaligned, or falls back to a face
    part). With ``keep_pairs`` the reals are the kept fakes' originals first,
    then other reals, so paired batches keep their pairs."""
    if limit is None or len(samples) <= limit:
        return list(samples)
    rng = np.random.default_rng(seed)
    reals = [s for s in samples if s.label == 0]
    fakes = [s for s in samples if s.label == 1]
    n_fake = min(len(fakes), limit // 2)
    n_real = min(len(reals), limit - n_fake)
    n_fake = min(len(fakes), limit - n_real)
    if not keep_pairs:
        pick_r = sorted(rng.choice(len(reals), n_real, replace=False).tolist())
        pick_f = sorted(rng.choice(len(fakes), n_fake, replace=False).tolist())
        return [reals[i] for i in pick_r] + [fakes[i] for i in pick_f]
    pick_f = rng.permutation(len(fakes))[:n_fake].tolist()
    where = {s.path: i for i, s in enumerate(reals)}
    first: dict[int, None] = {}  # the originals, in the fakes' drawn order
    for i in pick_f:
        j = where.get(fakes[i].original) if fakes[i].original is not None else None
        if j is not None:
            first.setdefault(j)
    others = [j for j in rng.permutation(len(reals)).tolist() if j not in first]
    pick_r = sorted([*first, *others][:n_real])
    return [reals[i] for i in pick_r] + [fakes[i] for i in sorted(pick_f)]


def data_digest(samples: Iterable[Sample], root: Path | None = None) -> str:
    """sha256 of the sorted ``file,label,split,sha256-of-the-file`` lines:
    names the exact data, contents included (a re-encoded or replaced crop
    changes it)."""
    from ensemble.media import file_sha256

    lines = sorted(
        f"{s.path.relative_to(root) if root else s.path.name},{s.label},{s.split},"
        f"{file_sha256(s.path)}\n"
        for s in samples
    )
    digest = hashlib.sha256()
    for line in lines:
        digest.update(line.encode())
    return digest.hexdigest()


def read_rgb(path: Path) -> RGBImage:
    """An image file as RGB uint8, or :class:`DatasetError`."""
    data = np.fromfile(str(path), dtype=np.uint8) if path.is_file() else None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data is not None and data.size else None
    if image is None:
        raise DatasetError(f"{path} is missing or not a readable image")
    out: RGBImage = np.ascontiguousarray(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    return out


def resize_to(
    image: RGBImage, keypoints: Keypoints | None, size: int
) -> tuple[RGBImage, Keypoints | None]:
    """A square ``size`` crop (crops are square; others are stretched) and its
    keypoints scaled alike."""
    h, w = image.shape[:2]
    if (h, w) == (size, size):
        return image, keypoints
    interp = cv2.INTER_AREA if size < max(h, w) else cv2.INTER_LINEAR
    out: RGBImage = np.asarray(cv2.resize(image, (size, size), interpolation=interp), np.uint8)
    if keypoints is None:
        return out, None
    sx, sy = size / w, size / h
    return out, tuple((x * sx, y * sy) for x, y in keypoints)


# --- Keypoints for crops that do not carry them -----------------------------

DetectFn = Callable[[list[RGBImage]], list[Keypoints | None]]
KEYPOINT_BATCH = 64
# Border added around a crop before BlazeFace looks for its keypoints, as a
# share of the side: on the 200 dfdc_faces training crops that
# limit_balanced(..., 200, seed=0) picks, the front model found a face in 41%
# of the crops as they are and in 94.5% with this border (a one-off check in
# review; tests/ensemble/training/test_shared_datasets.py keeps >= 80% on 40).
KEYPOINT_PAD = 0.25


def pad_crop(image: RGBImage, share: float = KEYPOINT_PAD) -> tuple[RGBImage, int, int]:
    """``image`` inside a black border of ``share`` of its width/height on each
    side, and the border's ``(x, y)`` offset."""
    h, w = image.shape[:2]
    px, py = round(share * w), round(share * h)
    out: RGBImage = np.asarray(
        cv2.copyMakeBorder(image, py, py, px, px, cv2.BORDER_CONSTANT, value=(0, 0, 0)), np.uint8
    )
    return out, px, py


def blazeface_keypoints(detector: object) -> DetectFn:
    """A ``DetectFn`` from an :class:`ensemble.faces.FaceDetector`: the best
    detection's keypoints per crop (in crop pixels), or None when no face is
    found. Crops are padded first (:data:`KEYPOINT_PAD`): BlazeFace's front
    model finds far fewer faces that fill the whole image."""
    from ensemble.faces import FaceDetector

    if not isinstance(detector, FaceDetector):
        raise TypeError("expected an ensemble.faces.FaceDetector")

    def detect(images: list[RGBImage]) -> list[Keypoints | None]:
        padded = [pad_crop(image) for image in images]
        out: list[Keypoints | None] = []
        for (_, px, py), dets in zip(padded, detector.detect([p[0] for p in padded]), strict=True):
            if dets:
                out.append(tuple((float(x) - px, float(y) - py) for x, y in dets[0].keypoints))
            else:
                out.append(None)
        return out

    return detect


def attach_keypoints(
    samples: Sequence[Sample], detect: DetectFn, cache_path: Path | None
) -> list[Sample]:
    """Samples with keypoints.

    Crops without a ``keypoints`` column are detected once; results (including
    "no face", stored as null) are cached in ``cache_path`` (JSON keyed by
    path and size) so later runs skip detection. A crop where no face is found
    keeps ``None`` and augmentations fall back to an elliptical face mask.
    """
    cache: dict[str, list[list[float]] | None] = {}
    if cache_path is not None and cache_path.is_file():
        try:
            cache = dict(json.loads(cache_path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError) as e:  # a cache: detected again
            logger.warning("keypoint cache %s unreadable (%s); detecting again", cache_path, e)
            cache = {}

    def key(path: Path) -> str:
        return f"{path}:{path.stat().st_size}"

    wanted = {s.path for s in samples if s.keypoints is None}
    todo = sorted(p for p in wanted if key(p) not in cache)
    for start in range(0, len(todo), KEYPOINT_BATCH):
        chunk = todo[start : start + KEYPOINT_BATCH]
        found = detect([read_rgb(p) for p in chunk])
        for p, kp in zip(chunk, found, strict=True):
            cache[key(p)] = None if kp is None else [list(pt) for pt in kp]
    if todo:
        logger.info("detected keypoints on %d crops", len(todo))
        if cache_path is not None:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            staged = cache_path.with_name(cache_path.name + ".part")
            staged.write_text(json.dumps(cache), encoding="utf-8")
            staged.replace(cache_path)  # whole or not at all

    def lookup(path: Path) -> Keypoints | None:
        value = cache.get(key(path))
        return None if value is None else tuple((float(x), float(y)) for x, y in value)

    return [s if s.keypoints is not None else replace(s, keypoints=lookup(s.path)) for s in samples]


def labels_array(samples: Sequence[Sample]) -> npt.NDArray[np.float64]:
    return np.asarray([s.label for s in samples], dtype=np.float64)
