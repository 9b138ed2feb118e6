from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from bench.cam_localisation import (
    centre_prior,
    lift,
    pairs_of,
    parse_layers,
    pixel_auc,
    pointing,
    region_at,
    scores_of,
)
from ensemble.evaluation import roc_auc
from ensemble.training.data import load_samples


def _square(size: int, top: int, side: int) -> np.ndarray:
    region = np.zeros((size, size), np.uint8)
    region[top : top + side, top : top + side] = 1
    return region


def test_pixel_auc_ranks_the_region_and_counts_ties_half() -> None:
    region = _square(20, 5, 6)
    assert pixel_auc(region.astype(float), region) == 1.0
    assert pixel_auc(1.0 - region, region) == 0.0
    assert pixel_auc(np.zeros((20, 20)), region) == 0.5
    assert pixel_auc(np.ones((20, 20)), np.zeros((20, 20))) is None
    rng = np.random.default_rng(0)
    heat = rng.integers(0, 4, (20, 20)).astype(float)  # many ties
    assert pixel_auc(heat, region) == pytest.approx(roc_auc(heat.ravel(), region.ravel()))


def test_lift_is_the_heat_share_inside_over_the_area_share() -> None:
    region = _square(10, 0, 5)  # a quarter of the crop
    assert lift(region.astype(float), region) == pytest.approx(4.0)
    assert lift(np.ones((10, 10)), region) == pytest.approx(1.0)
    assert lift(np.zeros((10, 10)), region) is None
    heat = np.zeros((10, 10))
    heat[9, 9] = 1.0
    assert lift(heat, region) == 0.0
    assert not pointing(heat, region)
    heat[1, 1] = 2.0
    assert pointing(heat, region)


def test_the_centre_prior_peaks_in_the_middle_and_is_symmetric() -> None:
    prior = centre_prior(33)
    assert prior.shape == (33, 33) and prior[16, 16] == pytest.approx(1.0)
    assert np.allclose(prior, prior[::-1]) and np.allclose(prior, prior.T)
    assert prior[0, 0] < 0.05
    # A region in the middle is found by it; one in a corner is not.
    assert pixel_auc(prior, _square(33, 12, 9)) > 0.99  # a square, not a disc
    assert pixel_auc(prior, _square(33, 0, 5)) < 0.05


def test_regions_are_resampled_to_the_members_input() -> None:
    region = _square(224, 56, 112).astype(np.float32)
    small = region_at(region, 128)
    assert small.shape == (128, 128)
    assert small.mean() == pytest.approx(region.mean(), abs=0.01)
    assert region_at(region, 224).sum() == region.sum()


def test_scores_report_maps_without_heat() -> None:
    region = _square(16, 4, 8)
    scores = scores_of([region.astype(np.float32), np.zeros((16, 16), np.float32)], [region] * 2)
    assert scores["maps"] == 2 and scores["maps_without_heat"] == 1
    assert scores["lift_mean"] == pytest.approx(4.0)
    assert scores["pixel_auc_mean"] == pytest.approx(0.75)  # 1.0 and 0.5
    assert scores["pointing"] == 0.5  # an all-zero map's argmax is the corner


def _dataset(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    scene = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    scene = cv2.GaussianBlur(scene, (5, 5), 0)
    (tmp_path / "real").mkdir()
    (tmp_path / "fake").mkdir()
    cv2.imwrite(str(tmp_path / "real" / "a.png"), scene)
    patched = scene.copy()
    patched[20:40, 20:40] = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "fake" / "b.png"), patched)
    cv2.imwrite(str(tmp_path / "fake" / "c.png"), scene)  # no difference at all
    cv2.imwrite(str(tmp_path / "fake" / "d.png"), 255 - scene)  # another picture
    (tmp_path / "metadata.csv").write_text(
        "file,label,video,original,split\n"
        "real/a.png,REAL,a.mp4,,val\n"
        "fake/b.png,FAKE,b.mp4,a.mp4,val\n"
        "fake/c.png,FAKE,c.mp4,a.mp4,val\n"
        "fake/d.png,FAKE,d.mp4,a.mp4,val\n",
        encoding="utf-8",
    )
    return tmp_path


def test_only_fakes_with_a_usable_region_are_kept(tmp_path: Path) -> None:
    samples = load_samples(_dataset(tmp_path))
    pairs, skipped = pairs_of(samples, limit=10)
    assert [p.fake.name for p in pairs] == ["b.png"]
    assert skipped == {"region_too_small": 1, "region_too_large": 1}
    region = pairs[0].region
    ys, xs = np.nonzero(region)
    # The patch, give or take the SSIM window.
    assert 14 <= ys.min() <= 22 and 38 <= ys.max() <= 46
    assert 14 <= xs.min() <= 22 and 38 <= xs.max() <= 46
    assert pairs_of(samples, limit=0)[0] == []


def test_layer_options_are_member_equals_layer() -> None:
    assert parse_layers(["a=x.y", "a=z", "b=w"]) == {"a": ["x.y", "z"], "b": ["w"]}
    with pytest.raises(SystemExit, match="MEMBER=DOTTED"):
        parse_layers(["a"])
    with pytest.raises(SystemExit, match="MEMBER=DOTTED"):
        parse_layers(["=x"])
