"""Types of the compiled twin of an OCSP cache miss's byte work (_ocsp_miss.pyx)."""

from collections.abc import Callable
from typing import Any

from jpki_va.server.pki.ocsp_wire import CertId, OcspRequest, ResponseWriter
from jpki_va.server.responder.preproduced import Served

def usual_request(
    cert_id_type: type[CertId], request_type: type[OcspRequest], data: bytes
) -> OcspRequest | None: ...
def served(
    fallback: Callable[..., Any],
    raw: bytes,
    value: bytes | None,
    when: int,
    cert_id: bytes,
    writer: ResponseWriter,
    certs_size: int,
    margin: int,
) -> Served | None: ...
