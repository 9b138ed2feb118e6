from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from django.core.management import CommandError, call_command
from django.test import override_settings

from tests import media_factory as mf
from tests.tiny_registry import REGISTRY, install_weights


@pytest.fixture
def tiny_site(tmp_path: Path, blazeface_cache: Path) -> Iterator[Path]:
    from django.conf import settings

    weights = tmp_path / "weights"
    install_weights(weights)
    trusttrace = {
        **settings.TRUSTTRACE,
        "REGISTRY": "tests.tiny_registry.REGISTRY",
        "WEIGHTS_DIR": weights,
        "CACHE_DIR": blazeface_cache,
        "MEMBERS": ("tiny_a", "tiny_b"),
        "FRAMES": 6,
    }
    with override_settings(TRUSTTRACE=trusttrace):
        yield weights


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    folder = tmp_path / "media"
    folder.mkdir()
    mf.write_image(folder / "face.png", mf.face_image(256), "PNG")
    good = mf.write_clip(folder / "person.mp4", frames=20, face_at=(60, 40, 160))
    mf.truncated_mp4(folder / "broken.mp4", good)
    mf.write_clip(folder / "room.mp4", frames=12)
    mf.text_as_mp4(folder / "notes.mp4")
    return folder


def test_folder_gives_json_and_csv_per_file(
    tiny_site: Path, corpus: Path, tmp_path: Path, capsys
) -> None:
    out_json, out_csv = tmp_path / "out.json", tmp_path / "out.csv"
    call_command("analyze", str(corpus), "--json", str(out_json), "--csv", str(out_csv))
    results = {Path(r["file"]).name: r for r in json.loads(out_json.read_text())["results"]}
    assert set(results) == {"face.png", "person.mp4", "broken.mp4", "room.mp4", "notes.mp4"}
    for r in results.values():
        assert {
            "file",
            "status",
            "reason",
            "score",
            "verdict",
            "members",
            "frames",
            "timings",
        } <= set(r)
    person = results["person.mp4"]
    assert person["status"] == "done" and 0 <= person["score"] <= 1
    assert set(person["members"]) == {"tiny_a", "tiny_b"}
    assert person["frames"] and {"frame", "time", "person", "score", "members"} <= set(
        person["frames"][0]
    )
    assert results["broken.mp4"]["status"] == "rejected" and results["broken.mp4"]["score"] is None
    assert "text file" in results["notes.mp4"]["reason"]
    assert results["room.mp4"]["verdict"] == "no_face" and results["room.mp4"]["score"] is None

    rows = list(csv.DictReader(out_csv.open()))
    assert list(rows[0]) == ["file", "status", "verdict", "score", "reason", "tiny_a", "tiny_b"]
    by_name = {Path(r["file"]).name: r for r in rows}
    assert by_name["broken.mp4"]["score"] == "" and by_name["broken.mp4"]["status"] == "rejected"
    assert float(by_name["face.png"]["tiny_a"]) == pytest.approx(
        results["face.png"]["members"]["tiny_a"], abs=1e-6
    )
    printed = capsys.readouterr().out
    assert "broken.mp4: rejected:" in printed and "room.mp4: no_face" in printed


def test_frames_and_member_subset(tiny_site: Path, corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.json"
    call_command(
        "analyze",
        str(corpus / "person.mp4"),
        "--frames",
        "4",
        "--members",
        "tiny_b",
        "--json",
        str(out),
    )
    [result] = json.loads(out.read_text())["results"]
    assert set(result["members"]) == {"tiny_b"}
    assert len({r["frame"] for r in result["frames"]}) <= 4


def test_unknown_member_lists_the_known_ones(tiny_site: Path, corpus: Path) -> None:
    with pytest.raises(
        CommandError,
        match="known detectors: bright, tiny_a, tiny_att, tiny_b, toy_a, toy_b, toy_drop",
    ):
        call_command("analyze", str(corpus), "--members", "nope")


def test_missing_weights_refuse_clearly(tiny_site: Path, corpus: Path) -> None:
    for f in (tiny_site / "tiny_b").iterdir():
        f.unlink()
    with pytest.raises(CommandError, match="No weights are installed for detector 'tiny_b'"):
        call_command("analyze", str(corpus))


def test_import_weights_command_installs_a_checkpoint(
    tiny_site: Path, tmp_path: Path, capsys
) -> None:
    model = REGISTRY.get("tiny_a").build()
    ckpt = tmp_path / "external.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, ckpt)
    call_command("import_weights", str(ckpt), "--member", "tiny_a")
    manifest = json.loads((tiny_site / "tiny_a" / "manifest.json").read_text())
    assert (
        manifest["format"] == "pytorch"
        and manifest["provenance"]["original_file"] == "external.pth"
    )
    assert "Imported external.pth for tiny_a" in capsys.readouterr().out


def test_a_file_name_that_reads_as_a_formula_is_not_one_in_the_csv(
    tiny_site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CSV is opened in spreadsheets: a file named like a formula used to
    be written as one (the web's CSV exports already neutralised it)."""
    folder = tmp_path / "incoming"
    folder.mkdir()
    mf.write_image(folder / "=HYPERLINK(1).png", mf.face_image(256), "PNG")
    monkeypatch.chdir(folder)
    out_csv = tmp_path / "out.csv"
    call_command("analyze", "=HYPERLINK(1).png", "--csv", str(out_csv))
    rows = list(csv.DictReader(out_csv.open()))
    assert [r["file"] for r in rows] == ["'=HYPERLINK(1).png"]
    assert rows[0]["status"] == "done"
