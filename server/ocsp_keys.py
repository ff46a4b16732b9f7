"""The responder's delegated OCSP-signer key and certificates, kept in its state dir.

The key is the responder's own (never the HSM's): an EC P-256 key written once with
mode 0600. The signer certifies it per issuer generation; the certificates are
written atomically, and every worker reloads them when the file changes.
"""

from __future__ import annotations

import os
import threading
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import NameOID

from server.ocsp import DelegatedSigner
from server.profiles import key_id

KEY_FILE = "ocsp-key.pem"
CERTS_FILE = "ocsp-certs.pem"


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


class OcspKeyStore:
    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._dir = directory
        self._lock = threading.Lock()
        self._loaded_mtime: int | None = None
        self._current: DelegatedSigner | None = None

    @property
    def key_path(self) -> Path:
        return self._dir / KEY_FILE

    @property
    def certs_path(self) -> Path:
        return self._dir / CERTS_FILE

    def key(self) -> CertificateIssuerPrivateKeyTypes:
        """The responder's key, created on first use."""
        if not self.key_path.exists():
            new = ec.generate_private_key(ec.SECP256R1())
            pem = new.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            _write_atomic(self.key_path, pem, 0o600)
        loaded = serialization.load_pem_private_key(self.key_path.read_bytes(), None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{self.key_path} is not an EC key")
        return loaded

    def csr(self, common_name: str = "JPKI-VA OCSP Responder") -> bytes:
        key = self.key()
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        request = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .sign(key, hashes.SHA256())
        )
        return request.public_bytes(serialization.Encoding.DER)

    def store_certificates(self, certs: list[x509.Certificate]) -> None:
        pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
        _write_atomic(self.certs_path, pem, 0o644)

    def certificates(self) -> list[x509.Certificate]:
        try:
            return x509.load_pem_x509_certificates(self.certs_path.read_bytes())
        except (FileNotFoundError, ValueError):
            return []

    def needs_renewal(self, issuer_key_ids: set[bytes], now: datetime) -> bool:
        """True when an issuer has no certificate, or one is past half its life."""
        have: dict[bytes, x509.Certificate] = {}
        for cert in self.certificates():
            aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
            if aki.key_identifier is not None:
                have[aki.key_identifier] = cert
        for kid in issuer_key_ids:
            held = have.get(kid)
            if held is None:
                return True
            life: timedelta = held.not_valid_after_utc - held.not_valid_before_utc
            if now >= held.not_valid_before_utc + life / 2:
                return True
        return False

    def current(self) -> DelegatedSigner | None:
        """The signer to use now, reloaded when the certificates file changes."""
        try:
            mtime = self.certs_path.stat().st_mtime_ns
        except FileNotFoundError:
            return None
        if mtime == self._loaded_mtime:
            return self._current
        with self._lock:
            if mtime != self._loaded_mtime:
                key = self.key()
                own = key_id(key.public_key())
                certs: dict[bytes, x509.Certificate] = {}
                for cert in self.certificates():
                    if key_id(cert.public_key()) != own:
                        continue  # certified for another key: never use it with ours
                    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
                    kid = aki.value.key_identifier
                    if kid is not None:
                        certs[kid] = cert
                self._current = DelegatedSigner(key=key, certificates=certs)
                self._loaded_mtime = mtime
        return self._current
