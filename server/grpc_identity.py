"""Who called, as the transport says: the gRPC side of verifier identification.

With mTLS the verifier is the SHA-256 fingerprint of its client certificate (the
TLS layer already checked the chain to the client CA). In insecure-loopback mode
(demos and tests only) there is no certificate, so the `x-jpki-verifier` metadata
header names the verifier; it is ignored on a TLS server, where it would be spoofing.
"""

from __future__ import annotations

import hashlib

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from server.access import Caller

VERIFIER_HEADER = "x-jpki-verifier"


def fingerprint(cert: x509.Certificate) -> bytes:
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).digest()


def caller_of(context: grpc.ServicerContext, *, insecure_loopback: bool) -> Caller:
    pems = context.auth_context().get("x509_pem_cert")
    if pems:
        return Caller(fingerprint=fingerprint(x509.load_pem_x509_certificate(pems[0])))
    if insecure_loopback:
        for key, value in context.invocation_metadata():
            if key == VERIFIER_HEADER and isinstance(value, str) and value:
                return Caller(claimed_id=value)
    return Caller()


def server_credentials(cert_chain: bytes, key: bytes, client_ca: bytes) -> grpc.ServerCredentials:
    """TLS that demands a client certificate issued by `client_ca`."""
    return grpc.ssl_server_credentials(
        [(key, cert_chain)], root_certificates=client_ca, require_client_auth=True
    )
