"""A signer and responder whose certificates' URLs reach the responder's real HTTP
server, and the demo certificates third-party validators judge (README: Verifiers).

The signer's base URL names the responder's HTTP port, so every URL a certificate
carries (OCSP, CRL distribution point, freshestCRL, AIA caIssuers, the issuing CAs'
CRLDP of the root's ARL) is answered by the code under test, over TCP on 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from jpki_va.core.domain import CertKind
from jpki_va.hsm import HsmConfig
from jpki_va.protos import signer_pb2, va_pb2
from tests.support import Issued, Pki, free_port, start_pki


@dataclass(frozen=True)
class Demo:
    """GOOD, revoked (keyCompromise), cascaded (its card revoked) and, revoked only
    after the last full snapshot, one that only the delta CRL and OCSP know about."""

    good: Issued
    revoked: Issued
    card: Issued
    cascaded: Issued
    revoked_in_delta: Issued
    card_auth: Issued  # the user-authentication kinds (opaque subject, clientAuth)
    mobile_auth: Issued
    full_sequence: int
    delta_sequence: int


@pytest.fixture(scope="module")
def linked_pki(tmp_path_factory: pytest.TempPathFactory, softhsm_token: HsmConfig) -> Iterator[Pki]:
    port = free_port()
    running = start_pki(
        tmp_path_factory.mktemp("interop"),
        softhsm_token,
        http_port=port,
        base_url=f"http://127.0.0.1:{port}",
    )
    try:
        yield running
    finally:
        running.close()


def _lose(pki: Pki, issued: Issued, reason: int = va_pb2.CRL_REASON_UNSPECIFIED) -> None:
    pki.signer_stub.RecordLoss(
        signer_pb2.RecordLossRequest(
            kind=int(issued.kind),  # type: ignore[arg-type]
            serial=issued.serial.to_bytes(8, "big"),
            cause=va_pb2.LOSS_CAUSE_HOLDER_REQUEST,
            reason=reason,  # type: ignore[arg-type]
        ),
        timeout=30,
    )


@pytest.fixture(scope="module")
def demo(linked_pki: Pki) -> Demo:
    pki = linked_pki
    good = pki.issue(CertKind.CARD_SIGN)
    revoked = pki.issue(CertKind.CARD_SIGN)
    card = pki.issue(CertKind.CARD_SIGN, resident_code="82000000001")
    cascaded = pki.issue(CertKind.MOBILE_SIGN, resident_code="82000000001", card=card)
    revoked_in_delta = pki.issue(CertKind.CARD_SIGN)
    card_auth = pki.issue(CertKind.CARD_AUTH, resident_code="82000000002")
    card_sign = pki.issue(CertKind.CARD_SIGN, resident_code="82000000002")
    mobile_auth = pki.issue(CertKind.MOBILE_AUTH, resident_code="82000000002", card=card_sign)
    _lose(pki, revoked, va_pb2.CRL_REASON_KEY_COMPROMISE)
    _lose(pki, card)  # the mobile certificate loses effect with it (第16条の13)
    full_sequence = pki.publish_and_wait()
    _lose(pki, revoked_in_delta, va_pb2.CRL_REASON_KEY_COMPROMISE)
    delta_sequence = pki.publish_and_wait(full=False)
    return Demo(
        good,
        revoked,
        card,
        cascaded,
        revoked_in_delta,
        card_auth,
        mobile_auth,
        full_sequence,
        delta_sequence,
    )


def write_pem(directory: Path, name: str, *certs: x509.Certificate) -> Path:
    path = directory / f"{name}.pem"
    path.write_bytes(b"".join(c.public_bytes(Encoding.PEM) for c in certs))
    return path
