"""The :class:`Hsm`: one shared, logged-in PKCS#11 session per token and process."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self, TypeVar, overload

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pkcs11 import Attribute, Mechanism, MechanismFlag, ObjectClass, Session
from pkcs11 import KeyType as P11KeyType
from pkcs11 import exceptions as p11e
from pkcs11.types import Object, SignMixin, Token

from jpki_va.hsm import _cfuncs, _library
from jpki_va.hsm._config import HsmConfig, KeyType
from jpki_va.hsm._errors import (
    HsmConfigError,
    HsmError,
    KeyExists,
    KeyNotFound,
    LoginFailed,
    SigningFailed,
    TokenNotFound,
    TokenUnavailable,
    UnsupportedAlgorithm,
)
from jpki_va.hsm._keys import HsmEcPrivateKey, HsmPrivateKey, HsmRsaPrivateKey
from jpki_va.hsm._observer import HsmObserver, NullObserver

if TYPE_CHECKING:
    from pkcs11._pkcs11 import lib as Pkcs11Lib

log = logging.getLogger(__name__)

T = TypeVar("T")

# DER of the namedCurve OIDs as stored in CKA_EC_PARAMS.
_EC_PARAMS_P256 = bytes.fromhex("06082a8648ce3d030107")
_EC_PARAMS_P384 = bytes.fromhex("06052b81040022")
_CURVES: dict[bytes, ec.EllipticCurve] = {
    _EC_PARAMS_P256: ec.SECP256R1(),
    _EC_PARAMS_P384: ec.SECP384R1(),
}
_RSA_BITS = {KeyType.RSA_2048: 2048, KeyType.RSA_3072: 3072}
_RSA_EXPONENT = b"\x01\x00\x01"  # 65537

# Errors meaning the session/login/library is gone: rebuild it and retry once.
_RECONNECT_ERRORS: tuple[type[p11e.PKCS11Error], ...] = (
    p11e.SessionHandleInvalid,
    p11e.SessionClosed,
    p11e.UserNotLoggedIn,
    p11e.DeviceRemoved,
    p11e.DeviceError,
    p11e.TokenNotPresent,
    p11e.TokenNotRecognised,
)
# Not CKR_GENERAL_ERROR: SoftHSM2 returns it for plain misuse (an RSA mechanism on an EC key).
# After these the old handle may still be ours and worth a C_Logout/C_CloseSession;
# for the others it is dead (or, after a re-initialise, possibly reused by another session).
_CLOSE_OLD_SESSION_ERRORS = (p11e.UserNotLoggedIn, p11e.DeviceError)
# The token itself went away: a module lists its slots and tokens in C_Initialize
# (SoftHSM2 reads its token store there), so only a re-initialise finds it again.
_TOKEN_GONE_ERRORS = (p11e.DeviceRemoved, p11e.TokenNotPresent, p11e.TokenNotRecognised)
# After a failed reconnect the next waits this long, doubling up to the cap: a token
# that is gone is not hammered, and callers meanwhile hear TokenUnavailable at once.
RECONNECT_BACKOFF = 0.25
RECONNECT_BACKOFF_MAX = 10.0
_LOGIN_ERRORS = (
    p11e.PinIncorrect,
    p11e.PinInvalid,
    p11e.PinLenRange,
    p11e.PinLocked,
    p11e.PinExpired,
    p11e.UserPinNotInitialized,
)


def _is_not_initialized(exc: BaseException) -> bool:
    # python-pkcs11 0.10 has no class for CKR_CRYPTOKI_NOT_INITIALIZED: it raises a bare
    # PKCS11Error("Initialisation error (not initialized)...").
    return type(exc) is p11e.PKCS11Error and "not initialized" in str(exc)


def _needs_reconnect(exc: BaseException) -> bool:
    return isinstance(exc, _RECONNECT_ERRORS) or _is_not_initialized(exc)


def ckr_name(exc: BaseException) -> str:
    """Stable, low-cardinality name of a PKCS#11 failure (for ``SigningFailed.ckr``)."""
    if _is_not_initialized(exc):
        return "CryptokiNotInitialized"
    return type(exc).__name__


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class KeyInfo:
    """Attributes of a private key as reported by the token."""

    label: str
    id: str  # CKA_ID, hex
    key_type: KeyType | None  # None: a key this layer does not generate
    size: int  # bits
    sensitive: bool
    extractable: bool
    private: bool
    always_sensitive: bool
    never_extractable: bool


@dataclass(frozen=True)
class TokenInfo:
    """Identity of the token behind an :class:`Hsm`."""

    label: str
    serial: str
    manufacturer: str
    model: str


class _Connection:
    """The single logged-in session to one token, shared by all Hsm objects of the process."""

    def __init__(
        self,
        key: tuple[str, str],
        config: HsmConfig,
        lib: Pkcs11Lib,
        token: Token,
        session: Session,
        pin: str,
    ) -> None:
        self.key = key
        self.module = config.module
        self.token_label = config.token_label
        self.lib = lib
        self.token = token
        self.session: Session | None = session
        self.lock = threading.Lock()  # serialises every multi-step operation on the session
        self.refs = 1
        self.handles: dict[str, SignMixin] = {}  # label -> handle; cleared on reconnect
        # Reconnect state (under `lock`): why the token is unusable, when to try again.
        self.unavailable: str | None = None
        self.retry_at = 0.0  # time.monotonic()
        self.backoff = 0.0
        # Keyed digest, not the PIN: only used to check later Hsm objects use the same PIN.
        self._salt = secrets.token_bytes(32)
        self._pin_mac = self._mac(pin)

    def _mac(self, pin: str) -> bytes:
        return hmac.new(self._salt, pin.encode("utf-8"), hashlib.sha256).digest()

    def pin_matches(self, pin: str) -> bool:
        return hmac.compare_digest(self._mac(pin), self._pin_mac)


_registry_lock = threading.Lock()
_connections: dict[tuple[str, str], _Connection] = {}


def _find_token(lib: Pkcs11Lib, label: str) -> Token:
    try:
        return lib.get_token(token_label=label)
    except p11e.NoSuchToken:
        raise TokenNotFound(f"no token labelled {label!r}; {_labels(lib)}") from None
    except p11e.MultipleTokensReturned:
        raise HsmConfigError(f"several tokens are labelled {label!r}") from None


def _labels(lib: Pkcs11Lib) -> str:
    """The labels the module does have, so a typo is seen at once."""
    try:
        labels = sorted(repr(token.label) for token in lib.get_tokens() if token.label)
    except p11e.PKCS11Error:
        return "the module could not list its tokens"
    return f"the tokens are {', '.join(labels)}" if labels else "the module has no token"


def _login(token: Token, pin: str, *, reconnecting: bool) -> Session:
    try:
        return token.open(rw=True, user_pin=pin)
    except p11e.UserAlreadyLoggedIn:
        # Login state is per process, not per session (PKCS#11 §6.6).
        if reconnecting:
            return token.open(rw=True)
        raise LoginFailed(
            f"token {token.label!r} is already logged in by other code in this process; "
            "cannot verify the PIN"
        ) from None
    except _LOGIN_ERRORS as exc:
        raise LoginFailed(f"token {token.label!r} refused the login: {ckr_name(exc)}") from None


def _connect(config: HsmConfig) -> _Connection:
    key = (_library.module_key(config.module), config.token_label)
    pin = config.pin.read()
    with _registry_lock:
        conn = _connections.get(key)
        if conn is not None:
            # Many HSMs allow one login per process: join it, but only with the same PIN.
            if not conn.pin_matches(pin):
                raise LoginFailed(
                    f"PIN from {config.pin.describe()} differs from the PIN this process "
                    f"logged in to token {config.token_label!r} with"
                )
            conn.refs += 1
            return conn
        lib = _library.acquire(config.module, config.softhsm2_conf)
        try:
            token = _find_token(lib, config.token_label)
            session = _login(token, pin, reconnecting=False)
        except p11e.PKCS11Error as exc:
            _library.release(config.module)
            raise HsmError(f"cannot open a session: {ckr_name(exc)}") from exc
        except BaseException:
            _library.release(config.module)
            raise
        conn = _Connection(key, config, lib, token, session, pin)
        _connections[key] = conn
        return conn


def _search(module: str, session: Session, attrs: dict[Attribute, Any]) -> list[Object]:
    # python-pkcs11's stubs omit Session.handle, which the Cython class does expose.
    _cfuncs.check_session(module, session.handle)  # type: ignore[attr-defined]
    return list(session.get_objects(attrs))


def _find_one(
    module: str, session: Session, cls: ObjectClass, label: str, key_id: bytes | None = None
) -> Object | None:
    attrs: dict[Attribute, Any] = {Attribute.CLASS: cls, Attribute.LABEL: label}
    if key_id is not None:
        attrs[Attribute.ID] = key_id
    found = _search(module, session, attrs)
    if len(found) > 1:
        raise HsmError(f"{len(found)} {cls.name} objects are labelled {label!r}")
    return found[0] if found else None


def _unwrap_ec_point(value: bytes) -> bytes:
    # CKA_EC_POINT is a DER OCTET STRING around the X9.62 point (some modules give it raw).
    if len(value) >= 2 and value[0] == 0x04:
        if value[1] < 0x80 and len(value) == 2 + value[1]:
            return value[2:]
        if value[1] == 0x81 and len(value) >= 3 and len(value) == 3 + value[2]:
            return value[3:]
    return value


def _key_type_of(key: HsmPrivateKey) -> KeyType | None:
    if isinstance(key, HsmRsaPrivateKey):
        return {2048: KeyType.RSA_2048, 3072: KeyType.RSA_3072}.get(key.key_size)
    return KeyType.EC_P256 if isinstance(key.curve, ec.SECP256R1) else None


def _check_label(label: str) -> None:
    if not isinstance(label, str) or not label:
        raise ValueError("key label must be a non-empty string")


class Hsm:
    """Signing keys on a PKCS#11 token.

    All Hsm objects for the same module and token label in a process share one
    read-write session logged in as user, guarded by one lock.
    """

    def __init__(
        self,
        config: HsmConfig,
        *,
        clock: Callable[[], datetime] | None = None,
        observer: HsmObserver | None = None,
    ) -> None:
        self.config = config
        self._clock = clock or _utcnow
        self._observer: HsmObserver = observer or NullObserver()
        #: Number of times this object rebuilt the session after a session/token failure.
        self.reconnects = 0
        self.last_reconnect_at: datetime | None = None
        self._closed = False
        self._conn = _connect(config)
        self.opened_at = self._clock()

    @classmethod
    def open(
        cls,
        config: HsmConfig,
        *,
        clock: Callable[[], datetime] | None = None,
        observer: HsmObserver | None = None,
    ) -> Self:
        """Connect and log in (same as the constructor)."""
        return cls(config, clock=clock, observer=observer)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Hsm token={self.config.token_label!r} module={self.config.module!r} {state}>"

    # -- lifecycle -----------------------------------------------------------------------

    def close(self) -> None:
        """Release this object; the shared session is logged out when its last user closes."""
        if self._closed:
            return
        self._closed = True
        conn = self._conn
        with _registry_lock:
            conn.refs -= 1
            if conn.refs > 0:
                return
            del _connections[conn.key]
            with conn.lock:
                session, conn.session = conn.session, None
                conn.handles.clear()
                if session is not None:
                    try:
                        session.close()
                    except p11e.PKCS11Error as exc:
                        log.debug("closing PKCS#11 session failed: %s", ckr_name(exc))
            _library.release(conn.module)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def _session(self) -> Session | None:
        return self._conn.session

    @property
    def _mk(self) -> str:
        return self._conn.key[0]  # canonical module path

    @property
    def _lib(self) -> Pkcs11Lib:
        return self._conn.lib

    # -- plumbing ------------------------------------------------------------------------

    def _run(self, op: Callable[[Session], T]) -> T:
        """Run ``op`` on the shared session under the lock; reconnect and retry once."""
        if self._closed:
            raise HsmError("this Hsm is closed")
        conn = self._conn
        with conn.lock:
            if conn.session is None:  # an earlier reconnect failed
                self._reconnect_locked(None, reinitialize=True)
            assert conn.session is not None
            try:
                return op(conn.session)
            except p11e.PKCS11Error as exc:
                if not _needs_reconnect(exc):
                    raise
                reason = ckr_name(exc)
                reinitialize = _is_not_initialized(exc) or isinstance(exc, _TOKEN_GONE_ERRORS)
                close_old = isinstance(exc, _CLOSE_OLD_SESSION_ERRORS)
            except KeyNotFound:
                # A key may vanish with its token (the token store moved away, the
                # device pulled) while the session still answers "no such object".
                trouble = self._token_trouble_locked()
                if trouble is None:
                    raise  # the token is fine: the key really is not there
                reason, reinitialize, close_old = trouble, True, False
            self._observer.failed("session", reason)
            self._reconnect_locked(reason, reinitialize=reinitialize, close_old=close_old)
            assert conn.session is not None
            return op(conn.session)

    def _call(self, what: str, op: Callable[[Session], T]) -> T:
        try:
            return self._run(op)
        except p11e.PKCS11Error as exc:
            raise HsmError(f"{what} failed: {ckr_name(exc)}") from exc

    def _token_trouble_locked(self) -> str | None:
        """Why the token is unusable (a CKR name), or None if the module still lists it."""
        try:
            _find_token(self._conn.lib, self._conn.token_label)
        except TokenNotFound:
            return "TokenNotPresent"
        except p11e.PKCS11Error as exc:
            return ckr_name(exc)
        return None

    def _reconnect_locked(
        self, reason: str | None, *, reinitialize: bool = False, close_old: bool = False
    ) -> None:
        """A new logged-in session; TokenUnavailable (at once while backing off) if none."""
        conn = self._conn
        now = time.monotonic()
        if now < conn.retry_at:
            raise TokenUnavailable(
                f"HSM unavailable: token {conn.token_label!r}: {conn.unavailable}; "
                f"next attempt in {conn.retry_at - now:.1f}s"
            )
        if conn.unavailable is None:
            log.warning("PKCS#11 token %r unusable (%s); reconnecting", conn.token_label, reason)
        old, conn.session = conn.session, None
        conn.handles.clear()
        if old is not None and close_old:
            with contextlib.suppress(p11e.PKCS11Error):  # best effort: being replaced anyway
                old.close()
        try:
            _library.ensure_initialized(conn.lib, conn.module, force=reinitialize)
            token = _find_token(conn.lib, conn.token_label)
            conn.session = _login(token, self.config.pin.read(), reconnecting=True)
            conn.token = token
        except (p11e.PKCS11Error, TokenNotFound) as exc:
            why = ckr_name(exc) if isinstance(exc, p11e.PKCS11Error) else "TokenNotPresent"
            self._observer.failed("reconnect", why)
            self._reconnect_failed_locked(why)
            raise TokenUnavailable(
                f"HSM unavailable: reconnecting to token {conn.token_label!r} failed: {why}; "
                f"next attempt in {conn.backoff:.1f}s"
            ) from exc
        if conn.unavailable is not None:
            log.warning("PKCS#11 token %r is usable again", conn.token_label)
        conn.unavailable, conn.retry_at, conn.backoff = None, 0.0, 0.0
        self.reconnects += 1
        self.last_reconnect_at = self._clock()
        self._observer.reconnected(conn.token_label)
        log.info("PKCS#11 token %r reconnected", conn.token_label)

    def _reconnect_failed_locked(self, why: str) -> None:
        conn = self._conn
        # Said once when the token becomes unusable, not at every attempt after it.
        if conn.unavailable is None:
            log.error(
                "PKCS#11 token %r unavailable: reconnecting failed (%s); retrying with backoff",
                conn.token_label,
                why,
            )
        conn.unavailable = f"reconnecting failed ({why})"
        conn.backoff = min(RECONNECT_BACKOFF_MAX, max(RECONNECT_BACKOFF, conn.backoff * 2))
        conn.retry_at = time.monotonic() + conn.backoff

    def _private_handle_locked(self, session: Session, label: str) -> SignMixin:
        handle = self._conn.handles.get(label)
        if handle is None:
            obj = _find_one(self._mk, session, ObjectClass.PRIVATE_KEY, label)
            if obj is None:
                raise KeyNotFound(f"no private key labelled {label!r}")
            if not isinstance(obj, SignMixin):
                raise UnsupportedAlgorithm(f"key {label!r} cannot sign")
            handle = self._conn.handles[label] = obj
        return handle

    def _load_key_locked(self, session: Session, label: str) -> HsmPrivateKey:
        priv = _find_one(self._mk, session, ObjectClass.PRIVATE_KEY, label)
        if priv is None:
            raise KeyNotFound(f"no private key labelled {label!r}")
        attrs = priv.get_attributes([Attribute.KEY_TYPE, Attribute.ID])
        pub = _find_one(self._mk, session, ObjectClass.PUBLIC_KEY, label, attrs[Attribute.ID])
        if attrs[Attribute.KEY_TYPE] == P11KeyType.RSA:
            # SoftHSM also keeps modulus/exponent on the private object: a fallback.
            src = pub if pub is not None else priv
            nums = src.get_attributes([Attribute.MODULUS, Attribute.PUBLIC_EXPONENT])
            rsa_public = rsa.RSAPublicNumbers(
                int.from_bytes(nums[Attribute.PUBLIC_EXPONENT], "big"),
                int.from_bytes(nums[Attribute.MODULUS], "big"),
            ).public_key()
            return HsmRsaPrivateKey(self, label, rsa_public)
        if attrs[Attribute.KEY_TYPE] == P11KeyType.EC:
            if pub is None:
                raise KeyNotFound(f"public key object for {label!r} is missing")
            ec_attrs = pub.get_attributes([Attribute.EC_PARAMS, Attribute.EC_POINT])
            curve = _CURVES.get(bytes(ec_attrs[Attribute.EC_PARAMS]))
            if curve is None:
                raise UnsupportedAlgorithm(f"key {label!r} uses an unsupported curve")
            point = _unwrap_ec_point(bytes(ec_attrs[Attribute.EC_POINT]))
            ec_public = ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
            return HsmEcPrivateKey(self, label, ec_public)
        raise UnsupportedAlgorithm(
            f"key {label!r} has unsupported type {attrs[Attribute.KEY_TYPE]}"
        )

    # -- public operations ---------------------------------------------------------------

    @overload
    def generate_key(
        self, label: str, key_type: Literal[KeyType.RSA_2048, KeyType.RSA_3072]
    ) -> HsmRsaPrivateKey: ...
    @overload
    def generate_key(self, label: str, key_type: Literal[KeyType.EC_P256]) -> HsmEcPrivateKey: ...
    @overload
    def generate_key(self, label: str, key_type: KeyType) -> HsmPrivateKey: ...
    def generate_key(self, label: str, key_type: KeyType) -> HsmPrivateKey:
        """Generate a non-extractable signing key pair inside the token."""
        _check_label(label)
        key_type = KeyType(key_type)

        def op(session: Session) -> HsmPrivateKey:
            if _find_one(self._mk, session, ObjectClass.PRIVATE_KEY, label) is not None:
                raise KeyExists(f"a private key labelled {label!r} already exists")
            key_id = secrets.token_bytes(16)
            public_template: dict[Attribute, Any] = {
                Attribute.TOKEN: True,
                Attribute.PRIVATE: False,
                Attribute.VERIFY: True,
                Attribute.ENCRYPT: False,
                Attribute.WRAP: False,
            }
            private_template: dict[Attribute, Any] = {
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                Attribute.SIGN: True,
                Attribute.DECRYPT: False,
                Attribute.UNWRAP: False,
                Attribute.DERIVE: False,
            }
            common: dict[str, Any] = {
                "id": key_id,
                "label": label,
                "store": True,
                "capabilities": MechanismFlag.SIGN | MechanismFlag.VERIFY,
                "private_template": private_template,
            }
            if key_type in _RSA_BITS:
                public_template[Attribute.PUBLIC_EXPONENT] = _RSA_EXPONENT
                session.generate_keypair(
                    P11KeyType.RSA, _RSA_BITS[key_type], public_template=public_template, **common
                )
            else:
                params = session.create_domain_parameters(
                    P11KeyType.EC, {Attribute.EC_PARAMS: _EC_PARAMS_P256}, local=True
                )
                params.generate_keypair(public_template=public_template, **common)
            self._conn.handles.pop(label, None)
            return self._load_key_locked(session, label)

        key = self._call(f"generating key {label!r}", op)
        log.info("generated %s key %r in token %r", key_type.value, label, self.config.token_label)
        return key

    def key(self, label: str) -> HsmPrivateKey:
        """The private key with this label (KeyNotFound if absent)."""
        _check_label(label)
        return self._call(
            f"loading key {label!r}", lambda session: self._load_key_locked(session, label)
        )

    @overload
    def find_or_generate(
        self, label: str, key_type: Literal[KeyType.RSA_2048, KeyType.RSA_3072]
    ) -> HsmRsaPrivateKey: ...
    @overload
    def find_or_generate(
        self, label: str, key_type: Literal[KeyType.EC_P256]
    ) -> HsmEcPrivateKey: ...
    @overload
    def find_or_generate(self, label: str, key_type: KeyType) -> HsmPrivateKey: ...
    def find_or_generate(self, label: str, key_type: KeyType) -> HsmPrivateKey:
        """Load the key, generating it first if absent; KeyExists if it has another type."""
        try:
            key = self.key(label)
        except KeyNotFound:
            try:
                return self.generate_key(label, key_type)
            except KeyExists:  # lost a race with another process
                key = self.key(label)
        if _key_type_of(key) is not KeyType(key_type):
            raise KeyExists(f"key {label!r} exists but is not {KeyType(key_type).value}")
        return key

    def list_keys(self) -> list[KeyInfo]:
        """All private keys on the token, sorted by label."""

        def op(session: Session) -> list[KeyInfo]:
            infos = []
            for obj in _search(self._mk, session, {Attribute.CLASS: ObjectClass.PRIVATE_KEY}):
                a = obj.get_attributes(
                    [
                        Attribute.LABEL,
                        Attribute.ID,
                        Attribute.KEY_TYPE,
                        Attribute.SENSITIVE,
                        Attribute.EXTRACTABLE,
                        Attribute.PRIVATE,
                        Attribute.ALWAYS_SENSITIVE,
                        Attribute.NEVER_EXTRACTABLE,
                    ]
                )
                size = 0
                key_type: KeyType | None = None
                if a[Attribute.KEY_TYPE] == P11KeyType.RSA:
                    size = int.from_bytes(obj[Attribute.MODULUS], "big").bit_length()
                    key_type = {2048: KeyType.RSA_2048, 3072: KeyType.RSA_3072}.get(size)
                elif a[Attribute.KEY_TYPE] == P11KeyType.EC:
                    curve = _CURVES.get(bytes(obj[Attribute.EC_PARAMS]))
                    size = curve.key_size if curve is not None else 0
                    key_type = KeyType.EC_P256 if isinstance(curve, ec.SECP256R1) else None
                infos.append(
                    KeyInfo(
                        label=a[Attribute.LABEL],
                        id=bytes(a[Attribute.ID]).hex(),
                        key_type=key_type,
                        size=size,
                        sensitive=bool(a[Attribute.SENSITIVE]),
                        extractable=bool(a[Attribute.EXTRACTABLE]),
                        private=bool(a[Attribute.PRIVATE]),
                        always_sensitive=bool(a[Attribute.ALWAYS_SENSITIVE]),
                        never_extractable=bool(a[Attribute.NEVER_EXTRACTABLE]),
                    )
                )
            return sorted(infos, key=lambda info: (info.label, info.id))

        return self._call("listing keys", op)

    def destroy_key(self, label: str) -> None:
        """Delete the private and public key objects with this label."""
        _check_label(label)

        def op(session: Session) -> None:
            objs = [
                obj
                for cls in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY)
                for obj in _search(
                    self._mk, session, {Attribute.CLASS: cls, Attribute.LABEL: label}
                )
            ]
            if not objs:
                raise KeyNotFound(f"no key labelled {label!r}")
            self._conn.handles.pop(label, None)
            for obj in objs:
                obj.destroy()

        self._call(f"destroying key {label!r}", op)
        log.info("destroyed key %r in token %r", label, self.config.token_label)

    def sign(
        self, label: str, mechanism_name: str, data: bytes, *, mechanism_param: Any = None
    ) -> bytes:
        """Sign ``data`` with the key ``label`` using CKM_<mechanism_name> (low level)."""
        try:
            mechanism = Mechanism[mechanism_name]
        except KeyError:
            raise UnsupportedAlgorithm(f"unknown PKCS#11 mechanism {mechanism_name!r}") from None

        def op(session: Session) -> bytes:
            key = self._private_handle_locked(session, label)
            try:
                return key.sign(data, mechanism=mechanism, mechanism_param=mechanism_param)
            except (p11e.KeyHandleInvalid, p11e.ObjectHandleInvalid):
                # Cached handle went stale (key replaced by another process): look up again.
                self._conn.handles.pop(label, None)
                key = self._private_handle_locked(session, label)
                return key.sign(data, mechanism=mechanism, mechanism_param=mechanism_param)

        started = time.perf_counter()
        try:
            signature = self._run(op)
        except p11e.MechanismInvalid as exc:
            self._observer.failed("sign", ckr_name(exc))
            raise UnsupportedAlgorithm(f"token does not support CKM_{mechanism_name}") from exc
        except p11e.PKCS11Error as exc:
            ckr = ckr_name(exc)
            self._observer.failed("sign", ckr)
            raise SigningFailed(f"signing with key {label!r} failed: {ckr}", ckr=ckr) from exc
        # Includes the wait for the shared session: what a caller of the signer feels.
        self._observer.signed(label, mechanism_name, time.perf_counter() - started)
        return signature

    def token_info(self) -> TokenInfo:
        """Label, serial, manufacturer and model of the token."""
        if self._closed:
            raise HsmError("this Hsm is closed")
        with self._conn.lock:
            token = self._conn.token
        return TokenInfo(
            label=token.label,
            serial=token.serial.decode("ascii", "replace").strip(),
            manufacturer=token.manufacturer_id.strip(),
            model=token.model.strip(),
        )

    def mechanisms(self) -> frozenset[str]:
        """Names of the mechanisms the token's slot supports (``"SHA256_RSA_PKCS"``, ...)."""

        def op(session: Session) -> frozenset[str]:
            mechs: set[Any] = set(self._conn.token.slot.get_mechanisms())
            return frozenset(
                m.name if isinstance(m, Mechanism) else f"0x{int(m):08x}" for m in mechs
            )

        return self._call("listing mechanisms", op)
