"""CRL files for verifiers: the current one of a scope, or any retained one.

"Current" is the CRL the served index was built from, so a CRL and a status answer
given at the same moment agree. Older ones come from the archive while retained.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from jpki_va.core.domain import CertKind
from jpki_va.server.responder.ca_files import ServedFile, served_crl
from jpki_va.server.responder.crl_archive import ArchivedCrl, CrlArchive, CrlNotFound
from jpki_va.server.responder.status import BadRequest, IndexHolder


@dataclass(frozen=True, slots=True)
class CrlFile:
    info: ArchivedCrl
    current: bool


class CrlFiles:
    def __init__(self, holder: IndexHolder, archive: CrlArchive) -> None:
        self._holder = holder
        self._archive = archive

    def announcement(self) -> bytes | None:
        """The public announcement of issuer compromises the live index carries."""
        return self._holder.get().announcement()

    def _issuer(self, kind: CertKind, partition: str) -> bytes:
        """The generation to use when the request names none: the active one, else newest."""
        index = self._holder.get()
        scopes = [
            (kid, t) for (k, kid, p), t in index.current_crls.items() if (k, p) == (kind, partition)
        ]
        if not scopes:
            raise CrlNotFound(f"no {kind.name} CRL for partition {partition}")
        for kid, _ in scopes:
            entry = index.issuers.get(kid)
            if entry is not None and entry.active:
                return kid
        return max(scopes, key=lambda s: s[1].this_update)[0]

    def get(
        self,
        kind: CertKind,
        partition: str,
        issuer_key_id: bytes | None = None,
        *,
        number: int | None = None,
        as_of: datetime | None = None,
    ) -> tuple[CrlFile, bytes]:
        if number is not None and as_of is not None:
            raise BadRequest("ask by CRL number or by time, not both")
        if not (len(partition) == 6 and partition.isdigit()):
            raise BadRequest(f"partition must be a six-digit municipality code, got {partition!r}")
        kid = issuer_key_id or self._issuer(kind, partition)
        current = self._holder.get().current_crls.get((kind, kid, partition))
        if number is None and as_of is None:
            if current is None:
                raise CrlNotFound(
                    f"no current {kind.name} CRL for partition {partition} (issuer {kid.hex()})"
                )
            number = current.number
        info = self._archive.find(kind, kid, partition, number=number, as_of=as_of)
        is_current = current is not None and info.number == current.number
        return CrlFile(info, is_current), self._archive.der(info)

    def current_at_url(
        self, kind: CertKind, key_id_prefix: bytes, partition: str
    ) -> tuple[CrlFile, bytes] | None:
        """The current CRL at the URL certificates carry in their CRL distribution
        point, which names the issuer by the first octets of its key id."""
        for k, kid, p in self._holder.get().current_crls:
            if k is kind and p == partition and kid.startswith(key_id_prefix):
                try:
                    return self.get(kind, partition, kid)
                except CrlNotFound:
                    return None
        return None

    def delta_at_url(
        self, kind: CertKind, key_id_prefix: bytes, partition: str
    ) -> ServedFile | None:
        """The current delta CRL at the URL certificates carry in their freshestCRL:
        the latest delta snapshot's, else the empty one issued with the full CRL."""
        index = self._holder.get()
        for k, kid, p in index.current_crls:
            if k is kind and p == partition and kid.startswith(key_id_prefix):
                der = index.delta_crl_der(kind, kid, partition)
                return None if der is None else served_crl(der)
        return None

    def list(
        self,
        kinds: Collection[CertKind],
        partition: str | None = None,
        issuer_key_id: bytes | None = None,
    ) -> list[CrlFile]:
        current = self._holder.get().current_crls
        out = []
        for kind in sorted(kinds):
            for info in self._archive.list(kind, issuer_key_id, partition or None):
                times = current.get((info.kind, info.issuer_key_id, info.partition))
                out.append(CrlFile(info, times is not None and times.number == info.number))
        return out
