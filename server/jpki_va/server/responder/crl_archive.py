"""Retained CRL files (保存期間): every verified CRL the responder ingested.

The law keeps each CRL file for a period from its creation (第16条, 第16条の15,
第35条, 第35条の15) and provides retained files on request (第18条2項, 第37条2項).
The ingester stores each verified CRL here before the index built from its snapshot
goes live; workers read it. One LMDB environment: the key orders a scope's CRLs by
number, so "current", "by number" and "as of a time" are short cursor walks.
Files older than the retention period are pruned and never served, except the
newest of each scope, which is still the one in force.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import lmdb

from jpki_va.core.domain import CertKind
from jpki_va.server.base.private_files import LMDB_MODE, private_dir
from jpki_va.server.responder.storage import prepare_lock_file

_MAP_SIZE = 1 << 40
_NUMBER = 8


class CrlNotFound(LookupError):
    """No retained CRL matches the request."""


@dataclass(frozen=True, slots=True)
class ArchivedCrl:
    kind: CertKind
    issuer_key_id: bytes
    partition: str
    number: int
    this_update: datetime
    next_update: datetime
    size: int
    sha256: bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind.name,
            "issuer_key_id": self.issuer_key_id.hex(),
            "partition": self.partition,
            "number": self.number,
            "this_update": self.this_update.isoformat(),
            "next_update": self.next_update.isoformat(),
            "size": self.size,
            "sha256": self.sha256.hex(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ArchivedCrl:
        return cls(
            kind=CertKind[data["kind"]],
            issuer_key_id=bytes.fromhex(data["issuer_key_id"]),
            partition=data["partition"],
            number=int(data["number"]),
            this_update=datetime.fromisoformat(data["this_update"]),
            next_update=datetime.fromisoformat(data["next_update"]),
            size=int(data["size"]),
            sha256=bytes.fromhex(data["sha256"]),
        )


def _scope(kind: CertKind, issuer_key_id: bytes, partition: str) -> bytes:
    return f"{kind.name}/{issuer_key_id.hex()}/{partition}/".encode()


def _key(crl: ArchivedCrl) -> bytes:
    return _scope(crl.kind, crl.issuer_key_id, crl.partition) + crl.number.to_bytes(_NUMBER, "big")


class CrlArchive:
    """Open after fork; the ingester writes, workers read."""

    _DBS = (b"crls", b"info")

    def __init__(self, path: Path) -> None:
        private_dir(path)
        with contextlib.suppress(FileExistsError):  # opened before: its lock file stays
            prepare_lock_file(path)
        self._env = lmdb.open(str(path), map_size=_MAP_SIZE, max_dbs=len(self._DBS), mode=LMDB_MODE)
        self._der, self._info = (self._env.open_db(name) for name in self._DBS)

    def add(self, items: Iterable[tuple[ArchivedCrl, bytes]]) -> int:
        """Store verified CRLs (metadata, DER) in one transaction; returns how many were new."""
        added = 0
        with self._env.begin(write=True) as txn:
            for info, der in items:
                key = _key(info)
                if txn.put(key, der, overwrite=False, db=self._der):
                    txn.put(key, json.dumps(info.to_json()).encode(), db=self._info)
                    added += 1
        self._env.sync(True)
        return added

    def list(
        self,
        kind: CertKind | None = None,
        issuer_key_id: bytes | None = None,
        partition: str | None = None,
    ) -> list[ArchivedCrl]:
        prefix = b""
        if kind is not None:
            prefix = f"{kind.name}/".encode()
            if issuer_key_id is not None:
                prefix += f"{issuer_key_id.hex()}/".encode()
        out: list[ArchivedCrl] = []
        with self._env.begin(db=self._info) as txn:
            cursor = txn.cursor()
            if not cursor.set_range(prefix):
                return out
            for key, value in cursor:
                if not bytes(key).startswith(prefix):
                    break
                info = ArchivedCrl.from_json(json.loads(bytes(value)))
                if (issuer_key_id is None or info.issuer_key_id == issuer_key_id) and (
                    partition is None or info.partition == partition
                ):
                    out.append(info)
        return out

    def find(
        self,
        kind: CertKind,
        issuer_key_id: bytes,
        partition: str,
        *,
        number: int | None = None,
        as_of: datetime | None = None,
    ) -> ArchivedCrl:
        """By number, or the newest whose thisUpdate is not after `as_of`."""
        in_scope = self.list(kind, issuer_key_id, partition)
        if number is not None:
            found = [c for c in in_scope if c.number == number]
            what = f"number {number}"
        else:
            assert as_of is not None
            found = [c for c in in_scope if c.this_update <= as_of][-1:]
            what = f"in force at {as_of.isoformat()}"
        if not found:
            raise CrlNotFound(
                f"no retained {kind.name} CRL of partition {partition} "
                f"(issuer {issuer_key_id.hex()}) {what}"
            )
        return found[0]

    def der(self, crl: ArchivedCrl) -> bytes:
        with self._env.begin(db=self._der) as txn:
            raw = txn.get(_key(crl))
        if raw is None:
            raise CrlNotFound(f"CRL number {crl.number} is no longer retained")
        return bytes(raw)

    def prune(self, now: datetime, retention: timedelta) -> int:
        """Drop CRLs created longer than `retention` ago, keeping each scope's newest."""
        newest: dict[bytes, bytes] = {}
        old: list[bytes] = []
        with self._env.begin(db=self._info) as txn:
            for raw_key, value in txn.cursor():
                key = bytes(raw_key)
                newest[key[:-_NUMBER]] = key
                info = json.loads(bytes(value))
                if datetime.fromisoformat(info["this_update"]) < now - retention:
                    old.append(key)
        doomed = [k for k in old if newest[k[:-_NUMBER]] != k]
        if doomed:
            with self._env.begin(write=True) as txn:
                for key in doomed:
                    txn.delete(key, db=self._der)
                    txn.delete(key, db=self._info)
        return len(doomed)

    def close(self) -> None:
        self._env.close()


def archived(
    kind: CertKind,
    issuer_key_id: bytes,
    partition: str,
    number: int,
    this_update: datetime,
    next_update: datetime,
    der: bytes,
) -> tuple[ArchivedCrl, bytes]:
    info = ArchivedCrl(
        kind,
        issuer_key_id,
        partition,
        number,
        this_update,
        next_update,
        len(der),
        hashlib.sha256(der).digest(),
    )
    return info, der
