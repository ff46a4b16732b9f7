"""Process-wide loading of PKCS#11 modules.

SoftHSM2 reads SOFTHSM2_CONF only in C_Initialize, and a process has one
initialised instance per module. So at most one SoftHSM2 config is active per
process at a time: switching config means C_Finalize + C_Initialize, which kills
every session of that module. We therefore refuse to switch while connections
are open.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import TYPE_CHECKING

import pkcs11
from pkcs11.exceptions import PKCS11Error

from jpki_va.hsm._errors import HsmConfigError, HsmError

if TYPE_CHECKING:
    from pkcs11._pkcs11 import lib as Pkcs11Lib

_lock = threading.Lock()
# realpath(module) -> realpath(SOFTHSM2_CONF) in force at the last C_Initialize.
_active_conf: dict[str, str | None] = {}
# realpath(module) -> number of open token connections using it.
_users: dict[str, int] = {}


def module_key(module: str) -> str:
    """Canonical module path, so two spellings never load two wrappers of one .so."""
    return os.path.realpath(module)


def _load_locked(module: str, conf: str | None, *, force: bool) -> Pkcs11Lib:
    key = module_key(module)
    conf_key = os.path.realpath(conf) if conf is not None else None
    known = key in _active_conf
    must_switch = force or (known and conf_key is not None and _active_conf[key] != conf_key)
    if must_switch and _users.get(key, 0) > 0:
        raise HsmConfigError(
            "another SoftHSM2 config is in use by open Hsm connections in this process; "
            "only one SoftHSM2 config can be active per process at a time"
        )
    if conf_key is not None:
        os.environ["SOFTHSM2_CONF"] = conf_key
    try:
        lib = pkcs11.lib(key)  # initialises (again) if it was finalised
        if must_switch:
            lib.reinitialize()
    except PKCS11Error as exc:
        raise HsmError(f"cannot initialise PKCS#11 module {key}: {type(exc).__name__}") from exc
    if conf_key is not None or not known:
        _active_conf[key] = conf_key
    return lib


def acquire(module: str, conf: str | None) -> Pkcs11Lib:
    """Load/initialise ``module`` for a new connection and count it as a user."""
    with _lock:
        lib = _load_locked(module, conf, force=False)
        key = module_key(module)
        _users[key] = _users.get(key, 0) + 1
        return lib


def release(module: str) -> None:
    """Forget one connection using ``module`` (the module stays initialised)."""
    with _lock:
        key = module_key(module)
        _users[key] = max(0, _users.get(key, 0) - 1)


def reload_for_new_config(module: str, conf: str) -> Pkcs11Lib:
    """(Re)initialise ``module`` so that it reads ``conf``; refused while connections exist."""
    with _lock:
        return _load_locked(module, conf, force=True)


def ensure_initialized(lib: Pkcs11Lib, module: str, *, force: bool) -> None:
    """Re-run C_Initialize after a finalize (``force``: even if the wrapper thinks it is up)."""
    with _lock:
        conf = _active_conf.get(module_key(module))
        if conf is not None:
            os.environ["SOFTHSM2_CONF"] = conf
        if force and lib.initialized:
            # Already finalised underneath us: C_Finalize fails but the wrapper flag resets.
            with contextlib.suppress(PKCS11Error):
                lib.finalize()
        if not lib.initialized:
            lib.initialize()
