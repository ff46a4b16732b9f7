"""What a validator fetches to check a whole path: CA certificates and the root's ARL.

The URLs come from the certificates themselves: an end-entity certificate's AIA
caIssuers names its issuing CA generation, an issuing CA certificate's names the
root and its CRL distribution point the root's ARL (pki/cert_profile.py). Each URL
names a CA by the first octets of its key id, so every generation stays reachable
for as long as the index lists it, old and new side by side after a rotation.
Nothing here is personal data: served to anyone, and not counted as a provision.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from jpki_va.core.domain import CertKind
from jpki_va.server.pki.cert_profile import key_id
from jpki_va.server.responder.status import IndexHolder


@dataclass(frozen=True, slots=True)
class ServedFile:
    """A DER file as served, with the times its cache headers give."""

    der: bytes
    this_update: datetime
    next_update: datetime
    number: int | None = None  # a CRL's number


def served_crl(der: bytes, crl: x509.CertificateRevocationList | None = None) -> ServedFile:
    crl = crl or x509.load_der_x509_crl(der)
    next_update = crl.next_update_utc or crl.last_update_utc
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    return ServedFile(der, crl.last_update_utc, next_update, number)


def _served_certificate(cert: x509.Certificate) -> ServedFile:
    # The certificate at a URL never changes (a new generation is a new key id).
    return ServedFile(
        cert.public_bytes(Encoding.DER), cert.not_valid_before_utc, cert.not_valid_after_utc
    )


class CaFiles:
    def __init__(self, holder: IndexHolder, roots: Sequence[x509.Certificate]) -> None:
        self._holder = holder
        self._roots = [(key_id(r.public_key()), r) for r in roots]

    def certificate(self, kind: CertKind | None, key_id_prefix: bytes) -> ServedFile | None:
        """The root (kind None: a trust anchor) or an issuing CA generation of `kind`."""
        if kind is None:
            found = [cert for kid, cert in self._roots if kid.startswith(key_id_prefix)]
        else:
            found = [
                entry.certificate
                for kid, entry in self._holder.get().issuers.items()
                if entry.kind is kind and kid.startswith(key_id_prefix)
            ]
        return _served_certificate(found[0]) if len(found) == 1 else None

    def arl(self, key_id_prefix: bytes) -> ServedFile | None:
        """The root's current ARL, if the root named by the URL signed it."""
        der = self._holder.get().arl_der()
        if der is None:
            return None
        crl = x509.load_der_x509_crl(der)
        aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        if aki.key_identifier is None or not aki.key_identifier.startswith(key_id_prefix):
            return None
        return served_crl(der, crl)
