"""第18条第3項: what a consent to signing records covers, and how fast a withdrawal ends it.

The signer publishes a delta every half second (full snapshots once a day), as in
production with a short interval: a withdrawal must reach the responder in the
delta, as a loss does, not at the next full snapshot. The test measures both,
withdrawal -> refusal and loss -> REVOKED, and prints the figures; it asserts only
that the snapshot which brought each was a delta.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from jpki_va.client import FailedPrecondition, NotFound, Unavailable, VaClient
from jpki_va.core.domain import CertKind, Role
from jpki_va.hsm import HsmConfig
from jpki_va.protos import signer_pb2, va_pb2
from tests.support import Issued, Pki, register_verifier, running_pki, wait_for

READER = "v-consent-183"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory, softhsm_token: HsmConfig) -> Iterator[Pki]:
    directory = tmp_path_factory.mktemp("consent")
    with running_pki(directory, softhsm_token, publish=False, delta_interval=0.5) as running:
        register_verifier(running, READER, frozenset({Role.SIGNING_VERIFIER}))
        running.publish_and_wait()  # the responder knows READER from here on
        yield running


def _consent(
    pki: Pki, code: str, *, grant: bool = True, successors: bool = False
) -> signer_pb2.Consent:
    return pki.signer_stub.RecordConsent(
        signer_pb2.RecordConsentRequest(
            resident_code=code, verifier=READER, grant=grant, successors=successors
        ),
        timeout=30,
    ).consent


def _given(pki: Pki, cert: Issued) -> bool:
    """Whether the responder gives READER the certificate's signing record now.

    UNAVAILABLE (a worker between indexes) is no answer either way: asked again, so
    that neither "given" nor "refused" is concluded from it.
    """
    deadline = time.monotonic() + 30
    with VaClient(pki.responder_address, insecure=True, verifier=READER) as va:
        while True:
            try:
                va.signing_record(kind=cert.kind, serial=cert.serial)
            except (FailedPrecondition, NotFound):  # refused, or not yet published
                return False
            except Unavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
                continue
            return True


def _snapshot_type(pki: Pki, sequence: int) -> str:
    for manifest in Path(pki.signer.config.snapshot_dir).glob("*/manifest.json"):
        data = json.loads(manifest.read_bytes())
        if data["sequence"] == sequence:
            return str(data["type"])
    raise AssertionError(f"no snapshot {sequence}")


def _served_sequence(pki: Pki, cert: Issued) -> int:
    return int(pki.check(cert.kind, cert.serial).index_sequence)


def test_article_18_3_consent_covers_the_certificates_of_its_time(pki: Pki) -> None:
    code = "18300000001"
    card = pki.issue(CertKind.CARD_SIGN, resident_code=code)
    consent = _consent(pki, code)
    assert [int.from_bytes(c.serial, "big") for c in consent.covers] == [card.serial]
    assert not consent.successors
    wait_for(lambda: _given(pki, card), "the consented record to be served")
    # A later certificate (here a smartphone one) is not covered by the earlier consent.
    mobile = pki.issue(CertKind.MOBILE_SIGN, card=card)
    wait_for(lambda: pki.check(CertKind.MOBILE_SIGN, mobile.serial).status
             == va_pb2.CERT_STATUS_GOOD, "the new certificate to be served")  # fmt: skip
    assert not _given(pki, mobile)
    assert _given(pki, card)
    # A new consent covers both.
    again = _consent(pki, code)
    assert {int.from_bytes(c.serial, "big") for c in again.covers} == {card.serial, mobile.serial}
    wait_for(lambda: _given(pki, mobile), "the new consent to reach the responder")


def test_article_18_3_consent_and_successors_covers_a_renewal(pki: Pki) -> None:
    code = "18300000002"
    card = pki.issue(CertKind.CARD_SIGN, resident_code=code)
    assert _consent(pki, code, successors=True).successors
    time.sleep(1.1)  # the renewal ends the old one a second later (whole seconds)
    renewed = pki.issue(CertKind.CARD_SIGN, resident_code=code)
    wait_for(lambda: _given(pki, renewed), "the renewal's record under 'and successors'")
    assert not _given(pki, card)  # superseded: lost effect, no record (第18条第3項)


def test_article_18_3_consent_needs_a_signing_certificate_in_effect(pki: Pki) -> None:
    code = "18300000003"
    pki.issue(CertKind.CARD_AUTH, resident_code=code)
    with pytest.raises(grpc.RpcError) as info:
        _consent(pki, code)
    assert info.value.code() is grpc.StatusCode.NOT_FOUND  # never a signing certificate
    card = pki.issue(CertKind.CARD_SIGN, resident_code=code)
    pki.signer_stub.RecordLoss(
        signer_pb2.RecordLossRequest(
            kind=va_pb2.CERT_KIND_CARD_SIGN,
            serial=card.serial.to_bytes(8, "big"),
            cause=va_pb2.LOSS_CAUSE_HOLDER_REQUEST,
        ),
        timeout=30,
    )
    with pytest.raises(grpc.RpcError) as info:
        _consent(pki, code)
    assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "would cover nothing" in (info.value.details() or "")


def test_article_18_3_withdrawal_takes_effect_as_fast_as_a_loss(pki: Pki) -> None:
    withdrawn_code, lost_code = "18300000004", "18300000005"
    withdrawn = pki.issue(CertKind.CARD_SIGN, resident_code=withdrawn_code)
    lost = pki.issue(CertKind.CARD_SIGN, resident_code=lost_code)
    _consent(pki, withdrawn_code)
    wait_for(lambda: _given(pki, withdrawn), "the consented record to be served")

    start = time.monotonic()
    _consent(pki, withdrawn_code, grant=False)
    wait_for(lambda: not _given(pki, withdrawn), "the withdrawal to reach the responder")
    withdrawal = time.monotonic() - start
    refused_at = _served_sequence(pki, withdrawn)

    start = time.monotonic()
    pki.signer_stub.RecordLoss(
        signer_pb2.RecordLossRequest(
            kind=va_pb2.CERT_KIND_CARD_SIGN,
            serial=lost.serial.to_bytes(8, "big"),
            cause=va_pb2.LOSS_CAUSE_HOLDER_REQUEST,
        ),
        timeout=30,
    )
    wait_for(lambda: pki.check(CertKind.CARD_SIGN, lost.serial).status
             == va_pb2.CERT_STATUS_REVOKED, "the loss to reach the responder")  # fmt: skip
    loss = time.monotonic() - start
    revoked_at = _served_sequence(pki, lost)

    # Both came in a delta (full snapshots are a day apart here), not a full snapshot.
    assert _snapshot_type(pki, refused_at) == "delta"
    assert _snapshot_type(pki, revoked_at) == "delta"
    print(f"\nwithdrawal -> refusal {withdrawal:.2f} s; loss -> REVOKED {loss:.2f} s "
          "(delta interval 0.5 s)")  # fmt: skip
