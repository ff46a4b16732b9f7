"""保存期間 over: delete from the registry what law/retention.py no longer keeps.

Snapshots stop carrying a record the moment its retention ends; this deletes it from
the registry too, so a resident code (住民票コード) does not stay forever:

* an issuance record past its period (per kind) goes with its loss, its public key
  and renewal entries and its place in the holder's list; a holder left with no
  record loses its resident code entry, its consents and any move-out notice;
* a loss event whose loss is no longer kept (its period over and its certificate
  expired: the rule of `loss_kept`);
* a withdrawn consent, and a consent change in the log, past the consent period;
* a notice to a holder, past the notice period from when it was sent;
* a smartphone application (第16条の2, 第35条の2) a day after it expired, used or
  not: it holds the resident code and the four items the applicant notified, and once
  expired it can neither be completed nor begun again (its notice is stale long
  before; law/mobile_issuance.NOTICE_FRESHNESS). The certificate it led to is an
  issuance record of its own.

Each step works in write transactions of at most `batch` deletions, so the
registry's writer is never held long; a purge stopped midway is finished by the next.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from jpki_va.core.domain import CertKind, micros
from jpki_va.server.law.retention import RetentionPolicy, loss_kept
from jpki_va.server.model.registry_values import MobileApplication
from jpki_va.server.registry.transactions import Registry, RegistryTxn

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How long an expired smartphone application is kept: long enough that a complete
#: arriving just after expiry is refused as expired, not as unknown.
APPLICATION_KEPT_AFTER_EXPIRY = timedelta(days=1)


@dataclass(frozen=True)
class Purged:
    certificates: int
    holders: int
    events: int
    consents: int
    consent_changes: int
    notices: int
    applications: int = 0

    def __bool__(self) -> bool:
        return any(
            (
                self.certificates,
                self.events,
                self.consents,
                self.consent_changes,
                self.notices,
                self.applications,
            )
        )


def _batches(items: list[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _in_batches(
    registry: Registry, items: list[T], size: int, delete: Callable[[RegistryTxn, list[T]], object]
) -> None:
    """`delete` over `items`, at most `size` of them per write transaction."""
    for chunk in _batches(items, size):
        with registry.write() as tx:
            delete(tx, chunk)


def _delete_consents(tx: RegistryTxn, consents: list[tuple[str, str]]) -> None:
    for code, verifier in consents:
        tx.delete_consent(code, verifier)


def _delete_applications(tx: RegistryTxn, applications: list[MobileApplication]) -> None:
    for application in applications:
        tx.delete_mobile_application(application)


def purge(
    registry: Registry, retention: RetentionPolicy, now: datetime, batch: int = 1000
) -> Purged:
    with registry.read() as tx:
        cutoff = {int(k): micros(retention.issuance_cutoff(k, now)) for k in CertKind}
        due = [key for key, head in tx.certificate_heads() if head.not_before <= cutoff[head.kind]]
    holders = 0
    for chunk in _batches(due, batch):
        with registry.write() as tx:
            for key in chunk:
                code = tx.delete_certificate(key)
                if code is None:
                    continue
                holders += 1
                tx.clear_move_out(code)
                for consent in list(tx.consents(code)):
                    tx.delete_consent(code, consent.verifier)
    with registry.read() as tx:
        stale = []
        for event in tx.events_since(0):
            record = tx.stored_certificate(event.kind, event.serial)
            if record is None or not loss_kept(
                event.loss.time,
                record.not_after,
                now,
                retention.loss_cutoff(event.kind, event.loss.cause, now),
            ):
                stale.append(event.sequence)
        consent_cutoff = now - retention.project("consent")
        withdrawn = [
            (c.resident_code, c.verifier)
            for c in tx.consents()
            if c.withdrawn_at is not None and c.withdrawn_at < consent_cutoff
        ]
        # Deltas read the log since the last full snapshot only; the consents table
        # itself says what is in effect, so old changes serve no one.
        changes = tx.consent_log_before(consent_cutoff)
        notice_cutoff = now - retention.project("notice")
        sent = [n.id for n in tx.notices() if n.sent_at is not None and n.sent_at < notice_cutoff]
        applications = [
            a
            for a in tx.mobile_applications()
            if a.expires_at + APPLICATION_KEPT_AFTER_EXPIRY < now
        ]
    _in_batches(registry, stale, batch, lambda tx, events: tx.delete_events(events))
    _in_batches(registry, withdrawn, batch, _delete_consents)
    _in_batches(registry, changes, batch, lambda tx, seqs: tx.delete_consent_log(seqs))
    _in_batches(registry, sent, batch, lambda tx, ids: tx.delete_notices(ids))
    _in_batches(registry, applications, batch, _delete_applications)
    purged = Purged(
        len(due), holders, len(stale), len(withdrawn), len(changes), len(sent), len(applications)
    )
    if purged:
        log.info(
            "purged past retention: %d issuance records (%d holders), %d loss events, "
            "%d withdrawn consents, %d consent changes, %d sent notices, "
            "%d smartphone applications",
            *(purged.certificates, purged.holders, purged.events),
            *(purged.consents, purged.consent_changes, purged.notices, purged.applications),
        )
    return purged
