"""Direct calls into the PKCS#11 function list for the few things python-pkcs11 lacks.

python-pkcs11 0.10.1 wraps neither C_InitToken nor C_GetSessionInfo. We take them from
the module's own C_GetFunctionList; the module is already dlopen()ed by python-pkcs11,
so ctypes gets the same, already initialised library instance.
"""

from __future__ import annotations

import ctypes
import functools

from pkcs11 import exceptions as p11e

CK_ULONG = ctypes.c_ulong
_CKS_RO_USER_FUNCTIONS = 1
_CKS_RW_USER_FUNCTIONS = 3
# Index of each function in CK_FUNCTION_LIST (PKCS#11 v2.40 §5.2 order).
_IDX_GET_TOKEN_INFO = 6
_IDX_INIT_TOKEN = 9
_IDX_GET_SESSION_INFO = 15
_N_FUNCS = 16

_RV_ERRORS: dict[int, type[p11e.PKCS11Error]] = {
    0x05: p11e.GeneralError,
    0x30: p11e.DeviceError,
    0x32: p11e.DeviceRemoved,
    0xB0: p11e.SessionClosed,
    0xB3: p11e.SessionHandleInvalid,
    0xE0: p11e.TokenNotPresent,
}
_CKR_CRYPTOKI_NOT_INITIALIZED = 0x190


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_ubyte), ("minor", ctypes.c_ubyte)]


class _FunctionList(ctypes.Structure):
    _fields_ = [("version", _Version)] + [(f"f{i}", ctypes.c_void_p) for i in range(_N_FUNCS)]


class _SessionInfo(ctypes.Structure):
    _fields_ = [
        ("slot_id", CK_ULONG),
        ("state", CK_ULONG),
        ("flags", CK_ULONG),
        ("device_error", CK_ULONG),
    ]


class _TokenInfo(ctypes.Structure):
    _fields_ = [
        ("label", ctypes.c_char * 32),
        ("manufacturer_id", ctypes.c_char * 32),
        ("model", ctypes.c_char * 16),
        ("serial_number", ctypes.c_char * 16),
        ("flags", CK_ULONG),
        ("max_session_count", CK_ULONG),
        ("session_count", CK_ULONG),
        ("max_rw_session_count", CK_ULONG),
        ("rw_session_count", CK_ULONG),
        ("max_pin_len", CK_ULONG),
        ("min_pin_len", CK_ULONG),
        ("total_public_memory", CK_ULONG),
        ("free_public_memory", CK_ULONG),
        ("total_private_memory", CK_ULONG),
        ("free_private_memory", CK_ULONG),
        ("hardware_version", _Version),
        ("firmware_version", _Version),
        ("utc_time", ctypes.c_char * 16),
    ]


#: CK_UNAVAILABLE_INFORMATION: the token does not report this number.
UNAVAILABLE = ctypes.c_ulong(-1).value


def rv_error(rv: int) -> p11e.PKCS11Error:
    """The python-pkcs11 exception python-pkcs11 itself would raise for ``rv``."""
    if rv == _CKR_CRYPTOKI_NOT_INITIALIZED:
        # Same text as python-pkcs11, which has no dedicated class for this code.
        return p11e.PKCS11Error("Initialisation error (not initialized). Should never see this.")
    cls = _RV_ERRORS.get(rv)
    return cls() if cls is not None else p11e.PKCS11Error(f"CKR 0x{rv:08x}")


@functools.cache
def _function(module: str, index: int) -> int:
    dll = ctypes.CDLL(module)
    get_list = dll.C_GetFunctionList
    get_list.argtypes = [ctypes.POINTER(ctypes.POINTER(_FunctionList))]
    get_list.restype = CK_ULONG
    ptr = ctypes.POINTER(_FunctionList)()
    rv = get_list(ctypes.byref(ptr))
    if rv != 0:
        raise rv_error(rv)
    address: int | None = getattr(ptr.contents, f"f{index}")
    if not address:
        raise p11e.FunctionNotSupported()
    return address


def init_token(module: str, slot_id: int, so_pin: str, label: str) -> None:
    """C_InitToken: keeps the SO PIN off argv (softhsm2-util would need it there)."""
    proto = ctypes.CFUNCTYPE(CK_ULONG, CK_ULONG, ctypes.c_char_p, CK_ULONG, ctypes.c_char_p)
    fn = proto(_function(module, _IDX_INIT_TOKEN))
    pin = so_pin.encode("utf-8")
    padded_label = label.encode("utf-8").ljust(32, b" ")  # CK_UTF8CHAR[32], blank padded
    rv = fn(slot_id, pin, len(pin), padded_label)
    if rv != 0:
        raise rv_error(rv)


def check_session(module: str, handle: int) -> None:
    """Raise the matching PKCS11Error unless ``handle`` is a live, user-logged-in session.

    Used before object searches: python-pkcs11 0.10.1's SearchIter stays "active" when
    C_FindObjectsInit fails and then raises from ``__del__``; and a search on a
    logged-out session silently hides private keys instead of failing.
    """
    proto = ctypes.CFUNCTYPE(CK_ULONG, CK_ULONG, ctypes.POINTER(_SessionInfo))
    fn = proto(_function(module, _IDX_GET_SESSION_INFO))
    info = _SessionInfo()
    rv = fn(handle, ctypes.byref(info))
    if rv != 0:
        raise rv_error(rv)
    if info.state not in (_CKS_RO_USER_FUNCTIONS, _CKS_RW_USER_FUNCTIONS):
        raise p11e.UserNotLoggedIn()


def token_memory(module: str, slot_id: int) -> tuple[int, int, int, int]:
    """(free public, total public, free private, total private) memory of the slot's token.

    python-pkcs11 drops these fields of CK_TOKEN_INFO. A value equal to
    :data:`UNAVAILABLE` means the token does not say.
    """
    proto = ctypes.CFUNCTYPE(CK_ULONG, CK_ULONG, ctypes.POINTER(_TokenInfo))
    fn = proto(_function(module, _IDX_GET_TOKEN_INFO))
    info = _TokenInfo()
    rv = fn(slot_id, ctypes.byref(info))
    if rv != 0:
        raise rv_error(rv)
    return (
        info.free_public_memory,
        info.total_public_memory,
        info.free_private_memory,
        info.total_private_memory,
    )
