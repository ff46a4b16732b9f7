"""保存期間: records leave the published data when their retention ends.

Short, configured retention periods and a signer clock moved years ahead: a loss
record and its CRL entry leave after the certificate's expiry and the loss
record's retention; the issuance record leaves after its own; old snapshots
(CRL files) leave after theirs, the live full snapshot never.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509

from jpki_va.core.clock import FixedClock
from jpki_va.core.domain import CertKind, serial_to_bytes
from jpki_va.hsm import HsmConfig
from jpki_va.protos import signer_pb2, va_pb2
from jpki_va.server.pki.cert_profile import DEFAULT_VALIDITY
from tests.support import JPKI_VA, Pki, running_pki, wait_for

DAY = 86400.0
ISSUANCE = DEFAULT_VALIDITY[CertKind.CARD_AUTH] + timedelta(days=365)


@pytest.fixture(scope="module")
def pki(
    tmp_path_factory: pytest.TempPathFactory, softhsm_token: HsmConfig, clock: FixedClock
) -> Iterator[Pki]:
    with running_pki(
        tmp_path_factory.mktemp("retention"),
        softhsm_token,
        publish=False,
        clock=clock,
        retention_issuance_record=ISSUANCE.total_seconds(),
        retention_loss_record=DAY,
        retention_crl_file=DAY,
        sweep_check=0.05,  # the 00:00 JST purge follows the clock's jumps at once
    ) as running:
        yield running


def _crl_serials(pki: Pki) -> set[int]:
    snapshot = sorted(pki.signer.config.snapshot_dir.glob("snap-*"))[-1]
    return {
        entry.serial_number
        for path in snapshot.glob("crls/**/*.crl")
        for entry in x509.load_der_x509_crl(path.read_bytes())
    }


def _events(pki: Pki) -> list[int]:
    with pki.live_index() as index:
        return [e.serial for e in index.events_since(0)]


def test_retention_periods_end_publication(pki: Pki, clock: FixedClock) -> None:
    lost = pki.issue(CertKind.CARD_AUTH, resident_code="55000000001")
    kept = pki.issue(CertKind.CARD_AUTH, resident_code="55000000002")
    pki.signer_stub.RecordLoss(
        signer_pb2.RecordLossRequest(
            kind=va_pb2.CERT_KIND_CARD_AUTH,
            serial=serial_to_bytes(lost.serial),
            cause=va_pb2.LOSS_CAUSE_HOLDER_REQUEST,
        ),
        timeout=30,
    )
    first = pki.publish_and_wait()
    assert pki.check(CertKind.CARD_AUTH, lost.serial, clock.now()).status == (
        va_pb2.CERT_STATUS_REVOKED
    )
    assert lost.serial in _crl_serials(pki)
    assert _events(pki) == [lost.serial]

    # A day after the loss the loss record's retention is over, but RFC 5280 keeps
    # the entry on the CRL until the certificate expires.
    clock.advance(timedelta(days=2))
    pki.publish_and_wait()
    assert lost.serial in _crl_serials(pki)
    # The first snapshot (its CRL files) is past its one-day retention; the live
    # full snapshot stays.
    names = [p.name for p in pki.signer.config.snapshot_dir.glob("snap-*")]
    assert f"snap-{first:012d}" not in names and names

    # After expiry (and the loss retention), the entry and the event leave; the
    # issuance record stays for its own, longer retention.
    clock.set(lost.certificate.not_valid_after_utc + timedelta(seconds=1))
    pki.publish_and_wait()
    assert lost.serial not in _crl_serials(pki)
    assert _events(pki) == []
    answer = pki.check(CertKind.CARD_AUTH, lost.serial, clock.now())
    assert answer.status == va_pb2.CERT_STATUS_EXPIRED

    # After the issuance record's retention nothing about either is published.
    clock.set(lost.certificate.not_valid_before_utc + ISSUANCE + timedelta(seconds=1))
    pki.publish_and_wait()
    for issued in (lost, kept):
        answer = pki.check(CertKind.CARD_AUTH, issued.serial, clock.now())
        assert answer.status == va_pb2.CERT_STATUS_UNKNOWN

    # And the registry holds neither any more: not the records, not the resident
    # codes (住民票コード), not the loss event.
    def purged() -> bool:
        with pki.signer.registry.read() as tx:
            return (
                tx.stored_certificate(CertKind.CARD_AUTH, lost.serial) is None
                and tx.stored_certificate(CertKind.CARD_AUTH, kept.serial) is None
                and not tx.is_resident("55000000001")
                and not tx.is_resident("55000000002")
                and not list(tx.events_since(0))
            )

    wait_for(purged, "the purge past retention", timeout=10)


def test_retention_issuance_must_outlast_validity_plus_loss_record(tmp_path: Path) -> None:
    """The configuration check, as the signer command gives it: one line, exit 2."""
    result = subprocess.run(
        [
            *JPKI_VA,
            "signer",
            "--data-dir",
            str(tmp_path / "signer"),
            "--insecure-loopback",
            "--hsm-token",
            "never-opened",
            "--retention-issuance-record",
            "1900d",
            "--retention-loss-record",
            "30d",
            "--retention",
            "loss.resident-change.card-auth=365d",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "CARD_AUTH issuance records" in result.stderr and "第27条" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "signer").exists()  # nothing was made
