"""The verifier registry as one index carries it: by id and by certificate fingerprint."""

from __future__ import annotations

from typing import Any

from jpki_va.core.domain import (
    Verifier,
)


class VerifierTable:
    """The verifier registry of one index: by id and by client-certificate fingerprint."""

    def __init__(self, entries: list[dict[str, Any]]) -> None:
        self.by_id: dict[str, Verifier] = {}
        self.by_fingerprint: dict[bytes, Verifier] = {}
        for entry in entries:
            verifier = Verifier.from_json(entry)
            self.by_id[verifier.id] = verifier
            for fingerprint in verifier.cert_fingerprints:
                self.by_fingerprint[fingerprint] = verifier
