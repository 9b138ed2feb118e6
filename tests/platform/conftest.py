"""Platform fixtures: a tiny-registry site with temp weights and media root,
the five kinds of visitor, and finished submissions with artifacts."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.contrib.auth.models import Group, User
from django.core.cache import cache
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client, override_settings
from PIL import Image

from tests import media_factory as mf
from tests.tiny_registry import SITE_MEMBERS, install_weights

TINY_MEMBERS = SITE_MEMBERS
PASSWORD = "a-Long-test-passw0rd"


def install_tiny_weights(folder: Path) -> Path:
    return install_weights(folder, TINY_MEMBERS)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install_tiny_weights(tmp_path_factory.mktemp("weights"))


@pytest.fixture
def site(
    tmp_path: Path, tiny_weights: Path, blazeface_cache: Path, settings: Any
) -> Iterator[Path]:
    """Settings for a tiny site: tiny members with weights, media under tmp."""
    from analyses import services

    media = tmp_path / "media-root"
    media.mkdir()
    trusttrace = {
        **settings.TRUSTTRACE,
        "REGISTRY": "tests.tiny_registry.REGISTRY",
        "WEIGHTS_DIR": tiny_weights,
        "CACHE_DIR": blazeface_cache,
        "MEMBERS": TINY_MEMBERS,
        "FRAMES": 4,
        "MAX_UPLOAD_BYTES": 2 * 2**20,
    }
    # Refused uploads are counted in the cache under the user's id, which a
    # later test's user may reuse.
    cache.clear()
    with override_settings(TRUSTTRACE=trusttrace, MEDIA_ROOT=media):
        yield media
    services._ANALYZERS.clear()


@pytest.fixture
def no_weights_site(site: Path, tmp_path: Path, settings: Any) -> Path:
    empty = tmp_path / "no-weights"
    empty.mkdir()
    settings.TRUSTTRACE = {**settings.TRUSTTRACE, "WEIGHTS_DIR": empty}
    return empty


def make_user(username: str, role: str = "submitter") -> User:
    user = User.objects.create_user(username, f"{username}@example.org", PASSWORD)
    if role == "moderator":
        group, _ = Group.objects.get_or_create(name="moderators")
        user.groups.add(group)
    if role == "admin":
        user.is_superuser = user.is_staff = True
        user.save()
    return user


@pytest.fixture
def users(db: Any) -> dict[str, User]:
    return {
        "submitter": make_user("alice"),
        "other": make_user("bob"),
        "moderator": make_user("mona", "moderator"),
        "admin": make_user("ada", "admin"),
    }


@pytest.fixture
def clients(users: dict[str, User]) -> dict[str, Client]:
    out = {"anonymous": Client()}
    for key, user in users.items():
        c = Client()
        c.force_login(user)
        out[key] = c
    return out


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("media")
    mf.write_image(folder / "face.png", mf.face_image(128), "PNG")
    mf.write_clip(folder / "person.mp4", frames=12, width=192, height=144, face_at=(40, 20, 100))
    return folder


def upload(path: Path, name: str | None = None) -> SimpleUploadedFile:
    return SimpleUploadedFile(name or path.name, path.read_bytes())


def replace_stored(sub: Any, data: bytes) -> None:
    """Swap a submission's stored upload for ``data`` as if it had been
    received so (its recorded sha256 and size too): a file the upload check
    let through that the analysis then meets."""
    import hashlib

    path = Path(sub.file.path)
    path.write_bytes(data)
    type(sub).objects.filter(pk=sub.pk).update(
        sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data)
    )


def png_bytes(width: int = 32, height: int = 32, seed: int = 0) -> bytes:
    import io

    rng = np.random.default_rng(seed)
    im = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def write_index(out_dir: Path, frames: tuple[int, ...] = (0, 5)) -> dict[str, Any]:
    """An explainer-style index.json (version 2) with real PNG files: per frame
    the face crop, the whole frame, a Grad-CAM layer per member and an SSIM panel."""
    out_dir.mkdir(parents=True, exist_ok=True)
    artifacts = []
    layers = (
        ("face", None, 0),
        ("frame", None, None),
        ("gradcam", "tiny_a", 0),
        ("gradcam", "tiny_b", 0),
        ("ssim_temporal", None, 0),
    )
    for frame in frames:
        for kind, member, person in layers:
            rel = f"{kind}-{member or 'all'}-{frame}.png"
            (out_dir / rel).write_bytes(png_bytes(seed=frame))
            artifacts.append(
                {
                    "kind": kind,
                    "path": rel,
                    "frame": frame,
                    "time": frame / 10,
                    "person": person,
                    "member": member,
                    "caption": f"{kind} of frame {frame}",
                    "width": 32,
                    "height": 32,
                    "media_type": "image/png",
                }
            )
    series = {
        "threshold": 0.5,
        "uncertain_band": 0.1,
        "persons": [
            {
                "id": 0,
                "points": [
                    {
                        "frame": f,
                        "time": f / 10,
                        "score": 0.8,
                        "members": {"tiny_a": 0.7, "tiny_b": 0.9},
                        "box": [0.2, 0.1, 0.6, 0.7],
                    }
                    for f in frames
                ],
            }
        ],
    }
    index = {"version": 2, "artifacts": artifacts, "series": series}
    (out_dir / "index.json").write_text(json.dumps(index))
    return index


@pytest.fixture
def finished(site: Path, media_dir: Path) -> Callable[..., Any]:
    """Make a finished submission row (no analysis run) with artifacts."""
    from analyses import services
    from analyses.models import Submission

    def make(
        owner: User, verdict: str = "fake", score: float = 0.8, title: str = "clip"
    ) -> Submission:
        path, probed = services._accept(upload(media_dir / "face.png"))
        sub = Submission(
            owner=owner,
            title=title,
            original_name="face.png",
            sha256=probed.sha256,
            kind=probed.kind,
            media_format=probed.format,
            size_bytes=probed.size_bytes,
            status="done",
            verdict=verdict,
            score=score,
            threshold=0.5,
            uncertain_band=0.1,
            members={"tiny_a": score - 0.1, "tiny_b": score + 0.1},
            model_versions={"tiny_a": "a" * 64, "tiny_b": "b" * 64},
            timings={"total": 1.0},
        )
        sub.file.name = path.relative_to(site).as_posix()
        sub.result = {
            "status": "done",
            "verdict": verdict,
            "score": score,
            "threshold": 0.5,
            "uncertain_band": 0.1,
            "members": dict(sub.members),
            "frames": [
                {
                    "frame": f,
                    "time": f / 10,
                    "person": 0,
                    "score": score,
                    "members": dict(sub.members),
                }
                for f in (0, 5)
            ],
            "persons": [
                {
                    "id": 0,
                    "frames": [0, 5],
                    "score": score,
                    "verdict": verdict,
                    "members": dict(sub.members),
                }
            ],
            "models": [
                {
                    "name": n,
                    "weights_sha256": sha,
                    "input_size": 64,
                    # tiny_b recalibrated with a bias (calibrate_member).
                    "temperature": 0.87 if n == "tiny_b" else 1.0,
                    "backend": "openvino",
                    "precision": "bf16",
                    "mirrored": n == "tiny_b",
                    "bias": 0.25 if n == "tiny_b" else 0.0,
                }
                for n, sha in sub.model_versions.items()
            ],
            "combination": {"method": "mean"},
        }
        sub.save()
        out = services.artifact_dir(sub)
        write_index(out)
        services.load_index_file(sub, out)
        return sub

    return make
