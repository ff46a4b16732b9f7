"""What a server port speaks, for a command whose call found no gRPC peer it could use.

gRPC reports a plaintext call to a TLS port as "Socket closed", a TLS call to a
plaintext port as a handshake failure, and a call to an HTTP/1.1 port as a frame it
could not parse; none says what to change. After such a failure the commands ask the
port itself, with one TLS handshake (no certificate checked: only whether it speaks
TLS at all) and, if that fails, one HTTP/2 connection preface, and name the flag that
fixes the mismatch. Never used on the request path of a healthy call.
"""

from __future__ import annotations

import contextlib
import enum
import socket
import ssl

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
_SETTINGS = 0x04


class Speaks(enum.Enum):
    NOTHING = "nothing"  # connection refused or no reply
    TLS = "TLS"
    PLAINTEXT_GRPC = "plaintext gRPC (HTTP/2 without TLS)"
    HTTP1 = "plain HTTP/1.1"
    UNKNOWN = "an unknown protocol"


def _split(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    return host.strip("[]"), int(port)


def probe(target: str, timeout: float = 2.0) -> Speaks:
    """What ``HOST:PORT`` speaks."""
    try:
        address = _split(target)
    except ValueError:
        return Speaks.UNKNOWN
    try:
        if _speaks_tls(address, timeout):
            return Speaks.TLS
        return _plaintext(address, timeout)
    except OSError:
        return Speaks.NOTHING


def _speaks_tls(address: tuple[str, int], timeout: float) -> bool:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # a probe of the protocol, not of trust
    context.set_alpn_protocols(["h2"])
    with socket.create_connection(address, timeout=timeout) as raw:
        try:
            with context.wrap_socket(raw, server_hostname=address[0]):
                return True
        except ssl.SSLError:
            return False
        except OSError as exc:
            # A TLS server that wants a client certificate may drop us mid-handshake.
            return isinstance(exc, ConnectionResetError)


def _plaintext(address: tuple[str, int], timeout: float) -> Speaks:
    with socket.create_connection(address, timeout=timeout) as raw:
        raw.sendall(_PREFACE)
        reply = b""
        with contextlib.suppress(TimeoutError, OSError):
            while len(reply) < 9:
                chunk = raw.recv(64)
                if not chunk:
                    break
                reply += chunk
    if reply.startswith((b"HTTP/", b"<")):  # a status line, or an HTML error page
        return Speaks.HTTP1
    if len(reply) >= 9 and reply[3] == _SETTINGS:
        return Speaks.PLAINTEXT_GRPC
    return Speaks.UNKNOWN if reply else Speaks.NOTHING


def mismatch(target: str, *, used_tls: bool, role: str) -> str | None:
    """What to say when a call to ``target`` found no usable gRPC peer; None when the
    port speaks what the call spoke (the failure is elsewhere: say what gRPC said)."""
    speaks = probe(target)
    if speaks is Speaks.TLS and not used_tls:
        return (
            f"{target} speaks TLS and this call was plaintext (--insecure-loopback): "
            "drop --insecure-loopback and give --ca FILE (with --client-cert and "
            "--client-key for mTLS)"
        )
    if speaks is Speaks.PLAINTEXT_GRPC and used_tls:
        return (
            f"{target} speaks plaintext gRPC (a {role} started with --insecure-loopback) "
            "and this call used TLS: add --insecure-loopback (loopback only), or use the "
            f"{role}'s TLS address"
        )
    if speaks is Speaks.HTTP1:
        return (
            f"{target} speaks plain HTTP/1.1, not gRPC (the responder's HTTP OCSP/CRL "
            f"port?): give the {role}'s gRPC address (its --listen)"
        )
    if speaks is Speaks.NOTHING:
        return f"nothing answers on {target} (is the {role} running, and on this port?)"
    return None


def not_the_service(target: str, service: str, role: str, other: str) -> str:
    """What to say when ``target`` answers gRPC but has no ``service``."""
    return (
        f"{target} answers gRPC but has no {service}: it is not a {role} (the {other}'s address?)"
    )
