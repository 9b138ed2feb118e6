"""C2PA Content Credentials: read and verify a file's manifest store, summarised.

A detector gives a probability; a signed provenance manifest states a fact
(who signed the file, with which tool, which edits, whether a generative model
made it). :func:`read_provenance` reads the manifest store embedded in an
image or video with the official bindings (``c2pa-python``, the Content
Authenticity Initiative's library over c2pa-rs; no manifest is parsed here),
lets the library validate it (the claim signature, the certificate chain
against the library's default trust settings plus any anchors given, and the
hard binding of the manifest to the file's bytes) and returns a compact,
bounded :class:`ProvenanceSummary`.

States (:data:`STATES`):

- ``valid``: signature, chain and binding check out and the signer's
  certificate chains to a trust anchor;
- ``untrusted``: the signature and binding check out, but the signer is not on
  the trust list (anyone can make such a certificate: the manifest is intact,
  who made it is unverified);
- ``invalid``: a manifest is there but fails validation (the file was changed
  after signing, a broken signature or certificate) or cannot be read at all
  (truncated, malformed): ``reason`` says which;
- ``absent``: no manifest. Most media has none; it is not evidence of anything;
- ``unchecked``: the question could not be answered (a format the library does
  not read, a manifest stored remotely and not fetched, the library missing).

Reading never raises: every failure becomes a summary with its reason, so an
upload is never refused because of its Content Credentials. Nothing is fetched
over the network (no remote manifests, no OCSP).
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

logger = logging.getLogger(__name__)

ProvenanceState = Literal["valid", "untrusted", "invalid", "absent", "unchecked"]
STATES: tuple[ProvenanceState, ...] = ("valid", "untrusted", "invalid", "absent", "unchecked")
SUMMARY_VERSION = 1

# Bounds on what is kept per submission: a manifest can hold any number of
# actions and ingredients and arbitrarily long strings.
MAX_TEXT = 200
MAX_REASON = 500
MAX_ACTIONS = 20
MAX_INGREDIENTS = 20
MAX_CODES = 10

IPTC_SOURCE_TYPE = "cv.iptc.org/newscodes/digitalsourcetype/"
# IPTC digital source types that say a trained generative model made the
# media (``trainedAlgorithmicMedia``) or part of it (the composite variant).
AI_SOURCE_TYPES = frozenset({"trainedAlgorithmicMedia", "compositeWithTrainedAlgorithmicMedia"})
# Validation codes about trust in the signer, not about the manifest's integrity.
TRUST_CODES = frozenset({"signingCredential.untrusted"})

# Our content-sniffed formats (ensemble.media) -> the MIME type the library reads.
MIME_TYPES = {
    "jpeg": "image/jpeg",
    "png": "image/png",
    "apng": "image/png",
    "webp": "image/webp",
    "gif": "image/gif",
    "mp4": "video/mp4",
    "mov": "video/quicktime",
    "avi": "video/x-msvideo",
}

# Reading settings: verification on (the library's defaults), and nothing
# fetched over the network while an upload is being checked.
READER_SETTINGS: dict[str, Any] = {
    "verify": {
        "verify_after_reading": True,
        "verify_trust": True,
        "remote_manifest_fetch": False,
        "ocsp_fetch": False,
    },
    "core": {"allowed_network_hosts": []},
}


@dataclass(frozen=True)
class ProvenanceAction:
    """One action of the active manifest (``c2pa.created``, ``c2pa.edited``, ...)."""

    action: str
    source_type: str = ""  # the IPTC code (``trainedAlgorithmicMedia``) or the raw value
    software: str = ""
    when: str = ""
    ai: bool = False  # the source type says a trained model made (part of) the media

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "source_type": self.source_type,
            "software": self.software,
            "when": self.when,
            "ai": self.ai,
        }


@dataclass(frozen=True)
class ProvenanceSummary:
    """What a file's Content Credentials say, bounded for storage.

    ``ai_generated`` is what the manifest store declares (in the active
    manifest, or ``ai_generated_in == "ingredient"`` in the manifest of an
    ingredient); it is only worth as much as ``state``: a declaration in an
    ``untrusted`` manifest comes from an unverified signer, in an ``invalid``
    one from a manifest that does not match the file.
    """

    state: ProvenanceState
    reason: str = ""
    codes: tuple[str, ...] = ()  # validation failure codes of the active manifest
    signer: str = ""
    issuer: str = ""
    claim_generator: str = ""
    title: str = ""
    signed_at: str = ""  # the signature's trusted timestamp, when it has one
    created_at: str = ""  # the ``when`` of the ``c2pa.created`` action, when given
    ai_generated: bool = False
    ai_generated_in: str = ""  # "active", "ingredient" or ""
    actions: tuple[ProvenanceAction, ...] = ()
    actions_total: int = 0
    ingredients: tuple[str, ...] = ()
    ingredients_total: int = 0
    manifests: int = 0
    remote_url: str = ""
    mime_type: str = ""
    library: str = ""

    @property
    def present(self) -> bool:
        """A manifest was found (whatever its validity)."""
        return self.state in ("valid", "untrusted", "invalid")

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored with a submission and shown by the API and CLI."""
        return {
            "version": SUMMARY_VERSION,
            "state": self.state,
            "reason": self.reason,
            "codes": list(self.codes),
            "signer": self.signer,
            "issuer": self.issuer,
            "claim_generator": self.claim_generator,
            "title": self.title,
            "signed_at": self.signed_at,
            "created_at": self.created_at,
            "ai_generated": self.ai_generated,
            "ai_generated_in": self.ai_generated_in,
            "actions": [a.to_dict() for a in self.actions],
            "actions_total": self.actions_total,
            "ingredients": list(self.ingredients),
            "ingredients_total": self.ingredients_total,
            "manifests": self.manifests,
            "remote_url": self.remote_url,
            "mime_type": self.mime_type,
            "library": self.library,
        }


def unchecked(reason: str, *, mime_type: str = "") -> ProvenanceSummary:
    """A summary saying the Content Credentials could not be checked, and why."""
    return ProvenanceSummary(
        state="unchecked", reason=_text(reason, MAX_REASON), mime_type=mime_type
    )


def _load_library() -> tuple[ModuleType | None, str]:
    """The ``c2pa`` module and ``""``, or ``None`` and why it cannot be loaded.

    Loaded when this module is imported (the upload probe's forkserver
    preloads it, so each probe child starts with the native library mapped),
    and never raising: a missing wheel or a native library that fails to load
    on this platform (c2pa raises RuntimeError or OSError then, which a
    forkserver preload would not survive) becomes ``unchecked`` summaries.
    """
    try:
        return importlib.import_module("c2pa"), ""
    except Exception as e:
        logger.warning("c2pa unavailable: %s", e)
        return None, _error_text(e)


def library_version() -> str:
    """``c2pa-python X (c2pa-rs Y)``, or ``""`` when the library cannot be loaded."""
    if _C2PA is None:
        return ""
    try:
        return f"c2pa-python {_C2PA.__version__} (c2pa-rs {_C2PA.sdk_version()})"
    except Exception:
        return ""


def read_provenance(
    path: Path, media_format: str | None = None, *, trust_anchors: str | None = None
) -> ProvenanceSummary:
    """Read and validate ``path``'s C2PA manifest store; never raises.

    ``media_format`` is the format found by content (``ensemble.media.sniff``;
    sniffed here when not given). ``trust_anchors`` (PEM) are root
    certificates trusted on top of the library's defaults.
    """
    try:
        if media_format is None:
            from ensemble.media import sniff

            media_format = sniff(path).format
    except Exception as e:  # the media checks say what is wrong with the file
        return unchecked(f"The file's format could not be determined ({_error_text(e)}).")
    mime = MIME_TYPES.get(media_format, "")
    if not mime:
        return unchecked(
            f"The C2PA library does not read Content Credentials from {media_format.upper()} "
            "files.",
        )
    if _C2PA is None:
        return unchecked(f"The C2PA library is not available here ({_C2PA_ERROR}).", mime_type=mime)
    library = library_version()
    try:
        summary = _read(_C2PA, path, mime, trust_anchors)
    except Exception as e:  # a bug here must never refuse an upload
        logger.exception("reading the Content Credentials of %s failed", path)
        summary = unchecked(
            f"Reading the Content Credentials failed ({_error_text(e)}).", mime_type=mime
        )
    return replace(summary, library=library, mime_type=mime)


def _read(c2pa: ModuleType, path: Path, mime: str, trust_anchors: str | None) -> ProvenanceSummary:
    settings: dict[str, Any] = json.loads(json.dumps(READER_SETTINGS))
    if trust_anchors:
        settings["trust"] = {"user_anchors": trust_anchors}
    context = c2pa.Context.from_dict(settings)
    try:
        with path.open("rb") as fh:
            reader = c2pa.Reader.try_create(mime, fh, None, context)
            if reader is None:
                return ProvenanceSummary(state="absent")
            with reader:
                store = json.loads(reader.json())
                try:
                    certificates = _certificates(json.loads(reader.crjson()))
                except (c2pa.C2paError, ValueError):
                    certificates = {}
    except c2pa.C2paError as e:
        return _from_error(e)
    finally:
        context.close()
    return summarise(store, certificates)


def _from_error(error: Exception) -> ProvenanceSummary:
    """A library error: the manifest is there but unreadable (``invalid``), or
    stored remotely, or in a form the library does not take (``unchecked``)."""
    text = _error_text(error)
    kind = text.split(":", 1)[0].strip()
    if kind in ("Remote", "RemoteManifest"):
        url = text.split("url", 1)[1].strip() if "url" in text else ""
        return ProvenanceSummary(
            state="unchecked",
            reason="The file points to Content Credentials stored elsewhere; they were not "
            "fetched (nothing is downloaded while an upload is checked).",
            remote_url=_text(url),
        )
    if kind == "NotSupported":
        return unchecked(f"The C2PA library cannot read this file ({text}).")
    return ProvenanceSummary(
        state="invalid",
        reason=_text(f"The Content Credentials could not be read: {text}", MAX_REASON),
    )


def summarise(
    store: Mapping[str, Any], certificates: Mapping[str, Mapping[str, str]] | None = None
) -> ProvenanceSummary:
    """A :class:`ProvenanceSummary` from the library's manifest-store JSON
    (``Reader.json()``) and, optionally, the signing certificates' subject and
    issuer by manifest label (from ``Reader.crjson()``)."""
    manifests = store.get("manifests") or {}
    if not isinstance(manifests, Mapping):
        manifests = {}
    label = str(store.get("active_manifest") or "")
    active = manifests.get(label)
    if not isinstance(active, Mapping):
        return ProvenanceSummary(
            state="invalid",
            reason="The manifest store has no active manifest.",
            manifests=len(manifests),
        )
    state, reason, codes = _validation(store)
    actions = _actions(active)
    ai_in = ""
    if any(a.ai for a in actions):
        ai_in = "active"
    elif any(
        a.ai
        for k, m in manifests.items()
        if k != label and isinstance(m, Mapping)
        for a in _actions(m)
    ):
        ai_in = "ingredient"
    ingredients = [
        _text(i.get("title") or i.get("label") or "untitled")
        for i in (active.get("ingredients") or [])
        if isinstance(i, Mapping)
    ]
    signature = active.get("signature_info") or {}
    if not isinstance(signature, Mapping):
        signature = {}
    cert = (certificates or {}).get(label, {})
    created = next((a.when for a in actions if a.action == "c2pa.created" and a.when), "")
    return ProvenanceSummary(
        state=state,
        reason=reason,
        codes=codes,
        signer=_text(cert.get("subject") or _name(signature.get("common_name"), None)),
        issuer=_text(cert.get("issuer") or signature.get("issuer") or ""),
        claim_generator=_generator(active),
        title=_text(active.get("title") or ""),
        signed_at=_text(signature.get("time") or ""),
        created_at=created,
        ai_generated=bool(ai_in),
        ai_generated_in=ai_in,
        actions=tuple(actions[:MAX_ACTIONS]),
        actions_total=len(actions),
        ingredients=tuple(ingredients[:MAX_INGREDIENTS]),
        ingredients_total=len(ingredients),
        manifests=len(manifests),
    )


def _validation(store: Mapping[str, Any]) -> tuple[ProvenanceState, str, tuple[str, ...]]:
    """The state from the library's ``validation_state`` and the active
    manifest's failure codes."""
    results = store.get("validation_results") or {}
    failures = ((results.get("activeManifest") or {}).get("failure") if results else None) or (
        store.get("validation_status") or []
    )
    failures = [f for f in failures if isinstance(f, Mapping)]
    codes = tuple(_text(f.get("code") or "") for f in failures[:MAX_CODES])
    integrity = [f for f in failures if f.get("code") not in TRUST_CODES]
    state = str(store.get("validation_state") or "")
    if state == "Trusted" and not integrity:
        return "valid", "", codes
    if state == "Valid" and not integrity:
        return (
            "untrusted",
            "The signature and the file's hash check out, but the signer's certificate is not "
            "on the trust list: who signed it is not verified.",
            codes,
        )
    if state in ("Valid", "Trusted", "Invalid"):
        details = "; ".join(
            f"{f.get('code')}: {f.get('explanation') or ''}".rstrip(": ") for f in integrity
        )
        return (
            "invalid",
            _text(
                "The Content Credentials do not match this file or their signature is broken"
                + (f" ({details})" if details else ""),
                MAX_REASON,
            ),
            codes,
        )
    return "unchecked", "The C2PA library did not validate the manifest.", codes


def _actions(manifest: Mapping[str, Any]) -> list[ProvenanceAction]:
    out: list[ProvenanceAction] = []
    for assertion in manifest.get("assertions") or []:
        if not isinstance(assertion, Mapping):
            continue
        if not str(assertion.get("label", "")).startswith("c2pa.actions"):
            continue
        data = assertion.get("data") or {}
        for a in (data.get("actions") if isinstance(data, Mapping) else None) or []:
            if not isinstance(a, Mapping):
                continue
            source = _source_type(a.get("digitalSourceType"))
            out.append(
                ProvenanceAction(
                    action=_text(a.get("action") or "", 64),
                    source_type=source,
                    software=_software(a.get("softwareAgent")),
                    when=_text(a.get("when") or "", 64),
                    ai=source in AI_SOURCE_TYPES,
                )
            )
    return out


def _source_type(value: object) -> str:
    """The IPTC code of a digital source type URI (the URI itself otherwise)."""
    text = _text(value or "")
    if IPTC_SOURCE_TYPE in text:
        return text.rsplit("/", 1)[-1]
    return text


def _software(agent: object) -> str:
    if isinstance(agent, Mapping):
        return _text(" ".join(str(agent.get(k) or "") for k in ("name", "version")).strip())
    return _text(agent or "")


def _generator(manifest: Mapping[str, Any]) -> str:
    info = manifest.get("claim_generator_info")
    if isinstance(info, Sequence) and info and isinstance(info[0], Mapping):
        return _text(f"{info[0].get('name') or ''} {info[0].get('version') or ''}".strip())
    return _text(manifest.get("claim_generator") or "")


def _certificates(crjson: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """``label -> {"subject", "issuer"}`` of each manifest's signing certificate."""
    out: dict[str, dict[str, str]] = {}
    for m in crjson.get("manifests") or []:
        if not isinstance(m, Mapping):
            continue
        info = (m.get("signature") or {}).get("certificateInfo") or {}
        subject, issuer = info.get("subject") or {}, info.get("issuer") or {}
        out[str(m.get("label") or "")] = {
            "subject": _name(subject.get("CN"), subject.get("O")),
            "issuer": _name(issuer.get("CN"), issuer.get("O")),
        }
    return out


def _name(common_name: object, organisation: object) -> str:
    """``CN (O)``, or whichever of the two is there."""
    cn, org = _text(common_name or ""), _text(organisation or "")
    if cn and org and org != cn:
        return f"{cn} ({org})"
    return cn or org


def _text(value: object, limit: int = MAX_TEXT) -> str:
    """Printable text of at most ``limit`` characters (manifests are untrusted input)."""
    text = "".join(c if c.isprintable() else " " for c in str(value)).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _error_text(error: BaseException) -> str:
    return _text(str(error) or type(error).__name__, MAX_REASON)


_C2PA, _C2PA_ERROR = _load_library()
