"""The responder's delegated OCSP signer: renewal point, key rotation with overlap, and
never a response whose signer certificate expires before its nextUpdate.

The signer is stood in for by a software CA (the real signer path is exercised by
tests/test_ca_rotation_e2e.py, where the responder renews through gRPC).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

from jpki_va.core.clock import FixedClock
from jpki_va.core.domain import CertKind, Status
from jpki_va.server.pki import cert_profile
from jpki_va.server.responder.index_reader import IssuerEntry
from jpki_va.server.responder.ocsp import OcspResponder
from jpki_va.server.responder.ocsp_keys import OcspKeyStore
from jpki_va.server.responder.renew_policy import RenewPolicy
from jpki_va.server.responder.status import Answer

NOW = datetime(2031, 4, 1, 12, 0, tzinfo=UTC)


class SoftwareCa:
    """Certifies CSRs like the signer's IssueOcspSignerCertificate, with a software key."""

    def __init__(self, validity: timedelta = timedelta(days=7)) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.validity = validity
        self.now = NOW
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CARD_AUTH CA")])
        self.cert = cert_profile.root_certificate(
            self.key, NOW - timedelta(days=1), NOW + timedelta(days=3650), subject=name
        )
        self.key_id = cert_profile.key_id(self.key.public_key())

    def certify(self, csr_der: bytes) -> list[x509.Certificate]:
        csr = x509.load_der_x509_csr(csr_der)
        return [
            cert_profile.ocsp_signer_certificate(
                self.key,
                self.cert,
                csr.public_key(),
                csr.subject,
                self.now - timedelta(minutes=5),
                self.now + self.validity,
            )
        ]


def test_renew_policy_parse_and_due() -> None:
    half = RenewPolicy.parse("0.5")
    early = RenewPolicy.parse("36h")
    assert half == RenewPolicy()
    assert early.before_expiry == timedelta(hours=36)
    ca = SoftwareCa()
    store_key = ec.generate_private_key(ec.SECP256R1())
    (cert,) = ca.certify(OcspKeyStore.csr(store_key))
    start = cert.not_valid_before_utc
    assert not half.due(cert, start + timedelta(days=3))
    assert half.due(cert, start + timedelta(days=3, hours=13))
    assert not early.due(cert, cert.not_valid_after_utc - timedelta(hours=37))
    assert early.due(cert, cert.not_valid_after_utc - timedelta(hours=36))
    for bad in ("0", "1", "1.5", "-3h", "soon", "0d"):
        with pytest.raises(ValueError):
            RenewPolicy.parse(bad)


def test_needs_renewal(tmp_path: Path) -> None:
    ca = SoftwareCa()
    store = OcspKeyStore(tmp_path)
    assert store.needs_renewal({ca.key_id}, NOW)  # nothing held yet
    store.rotate(ca.certify)
    assert not store.needs_renewal({ca.key_id}, NOW)
    assert store.needs_renewal({ca.key_id, b"\x01" * 20}, NOW)  # a new generation appeared
    assert store.needs_renewal({ca.key_id}, NOW + timedelta(days=4))
    assert not store.needs_renewal({ca.key_id}, NOW + timedelta(days=4), RenewPolicy.parse("2d"))
    # A certificate that would end before the latest CRL nextUpdate is renewed early.
    assert store.needs_renewal(
        {ca.key_id}, NOW, RenewPolicy.parse("1h"), must_cover=NOW + timedelta(days=8)
    )


def test_rotation_switches_key_and_certificates_with_overlap(tmp_path: Path) -> None:
    ca = SoftwareCa()
    supervisor = OcspKeyStore(tmp_path)
    worker = OcspKeyStore(tmp_path)  # another process's view of the same directory
    assert worker.current() is None
    first = supervisor.rotate(ca.certify)
    old = worker.current()
    assert old is not None and old.certificates.keys() == {ca.key_id}
    assert cert_profile.key_id(old.key.public_key()) == cert_profile.key_id(first.key.public_key())
    key_file = tmp_path / "keys" / f"{cert_profile.key_id(first.key.public_key()).hex()}.pem"
    assert key_file.stat().st_mode & 0o777 == 0o600

    ca.now = NOW + timedelta(days=4)
    supervisor.rotate(ca.certify)
    new = worker.current()
    assert new is not None
    assert cert_profile.key_id(new.key.public_key()) != cert_profile.key_id(old.key.public_key())
    cert = new.certificates[ca.key_id]
    assert cert_profile.key_id(cert.public_key()) == cert_profile.key_id(new.key.public_key())
    # The old key stays one rotation (a worker may be mid-reload), then goes.
    assert key_file.exists()
    ca.now = NOW + timedelta(days=8)
    supervisor.rotate(ca.certify)
    assert not key_file.exists()
    assert len(list((tmp_path / "keys").glob("*.pem"))) == 2


def test_rotation_refuses_certificates_for_another_key(tmp_path: Path) -> None:
    ca = SoftwareCa()
    store = OcspKeyStore(tmp_path)
    store.rotate(ca.certify)
    before = store.certs_path.read_bytes()
    stranger = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(ValueError, match="no certificate for the new responder key"):
        store.rotate(lambda _csr: ca.certify(OcspKeyStore.csr(stranger)))
    assert store.certs_path.read_bytes() == before
    assert len(list((tmp_path / "keys").glob("*.pem"))) == 1


class _Source:
    """A status source with one fixed answer (the index-backed one runs in the e2e tests)."""

    def __init__(self, next_update: datetime) -> None:
        self.next_update = next_update

    def status(self, kind: CertKind, serial: int, as_of: datetime) -> Answer:
        return Answer(kind, serial, Status.UNKNOWN, None, as_of, 1, as_of, self.next_update)


class _Resolver:
    def __init__(self, entry: IssuerEntry) -> None:
        self.entry = entry

    def issuer_by_hash(self, algorithm: str, name_hash: bytes, key_hash: bytes) -> IssuerEntry:
        return self.entry


def _respond(tmp_path: Path, *, signer_left: timedelta, crl_left: timedelta) -> ocsp.OCSPResponse:
    ca = SoftwareCa(validity=timedelta(days=7))
    ca.now = NOW - timedelta(days=7) + signer_left  # the certificate ends at NOW + signer_left
    store = OcspKeyStore(tmp_path)
    store.rotate(ca.certify)
    clock = FixedClock(NOW)
    responder = OcspResponder(
        _Source(NOW + crl_left),
        _Resolver(IssuerEntry(CertKind.CARD_AUTH, ca.key_id, ca.cert)),  # type: ignore[arg-type]
        store.current,
        clock,
    )
    request = (
        ocsp.OCSPRequestBuilder()
        .add_certificate_by_hash(b"\x00" * 20, b"\x01" * 20, 12345, hashes.SHA1())
        .build()
        .public_bytes(serialization.Encoding.DER)
    )
    return ocsp.load_der_ocsp_response(responder.respond(request).der)


def test_response_next_update_never_outlives_the_signer_certificate(tmp_path: Path) -> None:
    response = _respond(tmp_path, signer_left=timedelta(hours=10), crl_left=timedelta(hours=48))
    assert response.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
    (signer,) = response.certificates
    assert response.next_update_utc is not None
    assert response.next_update_utc <= signer.not_valid_after_utc


def test_expired_or_expiring_signer_certificate_gets_try_later(tmp_path: Path) -> None:
    for left, name in ((timedelta(seconds=-1), "expired"), (timedelta(seconds=30), "expiring")):
        os.makedirs(tmp_path / name)
        response = _respond(tmp_path / name, signer_left=left, crl_left=timedelta(hours=48))
        assert response.response_status is ocsp.OCSPResponseStatus.TRY_LATER, name
