"""Issuer rotation: a new generation of an issuing CA, same name, new key.

As JPKI's issuers do, generation N+1 of a kind keeps the distinguished name and gets
a new key (label ``<prefix>-gN+1``) and a new certificate from the root. It becomes
the active generation, so new certificates are signed with it; the old generation
stays in the registry, inactive, and keeps signing the CRLs of what it issued. Every
party tells generations apart by key identifier, never by name.

Like the ceremony, this is an offline operator action on the HSM and the registry;
the running signer sees the new active generation on its next issuance.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding

from jpki_va import hsm
from jpki_va.core.clock import Clock
from jpki_va.core.domain import CertKind
from jpki_va.server.model.registry_values import IssuerRecord
from jpki_va.server.pki import cert_profile
from jpki_va.server.pki.cert_profile import CertProfile
from jpki_va.server.registry.transactions import Registry
from jpki_va.server.signer.ceremony import (
    BACKDATE,
    CeremonyError,
    CreatedItem,
    certify,
    issuing_ca_builder,
    key_type_of,
    test_signature,
    write_record,
)

log = logging.getLogger(__name__)

_GENERATION = re.compile(r"^(?P<prefix>.+)-g(?P<n>\d+)$")


class RotationError(CeremonyError):
    """The rotation cannot be made (no active generation, label taken, ...)."""


@dataclass(frozen=True)
class Rotation:
    kind: CertKind
    old: IssuerRecord
    new: IssuerRecord
    created: CreatedItem
    record: Path | None


def next_label(label: str, generation: int) -> str:
    """``jpki-va-card-sign-g1`` -> ``jpki-va-card-sign-g<generation>``."""
    match = _GENERATION.match(label)
    prefix = match.group("prefix") if match else label
    return f"{prefix}-g{generation}"


def _generation(label: str) -> int:
    match = _GENERATION.match(label)
    return int(match.group("n")) if match else 1


def rotate_issuer(
    token: hsm.Hsm,
    registry: Registry,
    clock: Clock,
    kind: CertKind,
    *,
    validity: timedelta | None = None,
    record_dir: Path | None = None,
) -> Rotation:
    """Create and activate the next generation of ``kind``'s issuing CA.

    ``validity`` defaults to the lifetime of the current generation's certificate;
    the new certificate never outlives the root.
    """
    now = clock.now()
    with registry.read() as tx:
        records = tx.issuers()
    root = next((r for r in records if r.kind is None), None)
    if root is None:
        raise RotationError("no root CA: run the key ceremony first")
    generations = [r for r in records if r.kind is kind]
    current = next((r for r in generations if r.active), None)
    if current is None:
        raise RotationError(f"no active {kind.name} issuing CA to rotate")
    number = max(_generation(r.key_label) for r in generations) + 1
    label = next_label(current.key_label, number)
    if any(r.key_label == label for r in records):
        raise RotationError(f"label {label!r} is already used by a CA generation")
    old_cert = current.certificate
    lifetime = validity or (old_cert.not_valid_after_utc - old_cert.not_valid_before_utc)
    if lifetime <= timedelta(0):
        raise RotationError("validity must be positive")

    old_key = token.key(current.key_label)
    key_type = key_type_of(old_key) or hsm.KeyType.RSA_2048
    try:
        key = token.key(label)  # left by an interrupted rotation: certify it
        key_created = False
        if key_type_of(key) is not key_type:
            raise RotationError(f"key {label!r} exists but is not {key_type.value}")
    except hsm.KeyNotFound:
        key = token.generate_key(label, key_type)
        key_created = True
    test_signature(key, label)
    root_key = token.key(root.key_label)
    root_cert = root.certificate
    cert = certify(
        issuing_ca_builder(
            root_cert,
            kind,
            key,
            now - BACKDATE,
            now + lifetime,
            old_cert.subject,
            # The root's ARL and certificate stay where they were.
            cert_profile.links_of(old_cert),
        ),
        root_key,
        profile=CertProfile.ISSUING_CA,
        subject_key=key,
        issuer_cert=root_cert,
    )
    new = IssuerRecord(
        kind, cert_profile.key_id(key.public_key()), label, cert.public_bytes(Encoding.DER), True
    )
    with registry.write() as wtx:
        # Both in one transaction: there is exactly one active generation at any time.
        latest = {r.key_id: r for r in wtx.issuers()}
        if not latest.get(current.key_id, current).active:
            raise RotationError(f"{kind.name} was rotated concurrently; run again")
        wtx.put_issuer(replace(current, active=False))
        wtx.put_issuer(new)
    item = CreatedItem("issuer", kind, label, key_type, key_created, cert)
    path = None
    if record_dir is not None:
        path = write_record(record_dir, "rotation", now, token, [item])
    log.info(
        "rotated %s: %s (%s) -> %s (%s)",
        kind.name,
        current.key_label,
        current.key_id.hex()[:16],
        label,
        new.key_id.hex()[:16],
    )
    return Rotation(kind, current, new, item, path)
