"""第14条, 第15条第3項: an issuer key compromise ends every certificate that key signed.

Its own module: the compromise ends the only CARD_SIGN generation of this signer.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import ocsp

from jpki_va.core.domain import CertKind, CrlReason, LossCause, record_key, serial_to_bytes
from jpki_va.hsm import HsmConfig
from jpki_va.protos import signer_pb2, va_pb2
from tests.support import (
    Issued,
    Pki,
    openssl,
    preproduced_count,
    preproduced_entry,
    request_der,
    running_pki,
    wait_for,
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory, softhsm_token: HsmConfig) -> Iterator[Pki]:
    with running_pki(tmp_path_factory.mktemp("compromise"), softhsm_token) as running:
        yield running


def _aki(cert: x509.Certificate) -> bytes:
    value = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert value.key_identifier is not None
    return value.key_identifier


def _compromise(
    pki: Pki, kind: int, key_id: bytes, nature: int = 0
) -> signer_pb2.RecordIssuerCompromiseResponse:
    return pki.signer_stub.RecordIssuerCompromise(
        signer_pb2.RecordIssuerCompromiseRequest(kind=kind, issuer_key_id=key_id, nature=nature),  # type: ignore[arg-type]
        timeout=30,
    )


def test_article_14_issuer_key_compromise_ends_what_the_key_signed(
    pki: Pki, tmp_path: Path
) -> None:
    card = pki.issue(CertKind.CARD_SIGN, resident_code="81000000001")
    lost_before = pki.issue(CertKind.CARD_SIGN, resident_code="81000000002")
    mobile = pki.issue(CertKind.MOBILE_SIGN, resident_code="81000000001", card=card)
    auth = pki.issue(CertKind.CARD_AUTH, resident_code="81000000001")
    pki.signer_stub.RecordLoss(
        signer_pb2.RecordLossRequest(
            kind=va_pb2.CERT_KIND_CARD_SIGN,
            serial=serial_to_bytes(lost_before.serial),
            cause=va_pb2.LOSS_CAUSE_HOLDER_REQUEST,
        ),
        timeout=30,
    )
    pki.publish_and_wait(full=False)
    generation = _aki(card.certificate)
    # The card's pre-produced answer (GOOD) as the producer made it before the compromise.
    key = record_key(CertKind.CARD_SIGN, card.serial)
    good_entry = wait_for(
        lambda: preproduced_entry(pki.responder.config.state_dir, key), "the card's answer"
    )
    # Nothing announced yet: a clear 404, not an empty document.
    with pytest.raises(urllib.error.HTTPError) as http_error:
        urllib.request.urlopen(f"{pki.http_url}/announcements/issuer-compromise.p7m", timeout=10)
    assert http_error.value.code == 404
    http_error.value.close()

    # Bad input changes nothing.
    with pytest.raises(grpc.RpcError) as info:
        _compromise(pki, va_pb2.CERT_KIND_CARD_SIGN, b"\x01" * 20)
    assert info.value.code() is grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as info:
        _compromise(pki, va_pb2.CERT_KIND_CARD_AUTH, generation)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT

    with pytest.raises(grpc.RpcError) as info:
        _compromise(pki, va_pb2.CERT_KIND_CARD_SIGN, generation, nature=9)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "nature" in (info.value.details() or "")

    leaked = signer_pb2.COMPROMISE_NATURE_LEAKED
    reply = _compromise(pki, va_pb2.CERT_KIND_CARD_SIGN, generation, nature=leaked)
    assert reply.certificates == 2
    compromised_at = reply.compromised_at.ToDatetime(tzinfo=UTC)
    with pytest.raises(grpc.RpcError) as info:
        _compromise(pki, va_pb2.CERT_KIND_CARD_SIGN, generation)
    assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION

    published = pki.signer_stub.PublishSnapshot(
        signer_pb2.PublishSnapshotRequest(full=False), timeout=60
    )
    assert published.type == "full"  # a compromise always goes out in a full snapshot
    pki.wait_sequence(published.sequence)

    answer = pki.check(CertKind.CARD_SIGN, card.serial)
    assert answer.status == va_pb2.CERT_STATUS_REVOKED
    assert LossCause(answer.revocation.cause) is LossCause.ISSUER_KEY_COMPROMISE
    assert CrlReason(answer.revocation.reason) is CrlReason.CA_COMPROMISE
    assert answer.revocation.time.ToDatetime(tzinfo=UTC) == compromised_at.replace(microsecond=0)
    # A loss recorded before the compromise stays the loss (loss is final).
    earlier = pki.check(CertKind.CARD_SIGN, lost_before.serial)
    assert LossCause(earlier.revocation.cause) is LossCause.HOLDER_REQUEST
    # 第16条の13: the card lost effect by cause 4, so its mobile certificate follows.
    follows = pki.check(CertKind.MOBILE_SIGN, mobile.serial)
    assert follows.status == va_pb2.CERT_STATUS_REVOKED
    assert LossCause(follows.revocation.cause) is LossCause.CARD_CERT_LOST_EFFECT
    assert pki.check(CertKind.CARD_AUTH, auth.serial).status == va_pb2.CERT_STATUS_GOOD

    # No row per certificate: neither the registry nor the index stores this loss.
    with pki.signer.registry.read() as tx:
        stored = tx.stored_certificate(CertKind.CARD_SIGN, card.serial)
        assert stored is not None and stored.loss is None
    with pki.live_index() as index:
        record = index.get(CertKind.CARD_SIGN, card.serial)
        assert record is not None and record.loss is None
        assert generation in index.compromises

    # Announced: the responder lists the generation with its compromise time.
    listed = pki.status_stub.ListIssuers(va_pb2.ListIssuersRequest(), timeout=10)
    issuer = next(i for i in listed.issuers if i.key_id == generation)
    assert issuer.compromised_at.ToDatetime(tzinfo=UTC) == compromised_at

    _check_ocsp_over_a_stale_entry(pki, card, key, good_entry)
    _check_arl(pki, card, tmp_path)
    _check_announcement(pki, generation, compromised_at, tmp_path)

    # The compromised generation issues nothing more; its certificates lose nothing more.
    with pytest.raises(grpc.RpcError) as info:
        pki.issue(CertKind.CARD_SIGN, resident_code="81000000003")
    assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "compromised" in (info.value.details() or "")
    with pytest.raises(grpc.RpcError) as info:
        pki.signer_stub.RecordLoss(
            signer_pb2.RecordLossRequest(
                kind=va_pb2.CERT_KIND_CARD_SIGN,
                serial=serial_to_bytes(card.serial),
                cause=va_pb2.LOSS_CAUSE_HOLDER_REQUEST,
            ),
            timeout=30,
        )
    assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "ISSUER_KEY_COMPROMISE" in (info.value.details() or "")


def _check_ocsp_over_a_stale_entry(pki: Pki, card: Issued, key: bytes, good: bytes) -> None:
    """OCSP says REVOKED (caCompromise) even while the replica's store still holds the
    GOOD answer signed before the compromise: the index's row for the card has no loss,
    so only the compromise layer can tell that this entry is no longer right."""
    pki.wait_preproduced()  # the producer's pass over the new index is done
    preproduced_entry(pki.responder.config.state_dir, key, put=good)
    stale = preproduced_count(pki.metrics_url, "stale")
    reply = pki.status_stub.Ocsp(va_pb2.OcspRequest(der=request_der(card)), timeout=10)
    response = ocsp.load_der_ocsp_response(reply.der)
    assert response.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
    assert response.certificate_status is ocsp.OCSPCertStatus.REVOKED
    assert response.revocation_reason is x509.ReasonFlags.ca_compromise
    # The worker found the entry and judged it stale (metrics published every 0.2 s).
    wait_for(lambda: preproduced_count(pki.metrics_url, "stale") > stale, "a stale entry")


def _check_arl(pki: Pki, card: Issued, tmp_path: Path) -> None:
    """The root's ARL revokes the issuing CA certificate (cACompromise); openssl agrees."""
    snapshot = sorted(pki.signer.config.snapshot_dir.glob("snap-*"))[-1]
    arl = tmp_path / "arl.pem"
    openssl("crl", "-inform", "DER", "-in", str(snapshot / "arl.crl"), "-out", str(arl))
    verified = openssl("crl", "-in", str(arl), "-CAfile", str(pki.root_file), "-noout", "-verify")
    assert "verify OK" in verified.stderr + verified.stdout
    text = openssl("crl", "-in", str(arl), "-noout", "-text").stdout
    assert "CA Compromise" in text
    issuer = tmp_path / "issuer.pem"
    issuer.write_bytes(card.issuer.public_bytes(serialization.Encoding.PEM))
    result = openssl(
        "verify", "-crl_check", "-CAfile", str(pki.root_file), "-CRLfile", str(arl), str(issuer),
        check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "certificate revoked" in result.stdout + result.stderr


def _check_announcement(pki: Pki, generation: bytes, since: datetime, tmp_path: Path) -> None:
    """第15条第3項 公表: served over HTTP to anyone, signed, verifiable with the root alone."""
    url = f"{pki.http_url}/announcements/issuer-compromise.p7m"
    # No X-JPKI-Verifier header and no client certificate: it is public.
    with urllib.request.urlopen(url, timeout=10) as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("application/pkcs7-mime")
        signed = reply.read()
    path = tmp_path / "announcement.p7m"
    path.write_bytes(signed)
    out = tmp_path / "announcement.json"
    result = openssl(
        "cms", "-verify", "-inform", "DER", "-in", str(path), "-CAfile", str(pki.root_file),
        "-purpose", "any", "-out", str(out),
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    announced = json.loads(out.read_bytes())
    (item,) = announced["compromises"]
    assert item["generation"] == generation.hex()
    assert item["kind"] == "card-sign" and item["article"] == "第15条第1項第4号・第3項"
    assert datetime.fromisoformat(item["since"]) == since
    assert "漏えい" in item["what"] and "滅失" not in item["what"]  # what the operator said
    assert announced["arl"].startswith(pki.signer.config.base_url)
    # The link leads to the root's ARL, which the responder serves to anyone too.
    arl_path = announced["arl"].removeprefix(pki.signer.config.base_url)
    with urllib.request.urlopen(f"{pki.http_url}{arl_path}", timeout=10) as reply:
        arl = x509.load_der_x509_crl(reply.read())
    assert arl.is_signature_valid(pki.root.public_key())  # type: ignore[arg-type]
    # Kept in each snapshot: the latest one carries the same signed announcement.
    snapshot = sorted(pki.signer.config.snapshot_dir.glob("snap-*"))[-1]
    assert (snapshot / "announcement.p7m").is_file()
    # Tampered content fails against the root: the signature is what vouches for it.
    forged = signed.replace(b"card-sign", b"card-auth")
    assert forged != signed
    path.write_bytes(forged)
    result = openssl(
        "cms", "-verify", "-inform", "DER", "-in", str(path), "-CAfile", str(pki.root_file),
        "-purpose", "any", "-out", str(out),
        check=False,
    )  # fmt: skip
    assert result.returncode != 0
