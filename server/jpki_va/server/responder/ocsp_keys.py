"""The responder's delegated OCSP-signer keys and certificates, kept in its state dir.

The keys are the responder's own (never the HSM's): EC P-256, one file each under
``keys/`` named by key id, mode 0600. The signer certifies the current key once per
issuer generation; those certificates live in one file, replaced atomically, and
every worker reloads it when its mtime changes.

Rotation overlaps: a new key is written first, then certified, and only then does
the certificates file switch to it in one rename. A worker answers with the old key
and its still-valid certificates until it sees the new file, so no request is
dropped; the old key file stays one more rotation for workers that are mid-reload.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from jpki_va.server.base.private_files import open_private, private_dir
from jpki_va.server.pki.cert_profile import key_id
from jpki_va.server.responder.ocsp import DelegatedSigner
from jpki_va.server.responder.renew_policy import RenewPolicy

log = logging.getLogger(__name__)

KEYS_DIR = "keys"
CERTS_FILE = "ocsp-certs.pem"


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    with open_private(tmp) as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def _issuer_key_id(cert: x509.Certificate) -> bytes | None:
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except x509.ExtensionNotFound:
        return None
    return aki.key_identifier


class OcspKeyStore:
    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self._keys = directory / KEYS_DIR
        self._certs_file = directory / CERTS_FILE
        private_dir(self._keys)
        self._lock = threading.Lock()
        self._loaded_mtime: int | None = None
        self._current: DelegatedSigner | None = None

    @property
    def certs_path(self) -> Path:
        return self._dir / CERTS_FILE

    def _key_path(self, kid: bytes) -> Path:
        return self._keys / f"{kid.hex()}.pem"

    def new_key(self) -> ec.EllipticCurvePrivateKey:
        """A fresh responder key, written (0600) before anything certifies it."""
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _write_atomic(self._key_path(key_id(key.public_key())), pem)
        return key

    def load_key(self, kid: bytes) -> ec.EllipticCurvePrivateKey | None:
        try:
            data = self._key_path(kid).read_bytes()
        except FileNotFoundError:
            return None
        key = serialization.load_pem_private_key(data, None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{self._key_path(kid)} is not an EC key")
        return key

    @staticmethod
    def csr(key: ec.EllipticCurvePrivateKey, common_name: str = "JPKI-VA OCSP Responder") -> bytes:
        request = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .sign(key, hashes.SHA256())
        )
        return request.public_bytes(serialization.Encoding.DER)

    def store_certificates(self, certs: list[x509.Certificate]) -> None:
        """Make ``certs`` current; all must certify one key this store holds."""
        kids = {key_id(c.public_key()) for c in certs}
        if len(kids) != 1:
            raise ValueError("delegated certificates must all certify one responder key")
        if self.load_key(next(iter(kids))) is None:
            raise ValueError("delegated certificates certify a key this responder lacks")
        pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
        _write_atomic(self.certs_path, pem)

    def certificates(self) -> list[x509.Certificate]:
        try:
            return x509.load_pem_x509_certificates(self.certs_path.read_bytes())
        except (FileNotFoundError, ValueError):
            return []

    def needs_renewal(
        self,
        issuer_key_ids: set[bytes],
        now: datetime,
        policy: RenewPolicy | None = None,
        *,
        must_cover: datetime | None = None,
    ) -> bool:
        """True when an issuer has no certificate, or one is due under ``policy``, or
        one would expire before ``must_cover`` (the latest nextUpdate we answer with)."""
        policy = policy or RenewPolicy()
        have: dict[bytes, x509.Certificate] = {}
        for cert in self.certificates():
            kid = _issuer_key_id(cert)
            if kid is not None:
                have[kid] = cert
        for kid in issuer_key_ids:
            held = have.get(kid)
            if held is None or policy.due(held, now):
                return True
            if must_cover is not None and held.not_valid_after_utc < must_cover:
                return True
        return False

    def rotate(self, certify: Callable[[bytes], list[x509.Certificate]]) -> DelegatedSigner:
        """New key, certified through ``certify(csr_der)``, then switched to in one rename."""
        previous = {key_id(c.public_key()) for c in self.certificates()}
        key = self.new_key()
        own = key_id(key.public_key())
        certs = [c for c in certify(self.csr(key)) if key_id(c.public_key()) == own]
        if not certs:
            self._key_path(own).unlink(missing_ok=True)
            raise ValueError("the signer returned no certificate for the new responder key")
        self.store_certificates(certs)
        self._prune(keep={own, *previous})
        log.info("OCSP responder key rotated to %s (%d certificates)", own.hex()[:16], len(certs))
        signer = self.current()
        assert signer is not None
        return signer

    def _prune(self, keep: set[bytes]) -> None:
        for path in self._keys.glob("*.pem"):
            try:
                kid = bytes.fromhex(path.stem)
            except ValueError:
                continue
            if kid not in keep:
                path.unlink(missing_ok=True)

    def current(self) -> DelegatedSigner | None:
        """The key and certificates to sign with now, reloaded when the file changes."""
        try:
            # Built once: this runs for every signed answer.
            mtime = self._certs_file.stat().st_mtime_ns
        except FileNotFoundError:
            return None
        if mtime == self._loaded_mtime:
            return self._current
        with self._lock:
            if mtime != self._loaded_mtime:
                self._current = self._load()
                self._loaded_mtime = mtime
        return self._current

    def latest(self) -> DelegatedSigner | None:
        """What `current` last returned, without looking at the file: for a caller that
        signs per request while another thread calls `current` often (the worker's
        housekeeping loop, every 0.2 s), so a rotation is seen within that period."""
        return self._current

    def _load(self) -> DelegatedSigner | None:
        certs = self.certificates()
        if not certs:
            return None
        # One key at a time: the one the newest certificate certifies.
        newest = max(certs, key=lambda c: c.not_valid_before_utc)
        own = key_id(newest.public_key())
        key = self.load_key(own)
        if key is None:
            log.error("no responder key %s for the delegated certificates", own.hex()[:16])
            return None
        by_issuer: dict[bytes, x509.Certificate] = {}
        for cert in certs:
            kid = _issuer_key_id(cert)
            if kid is not None and key_id(cert.public_key()) == own:
                by_issuer[kid] = cert
        return DelegatedSigner(key=key, certificates=by_issuer)
