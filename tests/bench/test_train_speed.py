"""bench.train_speed: each mode runs an optimizer step and names itself; an
unknown mode is refused with the list of known ones."""

from __future__ import annotations

import pytest

from bench import train_speed


@pytest.mark.parametrize("mode", ["fp32", "fp32-cl"])
def test_each_fp32_mode_times_real_steps(mode: str) -> None:
    row = train_speed.step_speed("resnet50", 32, mode, batch=2, steps=1)
    assert row["mode"] == mode and row["batch"] == 2
    assert float(row["img_per_s"] or 0) > 0 and row["compile_and_warmup_s"] is None


def test_an_unknown_mode_is_refused_with_the_known_ones() -> None:
    with pytest.raises(SystemExit, match="fp32-cl-compile"):
        train_speed.step_speed("resnet50", 32, "fp16", batch=2, steps=1)
