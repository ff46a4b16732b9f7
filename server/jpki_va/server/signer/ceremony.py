"""The key ceremony: one declarative config in, the authority's keys and certificates out.

A ceremony config (TOML) names, for the root, the four issuing CAs, the snapshot key
and the verifier-token key: the HSM key label and type, the subject, the validity
and the certificate profile. Running it creates what is missing and nothing else, so
a second run changes nothing. Every key it is about to certify first makes a test
signature; every certificate is linted twice, once as a throwaway "lint certificate"
signed by a software key, then as the real one signed in the HSM, before it is written
to the registry. A JSON ceremony record lists what was created, with fingerprints.

The ceremony is an offline operator action on the HSM and the signer's registry.
LMDB serialises writers across processes, so it is safe beside a running signer,
which reads the issuers from the registry on every use.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificateIssuerPublicKeyTypes,
)
from cryptography.hazmat.primitives.serialization import Encoding

from jpki_va import hsm
from jpki_va.core.clock import Clock
from jpki_va.core.domain import CertKind
from jpki_va.server.base.private_files import open_private_text, private_dir
from jpki_va.server.base.progress import Progress
from jpki_va.server.model.registry_values import IssuerRecord
from jpki_va.server.pki import cert_profile
from jpki_va.server.pki.cert_profile import CertProfile, ProfileSettings
from jpki_va.server.pki.lint import lint_certificate
from jpki_va.server.registry.transactions import Registry
from jpki_va.server.signer.authority import (
    SNAPSHOT_SIGNER,
    VERIFIER_TOKEN_SIGNER,
    AuthoritySettings,
    put_signer_meta,
    signer_meta,
)

log = logging.getLogger(__name__)

#: How far back certificates are dated, so a verifier with a slow clock accepts them.
BACKDATE = timedelta(minutes=5)
RECORDS_DIR = "ceremonies"


class CeremonyError(Exception):
    """The ceremony config is invalid, or the token/registry contradict it."""


@dataclass(frozen=True)
class KeySpec:
    """One key of the ceremony and the certificate that certifies it."""

    label: str
    key_type: hsm.KeyType
    subject: x509.Name
    validity: timedelta
    profile: CertProfile


@dataclass(frozen=True)
class CeremonyConfig:
    root: KeySpec
    issuers: Mapping[CertKind, KeySpec]
    snapshot: KeySpec
    verifier_token: KeySpec
    data_dir: Path | None = None  # the signer's data dir (registry inside); CLI may override
    # Where the responders publish the root certificate and its ARL: the signer's
    # --base-url. The issuing CA certificates name both (CRLDP, AIA caIssuers).
    base_url: str = ProfileSettings.base_url

    def __post_init__(self) -> None:
        if set(self.issuers) != set(CertKind):
            missing = sorted(k.slug for k in set(CertKind) - set(self.issuers))
            raise CeremonyError(f"issuers missing from the ceremony: {', '.join(missing)}")
        wanted = {
            "root": (self.root, CertProfile.ROOT_CA),
            "snapshot": (self.snapshot, CertProfile.SNAPSHOT_SIGNER),
            "verifier_token": (self.verifier_token, CertProfile.VERIFIER_TOKEN_SIGNER),
        }
        for kind, spec in self.issuers.items():
            wanted[f"issuers.{kind.slug}"] = (spec, CertProfile.ISSUING_CA)
        for where, (spec, profile) in wanted.items():
            if spec.profile is not profile:
                raise CeremonyError(f"{where}: profile must be {profile.value!r}")
            if spec.validity > self.root.validity:
                raise CeremonyError(f"{where}: validity is longer than the root's")
        labels = [spec.label for spec, _ in wanted.values()]
        if len(set(labels)) != len(labels):
            raise CeremonyError("every key of the ceremony needs its own label")

    @classmethod
    def default(cls, settings: AuthoritySettings | None = None) -> CeremonyConfig:
        """The embedded default's ceremony (the same as examples/ceremony.toml)."""
        s = settings or AuthoritySettings()
        return cls(
            root=KeySpec(
                s.root_label(),
                s.ca_key_type,
                cert_profile.root_name(),
                s.root_validity,
                CertProfile.ROOT_CA,
            ),
            issuers={
                kind: KeySpec(
                    s.issuer_label(kind, 1),
                    s.ca_key_type,
                    cert_profile.issuer_name(kind),
                    s.issuer_validity,
                    CertProfile.ISSUING_CA,
                )
                for kind in CertKind
            },
            snapshot=KeySpec(
                s.snapshot_label(),
                s.snapshot_key_type,
                cert_profile.snapshot_signer_name(),
                s.issuer_validity,
                CertProfile.SNAPSHOT_SIGNER,
            ),
            verifier_token=KeySpec(
                s.verifier_token_label(),
                s.snapshot_key_type,
                cert_profile.verifier_token_signer_name(),
                s.issuer_validity,
                CertProfile.VERIFIER_TOKEN_SIGNER,
            ),
        )

    @classmethod
    def from_toml(cls, path: Path) -> CeremonyConfig:
        try:
            with path.open("rb") as f:
                data = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise CeremonyError(f"cannot read ceremony config {path}: {exc}") from None
        return cls.from_mapping(data, base_dir=path.parent)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, base_dir: Path) -> CeremonyConfig:
        _only(data, {"ceremony", "root", "issuers", "snapshot", "verifier_token"}, "config")
        for section in ("root", "issuers", "snapshot", "verifier_token"):
            if section not in data:
                raise CeremonyError(f"config: [{section}] is missing")
        header = _table(data.get("ceremony", {}), "ceremony")
        _only(header, {"data_dir", "base_url"}, "[ceremony]")
        data_dir = None
        if "data_dir" in header:
            data_dir = base_dir / _text(header, "data_dir", "[ceremony]")
        base_url = ProfileSettings.base_url
        if "base_url" in header:
            base_url = _text(header, "base_url", "[ceremony]")
            try:
                ProfileSettings(base_url=base_url)
            except ValueError as exc:
                raise CeremonyError(f"[ceremony]: {exc}") from None
        issuers_table = _table(data["issuers"], "issuers")
        issuers: dict[CertKind, KeySpec] = {}
        for slug, table in issuers_table.items():
            try:
                kind = CertKind.from_slug(slug)
            except ValueError as exc:
                raise CeremonyError(f"[issuers.{slug}]: {exc}") from None
            issuers[kind] = _key_spec(table, f"issuers.{slug}")
        return cls(
            root=_key_spec(data["root"], "root"),
            issuers=issuers,
            snapshot=_key_spec(data["snapshot"], "snapshot"),
            verifier_token=_key_spec(data["verifier_token"], "verifier_token"),
            data_dir=data_dir,
            base_url=base_url,
        )


def _table(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise CeremonyError(f"[{where}] must be a table")
    return value


def _only(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(table) - allowed
    if unknown:
        raise CeremonyError(f"{where}: unknown settings {', '.join(sorted(unknown))}")


def _text(table: Mapping[str, Any], name: str, where: str) -> str:
    value = table.get(name)
    if not isinstance(value, str) or not value.strip():
        raise CeremonyError(f"{where}: {name} must be a non-empty string")
    return value


def _key_spec(value: Any, where: str) -> KeySpec:
    table = _table(value, where)
    section = f"[{where}]"
    _only(table, {"label", "key_type", "subject", "validity_days", "profile"}, section)
    try:
        key_type = hsm.KeyType(_text(table, "key_type", section))
    except ValueError:
        names = ", ".join(t.value for t in hsm.KeyType)
        raise CeremonyError(f"{section}: key_type must be one of {names}") from None
    try:
        subject = x509.Name.from_rfc4514_string(_text(table, "subject", section))
    except ValueError as exc:
        raise CeremonyError(f"{section}: subject is not an RFC 4514 name: {exc}") from None
    days = table.get("validity_days")
    if not isinstance(days, int) or isinstance(days, bool) or days <= 0:
        raise CeremonyError(f"{section}: validity_days must be a positive integer")
    try:
        profile = CertProfile(_text(table, "profile", section))
    except ValueError:
        raise CeremonyError(f"{section}: unknown profile {table.get('profile')!r}") from None
    label = _text(table, "label", section)
    if len(label.encode()) > 64:
        raise CeremonyError(f"{section}: label is longer than 64 bytes")
    return KeySpec(label, key_type, subject, timedelta(days=days), profile)


@dataclass(frozen=True)
class CreatedItem:
    """One key or certificate the ceremony (or a rotation) created."""

    role: str  # "root", "issuer", "snapshot", "verifier_token"
    kind: CertKind | None
    label: str
    key_type: hsm.KeyType
    key_created: bool
    certificate: x509.Certificate

    def describe(self) -> str:
        what = self.role if self.kind is None else f"{self.kind.name} {self.role}"
        key = "new key" if self.key_created else "existing key"
        return f"{what} ({self.label}, {key})"

    def to_json(self) -> dict[str, Any]:
        cert = self.certificate
        return {
            "role": self.role,
            "kind": None if self.kind is None else self.kind.name,
            "label": self.label,
            "key_type": self.key_type.value,
            "key_created": self.key_created,
            "key_id": cert_profile.key_id(cert.public_key()).hex(),
            "subject": cert.subject.rfc4514_string(),
            "issuer": cert.issuer.rfc4514_string(),
            "serial": f"{cert.serial_number:X}",
            "not_before": cert.not_valid_before_utc.isoformat(),
            "not_after": cert.not_valid_after_utc.isoformat(),
            "certificate_sha256": cert.fingerprint(hashes.SHA256()).hex(),
        }


@dataclass(frozen=True)
class CeremonyResult:
    created: list[CreatedItem]
    present: list[str] = field(default_factory=list)  # labels already in place
    record: Path | None = None


def test_signature(key: CertificateIssuerPrivateKeyTypes, label: str) -> None:
    """Sign a random challenge with a token key and verify it before the key is used."""
    challenge = secrets.token_bytes(32)
    public = key.public_key()
    try:
        if isinstance(key, rsa.RSAPrivateKey) and isinstance(public, rsa.RSAPublicKey):
            sig = key.sign(challenge, padding.PKCS1v15(), hashes.SHA256())
            public.verify(sig, challenge, padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(
            public, ec.EllipticCurvePublicKey
        ):
            sig = key.sign(challenge, ec.ECDSA(hashes.SHA256()))
            public.verify(sig, challenge, ec.ECDSA(hashes.SHA256()))
        else:
            raise CeremonyError(f"key {label!r} has an unsupported type")
    except InvalidSignature:
        raise CeremonyError(f"test signature with key {label!r} does not verify") from None


Builder = Callable[[CertificateIssuerPrivateKeyTypes], x509.Certificate]


def certify(
    build: Builder,
    issuer_key: CertificateIssuerPrivateKeyTypes,
    *,
    profile: CertProfile,
    subject_key: CertificateIssuerPrivateKeyTypes,
    issuer_cert: x509.Certificate | None,
) -> x509.Certificate:
    """Lint a throwaway certificate from `build`, then make and lint the real one.

    ``build`` makes the certificate with the signing key it is given: first a software
    key (so a profile mistake never costs an HSM signature under the real key), then
    ``issuer_key``. ``issuer_cert`` None means self-signed (the root).
    """
    throwaway = ec.generate_private_key(ec.SECP256R1())
    lint_public: CertificateIssuerPublicKeyTypes = throwaway.public_key()
    subject_public = subject_key.public_key()
    lint_certificate(
        build(throwaway),
        profile=profile,
        subject_public_key=lint_public if issuer_cert is None else subject_public,
        issuer_public_key=lint_public,
        issuer=issuer_cert,
    )
    cert = build(issuer_key)
    lint_certificate(
        cert,
        profile=profile,
        subject_public_key=subject_public,
        issuer_public_key=issuer_key.public_key(),
        issuer=issuer_cert,
    )
    return cert


def _token_key(token: hsm.Hsm, spec: KeySpec) -> tuple[hsm.HsmPrivateKey, bool]:
    try:
        key = token.key(spec.label)
    except hsm.KeyNotFound:
        key = token.generate_key(spec.label, spec.key_type)
        created = True
    else:
        created = False
        if key_type_of(key) is not spec.key_type:
            raise CeremonyError(
                f"key {spec.label!r} exists in the token but is not {spec.key_type.value}"
            )
    test_signature(key, spec.label)
    return key, created


def key_type_of(key: CertificateIssuerPrivateKeyTypes) -> hsm.KeyType | None:
    if isinstance(key, rsa.RSAPrivateKey):
        return {2048: hsm.KeyType.RSA_2048, 3072: hsm.KeyType.RSA_3072}.get(key.key_size)
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return hsm.KeyType.EC_P256
    return None


def write_record(
    directory: Path, what: str, now: datetime, token: hsm.Hsm, items: list[CreatedItem]
) -> Path:
    """The ceremony record: a JSON file per run, never overwritten."""
    private_dir(directory)
    info = token.token_info()
    record = {
        "type": what,
        "time": now.isoformat(),
        "token": {"label": info.label, "serial": info.serial},
        "created": [item.to_json() for item in items],
    }
    stamp = now.strftime("%Y%m%dT%H%M%S.%fZ")
    path = directory / f"{stamp}-{what}.json"
    with open_private_text(path, exclusive=True) as f:
        json.dump(record, f, indent=2, ensure_ascii=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    return path


def read_records(directory: Path) -> dict[str, Path]:
    """Key label -> the ceremony record that created or certified it (latest wins)."""
    found: dict[str, Path] = {}
    if not directory.is_dir():
        return found
    for path in sorted(directory.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            labels = [item["label"] for item in data["created"]]
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("ignoring unreadable ceremony record %s", path)
            continue
        for label in labels:
            found[label] = path
    return found


def run_ceremony(
    token: hsm.Hsm,
    registry: Registry,
    clock: Clock,
    config: CeremonyConfig,
    *,
    record_dir: Path | None,
) -> CeremonyResult:
    """Create whatever the config names and the registry lacks; idempotent.

    A part is in place when the registry has it: the root, any generation of an
    issuing CA's kind (later generations come from rotation), the snapshot and
    verifier-token signers. Keys are found by label, so a key left by an interrupted
    run is certified rather than generated twice.
    """
    now = clock.now()
    not_before = now - BACKDATE
    created: list[CreatedItem] = []
    present: list[str] = []
    with registry.read() as tx:
        records = tx.issuers()
        signers_present = signer_meta(tx)
    # The root, each issuing CA, the two signers: keys made in the HSM take a while.
    steps = Progress("key ceremony", 3 + len(config.issuers))

    root = next((r for r in records if r.kind is None), None)
    if root is None:
        spec = config.root
        key, key_created = _token_key(token, spec)

        def build_root(signing_key: CertificateIssuerPrivateKeyTypes) -> x509.Certificate:
            return cert_profile.root_certificate(
                signing_key,
                not_before,
                now + spec.validity,
                subject=spec.subject,
                settings=ProfileSettings(base_url=config.base_url),
            )

        cert = certify(build_root, key, profile=spec.profile, subject_key=key, issuer_cert=None)
        root = IssuerRecord(
            kind=None,
            key_id=cert_profile.key_id(key.public_key()),
            key_label=spec.label,
            certificate_der=cert.public_bytes(Encoding.DER),
            active=True,
        )
        with registry.write() as wtx:
            wtx.put_issuer(root)
        created.append(CreatedItem("root", None, spec.label, spec.key_type, key_created, cert))
    else:
        present.append(root.key_label)
    steps.advance()
    root_key = token.key(root.key_label)
    root_cert = root.certificate
    links = cert_profile.root_links(ProfileSettings(base_url=config.base_url), root.key_id)

    for kind, spec in sorted(config.issuers.items()):
        existing = [r for r in records if r.kind is kind]
        steps.advance()
        if existing:
            present.extend(r.key_label for r in existing)
            continue
        key, key_created = _token_key(token, spec)
        cert = certify(
            issuing_ca_builder(
                root_cert, kind, key, not_before, now + spec.validity, spec.subject, links
            ),
            root_key,
            profile=spec.profile,
            subject_key=key,
            issuer_cert=root_cert,
        )
        record = IssuerRecord(
            kind,
            cert_profile.key_id(key.public_key()),
            spec.label,
            cert.public_bytes(Encoding.DER),
            True,
        )
        with registry.write() as wtx:
            wtx.put_issuer(record)
        created.append(CreatedItem("issuer", kind, spec.label, spec.key_type, key_created, cert))

    signers = (
        ("snapshot", SNAPSHOT_SIGNER, config.snapshot, cert_profile.snapshot_signer_certificate),
        (
            "verifier_token",
            VERIFIER_TOKEN_SIGNER,
            config.verifier_token,
            cert_profile.verifier_token_signer_certificate,
        ),
    )
    for role, meta_name, spec, make in signers:
        steps.advance()
        if meta_name in signers_present:
            present.append(signers_present[meta_name][0])
            continue
        key, key_created = _token_key(token, spec)

        def build_signer(
            signing_key: CertificateIssuerPrivateKeyTypes,
            make: Any = make,
            spec: KeySpec = spec,
            key: hsm.HsmPrivateKey = key,
        ) -> x509.Certificate:
            cert: x509.Certificate = make(
                signing_key,
                root_cert,
                key.public_key(),
                not_before,
                now + spec.validity,
                subject=spec.subject,
            )
            return cert

        cert = certify(
            build_signer, root_key, profile=spec.profile, subject_key=key, issuer_cert=root_cert
        )
        with registry.write() as wtx:
            put_signer_meta(wtx, meta_name, spec.label, cert)
        created.append(CreatedItem(role, None, spec.label, spec.key_type, key_created, cert))

    steps.finish()
    return _result(token, now, created, present, record_dir)


def _result(
    token: hsm.Hsm,
    now: datetime,
    created: list[CreatedItem],
    present: list[str],
    record_dir: Path | None,
) -> CeremonyResult:
    """Log what was made, and keep the ceremony record when anything was."""
    for item in created:
        log.info("ceremony created %s", item.describe())
    record_path = None
    if created and record_dir is not None:
        record_path = write_record(record_dir, "ceremony", now, token, created)
    return CeremonyResult(created, present, record_path)


def issuing_ca_builder(
    root_cert: x509.Certificate,
    kind: CertKind,
    key: CertificateIssuerPrivateKeyTypes,
    not_before: datetime,
    not_after: datetime,
    subject: x509.Name,
    links: Sequence[x509.ExtensionType],
) -> Builder:
    public_key = key.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise CeremonyError("issuing CA keys must be RSA or EC")

    def build(signing_key: CertificateIssuerPrivateKeyTypes) -> x509.Certificate:
        return cert_profile.issuing_ca_certificate(
            signing_key,
            root_cert,
            kind,
            public_key,
            not_before,
            not_after,
            subject=subject,
            links=links,
        )

    return build


def bootstrap(
    token: hsm.Hsm,
    registry: Registry,
    clock: Clock,
    settings: AuthoritySettings | None = None,
    *,
    record_dir: Path | None = None,
    base_url: str = ProfileSettings.base_url,
) -> list[str]:
    """The embedded default: run the default ceremony; returns what was created."""
    config = replace(CeremonyConfig.default(settings), base_url=base_url)
    result = run_ceremony(token, registry, clock, config, record_dir=record_dir)
    return [item.describe() for item in result.created]
