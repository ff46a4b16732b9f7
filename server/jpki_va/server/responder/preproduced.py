"""Pre-produced OCSP responses (RFC 6960 §2.4, RFC 5019 §6): one signed answer per
certificate, kept in an LMDB environment beside the index.

Per replica: its workers and its producer (responder/ocsp_producer.py) open the one
environment, so the responses sit in the shared page cache, not in each worker's own
memory. Keyed by the index's record key (kind, serial); an entry is the answer to the
nonce-less request of one SHA-1 CertID (what openssl and most clients send) and
carries what it states, so a worker serves it only while it is still right
(`PreproducedEntry.serves`, judged by `py_served` or its compiled twin): the same
status basis as the index says now (taken from its packed value, `basis_of_value`,
where no issuer compromise applies), signed by the current delegated key, and now well
inside thisUpdate…nextUpdate. Anything else is signed live, as without the store, and
written through.

An entry keeps the signed part (tbsResponseData) and the signature, not the whole
response: the delegated certificate (≈ 0.7 kB, the same in every response) is
spliced in at serve time (`ocsp_wire.ResponseWriter.response`).

A writer commits whole batches in one transaction, so a producer killed mid-run
leaves whole entries only, each checked again when served.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmdb

from jpki_va.core.domain import Status, micros, status_rule
from jpki_va.server.base.private_files import LMDB_MODE, private_dir
from jpki_va.server.pki.ocsp_wire import ResponseWriter
from jpki_va.server.responder.index_reader import current_index
from jpki_va.server.responder.status import Answer, label_code
from jpki_va.server.snapshot.record_format import unpack_fields

STORE_DIR = "ocsp-responses"
_MAP_SIZE = 1 << 40  # address space only; the file grows as needed
_DBS = (b"responses", b"meta")
_STATE = b"producer"

#: Microseconds (60 s) before its nextUpdate a pre-produced response is no longer
#: served: a client must have time to use it (RFC 5019 §6 lets a responder refresh ahead).
SERVE_MARGIN_US = 60_000_000

# version, thisUpdate and nextUpdate (µs), basis (status, lost at µs or -1, cause,
# reason), offset of the CertID in the tbs, tbs length; then tbs and signature.
_HEAD = struct.Struct(">BqqBqBBHH")
_FORMAT = 1

Basis = tuple[int, int, int, int]


def basis_of(answer: Answer) -> Basis:
    """What a response states about one certificate, times of validity aside (as
    `ocsp._basis` for the per-worker cache): its status and loss."""
    loss = None if answer.record is None else answer.record.loss
    if loss is None:
        return (int(answer.status), -1, 0, 0)
    return (int(answer.status), micros(loss.time), int(loss.cause), int(loss.reason))


_UNKNOWN: Basis = (int(Status.UNKNOWN), -1, 0, 0)


def basis_of_value(value: bytes | None, when: int) -> Basis:
    """`basis_of` the index's answer at `when` (µs since the epoch) about a certificate
    whose packed index value (record_format) is `value` (None: not held), read without
    decoding it into an answer: what an OCSP cache miss checks a pre-produced entry by.
    No layer's view (an issuer compromise) is in it: ask where none applies."""
    if value is None:
        return _UNKNOWN
    not_before, not_after, _, _, revoked_at, cause, reason = unpack_fields(value)
    if not cause:  # no loss recorded (record_format.unpack_value)
        return (status_rule(when, not_before * 1_000_000, not_after * 1_000_000, None), -1, 0, 0)
    lost_at = revoked_at * 1_000_000
    status = status_rule(when, not_before * 1_000_000, not_after * 1_000_000, lost_at)
    return (status, lost_at, cause, reason)


#: What `py_served` hands back for a response it serves: the response up to its certs
#: field (`ResponseWriter.body`), thisUpdate and nextUpdate (µs), the signature, the
#: basis, and its label code (`status.label_code`).
Served = tuple[bytes, int, int, bytes, Basis, int]


def py_served(
    raw: bytes,
    value: bytes | None,
    when: int,
    cert_id: bytes,
    writer: ResponseWriter,
    certs_size: int,
    margin: int,
) -> Served | None:
    """The pre-produced entry `raw` as the response to the request of `cert_id`, when
    it is right at `when` (µs) for a certificate whose packed index value is `value`
    (`PreproducedEntry.serves`, `margin` µs); None when it is not (signed live then).

    The reference: `_ocsp_miss.served` is its compiled twin (responder/ocsp_miss.py).
    No layer's view (an issuer compromise) is in `value`: ask where none applies."""
    return served_with(raw, basis_of_value(value, when), when, cert_id, writer, certs_size, margin)


def served_with(
    raw: bytes,
    basis: Basis,
    when: int,
    cert_id: bytes,
    writer: ResponseWriter,
    certs_size: int,
    margin: int,
) -> Served | None:
    """`py_served` of a certificate whose answer now states `basis` (taken from an
    `Answer` where a layer's view applies)."""
    entry = PreproducedEntry.decode(raw)
    if entry is None or not entry.serves(cert_id, basis, writer.responder_id, when, margin):
        return None
    body = writer.body(entry.tbs, entry.signature, certs_size)
    code = label_code(basis[0], basis[2])
    return body, entry.this_update, entry.next_update, entry.signature, basis, code


@dataclass(frozen=True, slots=True)
class PreproducedEntry:
    this_update: int  # µs since the epoch: the earliest a client accepts it
    next_update: int  # µs: the response's nextUpdate
    basis: Basis
    cert_id_at: int  # where the CertID sits in `tbs`
    tbs: bytes
    signature: bytes

    def encode(self) -> bytes:
        head = _HEAD.pack(
            _FORMAT, self.this_update, self.next_update, *self.basis, self.cert_id_at, len(self.tbs)
        )
        return head + self.tbs + self.signature

    @classmethod
    def decode(cls, raw: bytes) -> PreproducedEntry | None:
        """None for an entry of another format (made by another version: signed again)."""
        if len(raw) < _HEAD.size or raw[0] != _FORMAT:
            return None
        _, this_update, next_update, status, lost, cause, reason, at, size = _HEAD.unpack_from(raw)
        end = _HEAD.size + size
        return cls(
            this_update,
            next_update,
            (status, lost, cause, reason),
            at,
            raw[_HEAD.size : end],
            raw[end:],
        )

    def names(self, cert_id: bytes) -> bool:
        """Whether it answers exactly this CertID (its bytes echoed in the response)."""
        return self.tbs[self.cert_id_at : self.cert_id_at + len(cert_id)] == cert_id

    def signed_by(self, responder_id: bytes) -> bool:
        """Whether its ResponderID (byKey: the signer key's hash) is `responder_id`."""
        start = 2 if self.tbs[1] < 0x80 else 2 + (self.tbs[1] & 0x7F)
        return self.tbs[start : start + len(responder_id)] == responder_id

    def fresh_at(self, now: int, margin: int) -> bool:
        """Whether `now` is inside thisUpdate…nextUpdate less `margin` (both µs)."""
        return self.this_update <= now < self.next_update - margin

    def serves(
        self, cert_id: bytes, basis: Basis, responder_id: bytes, now: int, margin: int
    ) -> bool:
        """Whether it is the right answer now (µs) to the request of `cert_id`: it
        states what the index says now (`basis`), is well within its validity
        (`margin`, µs), is signed by the current key and answers exactly that CertID."""
        return (
            self.basis == basis
            and self.fresh_at(now, margin)
            and self.signed_by(responder_id)
            and self.names(cert_id)
        )


class PreproducedStore:
    """The environment of one replica. Open it after fork, one per process."""

    def __init__(self, state_dir: Path, *, map_size: int = _MAP_SIZE) -> None:
        self.path = private_dir(state_dir / STORE_DIR)
        self._env = lmdb.open(str(self.path), max_dbs=len(_DBS), map_size=map_size, mode=LMDB_MODE)
        self._responses = self._env.open_db(_DBS[0])
        self._meta = self._env.open_db(_DBS[1])

    def get(self, key: bytes) -> PreproducedEntry | None:
        raw = self.raw(key)
        return None if raw is None else PreproducedEntry.decode(raw)

    def raw(self, key: bytes) -> bytes | None:
        """The encoded entry of `key`, undecoded (what `served` judges)."""
        with self._env.begin(db=self._responses) as txn:
            raw: bytes | None = txn.get(key)
        return raw

    def get_many(self, keys: list[bytes]) -> list[PreproducedEntry | None]:
        with self._env.begin(db=self._responses) as txn:
            raws = [txn.get(key) for key in keys]
        return [None if raw is None else PreproducedEntry.decode(raw) for raw in raws]

    def put_many(
        self, entries: list[tuple[bytes, bytes]], state: dict[str, Any] | None = None
    ) -> None:
        """Write encoded entries (and the producer's state) in one transaction."""
        with self._env.begin(write=True) as txn:
            for key, value in entries:
                txn.put(key, value, db=self._responses)
            if state is not None:
                txn.put(_STATE, json.dumps(state, sort_keys=True).encode(), db=self._meta)

    def state(self) -> dict[str, Any]:
        """What the producer last said of its progress (empty before it ran)."""
        with self._env.begin(db=self._meta) as txn:
            raw = txn.get(_STATE)
        return {} if raw is None else dict(json.loads(bytes(raw)))

    def progress(self, index_root: Path) -> dict[str, Any]:
        """`state` with the live index's name under `live`: a pass is over the live
        index, and finished, when its `index` is that name and it is `done`."""
        live = current_index(index_root)
        return {**self.state(), "live": None if live is None else live.name}

    def stat(self) -> tuple[int, int]:
        """(entries, bytes of the environment's pages in use)."""
        info = self._env.info()
        stat = self._env.stat()
        with self._env.begin(db=self._responses) as txn:
            entries = txn.stat(self._responses)["entries"]
        return entries, (info["last_pgno"] + 1) * stat["psize"]

    def close(self) -> None:
        self._env.close()
