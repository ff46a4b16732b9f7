"""Issuer rotation against the running signer and responder, judged by openssl.

Certificates issued before and after `ca rotate` both verify and both get correct
answers by gRPC Check and by OCSP; the old generation's CRL is still published,
signed by the old key, and verifies.
"""

from __future__ import annotations

import threading
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from jpki_va.core.clock import SystemClock
from jpki_va.core.domain import CertKind
from jpki_va.protos import signer_pb2, va_pb2
from jpki_va.server.app.responder_app import renew_ocsp_certificates
from jpki_va.server.pki.cert_profile import key_id
from jpki_va.server.registry.transactions import Registry
from jpki_va.server.responder.ocsp_keys import OcspKeyStore
from jpki_va.server.responder.renew_policy import RenewPolicy
from jpki_va.server.signer.rotation import RotationError, rotate_issuer
from tests.support import Issued, Pki, openssl, wait_for


@pytest.fixture(scope="module")
def rotated(pki: Pki) -> dict[str, Issued]:
    before = pki.issue(CertKind.CARD_SIGN)
    lost_before = pki.issue(CertKind.CARD_SIGN)
    rotation = rotate_issuer(
        pki.signer.token,
        pki.signer.registry,
        SystemClock(),
        CertKind.CARD_SIGN,
        record_dir=pki.directory / "ceremonies",
    )
    assert rotation.new.key_label.endswith("-g2")
    after = pki.issue(CertKind.CARD_SIGN)
    for issued in (lost_before, after):
        pki.signer_stub.RecordLoss(
            signer_pb2.RecordLossRequest(
                kind=va_pb2.CERT_KIND_CARD_SIGN,
                serial=issued.serial.to_bytes(8, "big"),
                cause=va_pb2.LOSS_CAUSE_HOLDER_REQUEST,
            ),
            timeout=30,
        )
    pki.publish_and_wait()
    return {"before": before, "lost_before": lost_before, "after": after}


def _aki(cert: x509.Certificate) -> bytes | None:
    return cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier


def test_generations_share_the_name_not_the_key(rotated: dict[str, Issued]) -> None:
    old, new = rotated["before"].issuer, rotated["after"].issuer
    assert old.subject == new.subject
    assert key_id(old.public_key()) != key_id(new.public_key())
    assert _aki(rotated["before"].certificate) == key_id(old.public_key())
    assert _aki(rotated["after"].certificate) == key_id(new.public_key())


def test_registry_has_one_active_generation(pki: Pki, rotated: dict[str, Issued]) -> None:
    reply = pki.signer_stub.ListIssuers(va_pb2.ListIssuersRequest(), timeout=10)
    card_sign = [i for i in reply.issuers if i.kind == va_pb2.CERT_KIND_CARD_SIGN]
    assert len(card_sign) == 2
    active = [i for i in card_sign if i.active]
    assert [i.key_id for i in active] == [key_id(rotated["after"].issuer.public_key())]


@pytest.mark.parametrize("name", ["before", "after"])
def test_both_generations_verify_with_openssl(
    pki: Pki, rotated: dict[str, Issued], name: str, tmp_path: Path
) -> None:
    cert, issuer = rotated[name].pem_files(tmp_path, name)
    result = openssl(
        "verify", "-CAfile", str(pki.root_file), "-untrusted", str(issuer), str(cert), check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # The other generation's certificate, with the same name, must not do.
    other = rotated["after" if name == "before" else "before"].issuer
    wrong = tmp_path / "wrong.pem"
    wrong.write_bytes(other.public_bytes(serialization.Encoding.PEM))
    result = openssl(
        "verify", "-CAfile", str(pki.root_file), "-untrusted", str(wrong), str(cert), check=False
    )
    assert result.returncode != 0


EXPECTED = {
    "before": va_pb2.CERT_STATUS_GOOD,
    "lost_before": va_pb2.CERT_STATUS_REVOKED,
    "after": va_pb2.CERT_STATUS_REVOKED,
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_check_answers_both_generations(pki: Pki, rotated: dict[str, Issued], name: str) -> None:
    issued = rotated[name]
    der = issued.certificate.public_bytes(serialization.Encoding.DER)
    status = pki.status_stub.Check(
        va_pb2.CheckRequest(cert=va_pb2.CertRef(certificate_der=der)), timeout=10
    ).status
    assert status.status == EXPECTED[name]
    assert status.issuer_key_id == key_id(issued.issuer.public_key())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_ocsp_answers_both_generations(
    pki: Pki, rotated: dict[str, Issued], name: str, tmp_path: Path
) -> None:
    issued = rotated[name]
    request = (
        ocsp.OCSPRequestBuilder()
        .add_certificate(issued.certificate, issued.issuer, hashes.SHA1())
        .build()
        .public_bytes(serialization.Encoding.DER)
    )

    def answered() -> bytes | None:
        der = pki.status_stub.Ocsp(va_pb2.OcspRequest(der=request), timeout=10).der
        # tryLater until the responder holds a delegated certificate for the new key.
        ok = ocsp.load_der_ocsp_response(der).response_status
        return der if ok is ocsp.OCSPResponseStatus.SUCCESSFUL else None

    der = wait_for(answered, "an OCSP answer for the new generation")
    response = ocsp.load_der_ocsp_response(der)
    assert response.certificates[0].issuer == issued.issuer.subject
    assert _aki(response.certificates[0]) == key_id(issued.issuer.public_key())
    resp = tmp_path / "resp.der"
    resp.write_bytes(der)
    cert, issuer = issued.pem_files(tmp_path, name)
    result = openssl(
        "ocsp", "-respin", str(resp), "-issuer", str(issuer), "-cert", str(cert),
        "-CAfile", str(pki.root_file), check=False,
    )  # fmt: skip
    assert "Response verify OK" in result.stderr + result.stdout, result.stderr
    word = "good" if EXPECTED[name] == va_pb2.CERT_STATUS_GOOD else "revoked"
    assert f"{name}.pem: {word}" in result.stdout


def test_old_generation_crl_still_published_and_verifies(
    pki: Pki, rotated: dict[str, Issued], tmp_path: Path
) -> None:
    snapshot = sorted(pki.signer.config.snapshot_dir.glob("snap-*"))[-1]
    for name, revoked in (("lost_before", True), ("before", False), ("after", True)):
        issued = rotated[name]
        kid = key_id(issued.issuer.public_key()).hex()[:16]
        crl_file = snapshot / "crls" / "card-sign" / kid / "131016.crl"
        assert crl_file.is_file(), f"no CRL of generation {kid}"
        crl = x509.load_der_x509_crl(crl_file.read_bytes())
        assert _aki_crl(crl) == key_id(issued.issuer.public_key())
        assert (crl.get_revoked_certificate_by_serial_number(issued.serial) is not None) is revoked
        cert, issuer = issued.pem_files(tmp_path, name)
        pem = tmp_path / f"{name}.crl.pem"
        openssl("crl", "-inform", "DER", "-in", str(crl_file), "-out", str(pem))
        chain = tmp_path / "chain.pem"
        chain.write_bytes(pki.root_file.read_bytes() + issuer.read_bytes())
        result = openssl(
            "verify", "-crl_check", "-CAfile", str(chain), "-CRLfile", str(pem), str(cert),
            check=False,
        )  # fmt: skip
        if revoked:
            assert "certificate revoked" in result.stdout + result.stderr
        else:
            assert result.returncode == 0, result.stdout + result.stderr


def _aki_crl(crl: x509.CertificateRevocationList) -> bytes | None:
    ext = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    return ext.value.key_identifier


def test_rotation_record_written(pki: Pki, rotated: dict[str, Issued]) -> None:
    records = list((pki.directory / "ceremonies").glob("*-rotation.json"))
    assert len(records) == 1
    assert "jpki-va-card-sign-g2" in records[0].read_text()


def test_rotating_a_kind_without_active_generation_is_refused(pki: Pki, tmp_path: Path) -> None:
    empty = Registry(tmp_path / "empty")
    try:
        with pytest.raises(RotationError, match="no root CA"):
            rotate_issuer(pki.signer.token, empty, SystemClock(), CertKind.CARD_AUTH)
    finally:
        empty.close()


def test_ocsp_signer_key_rotation_drops_no_request(pki: Pki, rotated: dict[str, Issued]) -> None:
    issued = rotated["before"]
    request = (
        ocsp.OCSPRequestBuilder()
        .add_certificate(issued.certificate, issued.issuer, hashes.SHA1())
        .build()
        .public_bytes(serialization.Encoding.DER)
    )
    seen: list[tuple[ocsp.OCSPResponseStatus, bytes | None]] = []
    stop = threading.Event()

    def ask() -> None:
        while not stop.is_set() and len(seen) < 2000:
            der = pki.status_stub.Ocsp(va_pb2.OcspRequest(der=request), timeout=10).der
            response = ocsp.load_der_ocsp_response(der)
            signer = None
            if response.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL:
                signer = key_id(response.certificates[0].public_key())
            seen.append((response.response_status, signer))

    asker = threading.Thread(target=ask)
    asker.start()
    try:
        wait_for(lambda: len(seen) >= 5, "answers before the rotation")
        old_key = seen[-1][1]
        config = replace(pki.responder.config, ocsp_renew_at=RenewPolicy.parse("8d"))
        assert renew_ocsp_certificates(config, OcspKeyStore(config.ocsp_dir), SystemClock())
        wait_for(lambda: seen[-1][1] not in (None, old_key), "answers signed by the new key")
        count = len(seen)
        wait_for(lambda: len(seen) >= count + 5, "answers after the rotation")
    finally:
        stop.set()
        asker.join(30)
    assert {status for status, _ in seen} == {ocsp.OCSPResponseStatus.SUCCESSFUL}
    keys = [signer for _, signer in seen]
    switch = keys.index(keys[-1])
    assert set(keys[:switch]) == {old_key} and set(keys[switch:]) == {keys[-1]}


def test_both_generations_are_served_where_their_certificates_say(
    pki: Pki, rotated: dict[str, Issued]
) -> None:
    """AIA caIssuers of each generation's certificates; the new generation names the
    root's ARL and certificate where the old one did."""
    old, new = rotated["before"].issuer, rotated["after"].issuer
    for name in ("before", "after"):
        issued = rotated[name]
        aia = issued.certificate.extensions.get_extension_for_class(
            x509.AuthorityInformationAccess
        ).value
        (url,) = [
            str(d.access_location.value)
            for d in aia
            if d.access_method == x509.oid.AuthorityInformationAccessOID.CA_ISSUERS
        ]
        path = url.split("/", 3)[3]  # the path, on this test's responder
        with urllib.request.urlopen(f"{pki.http_url}/{path}", timeout=10) as reply:
            assert x509.load_der_x509_certificate(reply.read()) == issued.issuer
    for extension in (x509.CRLDistributionPoints, x509.AuthorityInformationAccess):
        assert (
            new.extensions.get_extension_for_class(extension).value
            == old.extensions.get_extension_for_class(extension).value
        )
