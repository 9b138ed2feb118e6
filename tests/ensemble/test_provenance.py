"""C2PA Content Credentials read and verified with the library (ensemble.provenance).

Every signed file is made here with c2pa's own signing API and a throwaway
certificate authority (tests/c2pa_signing.py); nothing is mocked, so these
tests fail where the library does not work.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ensemble.provenance import (
    MAX_ACTIONS,
    MAX_INGREDIENTS,
    MAX_TEXT,
    STATES,
    read_provenance,
    summarise,
)
from tests.c2pa_signing import (
    AI_COMPOSITE,
    CA_NAME,
    CAPTURE,
    GENERATOR,
    SIGNER_NAME,
    created_action,
    make_pki,
    opened,
    sign,
    tamper_bmff,
    tamper_jpeg,
    truncate_jpeg_manifest,
)
from tests.media_factory import face_image, write_clip, write_image


@pytest.fixture(scope="module")
def pki():
    return make_pki("es256")


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("provenance-media")
    face = face_image(64)
    return {
        "jpg": write_image(d / "plain.jpg", face, "JPEG"),
        "png": write_image(d / "plain.png", face, "PNG"),
        "webp": write_image(d / "plain.webp", face, "WEBP"),
        "mp4": write_clip(d / "plain.mp4", frames=6, width=64, height=64),
        "mov": write_clip(d / "plain.mov", frames=6, width=64, height=64),
        "avi": write_clip(d / "plain.avi", frames=6, width=64, height=64),
        "mkv": write_clip(d / "plain.mkv", frames=6, width=64, height=64),
        "webm": write_clip(d / "plain.webm", frames=6, width=64, height=64),
    }


@pytest.fixture(scope="module")
def ai_jpeg(pki, media, tmp_path_factory):
    out = tmp_path_factory.mktemp("signed") / "ai.jpg"
    return sign(
        media["jpg"],
        out,
        pki,
        actions=[created_action(when="2026-11-30T08:00:00Z")],
        title="made by a model",
    )


def test_ai_generated_jpeg_signed_by_a_trusted_ca_is_valid_and_says_so(ai_jpeg, pki):
    p = read_provenance(ai_jpeg, trust_anchors=pki.ca_pem)
    assert p.state == "valid", p.reason
    assert p.ai_generated and p.ai_generated_in == "active"
    assert p.actions[0].action == "c2pa.created"
    assert p.actions[0].source_type == "trainedAlgorithmicMedia" and p.actions[0].ai
    assert p.signer.startswith(SIGNER_NAME) and p.issuer.startswith(CA_NAME)
    assert p.claim_generator == f"{GENERATOR} 1.0"
    assert p.created_at == "2026-11-30T08:00:00Z"
    assert p.title == "made by a model"
    assert p.mime_type == "image/jpeg" and p.library.startswith("c2pa-python ")
    assert p.codes == ()


def test_signer_not_on_the_trust_list_is_untrusted_not_invalid(ai_jpeg):
    # The library's default trust settings do not know the test CA.
    p = read_provenance(ai_jpeg)
    assert p.state == "untrusted"
    assert "signingCredential.untrusted" in p.codes
    assert "not on the trust list" in p.reason
    # The manifest still says what it says; the page weighs it by the state.
    assert p.ai_generated and p.signer.startswith(SIGNER_NAME)


def test_tampered_jpeg_is_invalid_with_the_hash_mismatch(ai_jpeg, pki, tmp_path):
    p = read_provenance(tamper_jpeg(ai_jpeg, tmp_path / "t.jpg"), trust_anchors=pki.ca_pem)
    assert p.state == "invalid"
    assert "assertion.dataHash.mismatch" in p.codes
    assert "dataHash.mismatch" in p.reason


def test_truncated_manifest_is_invalid_with_a_reason(ai_jpeg, tmp_path):
    p = read_provenance(truncate_jpeg_manifest(ai_jpeg, tmp_path / "cut.jpg"))
    assert p.state == "invalid"
    assert p.reason.startswith("The Content Credentials could not be read:")
    assert len(p.reason) > len("The Content Credentials could not be read: ")


@pytest.mark.parametrize("alg", ["es256", "ps256"])
def test_signed_mp4_is_verified_and_a_tampered_copy_is_invalid(alg, media, tmp_path):
    pki = make_pki(alg)
    signed = sign(media["mp4"], tmp_path / "s.mp4", pki)
    p = read_provenance(signed, trust_anchors=pki.ca_pem)
    assert p.state == "valid", p.reason
    assert p.mime_type == "video/mp4" and p.ai_generated
    bad = read_provenance(tamper_bmff(signed, tmp_path / "t.mp4"), trust_anchors=pki.ca_pem)
    assert bad.state == "invalid"
    assert "assertion.bmffHash.mismatch" in bad.codes


@pytest.mark.parametrize("fmt", ["png", "webp", "mov", "avi"])
def test_other_formats_the_library_signs_are_verified(fmt, media, pki, tmp_path):
    signed = sign(media[fmt], tmp_path / f"s.{fmt}", pki, actions=[created_action(CAPTURE)])
    p = read_provenance(signed, trust_anchors=pki.ca_pem)
    assert p.state == "valid", p.reason
    assert not p.ai_generated and p.actions[0].source_type == "digitalCapture"


@pytest.mark.parametrize("fmt", ["jpg", "png", "webp", "mp4", "mov", "avi"])
def test_media_without_a_manifest_is_absent(fmt, media):
    p = read_provenance(media[fmt])
    assert p.state == "absent" and p.reason == "" and not p.present


@pytest.mark.parametrize("fmt", ["mkv", "webm"])
def test_formats_the_library_cannot_read_are_unchecked_not_absent(fmt, media):
    p = read_provenance(media[fmt])
    assert p.state == "unchecked"
    assert fmt.upper() in p.reason


def test_composite_ai_edit_and_ingredient_titles(media, pki, tmp_path):
    signed = sign(
        media["jpg"],
        tmp_path / "edit.jpg",
        pki,
        actions=[
            opened(),
            {
                "action": "c2pa.edited",
                "digitalSourceType": AI_COMPOSITE,
                "softwareAgent": {"name": "Fill tool", "version": "2"},
            },
        ],
        ingredients=[("holiday.jpg", media["jpg"]), ("sky.png", media["png"])],
    )
    p = read_provenance(signed, trust_anchors=pki.ca_pem)
    assert p.state == "valid", p.reason
    assert [a.action for a in p.actions] == ["c2pa.opened", "c2pa.edited"]
    assert p.actions[1].source_type == "compositeWithTrainedAlgorithmicMedia"
    assert p.actions[1].software == "Fill tool 2"
    assert p.ai_generated and p.ai_generated_in == "active"
    assert p.ingredients == ("holiday.jpg", "sky.png")
    assert p.created_at == ""


def test_ai_declared_by_an_ingredients_manifest_is_flagged_as_from_the_ingredient(
    ai_jpeg, media, pki, tmp_path
):
    edited = sign(
        media["jpg"],
        tmp_path / "crop.jpg",
        pki,
        actions=[opened(), {"action": "c2pa.cropped"}],
        ingredients=[("generated.jpg", ai_jpeg)],
    )
    p = read_provenance(edited, trust_anchors=pki.ca_pem)
    assert p.state == "valid", p.reason
    assert not any(a.ai for a in p.actions)
    assert p.ai_generated and p.ai_generated_in == "ingredient"
    assert p.manifests == 2


def test_remote_manifest_is_not_fetched(media, pki, tmp_path):
    signed = sign(
        media["jpg"], tmp_path / "remote.jpg", pki, remote_url="http://127.0.0.1:9/m.c2pa"
    )
    p = read_provenance(signed)
    assert p.state == "unchecked"
    assert p.remote_url == "http://127.0.0.1:9/m.c2pa"
    assert "not fetched" in p.reason


def test_not_media_is_unchecked_and_nothing_raises(tmp_path):
    path = tmp_path / "x.jpg"
    path.write_bytes(b"hello, not an image at all")
    p = read_provenance(path)
    assert p.state == "unchecked" and p.reason


def test_summary_is_bounded_and_json_serialisable():
    long = "x" * 5000
    store = {
        "active_manifest": "m",
        "manifests": {
            "m": {
                "title": long,
                "claim_generator_info": [{"name": long}],
                "signature_info": {"common_name": "\x00evil\nname", "issuer": long},
                "ingredients": [{"title": f"i{n}"} for n in range(500)],
                "assertions": [
                    {
                        "label": "c2pa.actions.v2",
                        "data": {
                            "actions": [
                                {"action": "c2pa.edited", "softwareAgent": long} for _ in range(500)
                            ]
                        },
                    }
                ],
            }
        },
        "validation_state": "Invalid",
        "validation_results": {
            "activeManifest": {
                "failure": [{"code": f"c{n}", "explanation": long} for n in range(100)]
            }
        },
    }
    p = summarise(store)
    assert p.state == "invalid"
    assert len(p.actions) == MAX_ACTIONS and p.actions_total == 500
    assert len(p.ingredients) == MAX_INGREDIENTS and p.ingredients_total == 500
    assert len(p.title) <= MAX_TEXT and len(p.claim_generator) <= MAX_TEXT
    assert p.signer == "evil name"
    assert len(json.dumps(p.to_dict())) < 20_000
    assert p.to_dict()["state"] in STATES


def test_store_without_an_active_manifest_is_invalid():
    p = summarise({"manifests": {}, "validation_state": "Invalid"})
    assert p.state == "invalid" and "no active manifest" in p.reason


def test_signed_file_read_by_path_only_is_sniffed(ai_jpeg: Path, pki):
    assert read_provenance(ai_jpeg, "jpeg").state == read_provenance(ai_jpeg).state


def test_a_library_that_cannot_load_gives_unchecked_with_the_reason(ai_jpeg, monkeypatch):
    import ensemble.provenance as provenance

    monkeypatch.setattr(provenance, "_C2PA", None)
    monkeypatch.setattr(provenance, "_C2PA_ERROR", "OSError: libc2pa_c.so: cannot open")
    p = read_provenance(ai_jpeg)
    assert p.state == "unchecked" and "libc2pa_c.so" in p.reason
    assert provenance.library_version() == ""


def test_the_real_library_is_loaded():
    # These tests must not pass without c2pa: every other one reads real files.
    import ensemble.provenance as provenance

    assert provenance._C2PA is not None, provenance._C2PA_ERROR
