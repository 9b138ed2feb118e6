from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.crop_tta import (
    SHIPPED,
    VIEW_SETS,
    arrangements,
    load_logits,
    save_logits,
    views_of,
    zoom_in,
)


def test_the_zoomed_view_is_the_centre_of_the_crop() -> None:
    image = np.zeros((100, 100, 3), np.uint8)
    image[4:96, 4:96] = 200  # a frame 4 px wide, kept out by a 0.92 zoom
    centre = zoom_in(image, 0.92)
    assert centre.shape == (92, 92, 3) and (centre == 200).all()
    assert zoom_in(image, 1.0).shape == image.shape
    with pytest.raises(ValueError, match="outside"):
        zoom_in(image, 0.4)


def test_the_four_views_are_the_crop_and_its_zoom_each_as_is_and_mirrored() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (50, 50, 3), dtype=np.uint8)
    views = views_of(image, 50, 0.9)
    assert set(views) == {"as_is", "mirror", "zoom", "zoom_mirror"}
    assert np.array_equal(views["as_is"], image)
    assert np.array_equal(views["mirror"], image[:, ::-1])
    assert np.array_equal(views["zoom_mirror"], views["zoom"][:, ::-1])
    assert views["zoom"].shape == (50, 50, 3) and not np.array_equal(views["zoom"], image)


def test_saved_logits_come_back_only_for_the_same_crops_and_zoom(tmp_path: Path) -> None:
    path = tmp_path / "views.npz"
    files = ("a.png", "b.png")
    logits = {"resnet50/as_is": np.array([0.5, -1.0])}
    save_logits(path, files, 0.92, logits)
    back = load_logits(path, files, 0.92)
    assert list(back) == ["resnet50/as_is"]
    assert np.array_equal(back["resnet50/as_is"], logits["resnet50/as_is"])
    assert load_logits(tmp_path / "none.npz", files, 0.92) == {}
    with pytest.raises(SystemExit, match="other crops or another zoom"):
        load_logits(path, ("a.png",), 0.92)
    with pytest.raises(SystemExit, match="other crops or another zoom"):
        load_logits(path, files, 0.9)


def test_every_arrangement_is_listed_once_the_shipped_one_first() -> None:
    members = ["resnet50", "effnet_autoatt_b4"]
    listed = arrangements(members)
    assert listed[0] == {m: SHIPPED[m] for m in members}
    assert len(listed) == len(VIEW_SETS) ** 2
    assert len({tuple(a.values()) for a in listed}) == len(listed)
