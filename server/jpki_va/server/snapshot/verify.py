"""Snapshots: the only thing the signer and the responder share (DESIGN §3).

A snapshot is a directory written under a temporary name and renamed into place,
never changed after. `manifest.json` lists every other file with its SHA-256 and
says what the snapshot is; `manifest.sig` is the snapshot key's signature over the
manifest's bytes; `signer.pem` is that key's certificate, issued by the root.

A full snapshot (`type: full`) holds everything in retention; a delta (`type:
delta`, `base_sequence` = its full snapshot, `previous_sequence` = the snapshot it
follows) holds what changed since `previous_sequence`, with the delta CRLs signed
since it. A delta CRL is cumulative since the base full CRL of its partition (RFC
5280 §5.2.4) and stays its partition's current one until a later delta brings another.

Files:

* `issuers.pem`: every issuing-CA generation; `records.bin`: issued certificates
  (snapshot.record_format; in a delta, those issued since the previous snapshot).
* `crls/<kind>/<key id>/<partition>.crl` (full) or `.delta.crl` (delta), signed by
  the generation; none for a compromised generation, whose key is not used again. A
  full snapshot also holds each scope's empty `.delta.crl`, with the full CRL's number
  (RFC 5280 §5.2.3): a delta a verifier can fetch before any loss has changed it.
* `arl.crl` (full snapshots): the root's authority revocation list.
* `announcement.p7m` (every snapshot with compromises): the public announcement of
  them (第15条第3項), JSON in a CMS SignedData by the snapshot key (pki/announcement.py).
* `verifiers.json` (full and delta snapshots): the whole verifier registry.
* `events.bin` (snapshot.data_files): loss events in registry order, the header line
  `JPKIVA-EVENTS/1` and then 93-byte little-endian rows: sequence (u64), record key
  (21 B), partition (u32, the municipality code), issuer key id (20 B), loss time and
  `recorded_at` (i64 microseconds since the epoch, UTC; `recorded_at` is the registry
  commit time), cause (u8 LossCause), reason (u8 CRLReason), then for a cascaded loss
  the card certificate's record key (21 B) and cause (u8), all zero otherwise.
  Sequences strictly increase.
* JSON lines (UTF-8, one object per line; serials are upper-case hex):
  - `signing_records.jsonl`: `{"kind", "serial", "name", "address", "birth_date",
    "sex"}` of signing certificates whose holder consented to at least one verifier
    (never the resident code).
  - `consents.jsonl`: `{"kind", "serial", "verifier", "granted"}`; in a full
    snapshot every line grants; in a delta `granted: false` withdraws.
* `links.bin` (snapshot.data_files): the correspondences, fixed-width rows (from key, to
  key, LinkType, direction) strictly increasing; each link twice, once from each end.
  A link's `a` is the card certificate, or the old one for a renewal.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from jpki_va.core.clock import Clock
from jpki_va.core.domain import CertKind, Verifier
from jpki_va.core.oids import ARC, ENV_ARC, OID_SNAPSHOT_SIGNING
from jpki_va.server.pki.cert_profile import key_id
from jpki_va.server.snapshot.manifest import (
    ANNOUNCEMENT,
    ARL,
    ISSUERS,
    MANIFEST,
    SIGNATURE,
    SIGNER_CERT,
    VERIFIERS,
    CrlInfo,
    Manifest,
    SnapshotRejected,
    _sha256_file,
    snapshot_sequence,
)

log = logging.getLogger(__name__)


def _verify(cert: x509.Certificate, signature: bytes, data: bytes) -> None:
    public = cert.public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):
        public.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    elif isinstance(public, rsa.RSAPublicKey):
        public.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
    else:
        raise InvalidSignature(f"unsupported snapshot key {type(public).__name__}")


@dataclass(frozen=True)
class VerifiedCrl:
    info: CrlInfo
    crl: x509.CertificateRevocationList


@dataclass(frozen=True)
class VerifiedSnapshot:
    path: Path
    manifest: Manifest
    issuers: list[x509.Certificate]  # in manifest.issuer_key_ids order
    crls: list[VerifiedCrl]
    # A full snapshot's empty delta CRLs (Manifest.empty_deltas) and the root's ARL.
    empty_deltas: list[VerifiedCrl] = field(default_factory=list)
    arl: x509.CertificateRevocationList | None = None

    @property
    def sequence(self) -> int:
        return self.manifest.sequence

    def verifiers(self) -> list[Verifier]:
        """The verifier registry it carries; none in a snapshot without the file."""
        if VERIFIERS not in self.manifest.files:
            return []
        raw = (self.path / VERIFIERS).read_bytes()
        if hashlib.sha256(raw).hexdigest() != self.manifest.files[VERIFIERS]:
            raise SnapshotRejected(f"{VERIFIERS} changed after verification")
        try:
            return [Verifier.from_json(v) for v in json.loads(raw)]
        except (KeyError, TypeError, ValueError) as exc:
            raise SnapshotRejected(f"malformed {VERIFIERS}: {exc!r}") from exc


def _delta_scope(info: CrlInfo) -> tuple[CertKind, bytes, str, int]:
    """What an empty delta shares with the full CRL it is on: scope and number."""
    return info.kind, info.issuer_key_id, info.partition, info.number


class SnapshotVerifier:
    """Checks a snapshot against the trust anchors before anything is ingested.

    The manifest must be signed by a snapshot-signer certificate issued by a trust
    anchor; every file must match its hash and no unlisted file may be present;
    every issuer must be issued by a trust anchor; every CRL must be signed by the
    issuer generation its authority key identifier names.
    """

    def __init__(self, trust_anchors: list[x509.Certificate], clock: Clock) -> None:
        if not trust_anchors:
            raise ValueError("at least one trust anchor is needed")
        self._anchors = trust_anchors
        self._clock = clock

    def _anchor_for(self, cert: x509.Certificate) -> x509.Certificate:
        for anchor in self._anchors:
            try:
                cert.verify_directly_issued_by(anchor)
            except (ValueError, TypeError, InvalidSignature):
                continue
            return anchor
        raise SnapshotRejected(f"{cert.subject.rfc4514_string()} is not issued by a trust anchor")

    def verify(self, path: Path) -> VerifiedSnapshot:
        try:
            raw = (path / MANIFEST).read_bytes()
            signature = (path / SIGNATURE).read_bytes()
            signer = x509.load_pem_x509_certificate((path / SIGNER_CERT).read_bytes())
        except (OSError, ValueError) as exc:
            raise SnapshotRejected(f"{path.name}: unreadable manifest or signer: {exc}") from exc
        self._check_signer(signer)
        try:
            _verify(signer, signature, raw)
        except InvalidSignature:
            raise SnapshotRejected(f"{path.name}: manifest signature does not verify") from None
        manifest = Manifest.from_bytes(raw)
        if snapshot_sequence(path) not in (None, manifest.sequence):
            raise SnapshotRejected(f"{path.name}: directory name and manifest sequence differ")
        if manifest.oid_arc != ARC:
            # Its loss causes sit under an OID this process does not read.
            raise SnapshotRejected(
                f"{path.name}: made under OID arc {manifest.oid_arc or '(none)'}, "
                f"this process uses {ARC} ({ENV_ARC})"
            )
        self._check_files(path, manifest)
        issuers = self._check_issuers(path, manifest)
        by_key_id = {key_id(c.public_key()): c for c in issuers}
        crls = [self._check_crl(path, info, by_key_id) for info in manifest.crls]
        # A set, not a scan of the CRLs per delta: a full snapshot has ~6,800 of each.
        full = {_delta_scope(vc.info) for vc in crls}
        empty_deltas = [
            self._check_empty_delta(path, i, by_key_id, full) for i in manifest.empty_deltas
        ]
        arl = self._check_arl(path, manifest)
        self._check_compromises(path, manifest, by_key_id, arl)
        return VerifiedSnapshot(
            path=path,
            manifest=manifest,
            issuers=issuers,
            crls=crls,
            empty_deltas=empty_deltas,
            arl=arl,
        )

    def _check_empty_delta(
        self,
        path: Path,
        info: CrlInfo,
        issuers: dict[bytes, x509.Certificate],
        full: set[tuple[CertKind, bytes, str, int]],
    ) -> VerifiedCrl:
        """An empty delta on a full CRL of this snapshot (`full`: their `_delta_scope`),
        under that CRL's number."""
        verified = self._check_crl(path, info, issuers)
        on_full = _delta_scope(info) in full
        if info.delta_base != info.number or not on_full or len(verified.crl) != 0:
            raise SnapshotRejected(f"{info.file}: not an empty delta on a full CRL of the snapshot")
        return verified

    def _check_arl(self, path: Path, manifest: Manifest) -> x509.CertificateRevocationList | None:
        """The root's ARL, signed by a trust anchor and as the manifest describes it."""
        if manifest.arl is None:
            return None
        if ARL not in manifest.files:
            raise SnapshotRejected(f"{path.name}: the manifest describes an ARL it lacks")
        try:
            arl = x509.load_der_x509_crl((path / ARL).read_bytes())
        except (OSError, ValueError) as exc:
            raise SnapshotRejected(f"{path.name}: unreadable ARL: {exc}") from exc
        anchor = next(
            (
                a
                for a in self._anchors
                if a.subject == arl.issuer and arl.is_signature_valid(a.public_key())  # type: ignore[arg-type]
            ),
            None,
        )
        if anchor is None:
            raise SnapshotRejected(f"{path.name}: the ARL is not signed by a trust anchor")
        number = arl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        if number != manifest.arl.number or arl.last_update_utc != manifest.arl.this_update:
            raise SnapshotRejected(f"{path.name}: ARL number or time differs from the manifest")
        return arl

    def _check_compromises(
        self,
        path: Path,
        manifest: Manifest,
        issuers: dict[bytes, x509.Certificate],
        arl: x509.CertificateRevocationList | None,
    ) -> None:
        """Every announced compromise must be on the root's ARL: the root vouches for it."""
        if not manifest.compromises:
            return
        if ANNOUNCEMENT not in manifest.files:
            raise SnapshotRejected(f"{path.name}: compromises without their public announcement")
        if manifest.type == "delta":
            return  # the ARL is in its full snapshot
        if arl is None:
            raise SnapshotRejected(f"{path.name}: compromises announced without an ARL")
        for compromise in manifest.compromises:
            cert = issuers.get(compromise.key_id)
            if cert is None:
                raise SnapshotRejected(f"compromised issuer {compromise.key_id.hex()} not listed")
            entry = arl.get_revoked_certificate_by_serial_number(cert.serial_number)
            if entry is None or entry.revocation_date_utc != compromise.time:
                raise SnapshotRejected(
                    f"{path.name}: compromise of {compromise.key_id.hex()} is not on the ARL"
                )

    def _check_signer(self, signer: x509.Certificate) -> None:
        self._anchor_for(signer)
        try:
            eku = signer.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            raise SnapshotRejected("snapshot signer certificate has no EKU") from None
        if OID_SNAPSHOT_SIGNING not in eku:
            # Also what a snapshot made under another private OID arc looks like.
            raise SnapshotRejected(
                "snapshot signer certificate is not for snapshot signing "
                f"(EKU {OID_SNAPSHOT_SIGNING.dotted_string}, OID arc {ARC} from {ENV_ARC})"
            )
        now = self._clock.now()
        if not signer.not_valid_before_utc <= now <= signer.not_valid_after_utc:
            raise SnapshotRejected("snapshot signer certificate is not valid now")

    def _check_files(self, path: Path, manifest: Manifest) -> None:
        present = {
            p.relative_to(path).as_posix()
            for p in path.rglob("*")
            if p.is_file() and p.name not in (MANIFEST, SIGNATURE, SIGNER_CERT)
        }
        listed = set(manifest.files)
        if present != listed:
            extra = sorted(present - listed)
            missing = sorted(listed - present)
            raise SnapshotRejected(
                f"{path.name}: files differ from manifest (unlisted {extra}, missing {missing})"
            )
        for rel, expected in manifest.files.items():
            if ".." in Path(rel).parts:
                raise SnapshotRejected(f"{path.name}: path {rel!r} escapes the snapshot")
            if _sha256_file(path / rel) != expected:
                raise SnapshotRejected(f"{path.name}: {rel} does not match its SHA-256")

    def _check_issuers(self, path: Path, manifest: Manifest) -> list[x509.Certificate]:
        try:
            certs = x509.load_pem_x509_certificates((path / ISSUERS).read_bytes())
        except (OSError, ValueError) as exc:
            raise SnapshotRejected(f"{path.name}: unreadable issuers: {exc}") from exc
        by_key_id = {key_id(c.public_key()): c for c in certs}
        ordered = []
        for kid in manifest.issuer_key_ids:
            cert = by_key_id.get(kid)
            if cert is None:
                raise SnapshotRejected(f"{path.name}: issuer {kid.hex()} missing from issuers")
            self._anchor_for(cert)
            ordered.append(cert)
        return ordered

    def _check_crl(
        self, path: Path, info: CrlInfo, issuers: dict[bytes, x509.Certificate]
    ) -> VerifiedCrl:
        try:
            crl = x509.load_der_x509_crl((path / info.file).read_bytes())
        except (OSError, ValueError) as exc:
            raise SnapshotRejected(f"{path.name}: unreadable CRL {info.file}: {exc}") from exc
        issuer = issuers.get(info.issuer_key_id)
        if issuer is None:
            raise SnapshotRejected(f"{info.file}: issuer {info.issuer_key_id.hex()} not listed")
        try:
            aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
            number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        except x509.ExtensionNotFound as exc:
            raise SnapshotRejected(f"{info.file}: missing CRL extension: {exc}") from exc
        if aki.key_identifier != info.issuer_key_id or crl.issuer != issuer.subject:
            raise SnapshotRejected(f"{info.file}: CRL issuer does not match the manifest")
        if not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
            raise SnapshotRejected(f"{info.file}: CRL signature does not verify")
        if (
            number != info.number
            or crl.last_update_utc != info.this_update
            or crl.next_update_utc != info.next_update
        ):
            raise SnapshotRejected(f"{info.file}: CRL number or times differ from the manifest")
        try:
            delta_base: int | None = crl.extensions.get_extension_for_class(
                x509.DeltaCRLIndicator
            ).value.crl_number
        except x509.ExtensionNotFound:
            delta_base = None
        if delta_base != info.delta_base:
            raise SnapshotRejected(f"{info.file}: delta CRL indicator differs from the manifest")
        return VerifiedCrl(info=info, crl=crl)
