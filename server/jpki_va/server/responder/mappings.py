"""Mappings served from the live index: the law's rule (law/mapping.py) over the links.

The index holds, per certificate, its links to the holder's other certificates
(law/correspondence.py) and to its renewals. Links only ever join certificates of
one holder, so the certificates reachable through them are the holder's as the
registry knows them, without the index holding any identity of the person.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from jpki_va.core.clock import Clock
from jpki_va.core.domain import CertKind, LinkType, Provision, Verifier
from jpki_va.server.law import mapping as rule
from jpki_va.server.law.entitlements import NotEntitled, check_entitled, status_provision
from jpki_va.server.ledger.provisions import Disclosure
from jpki_va.server.responder.index_reader import Index
from jpki_va.server.responder.status import Answer, IndexHolder, StatusSource

# A holder has a handful of certificates; this only bounds the walk should the
# links ever be wrong.
MAX_HOLDER_CERTIFICATES = 256

Key = tuple[CertKind, int]


class UnknownCertificate(LookupError):
    """The index holds no such certificate (never issued, or past retention)."""


@dataclass(frozen=True)
class Mapped:
    type: LinkType
    answer: Answer


@dataclass(frozen=True)
class MappingAnswer:
    certificates: tuple[Mapped, ...]
    sequence: int
    counts: Counter[Provision] = field(default_factory=Counter)  # what to record (第41条)
    # A serial mapping identifies a person: each one given goes to the audit trail too.
    disclosures: tuple[Disclosure, ...] = ()


class Mapper:
    def __init__(self, holder: IndexHolder, source: StatusSource, clock: Clock) -> None:
        self._holder = holder
        self._source = source
        self._clock = clock

    def allowed_targets(
        self, verifier: Verifier, kind: CertKind, to: CertKind | None
    ) -> list[CertKind]:
        """The kinds to map to: `to`, or every one the verifier may receive."""
        if to is not None:
            rule.mapping_type(kind, to)  # NoSuchMapping before any entitlement talk
            check_entitled(verifier, rule.provision(kind, to))
            return [to]
        allowed, refusal = [], None
        for target in rule.targets(kind):
            try:
                check_entitled(verifier, rule.provision(kind, target))
            except NotEntitled as exc:
                refusal = refusal or exc
                continue
            allowed.append(target)
        if not allowed:
            assert refusal is not None
            raise refusal
        return allowed

    def map(
        self, verifier: Verifier, kind: CertKind, serial: int, to: CertKind | None = None
    ) -> MappingAnswer:
        """The serials corresponding to (kind, serial) that `verifier` may receive."""
        wanted = self.allowed_targets(verifier, kind, to)
        index = self._holder.get()
        if index.get(kind, serial) is None:
            raise UnknownCertificate(f"{kind.name} serial {serial:X} is not known")
        now = self._clock.now()
        found: list[Mapped] = []
        counts: Counter[Provision] = Counter()
        disclosures: list[Disclosure] = []
        for target in wanted:
            link_type = rule.mapping_type(kind, target)
            keys = (
                _successors(index, kind, serial)
                if link_type is LinkType.RENEWAL
                else sorted(k for k in _holder_certificates(index, kind, serial) if k[0] is target)
            )
            answers = [self._source.status(k, s, now) for k, s in keys]
            kept = [
                Mapped(link_type, a)
                for a in answers
                if a.record is not None and rule.validity_not_passed(a.record.not_after, now)
            ]
            if kept:
                # The statuses that come with the serials are status provisions too.
                check_entitled(verifier, status_provision(target))
                counted = rule.counted_as(kind, target)
                counts[counted] += 1
                counts[status_provision(target)] += len(kept)
                given = ",".join(f"{target.name}:{m.answer.serial:X}" for m in kept)
                disclosures.append(
                    Disclosure(now, verifier.id, counted, f"{kind.name}:{serial:X}", given)
                )
            found.extend(kept)
        return MappingAnswer(tuple(found), index.sequence, counts, tuple(disclosures))


def _walk(start: Key, follow: Callable[[Key], list[Key]]) -> list[Key]:
    """Breadth first from `start` (excluded), each certificate once."""
    seen = {start}
    order: list[Key] = []
    queue = deque([start])
    while queue and len(seen) < MAX_HOLDER_CERTIFICATES:
        for nxt in follow(queue.popleft()):
            if nxt not in seen:
                seen.add(nxt)
                order.append(nxt)
                queue.append(nxt)
    return order


def _holder_certificates(index: Index, kind: CertKind, serial: int) -> list[Key]:
    """The holder's other certificates: everything linked to (kind, serial), transitively."""

    def neighbours(key: Key) -> list[Key]:
        out = []
        for link in index.links(*key):
            a, b = (link.a_kind, link.a_serial), (link.b_kind, link.b_serial)
            out.append(b if a == key else a)
        return out

    return _walk((kind, serial), neighbours)


def _successors(index: Index, kind: CertKind, serial: int) -> list[Key]:
    """The certificates that superseded (kind, serial), oldest first."""

    def renewed_by(key: Key) -> list[Key]:
        return [
            (link.b_kind, link.b_serial)
            for link in index.links(*key)
            if link.type is LinkType.RENEWAL and (link.a_kind, link.a_serial) == key
        ]

    return _walk((kind, serial), renewed_by)
