"""One error convention: every deliberate error is a TrusttraceError, every
refusal has its own HTTP status in one table, and the upload page and the API
answer a refusal with the same status."""

from __future__ import annotations

import ast
import builtins
import importlib
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from rest_framework.authtoken.models import Token

from analyses import services
from analyses.services.errors import HTTP_STATUS, Refusal, http_status
from ensemble.errors import TrusttraceError

ROOT = Path(__file__).resolve().parents[2]
# Source roots and the import prefix of their modules (platform/ is on sys.path).
PACKAGES = {ROOT / "ensemble": "ensemble", ROOT / "explain": "explain", ROOT / "platform": ""}
# Modules that are not importable on their own: settings variants raise on a
# missing secret by design, migrations hold no errors.
SKIP_PARTS = {"migrations", "settings"}
BUILTIN_EXCEPTIONS = {
    name
    for name, value in vars(builtins).items()
    if isinstance(value, type) and issubclass(value, BaseException)
}


def _base_names(node: ast.ClassDef) -> set[str]:
    names = set()
    for base in node.bases:
        if isinstance(base, ast.Name):
            names.add(base.id)
        elif isinstance(base, ast.Attribute):
            names.add(base.attr)
    return names


def exception_classes(root: Path, prefix: str) -> Iterator[tuple[str, str]]:
    """``(module, class name)`` of every class under ``root`` that derives
    (by name, across files) from an exception: builtin ones, any ``...Error``
    or ``...Exception`` and the classes found so far."""
    classes: list[tuple[str, ast.ClassDef]] = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if SKIP_PARTS & set(rel.parts):
            continue
        module = ".".join(p for p in (prefix, *rel.with_suffix("").parts) if p)
        module = module.removesuffix(".__init__")
        tree = ast.parse(path.read_text(encoding="utf-8"))
        classes += [(module, n) for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]
    known = set(BUILTIN_EXCEPTIONS)
    found: dict[tuple[str, str], None] = {}
    changed = True
    while changed:
        changed = False
        for module, node in classes:
            bases = _base_names(node)
            if (module, node.name) in found or not bases:
                continue
            if bases & known or any(b.endswith(("Error", "Exception")) for b in bases):
                found[(module, node.name)] = None
                known.add(node.name)
                changed = True
    yield from found


def all_exception_classes() -> list[tuple[str, str]]:
    return [c for root, prefix in PACKAGES.items() for c in exception_classes(root, prefix)]


def test_every_error_class_of_the_packages_subclasses_trusttrace_error() -> None:
    found = all_exception_classes()
    # The scan sees the hierarchy: media errors, refusals, the explainer's.
    names = {name for _, name in found}
    assert {"InvalidMediaError", "UploadRejected", "InvalidReferenceError", "DatasetError"} <= names
    outside = [
        f"{module}.{name}"
        for module, name in found
        if not issubclass(getattr(importlib.import_module(module), name), TrusttraceError)
    ]
    assert outside == [], f"not TrusttraceErrors: {outside}"


def test_the_scan_finds_an_error_that_is_not_a_trusttrace_error(tmp_path: Path) -> None:
    (tmp_path / "mod.py").write_text(
        "class ParseError(ValueError):\n    pass\n\n"
        "class Worse(ParseError):\n    pass\n\n"
        "class Plain:\n    pass\n",
        encoding="utf-8",
    )
    assert list(exception_classes(tmp_path, "pkg")) == [
        ("pkg.mod", "ParseError"),
        ("pkg.mod", "Worse"),
    ]


def refusal_classes(root: type[Refusal] = Refusal) -> Iterator[type[Refusal]]:
    for cls in root.__subclasses__():
        yield cls
        yield from refusal_classes(cls)


def without_status(classes: Iterator[type[Refusal]]) -> list[str]:
    """Public refusal classes that have no entry of their own in HTTP_STATUS."""
    return [c.__name__ for c in classes if not c.__name__.startswith("_") and c not in HTTP_STATUS]


def test_every_public_refusal_has_its_own_http_status() -> None:
    importlib.import_module("analyses.services.running")  # defines a private refusal
    classes = list(refusal_classes())
    assert {services.UploadRejected, services.QueueUnavailable, services.DecisionError} <= set(
        classes
    )
    assert without_status(iter(classes)) == []


def test_a_new_refusal_without_a_status_is_caught() -> None:
    class ReferenceTooOld(services.UploadRejected):
        code = "reference_too_old"

    # Until it is listed it answers as an UploadRejected, and the check names it.
    assert http_status(ReferenceTooOld("old")) == HTTPStatus.BAD_REQUEST
    assert without_status(iter([ReferenceTooOld])) == ["ReferenceTooOld"]


def test_the_table_gives_each_refusal_its_status() -> None:
    from analyses.services.running import _RejectedInput

    assert http_status(services.UploadRejected("bad", "unsupported_format")) == 400
    assert http_status(services.QuotaExceeded("too many", "quota_rate")) == 429
    assert http_status(services.ModelsUnavailable("no weights")) == 503
    assert http_status(services.QueueUnavailable("broker down", "id")) == 503
    assert http_status(services.RerunRefused("running")) == 409
    assert http_status(services.DecisionError("note needed")) == 400
    # Not listed: the nearest listed class decides.
    assert http_status(_RejectedInput("bad reference", "invalid_reference")) == 400


def test_a_code_is_set_on_the_class_and_a_call_may_override_it() -> None:
    assert services.QuotaExceeded("x").code == "quota"
    assert services.QuotaExceeded("x", "quota_rate").code == "quota_rate"
    assert services.QuotaExceeded.code == "quota"  # the call changed only its instance
    assert services.RerunRefused("x").reason == "x" and services.RerunRefused("x").code == (
        "rerun_refused"
    )
    from ensemble.errors import EmptyMediaError
    from explain.errors import InvalidReferenceError

    assert EmptyMediaError("empty").code == "no_frames"
    assert InvalidReferenceError("unreadable").code == "invalid_reference"
    assert InvalidReferenceError("bad", "unsupported_format").code == "unsupported_format"
    assert str(InvalidReferenceError("bad", "unsupported_format")) == "bad"


REFUSALS = [
    services.UploadRejected("The file is odd.", "odd"),
    services.QuotaExceeded("You uploaded 30 files in the last hour.", "quota_rate"),
    services.ModelsUnavailable("This site cannot analyse media yet: no weights."),
    services.StorageUnavailable("The site has no room left to store this file."),
    services.QueueUnavailable("The queue is down; your file is kept.", "0b7e"),
]


@pytest.mark.django_db
@pytest.mark.parametrize("error", REFUSALS, ids=lambda e: type(e).__name__)
def test_the_upload_page_and_the_api_answer_a_refusal_with_the_table_status(
    error: Refusal, site: Path, users: dict[str, Any], media_dir: Path, monkeypatch: Any
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise error

    monkeypatch.setattr(services, "submit", refuse)
    page = Client()
    page.force_login(users["submitter"])
    with (media_dir / "face.png").open("rb") as fh:
        answer = page.post(reverse("analyses:submit"), {"file": fh, "title": "t"})
    assert answer.status_code == HTTP_STATUS[type(error)]
    assert str(error) in answer.content.decode()

    token = Token.objects.create(user=users["submitter"])
    api = Client(HTTP_AUTHORIZATION=f"Token {token.key}")
    with (media_dir / "face.png").open("rb") as fh:
        response = api.post("/api/submissions/", {"file": fh})
    assert response.status_code == HTTP_STATUS[type(error)]
    assert response.json() == error.payload()
    assert response.json()["detail"] == str(error) and response.json()["code"] == error.code
