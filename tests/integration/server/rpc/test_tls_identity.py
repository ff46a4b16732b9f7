"""The caller's client certificate, read per call over real TLS on 127.0.0.1.

`caller_of` reads the certificate through the cygrpc function grpc's public
`auth_context()` wraps (rpc/identity.py says why). These tests hold the two to the
same answer on a real server, check the pinned grpcio still offers the short way (a
silent fall back to the long one would cost every mTLS call again), and check the
public way is what any other context gets.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from jpki_va.server.access.gate import Caller
from jpki_va.server.access.proxy import TrustedProxies
from jpki_va.server.rpc import identity
from jpki_va.server.rpc.identity import caller_of, fingerprint
from tests.support.tls import TlsCa, TlsIdentity


@dataclass
class Seen:
    """What the handler saw on one call."""

    short_way: bool
    pem: bytes | None
    public_pems: list[bytes]
    caller: Caller
    proxied: Caller


class _Recording:
    """A unary method that records what its context says of the caller."""

    def __init__(self, proxies: TrustedProxies) -> None:
        self.seen: list[Seen] = []
        self._proxies = proxies

    def __call__(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        call = getattr(getattr(context, "_rpc_event", None), "call", None)
        # The stubs type the values as bytes; at run time each is a list of bytes.
        public: list[bytes] = list(context.auth_context().get("x509_pem_cert") or [])  # type: ignore[arg-type]
        self.seen.append(
            Seen(
                short_way=call is not None and identity._RAW_AUTH_CONTEXT is not None,
                pem=identity._peer_pem(context),
                public_pems=public,
                caller=caller_of(context, insecure_loopback=False),
                proxied=caller_of(context, insecure_loopback=False, proxies=self._proxies),
            )
        )
        return b""


METHOD = "/jpki_va.test.Identity/Who"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[TlsCa, TlsIdentity, TlsIdentity]:
    ca = TlsCa(Path(tmp_path_factory.mktemp("tls")))
    return ca, ca.issue("server", server=True), ca.issue("caller")


@contextmanager
def _serve(
    tls: tuple[TlsCa, TlsIdentity, TlsIdentity], *, require_client: bool, proxy: TlsIdentity
) -> Iterator[tuple[_Recording, int]]:
    ca, server_identity, _ = tls
    servicer = _Recording(TrustedProxies(frozenset({fingerprint(proxy.certificate)})))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                METHOD.split("/")[1], {"Who": grpc.unary_unary_rpc_method_handler(servicer)}
            ),
        )
    )
    credentials = grpc.ssl_server_credentials(
        [(server_identity.key.read_bytes(), server_identity.cert.read_bytes())],
        root_certificates=ca.cert_file.read_bytes(),
        require_client_auth=require_client,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        yield servicer, port
    finally:
        server.stop(None).wait()


def _check(ca: TlsCa, port: int, who: TlsIdentity | None, calls: int = 3) -> None:
    with grpc.secure_channel(f"127.0.0.1:{port}", ca.channel_credentials(who)) as channel:
        who_am_i = channel.unary_unary(METHOD, None, None)
        for _ in range(calls):
            who_am_i(b"", timeout=10)


def test_the_short_way_names_the_certificate_the_public_way_does(
    tls: tuple[TlsCa, TlsIdentity, TlsIdentity],
) -> None:
    ca, _, caller = tls
    proxy = ca.issue("proxy")
    with _serve(tls, require_client=True, proxy=proxy) as (servicer, port):
        _check(ca, port, caller)
        _check(ca, port, proxy, calls=1)
        first, *rest, by_proxy = servicer.seen
        expected = Caller(fingerprint=fingerprint(caller.certificate))
        for seen in (first, *rest):
            # The pinned grpcio offers the short way: a grpc upgrade that takes it away
            # fails here, not as a silent cost on every mTLS call.
            assert seen.short_way
            assert seen.pem is not None and seen.public_pems == [seen.pem]
            assert seen.caller == expected and seen.proxied == expected
        # One Caller per certificate, shared by every call that presents it.
        assert all(seen.caller is first.caller for seen in rest)
        assert by_proxy.caller == Caller(fingerprint=fingerprint(proxy.certificate))
        # A trusted proxy's connection names no one without its forwarded header.
        assert by_proxy.proxied == Caller()


def test_no_client_certificate_is_no_one(
    tls: tuple[TlsCa, TlsIdentity, TlsIdentity],
) -> None:
    ca, _, caller = tls
    with _serve(tls, require_client=False, proxy=caller) as (servicer, port):
        _check(ca, port, None, calls=1)
        (seen,) = servicer.seen
        assert seen.short_way and seen.pem is None and seen.public_pems == []
        assert seen.caller == Caller()


class _PublicOnly:
    """A context that is not grpc's own: only the public method to ask."""

    def __init__(self, properties: dict[str, list[bytes]]) -> None:
        self._properties = properties

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._properties


def test_another_context_is_asked_the_public_way(
    tls: tuple[TlsCa, TlsIdentity, TlsIdentity],
) -> None:
    _, _, caller = tls
    pem = caller.cert.read_bytes()
    context: Any = _PublicOnly({"x509_pem_cert": [pem], "transport_security_type": [b"ssl"]})
    assert identity._peer_pem(context) == pem
    assert caller_of(context, insecure_loopback=False) == Caller(
        fingerprint=fingerprint(caller.certificate)
    )
    assert identity._peer_pem(_PublicOnly({})) is None  # type: ignore[arg-type]
