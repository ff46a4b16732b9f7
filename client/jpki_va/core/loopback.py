"""Plaintext loopback: what counts as this machine, and how a caller names itself there.

Client and servers share these: a verifier is identified by its client certificate
over TLS; only on a plaintext loopback channel (demos, tests) does a metadata header
name it, and only a target on this machine may be reached without TLS.
"""

from __future__ import annotations

import ipaddress

# Names the verifier on a plaintext loopback channel (demos and tests); a TLS
# responder ignores it and identifies the verifier by its client certificate.
VERIFIER_HEADER = "x-jpki-verifier"


def is_loopback_target(target: str) -> bool:
    """Whether a gRPC target names this machine (127.0.0.0/8, ::1, localhost, unix socket)."""
    if target.startswith(("unix:", "unix-abstract:")):
        return True
    for prefix in ("dns:///", "dns:", "ipv4:", "ipv6:"):
        if target.startswith(prefix):
            target = target.removeprefix(prefix)
            break
    if "," in target:  # ipv4:/ipv6: address lists: every address must be local
        return all(is_loopback_target(part) for part in target.split(","))
    if target.startswith("["):
        host = target[1:].partition("]")[0]
    elif target.count(":") > 1:  # a bare IPv6 address without a port
        host = target
    else:
        host = target.partition(":")[0]
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
