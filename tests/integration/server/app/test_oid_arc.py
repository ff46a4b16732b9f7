"""The private OID arc stays fixed for a registry's life (jpki_va.core.oids)."""

from __future__ import annotations

from pathlib import Path

import pytest

from jpki_va.core.oids import ARC, ENV_ARC
from jpki_va.server.app.config import ConfigError
from jpki_va.server.app.signer_app import registry_arc_check
from jpki_va.server.registry.transactions import Registry


def test_the_first_start_records_the_arc_and_a_start_under_another_is_refused(
    tmp_path: Path,
) -> None:
    registry = Registry(tmp_path / "registry")
    try:
        registry_arc_check(registry)
        registry_arc_check(registry)  # the same arc again: fine
        with registry.read() as tx:
            assert tx.meta("oid_arc") == ARC.encode()
        with registry.write() as wtx:  # as a registry first started under another arc
            wtx.set_meta("oid_arc", b"1.2.392.200149.8")
        with pytest.raises(ConfigError, match=f"set {ENV_ARC}=1.2.392.200149.8"):
            registry_arc_check(registry)
    finally:
        registry.close()
