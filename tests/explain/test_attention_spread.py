from __future__ import annotations

import numpy as np
import pytest

from explain.attention import attention_spread


def test_uniform_map_has_full_entropy_and_no_concentration() -> None:
    s = attention_spread(np.full((28, 28), 0.4))
    assert s["entropy"] == pytest.approx(1.0)
    assert s["top_mass"] == pytest.approx(0.1, abs=0.002)
    assert s["mean"] == pytest.approx(0.4) and s["range"] == 0.0


def test_single_pixel_map_has_zero_entropy() -> None:
    a = np.zeros((28, 28))
    a[3, 7] = 0.9
    s = attention_spread(a)
    assert s["entropy"] == pytest.approx(0.0)
    assert s["top_mass"] == pytest.approx(1.0)


def test_a_face_shaped_map_lies_between() -> None:
    yy, xx = np.mgrid[:28, :28]
    a = 1 / (1 + np.exp(((xx - 14) ** 2 + (yy - 12) ** 2) / 20 - 3))
    s = attention_spread(a)
    assert 0.5 < s["entropy"] < 0.95
    assert 0.2 < s["top_mass"] < 0.6


def test_all_zero_map_counts_as_concentrated_and_bad_maps_are_refused() -> None:
    assert attention_spread(np.zeros((4, 4)))["entropy"] == 0.0
    with pytest.raises(ValueError):
        attention_spread(np.array([0.5, np.nan]))
    with pytest.raises(ValueError):
        attention_spread(np.array([-0.1, 0.5]))
