"""The certificate authority's keys and certificates, as the signer uses them.

Keys live in the HSM and are found by label; certificates and which generation is
active live in the registry. `bootstrap` creates a missing hierarchy (root, one
issuing CA per kind, the snapshot key): the embedded default's key ceremony.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import timedelta

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding

import hsm
from server import profiles
from server.clock import Clock
from server.domain import CertKind
from server.registry import IssuerRecord, Registry, RegistryTxn

_SNAPSHOT_SIGNER = "snapshot_signer"
_VERIFIER_TOKEN_SIGNER = "verifier_token_signer"  # noqa: S105 (a registry key)


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
        raise AuthorityError("no root CA: run the key ceremony (bootstrap) first")

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

    def snapshot_signer(self) -> tuple[CertificateIssuerPrivateKeyTypes, x509.Certificate]:
        return self._signer(_SNAPSHOT_SIGNER, "snapshot key")

    def verifier_token_signer(self) -> tuple[CertificateIssuerPrivateKeyTypes, x509.Certificate]:
        return self._signer(_VERIFIER_TOKEN_SIGNER, "verifier-token key")

    def _signer(
        self, meta: str, what: str
    ) -> tuple[CertificateIssuerPrivateKeyTypes, x509.Certificate]:
        with self._registry.read() as tx:
            raw = tx.meta(meta)
        if raw is None:
            raise AuthorityError(f"no {what}: run the key ceremony (bootstrap) first")
        data = json.loads(raw)
        cert = x509.load_der_x509_certificate(base64.b64decode(data["certificate"]))
        return self._hsm.key(data["label"]), cert


def _put_signer(tx: RegistryTxn, meta: str, label: str, cert: x509.Certificate) -> None:
    der = base64.b64encode(cert.public_bytes(Encoding.DER)).decode()
    tx.set_meta(meta, json.dumps({"label": label, "certificate": der}).encode())


def bootstrap(
    token: hsm.Hsm, registry: Registry, clock: Clock, settings: AuthoritySettings
) -> list[str]:
    """Create whatever part of the hierarchy is missing; returns what was created.

    Idempotent: keys are found by label and certificates by registry record, so a
    second run creates nothing.
    """
    created: list[str] = []
    now = clock.now()
    authority = Authority(token, registry)
    with registry.read() as tx:
        records = tx.issuers()
        snapshot_meta = tx.meta(_SNAPSHOT_SIGNER)
        token_meta = tx.meta(_VERIFIER_TOKEN_SIGNER)
    root = next((r for r in records if r.kind is None), None)
    if root is None:
        key = token.find_or_generate(settings.root_label(), settings.ca_key_type)
        cert = profiles.root_certificate(
            key, now - timedelta(minutes=5), now + settings.root_validity
        )
        root = IssuerRecord(
            kind=None,
            key_id=profiles.key_id(key.public_key()),
            key_label=settings.root_label(),
            certificate_der=cert.public_bytes(Encoding.DER),
            active=True,
        )
        with registry.write() as wtx:
            wtx.put_issuer(root)
        created.append(f"root CA ({settings.root_label()})")
    root_key = authority.key(root)
    root_cert = root.certificate
    for kind in CertKind:
        if any(r.kind is kind for r in records):
            continue
        label = settings.issuer_label(kind, 1)
        key = token.find_or_generate(label, settings.ca_key_type)
        cert = profiles.issuing_ca_certificate(
            root_key,
            root_cert,
            kind,
            key.public_key(),
            now - timedelta(minutes=5),
            now + settings.issuer_validity,
        )
        record = IssuerRecord(
            kind, profiles.key_id(key.public_key()), label, cert.public_bytes(Encoding.DER), True
        )
        with registry.write() as wtx:
            wtx.put_issuer(record)
        created.append(f"{kind.name} issuing CA ({label})")
    if snapshot_meta is None:
        label = settings.snapshot_label()
        key = token.find_or_generate(label, settings.snapshot_key_type)
        cert = profiles.snapshot_signer_certificate(
            root_key,
            root_cert,
            key.public_key(),
            now - timedelta(minutes=5),
            now + settings.issuer_validity,
        )
        with registry.write() as wtx:
            _put_signer(wtx, _SNAPSHOT_SIGNER, label, cert)
        created.append(f"snapshot signer ({label})")
    if token_meta is None:
        label = settings.verifier_token_label()
        key = token.find_or_generate(label, settings.snapshot_key_type)
        cert = profiles.verifier_token_signer_certificate(
            root_key,
            root_cert,
            key.public_key(),
            now - timedelta(minutes=5),
            now + settings.issuer_validity,
        )
        with registry.write() as wtx:
            _put_signer(wtx, _VERIFIER_TOKEN_SIGNER, label, cert)
        created.append(f"verifier-token signer ({label})")
    return created
