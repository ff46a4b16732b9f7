"""What a trusted balancer's x-forwarded-client-cert header names, and what it does not."""

from __future__ import annotations

import hashlib

import pytest

from jpki_va.server.access.gate import Caller
from jpki_va.server.access.proxy import TrustedProxies, forwarded_fingerprint, proxied_caller

DIGEST = hashlib.sha256(b"a client certificate").digest()


@pytest.mark.parametrize(
    "value",
    [
        f"Hash={DIGEST.hex()}",
        f'By=spiffe://balancer;Hash={DIGEST.hex().upper()};Subject="CN=x"',
        # One element per proxy: the nearest proxy's (the last) counts.
        f"Hash={'00' * 32},Hash={DIGEST.hex()}".encode(),
    ],
)
def test_the_hash_names_the_certificate(value: str | bytes) -> None:
    assert forwarded_fingerprint(value) == DIGEST
    assert proxied_caller(value) == Caller(fingerprint=DIGEST)


@pytest.mark.parametrize(
    "value", [None, "", 'Subject="CN=x"', "Hash=abc", f"Hash={'zz' * 32}", "garbage"]
)
def test_no_hash_or_a_malformed_one_names_nobody(value: str | None) -> None:
    assert forwarded_fingerprint(value) is None
    assert proxied_caller(value) == Caller()


def test_only_the_balancers_certificates_are_trusted() -> None:
    proxies = TrustedProxies.of_certificates([b"balancer"])
    assert proxies.trusts(hashlib.sha256(b"balancer").digest())
    assert not proxies.trusts(DIGEST)
