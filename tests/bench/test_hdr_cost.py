"""bench.hdr_cost reads the same clip under each colour tag and reports
what tone mapping costs."""

from __future__ import annotations

import json
from pathlib import Path

from bench import hdr_cost


def test_each_tag_is_read_and_reported(tmp_path: Path) -> None:
    out = tmp_path / "hdr.json"
    argv = ["--width", "64", "--height", "48", "--frames", "4", "--sample", "2"]
    assert hdr_cost.main([*argv, "--repeats", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [row["tags"] for row in report["rows"]] == ["bt709", "hlg-bt2020", "pq-bt2020"]
    assert all(row["median_s"] > 0 and row["peak_rss_mib"] >= 0 for row in report["rows"])
    assert report["rows"][0]["s_per_frame_over_sdr"] == 0
    assert (report["width"], report["height"], report["sample"]) == (64, 48, 2)
