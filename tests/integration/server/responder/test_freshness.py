"""Freshness: a loss recorded in the registry is answered within 10 s at p99.

Full snapshots every 24 h, deltas every 5 s (the default is 1 s; the fleet test
times that one across replicas), 1,000 losses recorded one by one through
SignerService on loopback; the responder's ingester observes, per loss, the seconds
from the registry commit to the index state that first reflects it (the
`jpki_va_loss_freshness_seconds` histogram).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from jpki_va.core.domain import CertKind, serial_to_bytes
from jpki_va.hsm import HsmConfig
from jpki_va.protos import signer_pb2, va_pb2
from jpki_va.server.responder.ingest import FRESHNESS_BUCKETS
from tests.support import Pki, fresh_key, start_pki, wait_for

LOSSES = 1000
METRIC = "jpki_va_loss_freshness_seconds"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory, softhsm_token: HsmConfig) -> Iterator[Pki]:
    running = start_pki(tmp_path_factory.mktemp("fresh"), softhsm_token, delta_interval=5.0)
    try:
        yield running
    finally:
        running.close()


def _statuses(pki: Pki, serials: list[int]) -> list[int]:
    requests = [
        va_pb2.CheckRequest(
            cert=va_pb2.CertRef(
                kind_serial=va_pb2.KindSerial(
                    kind=va_pb2.CERT_KIND_CARD_AUTH, serial=serial_to_bytes(s)
                )
            )
        )
        for s in serials
    ]
    (reply,) = pki.status_stub.CheckStream(
        iter([va_pb2.CheckBatchRequest(requests=requests)]), timeout=60
    )
    return [r.status.status for r in reply.results]


@pytest.mark.slow
def test_loss_freshness_p99_under_10_seconds_for_1000_losses(pki: Pki) -> None:
    serials = [
        pki.issue(
            CertKind.CARD_AUTH, resident_code=f"{60000000000 + i:011d}", key=fresh_key()
        ).serial
        for i in range(LOSSES)
    ]
    # The periodic publisher brings them to the responder (a full, then deltas).
    wait_for(
        lambda: va_pb2.CERT_STATUS_UNKNOWN not in _statuses(pki, serials),
        "the responder to know every issued certificate",
        timeout=60,
    )
    started = time.monotonic()
    for serial in serials:
        pki.signer_stub.RecordLoss(
            signer_pb2.RecordLossRequest(
                kind=va_pb2.CERT_KIND_CARD_AUTH,
                serial=serial_to_bytes(serial),
                cause=va_pb2.LOSS_CAUSE_HOLDER_REQUEST,
            ),
            timeout=30,
        )
    recording = time.monotonic() - started
    wait_for(
        lambda: set(_statuses(pki, serials)) == {va_pb2.CERT_STATUS_REVOKED},
        "the responder to reflect every loss",
        timeout=60,
    )
    metrics = pki.responder.metrics_registry
    count = metrics.get_sample_value(f"{METRIC}_count")
    assert count == LOSSES, "one observation per loss, the first time it is reflected"
    # p99 from the histogram: the smallest bucket bound holding 99 % of observations.
    p99 = next(
        bound
        for bound in (*FRESHNESS_BUCKETS, float("inf"))
        if (metrics.get_sample_value(f"{METRIC}_bucket", {"le": _le(bound)}) or 0) >= 0.99 * LOSSES
    )
    total = metrics.get_sample_value(f"{METRIC}_sum") or 0.0
    print(f"recorded {LOSSES} losses in {recording:.1f} s; freshness p99 <= {p99} s, "
          f"mean {total / LOSSES:.2f} s")  # fmt: skip
    assert p99 <= 10.0


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))
