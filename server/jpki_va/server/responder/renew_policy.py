"""When the responder renews its delegated OCSP-signer certificate (a setting).

Kept apart from the key store so that configuration parsing does not load the
responder's index and OCSP code.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509

from jpki_va.core.cli import parse_duration


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
        if text[-1:].isalpha():  # a duration (the commands' one syntax); a bare number: a fraction
            try:
                return cls(fraction=None, before_expiry=parse_duration(text))
            except ValueError:
                pass
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
