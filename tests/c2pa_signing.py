"""C2PA-signed media for tests, made with the library's own signing API.

A throwaway certificate authority and signing certificate are created when a
test asks for them (nothing is committed). c2pa-rs accepts a signing
certificate only when it is issued by a CA (a self-signed one is refused),
has a critical ``keyUsage`` with ``digitalSignature``, an ``extendedKeyUsage``
(``emailProtection`` here; documentSigning and the C2PA OID are also taken)
and an EC P-256 (ES256) or RSA-PSS (PS256) key; without the keyUsage or the
EKU, ``Builder.sign`` fails with "the certificate is invalid".
"""

from __future__ import annotations

import datetime as dt
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import c2pa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"
AI_MEDIA = IPTC + "trainedAlgorithmicMedia"
AI_COMPOSITE = IPTC + "compositeWithTrainedAlgorithmicMedia"
CAPTURE = IPTC + "digitalCapture"
CA_NAME = "Trusttrace test root CA"
SIGNER_NAME = "Trusttrace test signer"
ORG = "Trusttrace tests"
GENERATOR = "trusttrace-tests"
_KU_OFF = dict(
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    encipher_only=False,
    decipher_only=False,
)


@dataclass(frozen=True)
class TestPKI:
    """A CA and a signing certificate issued by it (PEM)."""

    __test__ = False  # not a pytest class

    alg: str
    ca_pem: str
    chain_pem: bytes  # the signing certificate, then the CA
    key_pem: bytes


def make_pki(alg: str = "es256") -> TestPKI:
    """A fresh CA and signer for ``alg`` (``es256`` or ``ps256``), valid for a day."""

    def new_key() -> Any:
        if alg == "ps256":
            return rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return ec.generate_private_key(ec.SECP256R1())

    now = dt.datetime.now(dt.UTC)
    ca_key, key = new_key(), new_key()
    ca_subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORG),
        ]
    )
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_subject)
        .issuer_name(ca_subject)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=False, key_cert_sign=True, crl_sign=True, **_KU_OFF),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, SIGNER_NAME),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORG),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False, **_KU_OFF),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return TestPKI(
        alg=alg,
        ca_pem=ca.public_bytes(pem).decode("ascii"),
        chain_pem=cert.public_bytes(pem) + ca.public_bytes(pem),
        key_pem=key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )


MIME = {
    ".jpg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".mp4": "video/mp4",
    ".mov": "video/quicktime",
    ".avi": "video/x-msvideo",
}


def created_action(source_type: str = AI_MEDIA, when: str = "") -> dict[str, Any]:
    action: dict[str, Any] = {"action": "c2pa.created", "digitalSourceType": source_type}
    if when:
        action["when"] = when
    return action


def opened() -> dict[str, Any]:
    """``c2pa.opened`` of the parent ingredient (the library requires the reference)."""
    return {"action": "c2pa.opened", "parameters": {"ingredientIds": ["ingredient0"]}}


def sign(
    src: Path,
    dst: Path,
    pki: TestPKI,
    *,
    actions: list[dict[str, Any]] | None = None,
    ingredients: Sequence[tuple[str, Path]] = (),
    title: str = "signed in a test",
    remote_url: str = "",
) -> Path:
    """Sign ``src`` into ``dst`` with ``pki``: a manifest with ``actions``
    (default: created by a trained model) and ``ingredients`` (title, file:
    the first is the parent, the others components; an action refers to the
    i-th as ``ingredient{i}``, see :func:`opened`)."""
    manifest = {
        "claim_generator_info": [{"name": GENERATOR, "version": "1.0"}],
        "title": title,
        "assertions": [
            {"label": "c2pa.actions", "data": {"actions": actions or [created_action()]}}
        ],
    }
    context = c2pa.Context.from_dict({"builder": {"thumbnail": {"enabled": False}}})
    info = c2pa.C2paSignerInfo(
        alg=pki.alg.encode(), sign_cert=pki.chain_pem, private_key=pki.key_pem, ta_url=None
    )
    mime = MIME[src.suffix]
    with c2pa.Signer.from_info(info) as signer, c2pa.Builder(manifest, context=context) as b:
        for i, (ingredient_title, path) in enumerate(ingredients):
            with path.open("rb") as fh:
                b.add_ingredient(
                    {
                        "title": ingredient_title,
                        "label": f"ingredient{i}",
                        "relationship": "parentOf" if i == 0 else "componentOf",
                    },
                    MIME[path.suffix],
                    fh,
                )
        if remote_url:
            b.set_no_embed()
            b.set_remote_url(remote_url)
        with src.open("rb") as s, dst.open("w+b") as d:
            b.sign(signer, mime, s, d)
    context.close()
    return dst


def flip_byte(path: Path, dst: Path, at: int) -> Path:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    dst.write_bytes(bytes(data))
    return dst


def tamper_jpeg(path: Path, dst: Path) -> Path:
    """A copy with one bit of the entropy-coded image data changed (the image
    still decodes; its hash no longer matches the manifest)."""
    return flip_byte(path, dst, len(path.read_bytes()) - 40)


def tamper_bmff(path: Path, dst: Path) -> Path:
    """An MP4/MOV copy with one bit of the ``mdat`` payload changed."""
    data = path.read_bytes()
    return flip_byte(path, dst, data.index(b"mdat") + 64)


def truncate_jpeg_manifest(path: Path, dst: Path) -> Path:
    """A copy whose first APP11 (JUMBF, the manifest store) segment keeps only
    the first half of its payload, its length fixed so the JPEG stays valid."""
    data = path.read_bytes()
    out, pos, cut = bytearray(data[:2]), 2, False
    while pos < len(data):
        marker = data[pos + 1]
        if marker == 0xDA:  # start of scan: the rest is image data
            out += data[pos:]
            break
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        segment = data[pos : pos + 2 + length]
        if marker == 0xEB and not cut:
            payload = segment[4 : 4 + (length - 2) // 2]
            segment = b"\xff\xeb" + struct.pack(">H", len(payload) + 2) + payload
            cut = True
        out += segment
        pos += 2 + length
    if not cut:
        raise ValueError(f"{path} has no APP11 segment")
    dst.write_bytes(bytes(out))
    return dst


def state_summaries(folder: Path) -> dict[str, dict[str, Any]]:
    """One real summary dict (``ensemble.provenance``) per state, read by the
    library from files made here: ``valid`` (an AI-generated JPEG, its CA
    trusted), ``untrusted`` (the same, CA not trusted), ``invalid`` (a tampered
    copy), ``absent`` (a plain JPEG), ``unchecked`` (an MKV)."""
    from ensemble.provenance import read_provenance
    from tests.media_factory import face_image, write_clip, write_image

    pki = make_pki()
    plain = write_image(folder / "plain.jpg", face_image(64), "JPEG")
    ai = sign(plain, folder / "ai.jpg", pki, actions=[created_action(when="2026-11-30T08:00:00Z")])
    mkv = write_clip(folder / "clip.mkv", frames=4, width=64, height=64)
    out = {
        "valid": read_provenance(ai, trust_anchors=pki.ca_pem),
        "untrusted": read_provenance(ai),
        "invalid": read_provenance(tamper_jpeg(ai, folder / "tampered.jpg")),
        "absent": read_provenance(plain),
        "unchecked": read_provenance(mkv),
    }
    for state, summary in out.items():
        assert summary.state == state, (state, summary.reason)
    return {state: s.to_dict() for state, s in out.items()}
