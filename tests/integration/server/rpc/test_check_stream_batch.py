"""A CheckStream batch answers each item exactly as a unary Check of it would.

The stream reads a batch in one go (one index transaction, entitlements once per
provision); this compares it item by item with Check over a batch that mixes
kinds, unknown serials, losses, validity bounds, malformed items, a compromised
issuer generation and a verifier entitled to only some kinds. Its own module: the
compromise ends the only CARD_SIGN generation of this signer.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from jpki_va.client import CertificateStatus, CheckErrorCode, CheckRefusal, VaClient
from jpki_va.core.domain import CertKind, Role, Status, serial_to_bytes
from jpki_va.hsm import HsmConfig
from jpki_va.protos import signer_pb2, va_pb2, verifiers_pb2
from tests.support import Issued, Pki, start_pki, throwaway_certificate

AUTH_ONLY = "batch-auth-only"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory, softhsm_token: HsmConfig) -> Iterator[Pki]:
    running = start_pki(tmp_path_factory.mktemp("batch"), softhsm_token)
    try:
        yield running
    finally:
        running.close()


def _ref(kind: int, serial: bytes) -> va_pb2.CertRef:
    return va_pb2.CertRef(kind_serial=va_pb2.KindSerial(kind=kind, serial=serial))  # type: ignore[arg-type]


def _of(issued: Issued) -> va_pb2.CertRef:
    return _ref(int(issued.kind), serial_to_bytes(issued.serial))


def _at(ref: va_pb2.CertRef, when: datetime) -> va_pb2.CheckRequest:
    request = va_pb2.CheckRequest(cert=ref)
    request.as_of.FromDatetime(when)
    return request


def _unary(pki: Pki, request: va_pb2.CheckRequest, metadata: tuple[tuple[str, str], ...]) -> str:
    """What Check answers, in the form a stream result takes (status, or error code
    and text)."""
    try:
        reply = pki.status_stub.Check(request, timeout=10, metadata=metadata)
    except grpc.RpcError as exc:
        details = exc.details() or ""
        if exc.code() is grpc.StatusCode.PERMISSION_DENIED:
            return f"error CHECK_ERROR_CODE_PERMISSION_DENIED PERMISSION_DENIED: {details}"
        assert exc.code() is grpc.StatusCode.INVALID_ARGUMENT, exc
        return f"error CHECK_ERROR_CODE_INVALID_ARGUMENT {details}"
    return f"status {reply.status}"


def _streamed(result: va_pb2.CheckResult) -> str:
    if result.WhichOneof("result") == "error":
        return f"error {va_pb2.CheckErrorCode.Name(result.error_code)} {result.error}"
    return f"status {result.status}"


def test_a_batch_from_index_values_answers_as_check_does(pki: Pki) -> None:
    # Before any compromise: a batch of plain items goes from the index's values to
    # the wire in compiled code (rpc/_batch_wire.pyx), refusals and errors between.
    lost = pki.issue(CertKind.CARD_AUTH, resident_code="82000000009")
    pki.signer_stub.RecordLoss(
        signer_pb2.RecordLossRequest(
            kind=int(lost.kind),  # type: ignore[arg-type]
            serial=serial_to_bytes(lost.serial),
            cause=va_pb2.LOSS_CAUSE_RECORD_ERROR,
        ),
        timeout=30,
    )
    _items_without_as_of(pki, CertKind.CARD_SIGN)
    (reply,) = pki.status_stub.CheckStream(
        iter([va_pb2.CheckBatchRequest(requests=[va_pb2.CheckRequest(cert=_of(lost))])]),
        timeout=30,
    )
    (result,) = reply.results
    assert result.status.status == va_pb2.CERT_STATUS_REVOKED
    assert result.status.revocation.cause == va_pb2.LOSS_CAUSE_RECORD_ERROR


def _items_without_as_of(pki: Pki, other_kind: CertKind) -> None:
    # The batch reads a plain kind_serial item its own quick way; every item it does
    # not take (and every error) must come out exactly as Check says it.
    auth = pki.issue(CertKind.CARD_AUTH)
    other = pki.issue(other_kind)
    pki.publish_and_wait()
    requests = [
        va_pb2.CheckRequest(cert=ref)
        for ref in (
            _of(auth),
            _of(other),
            _of(auth),
            _ref(va_pb2.CERT_KIND_CARD_AUTH, b"\x00" + serial_to_bytes(auth.serial)),
            _ref(va_pb2.CERT_KIND_MOBILE_AUTH, (10**15).to_bytes(8, "big")),  # UNKNOWN
            _ref(va_pb2.CERT_KIND_UNSPECIFIED, b"\x01"),
            _ref(99, b"\x01"),
            _ref(-1, b"\x01"),
            _ref(va_pb2.CERT_KIND_CARD_AUTH, b""),
            _ref(va_pb2.CERT_KIND_CARD_AUTH, b"\x00"),
            _ref(va_pb2.CERT_KIND_CARD_AUTH, b"\x00" * 20),
            _ref(va_pb2.CERT_KIND_CARD_AUTH, b"\xff" * 20),
            _ref(va_pb2.CERT_KIND_CARD_AUTH, b"\x01" * 21),
            va_pb2.CertRef(kind_serial=va_pb2.KindSerial()),
            va_pb2.CertRef(),
        )
    ]
    (reply,) = pki.status_stub.CheckStream(
        iter([va_pb2.CheckBatchRequest(requests=requests)]), timeout=30
    )
    assert len(reply.results) == len(requests)
    statuses = 0
    for request, result in zip(requests, reply.results, strict=True):
        expected = _unary(pki, request, ())
        if expected.startswith("error"):
            assert _streamed(result) == expected
            continue
        # The same answer but for as_of, which is each call's own "now".
        unary = pki.status_stub.Check(request, timeout=10).status
        unary.ClearField("as_of")
        streamed = va_pb2.CertificateStatus()
        streamed.CopyFrom(result.status)
        streamed.ClearField("as_of")
        assert streamed == unary
        statuses += 1
    assert statuses == 6  # two known, one twice, once more (leading zero), two unknown


def test_a_batch_answers_each_item_as_check_does(pki: Pki) -> None:
    card = pki.issue(CertKind.CARD_SIGN, resident_code="82000000001")
    lost_before = pki.issue(CertKind.CARD_SIGN, resident_code="82000000002")
    mobile = pki.issue(CertKind.MOBILE_SIGN, resident_code="82000000001", card=card)
    auth = pki.issue(CertKind.CARD_AUTH, resident_code="82000000001")
    auth_lost = pki.issue(CertKind.CARD_AUTH, resident_code="82000000003")
    for lost in (lost_before, auth_lost):
        pki.signer_stub.RecordLoss(
            signer_pb2.RecordLossRequest(
                kind=int(lost.kind),  # type: ignore[arg-type]
                serial=serial_to_bytes(lost.serial),
                cause=va_pb2.LOSS_CAUSE_HOLDER_REQUEST,
            ),
            timeout=30,
        )
    pki.signer_stub.AddVerifier(
        verifiers_pb2.AddVerifierRequest(
            id=AUTH_ONLY,
            roles=[int(Role.AUTH_VERIFIER)],  # type: ignore[list-item]
            client_certificate_der=[
                throwaway_certificate(AUTH_ONLY).public_bytes(serialization.Encoding.DER)
            ],
        ),
        timeout=30,
    )
    pki.publish_and_wait()
    aki = card.certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    compromised = pki.signer_stub.RecordIssuerCompromise(
        signer_pb2.RecordIssuerCompromiseRequest(
            kind=va_pb2.CERT_KIND_CARD_SIGN,
            issuer_key_id=aki.value.key_identifier or b"",
        ),
        timeout=30,
    )
    pki.wait_sequence(
        pki.signer_stub.PublishSnapshot(
            signer_pb2.PublishSnapshotRequest(full=False), timeout=60
        ).sequence
    )
    compromised_at = compromised.compromised_at.ToDatetime(tzinfo=UTC)

    now = datetime.now(UTC)
    before = compromised_at - timedelta(seconds=1)
    # The bounds of the certificate checked at them: `auth` was issued after `card`,
    # possibly in a later second, so the card's bounds would not be the auth's.
    valid_from = auth.certificate.not_valid_before_utc
    valid_to = auth.certificate.not_valid_after_utc
    unknown = _ref(va_pb2.CERT_KIND_CARD_AUTH, (10**15).to_bytes(8, "big"))
    requests = [
        _at(_of(card), now),  # REVOKED by the compromise
        _at(_of(card), before),  # GOOD before it
        _at(_of(lost_before), now),  # its own earlier loss stays
        _at(_of(mobile), now),  # follows its card
        _at(_of(auth), now),  # GOOD
        _at(_of(auth), valid_from - timedelta(microseconds=1)),  # NOT_YET_VALID
        _at(_of(auth), valid_from),
        _at(_of(auth), valid_to),
        _at(_of(auth), valid_to + timedelta(microseconds=1)),  # EXPIRED
        _at(_of(auth_lost), now),  # REVOKED
        _at(unknown, now),  # UNKNOWN
        _at(_ref(va_pb2.CERT_KIND_UNSPECIFIED, b"\x01"), now),  # no kind
        _at(_ref(99, b"\x01"), now),  # no such kind
        _at(_ref(va_pb2.CERT_KIND_CARD_AUTH, b""), now),  # empty serial
        _at(_ref(va_pb2.CERT_KIND_CARD_AUTH, b"\x00"), now),  # zero serial
        _at(_ref(va_pb2.CERT_KIND_CARD_AUTH, b"\x01" * 21), now),  # too long
        va_pb2.CheckRequest(),  # no certificate at all
        _at(va_pb2.CertRef(certificate_der=b"not DER"), now),
        _at(va_pb2.CertRef(certificate_der=auth.certificate.public_bytes(_DER)), now),
        _at(va_pb2.CertRef(certificate_der=card.certificate.public_bytes(_DER)), before),
        _at(_cert_id(auth, b"\x00" * 20), now),  # an issuer we do not serve: UNKNOWN
        _at(_cert_id(auth, b"\x00" * 19), now),  # malformed CertID
        _at(_of(auth), now),  # the same item twice gets the same answer
    ]
    for metadata in ((), (("x-jpki-verifier", AUTH_ONLY),)):
        expected = [_unary(pki, request, metadata) for request in requests]
        replies = list(
            pki.status_stub.CheckStream(
                iter([va_pb2.CheckBatchRequest(requests=requests)] * 2),
                timeout=30,
                metadata=metadata,
            )
        )
        assert len(replies) == 2
        for reply in replies:
            assert [_streamed(r) for r in reply.results] == expected
        if not metadata:
            kinds = [e.split("status: ")[1].split("\n")[0] for e in expected[:11]]
            assert kinds[:5] == [
                "CERT_STATUS_REVOKED",
                "CERT_STATUS_GOOD",
                "CERT_STATUS_REVOKED",
                "CERT_STATUS_REVOKED",
                "CERT_STATUS_GOOD",
            ]
            assert kinds[5:] == [
                "CERT_STATUS_NOT_YET_VALID",
                "CERT_STATUS_GOOD",
                "CERT_STATUS_GOOD",
                "CERT_STATUS_EXPIRED",
                "CERT_STATUS_REVOKED",
                "CERT_STATUS_UNKNOWN",
            ]
        else:  # entitled to authentication certificates only
            assert all("PERMISSION_DENIED" in e for e in expected[:4])
            assert not any("PERMISSION_DENIED" in e for e in expected[4:11])


_DER = serialization.Encoding.DER


def _cert_id(issued: Issued, issuer_name_hash: bytes) -> va_pb2.CertRef:
    return va_pb2.CertRef(
        cert_id=va_pb2.CertId(
            hash_algorithm="sha1",
            issuer_name_hash=issuer_name_hash,
            issuer_key_hash=b"\x00" * 20,
            serial=serial_to_bytes(issued.serial),
        )
    )


def test_a_batch_of_plain_items_read_from_its_bytes_falls_back_item_by_item(pki: Pki) -> None:
    """A batch whose every item is plain arrives as its keys, unparsed. After the
    compromise above it is parsed again where Python must word each item: a kind the
    verifier may not have (refused per item), and a compromise every answer must see."""
    auth = pki.issue(CertKind.CARD_AUTH, resident_code="82000000011")
    pki.publish_and_wait()
    card = _ref(va_pb2.CERT_KIND_CARD_SIGN, (10**15).to_bytes(8, "big"))  # none issued
    refs = [card, _of(auth), card, _of(auth)]
    batch = va_pb2.CheckBatchRequest(requests=[va_pb2.CheckRequest(cert=ref) for ref in refs])
    for metadata in ((), (("x-jpki-verifier", AUTH_ONLY),)):
        (reply,) = pki.status_stub.CheckStream(iter([batch]), timeout=30, metadata=metadata)
        got = []
        for result in reply.results:
            if result.WhichOneof("result") == "status":
                result.status.ClearField("as_of")  # each call's own "now"
            got.append(_streamed(result))
        expected = []
        for request in batch.requests:
            answer = _unary(pki, request, metadata)
            if answer.startswith("status"):
                unary = pki.status_stub.Check(request, timeout=10, metadata=metadata).status
                unary.ClearField("as_of")
                answer = f"status {unary}"
            expected.append(answer)
        assert got == expected
        assert "CERT_STATUS_GOOD" in got[1] and got[1] == got[3]
        if metadata:
            assert "PERMISSION_DENIED" in got[0] and got[0] == got[2]
        else:
            assert got[0].startswith("status") and got[0] == got[2]


def test_a_batch_without_as_of_is_answered_at_one_instant(pki: Pki) -> None:
    auth = pki.issue(CertKind.CARD_AUTH)
    pki.publish_and_wait()
    request = va_pb2.CheckRequest(cert=_of(auth))
    began = datetime.now(UTC)
    (reply,) = pki.status_stub.CheckStream(
        iter([va_pb2.CheckBatchRequest(requests=[request] * 3)]), timeout=30
    )
    ended = datetime.now(UTC)
    times = {r.status.as_of.ToDatetime(tzinfo=UTC) for r in reply.results}
    assert len(times) == 1
    (as_of,) = times
    assert began - timedelta(seconds=1) <= as_of <= ended
    assert {r.status.status for r in reply.results} == {va_pb2.CERT_STATUS_GOOD}


def test_items_without_as_of_are_read_as_check_reads_them(pki: Pki) -> None:
    # After the compromise above: the batch goes through briefs, the compromise applied.
    _items_without_as_of(pki, CertKind.CARD_AUTH)


def test_the_python_client_exposes_each_refusal_code(pki: Pki) -> None:
    auth = pki.issue(CertKind.CARD_AUTH)
    pki.publish_and_wait()
    with VaClient(pki.responder_address, insecure=True, verifier=AUTH_ONLY) as va:
        results = va.check_many(
            [
                (CertKind.CARD_AUTH, auth.serial),
                (CertKind.CARD_SIGN, 12345),  # not this verifier's kind: refused unread
                b"not DER",
                auth.certificate,
                (CertKind.CARD_AUTH, 10**15),
            ],
            batch_size=2,  # three batches on one stream
            timeout=30,
        )
    assert [type(r).__name__ for r in results] == [
        "CertificateStatus",
        "CheckRefusal",
        "CheckRefusal",
        "CertificateStatus",
        "CertificateStatus",
    ]
    good, denied, malformed, by_certificate, unknown = results
    assert isinstance(good, CertificateStatus) and good.status is Status.GOOD
    assert isinstance(by_certificate, CertificateStatus) and by_certificate.serial == auth.serial
    assert isinstance(unknown, CertificateStatus) and unknown.status is Status.UNKNOWN
    assert isinstance(denied, CheckRefusal)
    assert denied.code is CheckErrorCode.PERMISSION_DENIED
    assert denied.message.startswith("PERMISSION_DENIED")
    assert isinstance(malformed, CheckRefusal)
    assert malformed.code is CheckErrorCode.INVALID_ARGUMENT
