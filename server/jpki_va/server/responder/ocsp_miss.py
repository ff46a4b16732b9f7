"""An OCSP cache miss's byte work, compiled when it can be.

A request the per-worker cache does not hold is most requests at national scale
(hundreds of millions of certificates, each asked about now and then), and most of
those are answered from the pre-produced store. That path's parts that only read and
write bytes run in C (`_ocsp_miss.pyx`, built at install):

- `usual_request`: the usual request (one SHA-1 CertID and nothing else) read by
  position; the reference is `pki/ocsp_wire.usual_request`;
- `served`: a pre-produced entry judged against the certificate's packed index value
  and framed as the response; the reference is `preproduced.py_served`.

Where no compiler was present the references serve. Either way the same results:
tests/unit/server/responder/test_ocsp_miss.py and the fuzz target compare them.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from jpki_va.server.pki import ocsp_wire
from jpki_va.server.pki.ocsp_wire import CertId, OcspRequest, ResponseWriter
from jpki_va.server.responder.preproduced import Served, py_served

try:
    from jpki_va.server.responder import _ocsp_miss
except ImportError:  # no compiler at install: the references serve
    _ocsp_miss = None  # type: ignore[assignment]

COMPILED = _ocsp_miss is not None

#: `ocsp_wire.usual_request`.
usual_request: Callable[[bytes], OcspRequest | None]
#: `preproduced.py_served`: (raw, value, when, cert_id, writer, certs_size, margin).
served: Callable[[bytes, bytes | None, int, bytes, ResponseWriter, int, int], Served | None]

if _ocsp_miss is None:
    usual_request = ocsp_wire.usual_request
    served = py_served
else:
    # Partials, not wrappers: a partial is called without a Python frame of its own.
    usual_request = partial(_ocsp_miss.usual_request, CertId, OcspRequest)
    served = partial(_ocsp_miss.served, py_served)
