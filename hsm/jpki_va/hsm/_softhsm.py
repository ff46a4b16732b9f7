"""Create SoftHSM2 tokens for tests and local development.

Limitation: SoftHSM2 reads SOFTHSM2_CONF only in C_Initialize, so a process can use one
SoftHSM2 config at a time. Each call re-initialises the module with the new config
(exporting SOFTHSM2_CONF process-wide) and is refused while Hsm connections are open.
"""

from __future__ import annotations

import os
from pathlib import Path

from pkcs11 import TokenFlag
from pkcs11 import exceptions as p11e

from jpki_va.hsm import _cfuncs, _library
from jpki_va.hsm._config import DEFAULT_MODULE
from jpki_va.hsm._errors import HsmConfigError, HsmError

_CONF_TEMPLATE = """\
# Written by hsm.init_softhsm_token
directories.tokendir = {tokendir}
objectstore.backend = file
log.level = ERROR
"""


def init_softhsm_token(
    directory: Path, label: str, so_pin: str, user_pin: str, *, module: str = DEFAULT_MODULE
) -> Path:
    """Create a SoftHSM2 config + token store under ``directory`` with one initialised token.

    Returns the path of the ``softhsm2.conf`` to put in ``HsmConfig.softhsm2_conf``.
    """
    if not label or len(label.encode("utf-8")) > 32:
        raise HsmConfigError("token label must be 1..32 bytes")
    if not so_pin or not user_pin:
        raise HsmConfigError("SO and user PINs must not be empty")
    directory = Path(directory).resolve()
    tokendir = directory / "tokens"
    # The token's keys are for this user alone, whatever the umask (mkdir honours it).
    for made in (directory, tokendir):
        if not made.is_dir():
            made.mkdir(parents=True, mode=0o700)
            made.chmod(0o700)
    conf = directory / "softhsm2.conf"
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(_CONF_TEMPLATE.format(tokendir=tokendir))

    lib = _library.reload_for_new_config(module, str(conf))
    try:
        if any(t.label == label for t in lib.get_tokens()):
            raise HsmConfigError(f"a token labelled {label!r} already exists in {tokendir}")
        free = [
            slot
            for slot in lib.get_slots(token_present=True)
            if not slot.get_token().flags & TokenFlag.TOKEN_INITIALIZED
        ]
        if not free:
            raise HsmError("SoftHSM2 offers no free slot")
        _cfuncs.init_token(_library.module_key(module), free[0].slot_id, so_pin, label)
        # SoftHSM2 moves the new token to a fresh slot id: look it up by label.
        token = lib.get_token(token_label=label)
        with token.open(rw=True, so_pin=so_pin) as session:
            session.init_pin(user_pin)
    except p11e.PKCS11Error as exc:
        raise HsmError(f"initialising SoftHSM2 token failed: {type(exc).__name__}") from exc
    return conf
