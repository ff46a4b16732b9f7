"""When the responder renews its delegated OCSP-signer certificate (a setting).

Kept apart from the key store so that configuration parsing does not load the
responder's index and OCSP code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509

_DURATION = re.compile(r"^(\d+)([dhm])$")


@dataclass(frozen=True)
class RenewPolicy:
    """When a delegated certificate is renewed: at a fraction of its life, or a time
    before it expires (``--ocsp-renew-at 0.5`` or ``--ocsp-renew-at 36h``)."""

    fraction: float | None = 0.5
    before_expiry: timedelta | None = None

    def __post_init__(self) -> None:
        if (self.fraction is None) == (self.before_expiry is None):
            raise ValueError("renew policy needs exactly one of a fraction or a duration")
        if self.fraction is not None and not 0 < self.fraction < 1:
            raise ValueError("renew fraction must be between 0 and 1 (exclusive)")
        if self.before_expiry is not None and self.before_expiry <= timedelta(0):
            raise ValueError("renew duration must be positive")

    @classmethod
    def parse(cls, text: str) -> RenewPolicy:
        text = text.strip()
        match = _DURATION.match(text)
        if match:
            n, unit = int(match.group(1)), match.group(2)
            delta = {"d": timedelta(days=n), "h": timedelta(hours=n), "m": timedelta(minutes=n)}
            return cls(fraction=None, before_expiry=delta[unit])
        try:
            return cls(fraction=float(text))
        except ValueError:
            raise ValueError(
                f"--ocsp-renew-at {text!r}: give a fraction of the life (0.5) "
                "or a time before expiry (36h, 2d)"
            ) from None

    def due(self, cert: x509.Certificate, now: datetime) -> bool:
        start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
        if self.fraction is not None:
            return now >= start + (end - start) * self.fraction
        assert self.before_expiry is not None
        return now >= end - self.before_expiry
