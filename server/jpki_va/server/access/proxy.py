"""Callers named by a trusted balancer: the client certificate Envoy verified.

Behind Envoy the replica's TLS peer is the balancer, not the verifier. Envoy
terminates the verifier's mTLS, drops any `x-forwarded-client-cert` (XFCC) header the
caller sent (`forward_client_cert_details: SANITIZE_SET`) and sets its own, whose
`Hash=` is the SHA-256 of the verified client certificate's DER: the very fingerprint
a direct mTLS caller is known by (`gate.fingerprint_of`). The replica believes that
header only on a connection whose own client certificate is one of the balancer's
(`--trusted-proxy-cert`); from anyone else it is ignored, so a verifier that reaches
a replica directly is still its own certificate, whatever header it sends.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from jpki_va.server.access.gate import Caller, fingerprint_of

FORWARDED_HEADER = "x-forwarded-client-cert"
_HASH_HEX_LENGTH = 64


@dataclass(frozen=True)
class TrustedProxies:
    """The balancers' client certificates, by fingerprint."""

    fingerprints: frozenset[bytes]

    @classmethod
    def of_certificates(cls, ders: Iterable[bytes]) -> TrustedProxies:
        return cls(frozenset(fingerprint_of(der) for der in ders))

    def trusts(self, fingerprint: bytes) -> bool:
        return fingerprint in self.fingerprints


def forwarded_fingerprint(value: str | bytes | None) -> bytes | None:
    """The `Hash=` of the XFCC element the nearest proxy set (the last), or None.

    Elements are comma-separated (one per proxy), pairs within one `;`-separated;
    SANITIZE_SET leaves exactly one. A malformed value names nobody.
    """
    if not value:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    # Only Hash is read, and a hash holds neither ',' nor ';' nor quotes, so a quoted
    # Subject or URI holding them can at worst make the value name nobody.
    element = text.rsplit(",", 1)[-1]
    for pair in element.split(";"):
        key, sep, found = pair.strip().partition("=")
        if sep and key.lower() == "hash":
            found = found.strip().lower()
            if len(found) != _HASH_HEX_LENGTH:
                return None
            try:
                return bytes.fromhex(found)
            except ValueError:
                return None
    return None


def proxied_caller(value: str | bytes | None) -> Caller:
    """Who a trusted balancer says called: a certificate, or nobody (refused later)."""
    fingerprint = forwarded_fingerprint(value)
    return Caller() if fingerprint is None else Caller(fingerprint=fingerprint)
