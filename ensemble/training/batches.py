"""Training batches: decoded crops in memory, the dataset that augments
them, and the plan of an epoch's batches.

Every random choice about a sample (SBI, blackout, augmentation) is a
function of ``(seed, epoch, slot)`` and the batches of an epoch a function of
``(seed, epoch)`` (:func:`epoch_plan`), so a run resumed mid-epoch sees
exactly the batches it would have seen.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from ensemble.errors import TrainingError
from ensemble.media import RGBImage
from ensemble.training.augment import augment, build_augment
from ensemble.training.data import Keypoints, Sample, read_rgb, resize_to
from ensemble.training.sbi import self_blend
from ensemble.training.ssim_blackout import ssim_blackout

logger = logging.getLogger(__name__)


def _sample_seed(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index])


class CropStore:
    """Every crop of a sample list decoded once and resized to the training
    size: a ``uint8 [N, S, S, 3]`` array in memory.

    Decoding a JPEG and resizing it costs more than a small network's step on
    two cores; done once, an epoch reads pixels from memory. With a
    ``cache_dir`` the array is kept on disk (named by the data digest, the
    size and the sample order) so later runs and resumptions skip decoding.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        size: int,
        *,
        cache_dir: Path | None = None,
        digest: str = "",
        progress: bool = False,
    ) -> None:
        self.size = size
        self.index = {p: i for i, p in enumerate(paths)}
        cache = self._cache_path(paths, size, cache_dir, digest)
        if cache is not None and cache.is_file():
            try:
                with np.load(cache) as stored:
                    pixels, shapes = stored["pixels"], stored["shapes"]
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
                logger.warning("ignoring the unreadable crop cache %s (%s)", cache, e)
            else:
                if pixels.shape == (len(paths), size, size, 3) and pixels.dtype == np.uint8:
                    self.pixels: npt.NDArray[np.uint8] = pixels
                    self.shapes: npt.NDArray[np.int64] = shapes
                    logger.info("read %d decoded crops from %s", len(paths), cache)
                    return
                logger.warning("ignoring %s: shape %s does not fit this run", cache, pixels.shape)
        self.pixels, self.shapes = self._decode(paths, size, progress)
        if cache is not None:
            self._write_cache(cache)

    def _write_cache(self, cache: Path) -> None:
        """Best effort: a cache that cannot be written only costs decoding next time."""
        import os
        import uuid

        tmp = cache.with_name(f"{cache.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp.npz")
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(tmp, pixels=self.pixels, shapes=self.shapes)
            tmp.replace(cache)
        except OSError as e:
            logger.warning("could not cache decoded crops in %s (%s)", cache, e)
            tmp.unlink(missing_ok=True)
            return
        logger.info("cached %d decoded crops in %s", len(self.pixels), cache)

    @staticmethod
    def _cache_path(
        paths: Sequence[Path], size: int, cache_dir: Path | None, digest: str
    ) -> Path | None:
        if cache_dir is None or not digest:
            return None
        import hashlib

        order = hashlib.sha256("\n".join(str(p) for p in paths).encode()).hexdigest()[:16]
        return cache_dir / f"crops-{digest[:16]}-{order}-{size}.npz"

    @staticmethod
    def _decode(
        paths: Sequence[Path], size: int, progress: bool
    ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
        from tqdm import tqdm

        pixels = np.empty((len(paths), size, size, 3), np.uint8)
        shapes = np.empty((len(paths), 2), np.int64)
        for i, path in enumerate(tqdm(paths, desc="decoding crops", disable=not progress)):
            image = read_rgb(path)
            shapes[i] = image.shape[:2]
            pixels[i] = resize_to(image, None, size)[0]
        return pixels, shapes

    def get(
        self, path: Path, keypoints: Keypoints | None
    ) -> tuple[RGBImage, Keypoints | None] | None:
        """What :func:`resize_to` gives for the crop of ``path`` (a copy of
        the pixels; keypoints scaled from the file's pixels), or None when
        the crop is not stored."""
        i = self.index.get(path)
        if i is None:
            return None
        image: RGBImage = np.array(self.pixels[i])
        h, w = (int(v) for v in self.shapes[i])
        if keypoints is None or (h, w) == (self.size, self.size):
            return image, keypoints
        sx, sy = self.size / w, self.size / h
        return image, tuple((x * sx, y * sy) for x, y in keypoints)


class FaceDataset(Dataset[tuple[Tensor, Tensor, int]]):
    """Crops as normalised ``[3, S, S]`` tensors with fake-labels.

    In training mode, reals may become self-blended pseudo-fakes
    (``sbi_prob``), fakes may get the SSIM blackout (``blackout_prob``), and
    every crop goes through :func:`ensemble.training.augment.build_augment`.
    Pixels come from a :class:`CropStore` when one is given, else from disk.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        train: bool,
        seed: int = 0,
        sbi_prob: float = 0.0,
        blackout_prob: float = 0.0,
        use_augment: bool = True,
        store: CropStore | None = None,
        teacher: Mapping[Path, float] | None = None,
        distill: float = 0.0,
    ) -> None:
        self.samples = list(samples)
        self.size = size
        self.mean = np.asarray(mean, np.float32).reshape(3, 1, 1) * 255
        self.std = np.asarray(std, np.float32).reshape(3, 1, 1) * 255
        self.train = train
        self.seed = seed
        self.sbi_prob = sbi_prob
        self.blackout_prob = blackout_prob
        self.epoch = 0
        self.store = store
        self.compose = build_augment() if train and use_augment else None
        self.keypoints: dict[Path, Keypoints | None] = {s.path: s.keypoints for s in self.samples}
        # Knowledge distillation (ensemble.training.teacher): each crop's
        # teacher probability and the teacher's share in its target.
        self.teacher = teacher
        self.distill = distill if teacher is not None else 0.0

    def __len__(self) -> int:
        return len(self.samples)

    def _pixels(self, path: Path, keypoints: Keypoints | None) -> tuple[RGBImage, Keypoints | None]:
        stored = self.store.get(path, keypoints) if self.store is not None else None
        if stored is not None:
            return stored
        return resize_to(read_rgb(path), keypoints, self.size)

    def image(
        self, index: int, slot: int | None = None, aug_key: int | None = None
    ) -> tuple[RGBImage, int]:
        """The crop as the model will see it (before normalisation) and its label.

        ``slot`` (default ``index``) seeds the sample's random choices (SBI,
        blackout); ``aug_key`` (default ``slot``) seeds its augmentation, so
        the two crops of a real/fake pair can share one augmentation.
        """
        s = self.samples[index]
        img, kp = self._pixels(s.path, s.keypoints)
        label = s.label
        if not self.train:
            return img, label
        slot = index if slot is None else slot
        rng = _sample_seed(self.seed, self.epoch, slot)
        if label == 0 and self.sbi_prob > 0 and rng.random() < self.sbi_prob:
            img, label = self_blend(img, kp, rng).image, 1
        elif label == 1 and self.blackout_prob > 0 and rng.random() < self.blackout_prob:
            original = kp_original = None
            if s.original is not None:
                original, kp_original = self._pixels(s.original, self.keypoints.get(s.original))
            img = ssim_blackout(
                img, rng, original=original, kp_fake=kp, kp_original=kp_original
            ).image
        if self.compose is not None:
            key = slot if aug_key is None else aug_key
            aug_rng = _sample_seed(self.seed, self.epoch, key + AUG_KEY_OFFSET)
            aug_seed = int(aug_rng.integers(2**31 - 1))
            img = augment(self.compose, img, aug_seed)
        return img, label

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, int]:
        img, label = self.image(index)
        x = (img.transpose(2, 0, 1).astype(np.float32) - self.mean) / self.std
        return torch.from_numpy(x), torch.tensor(float(label)), index

    def target(self, index: int, label: int) -> float:
        """The training target of sample ``index`` seen with ``label``: the
        label, mixed with the teacher's probability when there is a teacher
        and the crop is still of its dataset label (a self-blended real is a
        new image the teacher never scored)."""
        s = self.samples[index]
        if self.teacher is None or label != s.label:
            return float(label)
        return (1.0 - self.distill) * label + self.distill * self.teacher[s.path]

    def batch(
        self, indices: Sequence[int], slots: Sequence[int], aug_keys: Sequence[int]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Normalised ``[B, 3, S, S]`` (channels_last memory), the labels
        and the training targets (:meth:`target`; the labels without a
        teacher)."""
        images, labels, targets = [], [], []
        for index, slot, key in zip(indices, slots, aug_keys, strict=True):
            img, label = self.image(index, slot, key)
            images.append(img)
            labels.append(float(label))
            targets.append(self.target(index, label))
        # NHWC uint8 permuted to NCHW is already in channels_last memory order.
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
        mean = torch.from_numpy(self.mean).reshape(1, 3, 1, 1)
        std = torch.from_numpy(self.std).reshape(1, 3, 1, 1)
        x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
        return x, torch.tensor(labels), torch.tensor(targets)


# Augmentation seeds are drawn from (seed, epoch, key + this), apart from the
# generators of the other random choices (keyed by slot).
AUG_KEY_OFFSET = 1 << 40


class BalancedSampler(Sampler[int]):
    """``len(labels)`` indices per epoch, drawn with replacement so both
    classes are equally likely; the draw depends only on (seed, epoch)."""

    def __init__(self, labels: Sequence[int], seed: int) -> None:
        y = np.asarray(labels)
        counts = np.bincount(y, minlength=2).astype(np.float64)
        weights = np.where(counts[y] > 0, 1.0 / np.maximum(counts[y], 1), 0.0)
        self.p = weights / weights.sum()
        self.n = len(y)
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        return iter(self.draw(self.epoch))

    def draw(self, epoch: int) -> list[int]:
        """The indices of ``epoch``."""
        rng = np.random.default_rng([self.seed, epoch, 0xBA1])
        out: list[int] = rng.choice(self.n, size=self.n, replace=True, p=self.p).tolist()
        return out


@dataclass(frozen=True)
class Batch:
    """One training batch of the epoch plan: sample indices, the slot that
    seeds each sample's random choices, and its augmentation key."""

    indices: tuple[int, ...]
    slots: tuple[int, ...]
    aug_keys: tuple[int, ...]


def real_fake_pairs(samples: Sequence[Sample]) -> list[tuple[int, int]]:
    """``(real, fake)`` index pairs: each fake with the real crop it was made from."""
    by_path = {s.path: i for i, s in enumerate(samples) if s.label == 0}
    return [
        (by_path[s.original], i)
        for i, s in enumerate(samples)
        if s.label == 1 and s.original is not None and s.original in by_path
    ]


def epoch_plan(
    samples: Sequence[Sample], batch_size: int, seed: int, epoch: int, *, paired: bool
) -> list[Batch]:
    """The batches of one epoch, a function of (samples, seed, epoch) only.

    Paired: each batch holds ``batch_size // 2`` real/fake pairs; a fake is
    paired with the real it was made from (both crops share one augmentation,
    so the pair differs only where the face was manipulated: the model cannot
    learn the scene, the person or the camera as a shortcut); reals and fakes
    without a partner are paired at random. Every fake is seen once per epoch.
    Unpaired: ``len(samples)`` draws with replacement, both classes equally
    likely (:class:`BalancedSampler`).
    """
    if not paired:
        order = BalancedSampler([s.label for s in samples], seed).draw(epoch)
        if len(order) % batch_size == 1 and len(order) > 1:
            # A batch of one cannot train a BatchNorm layer; leave that sample out.
            order = order[:-1]
        batches = []
        for start in range(0, len(order), batch_size):
            chunk = tuple(order[start : start + batch_size])
            places = tuple(range(start, start + len(chunk)))
            batches.append(Batch(chunk, places, places))
        return batches
    rng = np.random.default_rng([seed, epoch, 0xBA1])
    pairs = real_fake_pairs(samples)
    paired_reals = {r for r, _ in pairs}
    paired_fakes = {f for _, f in pairs}
    reals = [i for i, s in enumerate(samples) if s.label == 0]
    lone_reals = [i for i in reals if i not in paired_reals]
    lone_fakes = [i for i, s in enumerate(samples) if s.label == 1 and i not in paired_fakes]
    if lone_fakes and not reals:
        raise TrainingError("paired batches need real crops; train without pairing")
    # Fakes without their original meet the unpaired reals first, then random reals.
    partners = [int(v) for v in rng.permutation(lone_reals)][: len(lone_fakes)]
    partners += [int(v) for v in rng.choice(reals, len(lone_fakes) - len(partners))]
    all_pairs = pairs + list(zip(partners, lone_fakes, strict=True))
    shuffled = rng.permutation(len(all_pairs))
    per_batch = max(batch_size // 2, 1)
    batches = []
    for start in range(0, len(shuffled), per_batch):
        indices: list[int] = []
        slots: list[int] = []
        keys: list[int] = []
        for k in range(start, min(start + per_batch, len(shuffled))):
            real, fake = all_pairs[int(shuffled[k])]
            indices += [real, fake]
            slots += [2 * k, 2 * k + 1]
            keys += [2 * k, 2 * k]
        batches.append(Batch(tuple(indices), tuple(slots), tuple(keys)))
    return batches
