"""``manage.py analyze PATH --explain DIR [--reference REF]``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings

from tests import media_factory as mf
from tests.tiny_registry import EXPLAIN_MEMBERS, install_weights


@pytest.fixture
def explain_site(tmp_path: Path, blazeface_cache: Path) -> Iterator[Path]:
    from django.conf import settings

    trusttrace = {
        **settings.TRUSTTRACE,
        "REGISTRY": "tests.tiny_registry.REGISTRY",
        "WEIGHTS_DIR": install_weights(tmp_path / "weights", EXPLAIN_MEMBERS),
        "CACHE_DIR": blazeface_cache,
        "MEMBERS": EXPLAIN_MEMBERS,
        "FRAMES": 4,
    }
    with override_settings(TRUSTTRACE=trusttrace):
        yield tmp_path


def _index(folder: Path) -> dict:
    return json.loads((folder / "index.json").read_text())


def test_one_file_writes_artifacts_and_index_into_dir(explain_site: Path, capsys) -> None:
    clip = mf.write_clip(explain_site / "person.mp4", frames=16, face_at=(60, 30, 170))
    out = explain_site / "explained"
    call_command("analyze", str(clip), "--explain", str(out), "--json", str(out / "r.json"))
    index = _index(out)
    kinds = {a["kind"] for a in index["artifacts"]}
    assert kinds == {"face", "frame", "gradcam", "attention", "ssim_temporal", "chart"}
    for art in index["artifacts"]:
        assert (out / art["path"]).is_file()
    [result] = json.loads((out / "r.json").read_text())["results"]
    assert result["status"] == "done"
    points = index["series"]["persons"][0]["points"]
    assert [p["score"] for p in points] == [
        r["score"] for r in result["frames"] if r["person"] == index["series"]["persons"][0]["id"]
    ]
    assert "explanation files in" in capsys.readouterr().out


def test_several_files_get_one_subfolder_each_with_a_reference(explain_site: Path) -> None:
    media = explain_site / "media"
    media.mkdir()
    mf.write_clip(media / "a.mp4", frames=16, face_at=(60, 30, 170))
    mf.write_image(media / "a.png", mf.face_image(256), "PNG")
    mf.text_as_mp4(media / "notes.mp4")
    reference = mf.write_image(explain_site / "original.png", mf.face_image(256), "PNG")
    out = explain_site / "explained"
    call_command("analyze", str(media), "--explain", str(out), "--reference", str(reference))
    folders = sorted(p.name for p in out.iterdir())
    # a.mp4 and a.png share a stem: each keeps its own folder; the rejected file gets none.
    assert folders == ["a", "a-2"]
    for name in folders:
        kinds = {a["kind"] for a in _index(out / name)["artifacts"]}
        assert "ssim_reference" in kinds and "gradcam" in kinds


def test_reference_without_explain_is_refused(explain_site: Path) -> None:
    image = mf.write_image(explain_site / "f.png", mf.face_image(256), "PNG")
    with pytest.raises(CommandError, match="--reference needs --explain"):
        call_command("analyze", str(image), "--reference", str(image))


def test_unusable_reference_is_refused_with_its_reason(explain_site: Path) -> None:
    image = mf.write_image(explain_site / "f.png", mf.face_image(256), "PNG")
    notes = mf.text_as_mp4(explain_site / "notes.mp4")
    with pytest.raises(CommandError, match=r"The reference could not be used: .*text"):
        call_command(
            "analyze", str(image), "--explain", str(explain_site / "o"), "--reference", str(notes)
        )
