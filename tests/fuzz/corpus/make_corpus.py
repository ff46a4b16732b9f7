"""Write the fuzz seed corpus (README.md beside this file says what each seed is).

Run from the repository root: `python -m tests.fuzz.corpus.make_corpus`. The seeds
are checked in; this only says where they came from and remakes them. Keys and
serials are fresh on each run, so the bytes differ from run to run, not their shape.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp

from jpki_va.core.domain import CertKind, CrlReason, LossCause
from jpki_va.server.pki import cert_profile, crl_stream, der
from jpki_va.server.pki.cert_profile import ProfileSettings
from jpki_va.server.pki.crl_profile import CrlEntry

HERE = Path(__file__).resolve().parent
NOW = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)
SHA1 = bytes.fromhex("06052b0e03021a")


def _cert_id(serial: int) -> bytes:
    return der.sequence(
        der.sequence(SHA1, der.tlv(der.NULL, b"")),
        der.tlv(der.OCTET_STRING, bytes(range(20))),
        der.tlv(der.OCTET_STRING, bytes(range(20, 40))),
        der.unsigned(serial),
    )


def ocsp_seeds() -> dict[str, bytes]:
    builder = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        bytes(20), bytes(range(20)), 0x1234_5678_9ABC, hashes.SHA1()
    )
    plain = builder.build().public_bytes(Encoding.DER)
    nonce = (
        builder.add_extension(x509.OCSPNonce(b"\x01" * 16), critical=False)
        .build()
        .public_bytes(Encoding.DER)
    )
    sha256 = (
        ocsp.OCSPRequestBuilder()
        .add_certificate_by_hash(bytes(32), bytes(range(32)), (1 << 159) - 1, hashes.SHA256())
        .build()
        .public_bytes(Encoding.DER)
    )
    # Several CertIDs, a version, a requestorName and an optionalSignature: cryptography
    # builds none of these, so by hand with the responder's own DER writer.
    request_list = der.sequence(*(der.sequence(_cert_id(s)) for s in (1, 0x80, 1 << 62)))
    name = der.tlv(der.context(1), der.tlv(0xA4, der.sequence()))
    version = der.tlv(der.context(0), der.unsigned(0))
    signature = der.tlv(
        der.context(0), der.sequence(der.sequence(SHA1), der.bit_string(b"\x00" * 8))
    )
    several = der.sequence(der.sequence(version, name, request_list), signature)
    return {
        "single-sha1.der": plain,
        "single-sha1-nonce.der": nonce,
        "sha256-widest-serial.der": sha256,
        "three-certids-version-name-signature.der": several,
    }


def crl_seeds() -> dict[str, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    root = cert_profile.root_certificate(key, NOW - timedelta(days=1), NOW + timedelta(days=3650))
    entries = [
        CrlEntry(1, NOW - timedelta(days=1), LossCause.HOLDER_REQUEST, CrlReason.UNSPECIFIED),
        CrlEntry(0x80, NOW, LossCause.RECORD_ERROR, CrlReason.KEY_COMPROMISE),
        CrlEntry(
            (1 << 158) + 5,
            datetime(2051, 1, 2, 3, 4, 5, tzinfo=UTC),
            LossCause.RESIDENT_CHANGE,
            CrlReason.AFFILIATION_CHANGED,
        ),
    ]
    common = {
        "kind": CertKind.CARD_SIGN,
        "partition": "131016",
        "number": 7,
        "this_update": NOW,
        "next_update": NOW + timedelta(hours=48),
    }
    ours = crl_stream.crl_der(ProfileSettings(), key, root, entries=entries, **common)  # type: ignore[arg-type]
    empty = crl_stream.crl_der(ProfileSettings(), key, root, entries=(), **common)  # type: ignore[arg-type]
    # An entry with an extension our writer never writes: the strict reader gives up.
    foreign = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(root.subject)
        .last_update(NOW)
        .next_update(NOW + timedelta(days=1))
        .add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(42)
            .revocation_date(NOW)
            .add_extension(x509.InvalidityDate(NOW - timedelta(days=1)), critical=False)
            .build()
        )
        .sign(key, hashes.SHA256())
        .public_bytes(Encoding.DER)
    )
    return {"three-entries.der": ours, "empty.der": empty, "foreign-extension.der": foreign}


HTTP_SEEDS = {
    "post.http": b"POST /ocsp HTTP/1.1\r\nHost: va\r\nContent-Type: application/ocsp-request\r\n"
    b"Content-Length: 5\r\n\r\n\x30\x03\x0a\x01\x01",
    "get-ocsp.http": b"GET /ocsp/MEMwQTA%2FMD0wOzAJBgUrDgMCGgUABBQ HTTP/1.1\r\nHost: va\r\n\r\n",
    "get-crl.http": b"GET /crl/card-sign/0011223344556677/131016.crl HTTP/1.1\r\n"
    b'Host: va\r\nIf-None-Match: "x", W/"y"\r\nX-JPKI-Verifier: bank-a\r\n\r\n',
    "pipelined.http": b"GET /crl/x HTTP/1.1\r\nHost: va\r\n\r\n"
    b"POST / HTTP/1.1\r\nHost: va\r\nContent-Length: 2\r\n\r\nhi",
    "expect-continue.http": b"POST /ocsp HTTP/1.1\r\nHost: va\r\nExpect: 100-continue\r\n"
    b"Content-Length: 3\r\n\r\nabc",
    "chunked.http": b"POST /ocsp HTTP/1.1\r\nHost: va\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n0\r\n\r\n",
    "http10.http": b"GET /favicon.ico HTTP/1.0\r\n\r\n",
    "upgrade.http": b"GET / HTTP/1.1\r\nHost: va\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
}


def main() -> None:
    for folder, seeds in (("ocsp", ocsp_seeds()), ("crl", crl_seeds()), ("http", HTTP_SEEDS)):
        (HERE / folder).mkdir(exist_ok=True)
        for name, data in seeds.items():
            (HERE / folder / name).write_bytes(data)


if __name__ == "__main__":
    main()
