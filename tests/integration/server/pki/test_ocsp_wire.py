"""The OCSP wire layer: strict DER in, RFC 6960 structures out.

Requests come from cryptography and openssl (clients we did not write) and from
hand-built vectors for what no good client sends; responses are read back by
cryptography and their signatures checked.
"""

from __future__ import annotations

import hashlib
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

from jpki_va.server.pki import der, ocsp_wire
from jpki_va.server.pki.ocsp_wire import (
    CertStatus,
    MalformedRequest,
    ResponseStatus,
    SingleResponse,
)
from tests.support import openssl

SHA1 = bytes.fromhex("06052b0e03021a")
SHA256 = bytes.fromhex("0609608648016503040201")
MD5 = bytes.fromhex("06082a864886f70d0205")
NONCE = bytes.fromhex("06092b0601050507300102")


def cert_id(
    serial: bytes = der.unsigned(0x1234),
    algorithm: bytes = SHA1,
    size: int = 20,
    params: bytes = der.tlv(der.NULL, b""),
) -> bytes:
    return der.sequence(
        der.sequence(algorithm, params),
        der.tlv(der.OCTET_STRING, b"\x01" * size),
        der.tlv(der.OCTET_STRING, b"\x02" * size),
        serial,
    )


def extension(oid: bytes, value: bytes, critical: bool = False) -> bytes:
    flag = der.tlv(der.BOOLEAN, b"\xff") if critical else b""
    return der.sequence(oid, flag, der.tlv(der.OCTET_STRING, value))


def request(*ids: bytes, extensions: list[bytes] | None = None, head: bytes = b"") -> bytes:
    items = [der.sequence(i) for i in ids]
    tbs = [head, der.sequence(*items)]
    if extensions is not None:
        tbs.append(der.tlv(der.context(2), der.sequence(*extensions)))
    return der.sequence(der.sequence(*tbs))


def test_reads_what_cryptography_builds() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuer")])
    now = datetime.now(UTC)
    issuer = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    for algorithm in (hashes.SHA1(), hashes.SHA256()):
        built = (
            ocsp.OCSPRequestBuilder()
            .add_certificate_by_hash(
                b"\x0a" * algorithm.digest_size,
                b"\x0b" * algorithm.digest_size,
                0xABCDEF,
                algorithm,
            )
            .add_extension(x509.OCSPNonce(b"nonce-bytes"), critical=False)
            .build()
        )
        parsed = ocsp_wire.parse_request(built.public_bytes(serialization.Encoding.DER), 8)
        (one,) = parsed.cert_ids
        assert one.algorithm == algorithm.name
        assert (one.name_hash, one.key_hash, one.serial) == (
            built.issuer_name_hash,
            built.issuer_key_hash,
            0xABCDEF,
        )
        assert parsed.nonce == b"nonce-bytes"
    del issuer


def test_reads_several_cert_ids_from_openssl(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuer")])
    now = datetime.now(UTC)

    def cert(serial: int, subject: x509.Name) -> Path:
        built = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(now)
            .not_valid_after(now + timedelta(days=1))
            .sign(key, hashes.SHA256())
        )
        path = tmp_path / f"{serial}.pem"
        path.write_bytes(built.public_bytes(serialization.Encoding.PEM))
        return path

    issuer = cert(1, name)
    a = cert(0x1001, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a")]))
    b = cert(0x1002, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "b")]))
    requests = []
    for run in range(2):
        out = tmp_path / f"req{run}.der"
        openssl(
            "ocsp", "-issuer", str(issuer), "-cert", str(a), "-cert", str(b), "-reqout", str(out)
        )
        requests.append(ocsp_wire.parse_request(out.read_bytes(), 8))
    first, second = requests
    assert [c.serial for c in first.cert_ids] == [0x1001, 0x1002]
    assert first.nonce is not None and second.nonce is not None and first.nonce != second.nonce
    # The cache key is the CertIDs only: two nonces, one key.
    assert first.request_list == second.request_list


def test_request_list_is_the_key_and_excludes_the_nonce() -> None:
    plain = ocsp_wire.parse_request(request(cert_id()), 4)
    nonced = ocsp_wire.parse_request(
        request(cert_id(), extensions=[extension(NONCE, der.tlv(der.OCTET_STRING, b"x" * 16))]), 4
    )
    assert plain.nonce is None and nonced.nonce == b"x" * 16
    assert plain.request_list == nonced.request_list
    other = ocsp_wire.parse_request(request(cert_id(der.unsigned(0x1235))), 4)
    assert other.request_list != plain.request_list


def test_accepts_optional_fields() -> None:
    version = der.tlv(der.context(0), der.unsigned(0))
    requestor = der.tlv(der.context(1), der.tlv(0x82, b"example.jp"))
    parsed = ocsp_wire.parse_request(request(cert_id(params=b""), head=version + requestor), 4)
    assert parsed.cert_ids[0].serial == 0x1234
    signed = der.sequence(
        der.sequence(der.sequence(der.sequence(cert_id()))), der.tlv(der.context(0), b"")
    )
    assert ocsp_wire.parse_request(signed, 4).cert_ids[0].serial == 0x1234


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "empty"),
        (request(cert_id()) + b"\x00", "trailing"),
        (b"\x30\x80" + request(cert_id())[2:] + b"\x00\x00", "indefinite"),
        (b"\x30\x81\x05" + der.sequence(b"\x30\x00")[:5], "minimal"),
        (der.sequence(der.sequence(der.sequence())), "no CertID"),
        (request(cert_id(algorithm=MD5)), "hash algorithm"),
        (request(cert_id(size=19)), "20 octets"),
        (request(cert_id(algorithm=SHA256, size=20)), "32 octets"),
        (request(cert_id(serial=der.tlv(der.INTEGER, b"\xff"))), "negative"),
        (request(cert_id(serial=der.tlv(der.INTEGER, b"\x00"))), "positive"),
        (request(cert_id(serial=der.tlv(der.INTEGER, b"\x00\x01"))), "minimal"),
        (request(cert_id(serial=der.unsigned(1 << 160))), "20 octets"),
        (request(cert_id(params=der.tlv(der.OCTET_STRING, b""))), "parameters"),
        (
            request(cert_id(), extensions=[extension(NONCE, der.tlv(der.OCTET_STRING, b""))]),
            "nonce",
        ),
        (
            request(
                cert_id(), extensions=[extension(NONCE, der.tlv(der.OCTET_STRING, b"n" * 129))]
            ),
            "nonce",
        ),
        (request(cert_id(), extensions=[extension(NONCE, der.tlv(der.INTEGER, b"\x01"))]), "nonce"),
        (
            request(
                cert_id(),
                extensions=[extension(NONCE, der.tlv(4, b"a")), extension(NONCE, der.tlv(4, b"b"))],
            ),
            "duplicate",
        ),
        (request(cert_id(), extensions=[extension(SHA1, b"", critical=True)]), "critical"),
        (request(cert_id(), head=der.tlv(der.context(0), der.unsigned(1))), "version"),
        (request(*[cert_id()] * 5), "more than 4"),
        (b"\x1f\x01\x00", "multi-byte"),
    ],
)
def test_refuses_what_is_not_a_request_we_answer(data: bytes, fragment: str) -> None:
    with pytest.raises(MalformedRequest, match=fragment):
        ocsp_wire.parse_request(data, 4)


@pytest.mark.parametrize("size", [0, 1, 127, 128, 255, 256, 65_535, 65_536])
def test_lengths_round_trip(size: int) -> None:
    encoded = der.tlv(der.OCTET_STRING, b"\x00" * size)
    assert der.read(encoded, 0, len(encoded)) == (
        der.OCTET_STRING,
        len(encoded) - size,
        len(encoded),
    )


def test_responses_read_back_and_verify() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    key_hash = ocsp_wire.responder_key_hash(spki)
    point = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    assert key_hash == hashlib.sha1(point).digest()
    parsed = ocsp_wire.parse_request(request(cert_id(der.unsigned(7)), cert_id(der.unsigned(8))), 4)
    now = datetime(2026, 1, 2, 3, 4, 5, 678, tzinfo=UTC)
    singles = [
        SingleResponse(parsed.cert_ids[0], CertStatus.GOOD, now, now + timedelta(hours=1)),
        SingleResponse(
            parsed.cert_ids[1],
            CertStatus.REVOKED,
            now,
            now + timedelta(hours=2),
            revocation_time=now - timedelta(days=1),
            revocation_reason=1,
        ),
    ]
    tbs = ocsp_wire.response_data(key_hash, now, [s.encode() for s in singles], b"abc")
    signature = key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    algorithm = der.sequence(bytes.fromhex("06082a8648ce3d040302"))
    response = ocsp.load_der_ocsp_response(ocsp_wire.successful(tbs, algorithm, signature, []))
    assert response.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
    assert response.responder_key_hash == key_hash
    assert response.produced_at_utc == now.replace(microsecond=0)
    first, second = response.responses
    assert (first.serial_number, first.certificate_status) == (7, ocsp.OCSPCertStatus.GOOD)
    assert first.next_update_utc == (now + timedelta(hours=1)).replace(microsecond=0)
    assert (second.serial_number, second.certificate_status) == (8, ocsp.OCSPCertStatus.REVOKED)
    assert second.revocation_reason is x509.ReasonFlags.key_compromise
    assert response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == b"abc"
    assert response.tbs_response_bytes == tbs
    key.public_key().verify(response.signature, tbs, ec.ECDSA(hashes.SHA256()))


def test_response_writer_frames_every_size_about_its_table_of_lengths() -> None:
    """Each size where the framing goes from the writer's table of lengths to lengths
    computed, and where the outer lengths change form (0x81 to 0x82)."""
    tbs = der.sequence(b"\x00" * 200)
    algorithm = der.sequence(bytes.fromhex("06092a864886f70d01010b"), der.tlv(der.NULL, b""))
    writer = ocsp_wire.ResponseWriter(bytes(20), algorithm)
    signature = bytes(range(256))
    for size in [*range(0, 300), *range(3500, 4200)]:
        certs = b"\x01" * size
        expected = ocsp_wire.successful_with(tbs, algorithm, signature, certs)
        assert writer.body(tbs, signature, size) + certs == expected, size


@pytest.mark.parametrize(
    "status", [s for s in ResponseStatus if s is not ResponseStatus.SUCCESSFUL]
)
def test_unsuccessful_statuses(status: ResponseStatus) -> None:
    response = ocsp.load_der_ocsp_response(ocsp_wire.unsuccessful(status))
    assert response.response_status.value == int(status)


def test_response_writer_writes_the_reference_bytes() -> None:
    """The responder's writer against SingleResponse/response_data/successful: the same
    bytes for every status, one to many CertIDs, with and without a nonce, and lengths
    in each of DER's length forms (short, 0x81, 0x82, 0x83); the body a worker keeps is
    the response up to its certs field."""
    rng = random.Random(5)
    key_hash = bytes(range(20))
    algorithm = der.sequence(bytes.fromhex("06082a8648ce3d040302"))
    writer = ocsp_wire.ResponseWriter(key_hash, algorithm)
    base = datetime(2026, 1, 2, 3, 4, 5, 678, tzinfo=UTC)
    for case in range(200):
        count = rng.choice([1, 1, 2, 3, 64])
        ids = [
            cert_id(der.unsigned(rng.getrandbits(rng.choice([8, 64, 159])) + 1))
            for _ in range(count)
        ]
        parsed = ocsp_wire.parse_request(request(*ids), 64)
        singles = []
        for cid in parsed.cert_ids:
            status = rng.choice(list(CertStatus))
            this_update = base + timedelta(seconds=rng.randrange(10**6))
            next_update = this_update + timedelta(hours=rng.randrange(1, 100))
            revoked = status is CertStatus.REVOKED
            singles.append(
                SingleResponse(
                    cid,
                    status,
                    this_update,
                    next_update,
                    revocation_time=this_update - timedelta(days=1) if revoked else None,
                    revocation_reason=rng.choice([None, 0, 1, 4, 10]) if revoked else None,
                )
            )
        nonce = rng.choice([None, b"\x01", rng.randbytes(32), rng.randbytes(128)])
        produced = base + timedelta(seconds=case // 3)  # the writer remembers a second
        reference_tbs = ocsp_wire.response_data(
            key_hash, produced, [s.encode() for s in singles], nonce
        )
        written = [
            writer.single(
                s.cert_id.der,
                s.status,
                s.this_update,
                s.next_update,
                s.revocation_time,
                s.revocation_reason,
            )
            for s in singles
        ]
        assert written == [s.encode() for s in singles]
        tbs = writer.tbs(produced, written, nonce)
        assert tbs == reference_tbs
        signature = rng.randbytes(rng.choice([70, 71, 72, 256, 512]))
        # Sizes about the writer's table of lengths (4096) and past 0xFFFF as well.
        certificate = rng.randbytes(rng.choice([700, 3200, 3300, 3400, 4100, 70_000]))
        certs = rng.choice([b"", ocsp_wire.certs_field([certificate])])
        whole = writer.response(tbs, signature, certs)
        assert whole == ocsp_wire.successful_with(tbs, algorithm, signature, certs)
        assert writer.body(tbs, signature, len(certs)) + certs == whole
