"""bench.picture_memory measures both ways of reading a transparent picture,
each in its own process, and writes them to its JSON."""

from __future__ import annotations

import json
from pathlib import Path

from bench import picture_memory


def test_both_modes_are_measured_in_their_own_process(tmp_path: Path) -> None:
    out = tmp_path / "memory.json"
    assert picture_memory.main(["--width", "64", "--height", "48", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [row["mode"] for row in report["rows"]] == ["drop-alpha", "composited"]
    assert all(row["peak_mib_over_decoded"] >= 0 for row in report["rows"])
    assert (report["width"], report["height"]) == (64, 48) and "cpu" in report
