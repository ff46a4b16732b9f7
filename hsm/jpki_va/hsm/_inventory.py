"""What a PKCS#11 module offers: its slots, tokens and the mechanisms jpki-va needs.

Read without logging in (``jpki-va hsm info``), so an operator can check a module and
its tokens before any PIN is involved.
"""

from __future__ import annotations

from dataclasses import dataclass

from pkcs11 import Mechanism, TokenFlag
from pkcs11 import exceptions as p11e

from jpki_va.hsm import _cfuncs, _library
from jpki_va.hsm._errors import HsmError

#: Mechanisms the project signs with: CAs and CRLs (SHA256_RSA_PKCS), prehashed RSA
#: (RSA_PKCS) and every EC key (ECDSA over a host-computed digest).
REQUIRED_MECHANISMS = ("RSA_PKCS", "SHA256_RSA_PKCS", "ECDSA")


@dataclass(frozen=True)
class Memory:
    free: int | None  # bytes; None when the token does not report it
    total: int | None


@dataclass(frozen=True)
class TokenSummary:
    label: str
    serial: str
    manufacturer: str
    model: str
    initialized: bool
    user_pin_initialized: bool
    public_memory: Memory
    private_memory: Memory


@dataclass(frozen=True)
class SlotSummary:
    slot_id: int
    description: str
    token: TokenSummary | None
    mechanisms: dict[str, bool]  # REQUIRED_MECHANISMS -> supported


@dataclass(frozen=True)
class ModuleInfo:
    path: str
    description: str
    manufacturer: str
    library_version: str
    cryptoki_version: str
    slots: list[SlotSummary]


def _memory(free: int, total: int) -> Memory:
    def known(value: int) -> int | None:
        return None if value == _cfuncs.UNAVAILABLE else value

    return Memory(known(free), known(total))


def module_info(module: str, softhsm2_conf: str | None = None) -> ModuleInfo:
    """Describe ``module``: every slot with a token, its memory and mechanism support."""
    lib = _library.acquire(module, softhsm2_conf)
    try:
        key = _library.module_key(module)
        slots = []
        for slot in lib.get_slots(token_present=True):
            try:
                token = slot.get_token()
            except p11e.TokenNotPresent:
                continue
            flags = token.flags
            pub_free, pub_total, priv_free, priv_total = _cfuncs.token_memory(key, slot.slot_id)
            supported = {m.name for m in slot.get_mechanisms() if isinstance(m, Mechanism)}
            slots.append(
                SlotSummary(
                    slot_id=slot.slot_id,
                    description=slot.slot_description.strip(),
                    token=TokenSummary(
                        label=token.label,
                        serial=token.serial.decode("ascii", "replace").strip(),
                        manufacturer=token.manufacturer_id.strip(),
                        model=token.model.strip(),
                        initialized=bool(flags & TokenFlag.TOKEN_INITIALIZED),
                        user_pin_initialized=bool(flags & TokenFlag.USER_PIN_INITIALIZED),
                        public_memory=_memory(pub_free, pub_total),
                        private_memory=_memory(priv_free, priv_total),
                    ),
                    mechanisms={m: m in supported for m in REQUIRED_MECHANISMS},
                )
            )
        major, minor = lib.library_version
        c_major, c_minor = lib.cryptoki_version
        return ModuleInfo(
            path=key,
            description=lib.library_description.strip(),
            manufacturer=lib.manufacturer_id.strip(),
            library_version=f"{major}.{minor}",
            cryptoki_version=f"{c_major}.{c_minor}",
            slots=slots,
        )
    except p11e.PKCS11Error as exc:
        raise HsmError(f"cannot read PKCS#11 module {module}: {type(exc).__name__}") from exc
    finally:
        _library.release(module)
