"""``cryptography`` private-key objects whose signing happens inside the token.

cryptography's X.509/CRL/OCSP/CSR builders accept any subclass of its private-key
ABCs and call ``sign()`` on it, so these classes are all that is needed to sign
through PKCS#11.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NoReturn, TypeAlias

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa, utils
from cryptography.hazmat.primitives.asymmetric import padding as rsa_padding
from cryptography.hazmat.primitives.asymmetric.padding import AsymmetricPadding
from pkcs11 import MGF, Mechanism

from jpki_va.hsm._errors import KeyExportRefused, UnsupportedAlgorithm

if TYPE_CHECKING:
    from jpki_va.hsm._token import Hsm

# DER DigestInfo headers (RFC 8017 §9.2 note 1) for CKM_RSA_PKCS over a prehashed digest.
_DIGEST_INFO_PREFIX: dict[str, bytes] = {
    "sha256": bytes.fromhex("3031300d060960864801650304020105000420"),
    "sha384": bytes.fromhex("3041300d060960864801650304020205000430"),
    "sha512": bytes.fromhex("3051300d060960864801650304020305000440"),
}
_RSA_PKCS_MECH = {
    "sha256": "SHA256_RSA_PKCS",
    "sha384": "SHA384_RSA_PKCS",
    "sha512": "SHA512_RSA_PKCS",
}
_RSA_PSS_MECH = {
    "sha256": "SHA256_RSA_PKCS_PSS",
    "sha384": "SHA384_RSA_PKCS_PSS",
    "sha512": "SHA512_RSA_PKCS_PSS",
}
_PSS_HASH_AND_MGF = {
    "sha256": (Mechanism.SHA256, MGF.SHA256),
    "sha384": (Mechanism.SHA384, MGF.SHA384),
    "sha512": (Mechanism.SHA512, MGF.SHA512),
}
_EC_HASHES = ("sha256", "sha384", "sha512")


def _refuse_export(label: str) -> NoReturn:
    raise KeyExportRefused(f"private key {label!r} is non-extractable and stays in the HSM")


def _unwrap_hash(
    algorithm: utils.Prehashed | hashes.HashAlgorithm, allowed: tuple[str, ...] | dict[str, str]
) -> tuple[hashes.HashAlgorithm, bool]:
    prehashed = isinstance(algorithm, utils.Prehashed)
    alg = algorithm._algorithm if isinstance(algorithm, utils.Prehashed) else algorithm
    if alg.name not in allowed:
        raise UnsupportedAlgorithm(f"hash {alg.name} is not supported")
    return alg, prehashed


def _check_digest(alg: hashes.HashAlgorithm, digest: bytes) -> None:
    if len(digest) != alg.digest_size:
        raise ValueError(f"prehashed data must be {alg.digest_size} bytes for {alg.name}")


def _digest(alg: hashes.HashAlgorithm, data: bytes) -> bytes:
    h = hashes.Hash(alg)
    h.update(data)
    return h.finalize()


class HsmRsaPrivateKey(rsa.RSAPrivateKey):
    """RSA private key living in the token; only ``sign`` is possible."""

    def __init__(self, hsm: Hsm, label: str, public_key: rsa.RSAPublicKey) -> None:
        self.hsm = hsm
        self.label = label
        self._public_key = public_key

    def __repr__(self) -> str:
        return f"<HsmRsaPrivateKey label={self.label!r} bits={self.key_size}>"

    def sign(
        self,
        data: bytes | bytearray | memoryview,
        padding: AsymmetricPadding,
        algorithm: utils.Prehashed | hashes.HashAlgorithm | utils.NoDigestInfo,
    ) -> bytes:
        data = bytes(data)
        if isinstance(algorithm, utils.NoDigestInfo):
            if not isinstance(padding, rsa_padding.PKCS1v15):
                raise UnsupportedAlgorithm("NoDigestInfo needs PKCS1v15 padding")
            return self.hsm.sign(self.label, "RSA_PKCS", data)  # caller-built payload
        if isinstance(padding, rsa_padding.PKCS1v15):
            alg, prehashed = _unwrap_hash(algorithm, _RSA_PKCS_MECH)
            if prehashed:
                _check_digest(alg, data)
                # CKM_RSA_PKCS only pads: the DigestInfo must be built on the host.
                return self.hsm.sign(self.label, "RSA_PKCS", _DIGEST_INFO_PREFIX[alg.name] + data)
            return self.hsm.sign(self.label, _RSA_PKCS_MECH[alg.name], data)
        if isinstance(padding, rsa_padding.PSS):
            alg, prehashed = _unwrap_hash(algorithm, _RSA_PSS_MECH)
            mgf = padding._mgf
            if not isinstance(mgf, rsa_padding.MGF1) or mgf._algorithm.name != alg.name:
                raise UnsupportedAlgorithm("PSS needs MGF1 with the signature's hash")
            hash_mech, mgf_id = _PSS_HASH_AND_MGF[alg.name]
            param = (hash_mech, mgf_id, self._pss_salt_length(padding, alg))
            if prehashed:
                _check_digest(alg, data)
                return self.hsm.sign(self.label, "RSA_PKCS_PSS", data, mechanism_param=param)
            return self.hsm.sign(self.label, _RSA_PSS_MECH[alg.name], data, mechanism_param=param)
        raise UnsupportedAlgorithm(f"RSA padding {padding.name} is not supported")

    def _pss_salt_length(self, padding: rsa_padding.PSS, alg: hashes.HashAlgorithm) -> int:
        salt = padding._salt_length
        if isinstance(salt, int):
            return salt
        if salt is rsa_padding.PSS.DIGEST_LENGTH:
            return alg.digest_size
        if salt is rsa_padding.PSS.MAX_LENGTH:
            em_len = (self.key_size - 1 + 7) // 8
            return em_len - alg.digest_size - 2
        raise UnsupportedAlgorithm("PSS salt length AUTO is only valid for verification")

    def decrypt(self, ciphertext: bytes, padding: AsymmetricPadding) -> bytes:
        raise UnsupportedAlgorithm(f"key {self.label!r} is a signing-only key")

    @property
    def key_size(self) -> int:
        return self._public_key.key_size

    def public_key(self) -> rsa.RSAPublicKey:
        return self._public_key

    def private_numbers(self) -> rsa.RSAPrivateNumbers:
        _refuse_export(self.label)

    def private_bytes(
        self,
        encoding: serialization.Encoding,
        format: serialization.PrivateFormat,
        encryption_algorithm: serialization.KeySerializationEncryption,
    ) -> bytes:
        _refuse_export(self.label)

    def __copy__(self) -> HsmRsaPrivateKey:
        return self  # a handle to an immutable token object; copying adds nothing

    def __deepcopy__(self, memo: dict[int, object]) -> HsmRsaPrivateKey:
        return self


class HsmEcPrivateKey(ec.EllipticCurvePrivateKey):
    """EC private key living in the token; ECDSA over a host-computed digest."""

    def __init__(self, hsm: Hsm, label: str, public_key: ec.EllipticCurvePublicKey) -> None:
        self.hsm = hsm
        self.label = label
        self._public_key = public_key

    def __repr__(self) -> str:
        return f"<HsmEcPrivateKey label={self.label!r} curve={self.curve.name}>"

    def sign(
        self,
        data: bytes | bytearray | memoryview,
        signature_algorithm: ec.EllipticCurveSignatureAlgorithm,
    ) -> bytes:
        if not isinstance(signature_algorithm, ec.ECDSA):
            raise UnsupportedAlgorithm("only ECDSA is supported")
        if signature_algorithm.deterministic_signing:
            raise UnsupportedAlgorithm("deterministic (RFC 6979) ECDSA is not supported")
        alg, prehashed = _unwrap_hash(signature_algorithm.algorithm, _EC_HASHES)
        data = bytes(data)
        if prehashed:
            _check_digest(alg, data)
            digest = data
        else:
            # SoftHSM2 (and many HSMs) lack CKM_ECDSA_SHA256: hash here, sign with CKM_ECDSA.
            digest = _digest(alg, data)
        raw = self.hsm.sign(self.label, "ECDSA", digest)
        half = len(raw) // 2
        r = int.from_bytes(raw[:half], "big")
        s = int.from_bytes(raw[half:], "big")
        return utils.encode_dss_signature(r, s)

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
        raise UnsupportedAlgorithm(f"key {self.label!r} is a signing-only key")

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._public_key.curve

    @property
    def key_size(self) -> int:
        return self._public_key.key_size

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public_key

    def private_numbers(self) -> ec.EllipticCurvePrivateNumbers:
        _refuse_export(self.label)

    def private_bytes(
        self,
        encoding: serialization.Encoding,
        format: serialization.PrivateFormat,
        encryption_algorithm: serialization.KeySerializationEncryption,
    ) -> bytes:
        _refuse_export(self.label)

    def __copy__(self) -> HsmEcPrivateKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> HsmEcPrivateKey:
        return self


#: Either kind of token-resident private key.
HsmPrivateKey: TypeAlias = HsmRsaPrivateKey | HsmEcPrivateKey
