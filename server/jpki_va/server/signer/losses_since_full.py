"""Each partition's losses since the full snapshot: the entries of its delta CRL.

A delta CRL lists every loss of its scope since the full CRL whose certificate is
still in retention (RFC 5280 §5.2.4). Reading all of them from the registry for every
delta made a delta's cost grow with the day: about 40 µs per loss (an event and its
certificate), 160 ms at 4,000 losses, seconds by the evening of a national day. They
are kept here instead, per full snapshot, and each delta reads only the events
recorded since the last one read.
"""

from __future__ import annotations

from datetime import datetime

from jpki_va.core.domain import CertKind
from jpki_va.server.law.retention import RetentionPolicy
from jpki_va.server.model.registry_values import Scope
from jpki_va.server.pki.crl_profile import CrlEntry
from jpki_va.server.registry.transactions import RegistryTxn


class LossesSinceFull:
    """The retained losses since one full snapshot, by scope, read forward."""

    def __init__(self, retention: RetentionPolicy) -> None:
        self._retention = retention
        self._full: int | None = None  # the full snapshot's event sequence
        self._through = 0  # the last event read
        # scope -> serial -> (entry, the certificate's notBefore, for its retention)
        self._by_scope: dict[Scope, dict[int, tuple[CrlEntry, datetime]]] = {}
        # The earliest notBefore kept, per kind: no entry leaves before it does.
        self._earliest: dict[CertKind, datetime] = {}

    def read(self, tx: RegistryTxn, full_event_sequence: int, now: datetime) -> None:
        """Bring them up to `tx` for the full snapshot of `full_event_sequence`, as
        retained at `now`."""
        if self._full != full_event_sequence:
            self._full, self._through = full_event_sequence, full_event_sequence
            self._by_scope, self._earliest = {}, {}
        for event in tx.events_since(self._through):
            self._through = event.sequence
            lost = tx.certificate(event.kind, event.serial)
            if lost is None:
                continue  # purged: past its retention
            entry = CrlEntry(event.serial, event.loss.time, event.loss.cause, event.loss.reason)
            # A loss is final: the first one recorded stays (as in the index).
            losses = self._by_scope.setdefault(event.scope, {})
            losses.setdefault(event.serial, (entry, lost.not_before))
            earliest = self._earliest.get(event.kind)
            if earliest is None or lost.not_before < earliest:
                self._earliest[event.kind] = lost.not_before
        self._drop_unretained(now)

    def _drop_unretained(self, now: datetime) -> None:
        """Entries whose certificate left its retention by `now` (rarely any: a scan
        only when the earliest kept one has)."""
        for kind, earliest in list(self._earliest.items()):
            if self._retention.issuance_retained(kind, earliest, now):
                continue
            remaining: list[datetime] = []
            for scope, losses in self._by_scope.items():
                if scope[0] is not kind:
                    continue
                for serial, (_, not_before) in list(losses.items()):
                    if self._retention.issuance_retained(kind, not_before, now):
                        remaining.append(not_before)
                    else:
                        del losses[serial]
            if remaining:
                self._earliest[kind] = min(remaining)
            else:
                del self._earliest[kind]

    def scopes(self) -> list[Scope]:
        """The scopes with a retained loss."""
        return [scope for scope, losses in self._by_scope.items() if losses]

    def count(self, scope: Scope) -> int:
        return len(self._by_scope.get(scope, ()))

    def entries(self, scope: Scope) -> list[CrlEntry]:
        return [entry for entry, _ in self._by_scope.get(scope, {}).values()]
