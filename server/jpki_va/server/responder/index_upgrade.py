"""An index of the earlier layout, brought to the current one in place.

Before each CRL scope had its key in `meta` (index_layout.SCOPE_PREFIX), the index's
manifest listed every scope in three JSON fields: `crls` (the current CRLs), `full_crls`
and `crl_base`. A responder upgrades its live index when it starts, before any worker
opens it, in one write transaction: an index is of one layout or the other, and a
responder of the earlier version can no longer read it. Rebuilding instead would cost
a minute at 10 M holders.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lmdb

from jpki_va.server.base.private_files import LMDB_MODE
from jpki_va.server.responder.index_layout import (
    _DBS,
    _MAP_SIZE,
    _VERSION,
    _required,
    pack_scope,
    scope_key,
    times_of,
)
from jpki_va.server.snapshot.manifest import CrlInfo

_EARLIER_FIELDS = ("crls", "full_crls", "crl_base")


def upgrade_index(path: Path) -> bool:
    """Bring the index at `path` to the current layout; whether it had to be."""
    env = lmdb.open(str(path), map_size=_MAP_SIZE, max_dbs=len(_DBS), mode=LMDB_MODE)
    try:
        meta_db = env.open_db(b"meta", create=False)
        with env.begin(write=True) as txn:
            meta: dict[str, Any] = json.loads(_required(txn.get(b"manifest", db=meta_db)))
            if "crls" not in meta:
                return False
            # Indexes older still had no `full_crls`: their CRLs were the full ones.
            fulls = (CrlInfo.from_json(d) for d in meta.get("full_crls", meta["crls"]))
            full = {info.scope: info for info in fulls}
            for info in (CrlInfo.from_json(d) for d in meta["crls"]):
                base = full.get(info.scope, info)
                txn.put(
                    scope_key(*info.scope), pack_scope(times_of(base), times_of(info)), db=meta_db
                )
            for name in _EARLIER_FIELDS:
                meta.pop(name, None)
            txn.put(b"manifest", json.dumps(meta).encode(), db=meta_db)
            version = int.from_bytes(txn.get(_VERSION, default=b"\0", db=meta_db), "big")
            txn.put(_VERSION, (version + 1).to_bytes(8, "big"), db=meta_db)
        return True
    finally:
        env.close()
