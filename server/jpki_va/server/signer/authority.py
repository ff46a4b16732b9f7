"""The certificate authority's keys and certificates, as the signer uses them.

Keys live in the HSM and are found by label; certificates and which generation is
active live in the registry, read on every use so a rotation made by an operator
reaches a running signer. The key ceremony (jpki_va.server.signer.ceremony) creates them.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import timedelta

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding

from jpki_va import hsm
from jpki_va.core.domain import CertKind
from jpki_va.server.model.registry_values import IssuerRecord
from jpki_va.server.registry.transactions import Registry, RegistryTxn

#: Registry meta entries of the root-certified signer keys.
SNAPSHOT_SIGNER = "snapshot_signer"
VERIFIER_TOKEN_SIGNER = "verifier_token_signer"  # noqa: S105 (a name, not a secret)


@dataclass(frozen=True)
class AuthoritySettings:
    label_prefix: str = "jpki-va"
    ca_key_type: hsm.KeyType = hsm.KeyType.RSA_2048
    snapshot_key_type: hsm.KeyType = hsm.KeyType.EC_P256
    root_validity: timedelta = timedelta(days=20 * 365)
    issuer_validity: timedelta = timedelta(days=12 * 365)

    def __post_init__(self) -> None:
        if self.issuer_validity > self.root_validity:
            raise ValueError("issuing CAs cannot outlive the root")

    def root_label(self) -> str:
        return f"{self.label_prefix}-root-g1"

    def issuer_label(self, kind: CertKind, generation: int) -> str:
        return f"{self.label_prefix}-{kind.slug}-g{generation}"

    def snapshot_label(self) -> str:
        return f"{self.label_prefix}-snapshot"

    def verifier_token_label(self) -> str:
        return f"{self.label_prefix}-verifier-token"


class AuthorityError(Exception):
    pass


class Authority:
    """Looks up CA generations (registry) and their keys (HSM)."""

    def __init__(self, token: hsm.Hsm, registry: Registry) -> None:
        self._hsm = token
        self._registry = registry

    def _records(self) -> list[IssuerRecord]:
        with self._registry.read() as tx:
            return tx.issuers()

    def root(self) -> IssuerRecord:
        for record in self._records():
            if record.kind is None:
                return record
        raise AuthorityError("no root CA: run the key ceremony first")

    def issuers(self) -> list[IssuerRecord]:
        """Every issuing-CA generation, oldest first within a kind."""
        records = [r for r in self._records() if r.kind is not None]
        return sorted(records, key=lambda r: (r.kind or 0, r.certificate.not_valid_before_utc))

    def active_issuer(self, kind: CertKind) -> IssuerRecord:
        for record in self.issuers():
            if record.kind is kind and record.active:
                return record
        raise AuthorityError(f"no active issuing CA for {kind.name}")

    def issuer(self, key_id: bytes) -> IssuerRecord | None:
        for record in self._records():
            if record.key_id == key_id:
                return record
        return None

    def key(self, record: IssuerRecord) -> CertificateIssuerPrivateKeyTypes:
        return self._hsm.key(record.key_label)

    def _signer(self, name: str) -> tuple[str, x509.Certificate]:
        with self._registry.read() as tx:
            found = signer_meta(tx).get(name)
        if found is None:
            raise AuthorityError(f"no {name.replace('_', ' ')}: run the key ceremony first")
        return found

    def snapshot_signer(self) -> tuple[CertificateIssuerPrivateKeyTypes, x509.Certificate]:
        label, cert = self._signer(SNAPSHOT_SIGNER)
        return self._hsm.key(label), cert

    def verifier_token_signer(self) -> tuple[CertificateIssuerPrivateKeyTypes, x509.Certificate]:
        """The key and certificate that sign verifier tokens."""
        label, cert = self._signer(VERIFIER_TOKEN_SIGNER)
        return self._hsm.key(label), cert


def signer_meta(tx: RegistryTxn) -> dict[str, tuple[str, x509.Certificate]]:
    """The root-certified signer keys in the registry: meta name -> (key label, certificate)."""
    out = {}
    for name in (SNAPSHOT_SIGNER, VERIFIER_TOKEN_SIGNER):
        raw = tx.meta(name)
        if raw is not None:
            data = json.loads(raw)
            cert = x509.load_der_x509_certificate(base64.b64decode(data["certificate"]))
            out[name] = (data["label"], cert)
    return out


def put_signer_meta(tx: RegistryTxn, name: str, label: str, cert: x509.Certificate) -> None:
    """Record a root-certified signer key (snapshot, verifier token) in the registry."""
    der = base64.b64encode(cert.public_bytes(Encoding.DER)).decode()
    tx.set_meta(name, json.dumps({"label": label, "certificate": der}).encode())
