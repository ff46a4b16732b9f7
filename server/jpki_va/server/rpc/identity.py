"""Who called, as the transport says: the gRPC side of verifier identification.

With mTLS the verifier is the SHA-256 fingerprint of its client certificate (the
TLS layer already checked the chain to the client CA). In insecure-loopback mode
(demos and tests only) there is no certificate, so the `x-jpki-verifier` metadata
header names the verifier, or else the responder's `--loopback-verifier`; both are
ignored on a TLS server, where they would be spoofing. Behind a balancer the TLS peer
is the balancer: on a connection with one of its certificates (`proxies`), the
`x-forwarded-client-cert` header it set names the verifier (access/proxy.py). The
verifier named must still be registered, and its roles still decide.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from grpc._cython import cygrpc  # type: ignore[attr-defined]  # the stubs do not name it

from jpki_va.core.loopback import VERIFIER_HEADER
from jpki_va.server.access.gate import Caller, fingerprint_of
from jpki_va.server.access.proxy import FORWARDED_HEADER, TrustedProxies, proxied_caller


def fingerprint(cert: x509.Certificate) -> bytes:
    return fingerprint_of(cert.public_bytes(Encoding.DER))


_NOBODY = Caller()


@lru_cache(maxsize=1024)
def _claimed(verifier_id: str) -> Caller:
    # A Caller is frozen: one per name serves every call that claims it.
    return Caller(claimed_id=verifier_id)


@lru_cache(maxsize=1024)  # about 1.5 MB of PEMs at most
def _pem_caller(pem: bytes) -> Caller:
    # Every call on a connection presents the same PEM: parse it once, not per call.
    # Keyed by the exact bytes the TLS layer verified, so a hit is the same certificate.
    return Caller(fingerprint=fingerprint(x509.load_pem_x509_certificate(pem)))


#: The connection's properties keyed by bytes: the cygrpc function grpc's public
#: `ServicerContext.auth_context()` wraps. That method decodes every property name in
#: Python on every call (a `_common.decode` each: 9 Python calls of the 52 a unary
#: Check over mTLS adds to grpc's own, counted by the bench's calls step); the client
#: certificate needs none of them decoded. None where this grpcio has no such function.
_RAW_AUTH_CONTEXT: Callable[[object], Mapping[bytes, Sequence[bytes]] | None] | None = getattr(
    cygrpc, "auth_context", None
)


def _peer_pem(context: grpc.ServicerContext) -> bytes | None:
    """The client certificate (PEM) the TLS layer verified for this call, or None."""
    # grpc's server context keeps its call as `_rpc_event.call` (grpcio as pinned);
    # anything else (another grpcio, a test's context) is asked the public way.
    call = getattr(getattr(context, "_rpc_event", None), "call", None)
    pems: Sequence[bytes] | None
    if call is not None and _RAW_AUTH_CONTEXT is not None:
        pems = (_RAW_AUTH_CONTEXT(call) or {}).get(b"x509_pem_cert")
    else:  # the stubs type the values as bytes; at run time each is a list of bytes
        pems = context.auth_context().get("x509_pem_cert")  # type: ignore[assignment]
    return pems[0] if pems else None


def caller_function(
    *,
    insecure_loopback: bool,
    default_verifier: str | None = None,
    proxies: TrustedProxies | None = None,
) -> Callable[[grpc.ServicerContext], Caller]:
    """A server's reading of each call's identity: `caller_of` with the server's mode
    bound, as a plain function of the context (what the servicers call per call; a
    partial with keywords merged them into a new dict on every call, half of the
    reading's cost, counted in instructions).

    `insecure_loopback` is the server's mode, not a per-call choice: the configuration
    allows it only on a plaintext listener (app/config.py), where no call carries a
    client certificate, so the auth context is not asked for (it is built afresh, a
    dict of the connection's properties, on every call). `default_verifier` names
    header-less plaintext callers.
    """
    if insecure_loopback:
        default = _NOBODY if default_verifier is None else _claimed(default_verifier)

        def loopback_caller(context: grpc.ServicerContext) -> Caller:
            claimed = _metadata(context, VERIFIER_HEADER)
            return _claimed(claimed) if claimed else default

        return loopback_caller

    def tls_caller(context: grpc.ServicerContext) -> Caller:
        pem = _peer_pem(context)
        if not pem:
            return _NOBODY
        caller = _pem_caller(pem)
        peer = caller.fingerprint
        if proxies is not None and peer is not None and proxies.trusts(peer):
            return proxied_caller(_metadata(context, FORWARDED_HEADER))
        return caller

    return tls_caller


def caller_of(
    context: grpc.ServicerContext,
    *,
    insecure_loopback: bool,
    default_verifier: str | None = None,
    proxies: TrustedProxies | None = None,
) -> Caller:
    """The caller's identity, read once (`caller_function`, which a server binds)."""
    read = caller_function(
        insecure_loopback=insecure_loopback, default_verifier=default_verifier, proxies=proxies
    )
    return read(context)


def _metadata(context: grpc.ServicerContext, name: str) -> str | None:
    for key, value in context.invocation_metadata():
        if key == name and isinstance(value, str) and value:
            return value
    return None


def stream_owner(
    context: grpc.ServicerContext, *, insecure_loopback: bool, proxies: TrustedProxies | None = None
) -> str:
    """Whom an open stream counts against (rpc/stream_budget.py), as a message names it.

    The verifier's client certificate; on plaintext loopback the `x-jpki-verifier`
    name, or else the connection (the peer), not `--loopback-verifier`, which would
    put every header-less caller on one budget.
    """
    caller = caller_of(context, insecure_loopback=insecure_loopback, proxies=proxies)
    if caller.fingerprint is not None or caller.claimed_id is not None:
        return caller.describe()
    return f"peer {context.peer()}"


def server_credentials(cert_chain: bytes, key: bytes, client_ca: bytes) -> grpc.ServerCredentials:
    """TLS that demands a client certificate issued by `client_ca`."""
    return grpc.ssl_server_credentials(
        [(key, cert_chain)], root_certificates=client_ca, require_client_auth=True
    )
