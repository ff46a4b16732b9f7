"""`jpki-va hsm …`: the operators' commands for the PKCS#11 token itself.

Registered by the `jpki-va` command through :func:`add_commands`, which returns the
command group so the signer's CLI can add the commands that also act on its registry
(key ceremonies, CA generations, OCSP signers). Every subcommand takes the same
module, token and PIN options (:func:`token_options`). A PIN comes from an environment
variable, a file or an interactive prompt, never from argv. Errors are one line on
stderr: exit code 2 for bad input or configuration, 1 for an operation that failed or
was refused.

Importing this module loads no PKCS#11 code: the token is opened by the commands.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from jpki_va.hsm._config import DEFAULT_MODULE, HsmConfig, KeyType, PinSource
from jpki_va.hsm._errors import HsmConfigError, HsmError, KeyNotFound

if TYPE_CHECKING:
    from jpki_va.hsm._token import Hsm

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
# The same codes and words as every jpki-va command (jpki_va.core.cli, which this
# distribution does not ship).
EXIT_CODES_EPILOG = "exit codes: 0 done, 1 failed or refused, 2 usage, input or configuration error"

#: The PIN environment variable used when no PIN option is given (same as the signer's).
PIN_ENV = "JPKI_VA_HSM_PIN"
SO_PIN_ENV = "JPKI_VA_HSM_SO_PIN"

if TYPE_CHECKING:
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]
else:  # not subscriptable at run time
    SubParsers = argparse._SubParsersAction


class UsageError(Exception):
    """Bad options or input: exit code 2."""


class Refused(Exception):
    """The operation would be unsafe or the operator declined it: exit code 1."""


class KeyUse(Protocol):
    """What the signer's data directory says about the token's keys.

    The token commands know nothing of the registry; the `jpki-va` command passes
    an implementation so that `keys list` can name each key's ceremony and `keys
    destroy` can refuse a key that a CA generation or a signer still uses.
    """

    def ceremonies(self, data_dir: Path) -> dict[str, Path]:
        """Key label -> the ceremony record that created or certified it."""
        ...

    def users(self, data_dir: Path, label: str) -> list[str]:
        """Why ``label`` must stay: what in the registry still uses it (empty: nothing)."""
        ...


def token_options() -> argparse.ArgumentParser:
    """The module, token and PIN options every token-using command takes (a parent).

    The signer takes the same (`jpki-va signer --hsm-token …`). The short spellings
    of earlier releases (--module, --token, --pin-env, --pin-file) are still accepted,
    unlisted, so that existing scripts keep working.
    """
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("HSM (PKCS#11)")
    group.add_argument(
        "--hsm-module", metavar="FILE", help=f"PKCS#11 module (default {DEFAULT_MODULE})"
    )
    group.add_argument("--hsm-token", metavar="LABEL", help="token label")
    group.add_argument(
        "--hsm-pin-env", metavar="NAME", help=f"environment variable holding the PIN ({PIN_ENV})"
    )
    group.add_argument("--hsm-pin-file", metavar="FILE", help="file whose first line is the PIN")
    group.add_argument("--softhsm2-conf", metavar="FILE", help="SOFTHSM2_CONF for SoftHSM2")
    for old, new in _OLD_SPELLINGS.items():
        common.add_argument(old, dest=new, help=argparse.SUPPRESS)
    return common


#: Deprecated option spellings -> the attribute of today's option.
_OLD_SPELLINGS = {
    "--module": "hsm_module",
    "--token": "hsm_token",
    "--pin-env": "hsm_pin_env",
    "--pin-file": "hsm_pin_file",
}


def data_dir_option(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        required=required,
        help="the signer's data directory (registry and ceremony records)",
    )


def add_commands(subparsers: SubParsers, key_use: KeyUse) -> SubParsers:
    """Register `jpki-va hsm` and its token commands; return its command group."""
    common = token_options()
    hsm_parser = subparsers.add_parser(
        "hsm",
        help="HSM administration and key ceremonies",
        description="Administer the PKCS#11 token and run the authority's key ceremonies.",
        epilog=EXIT_CODES_EPILOG,
    )
    groups = hsm_parser.add_subparsers(dest="hsm_command", required=True, metavar="COMMAND")

    info = groups.add_parser("info", parents=[common], help="module, slots, tokens, mechanisms")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(func=run_command(cmd_info))

    init = groups.add_parser(
        "init-token",
        parents=[common],
        help="create a SoftHSM2 token (label --hsm-token, user PIN from the PIN options)",
    )
    init.add_argument("--dir", type=Path, required=True, help="directory for config + tokens")
    init.add_argument("--so-pin-env", metavar="NAME", help=f"SO PIN variable ({SO_PIN_ENV})")
    init.add_argument("--so-pin-file", metavar="FILE", help="file whose first line is the SO PIN")
    init.set_defaults(func=run_command(cmd_init_token))

    keys = groups.add_parser("keys", help="keys in the token").add_subparsers(
        dest="keys_command", required=True, metavar="COMMAND"
    )
    listing = keys.add_parser("list", parents=[common], help="private keys and their flags")
    data_dir_option(listing, required=False)
    listing.add_argument("--json", action="store_true", help="print a JSON array")
    listing.set_defaults(func=run_command(cmd_keys_list), key_use=key_use)
    generate = keys.add_parser("generate", parents=[common], help="generate a signing key")
    generate.add_argument("--label", required=True)
    generate.add_argument("--type", required=True, choices=[t.value for t in KeyType])
    generate.set_defaults(func=run_command(cmd_keys_generate))
    public = keys.add_parser("public", parents=[common], help="a key's public key (PEM)")
    public.add_argument("--label", required=True)
    public.add_argument("--out", type=Path, help="write here instead of stdout")
    public.set_defaults(func=run_command(cmd_keys_public))
    destroy = keys.add_parser(
        "destroy", parents=[common], help="destroy a key no CA or signer uses"
    )
    destroy.add_argument("--label", required=True)
    destroy.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    data_dir_option(destroy, required=True)
    destroy.set_defaults(func=run_command(cmd_keys_destroy), key_use=key_use)
    return groups


Command = Callable[[argparse.Namespace, TextIO], int]


def run_command(
    command: Command,
    *,
    usage_errors: tuple[type[Exception], ...] = (),
    failures: tuple[type[Exception], ...] = (),
) -> Callable[[argparse.Namespace], int]:
    """One-line errors and exit codes for an hsm subcommand (and the extra error types
    of commands registered by others)."""

    usage: tuple[type[Exception], ...] = (UsageError, HsmConfigError, *usage_errors)
    failed: tuple[type[Exception], ...] = (Refused, HsmError, *failures)

    def run(args: argparse.Namespace) -> int:
        where = "jpki-va hsm"
        try:
            return command(args, sys.stdout)
        except usage as exc:
            _fail(where, str(exc))
            return EXIT_USAGE
        except failed as exc:
            _fail(where, str(exc))
            return EXIT_FAILED
        except OSError as exc:
            _fail(where, f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
            return EXIT_FAILED

    return run


def _fail(where: str, message: str) -> None:
    # The error line of every jpki-va command (and argparse's): "PROG: error: MESSAGE".
    print(f"{where}: error: {message}", file=sys.stderr, flush=True)


# -- option helpers ---------------------------------------------------------------------


def _pin(env_name: str | None, file: str | None, default_env: str, prompt: str) -> PinSource:
    if env_name and file:
        raise UsageError("give the PIN by environment variable or by file, not both")
    if file:
        return PinSource(file=file)
    if env_name:
        return PinSource(env=env_name)
    if default_env in os.environ:
        return PinSource(env=default_env)
    return PinSource(prompt=prompt)


def _module(args: argparse.Namespace) -> str:
    return str(args.hsm_module or DEFAULT_MODULE)


def token_config(args: argparse.Namespace) -> HsmConfig:
    if not args.hsm_token:
        raise UsageError("--hsm-token is required")
    pin = _pin(args.hsm_pin_env, args.hsm_pin_file, PIN_ENV, f"PIN of token {args.hsm_token}: ")
    return HsmConfig(
        module=_module(args), token_label=args.hsm_token, pin=pin, softhsm2_conf=args.softhsm2_conf
    )


# -- commands ---------------------------------------------------------------------------


def cmd_info(args: argparse.Namespace, out: TextIO) -> int:
    from jpki_va.hsm._inventory import module_info  # noqa: PLC0415 (loads pkcs11)

    info = module_info(_module(args), args.softhsm2_conf)
    if args.json:
        json.dump(_jsonable(info), out, indent=2)
        out.write("\n")
        return EXIT_OK

    def memory(m: Any) -> str:
        return "unreported" if m.free is None else f"{m.free} of {m.total} bytes free"

    out.write(f"module        {info.path}\n")
    out.write(f"library       {info.description} {info.library_version} ({info.manufacturer})\n")
    out.write(f"cryptoki      {info.cryptoki_version}\n")
    for slot in info.slots:
        out.write(f"slot {slot.slot_id}        {slot.description}\n")
        token = slot.token
        if token is None or not token.initialized:
            out.write("  token       (not initialised)\n")
            continue
        out.write(f"  token       {token.label!r} serial {token.serial} ({token.model})\n")
        out.write(f"  public mem  {memory(token.public_memory)}\n")
        out.write(f"  private mem {memory(token.private_memory)}\n")
        for name, supported in slot.mechanisms.items():
            out.write(f"  CKM_{name:<16} {'supported' if supported else 'NOT SUPPORTED'}\n")
    return EXIT_OK


def _jsonable(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return {k: _jsonable(getattr(value, k)) for k in value.__dataclass_fields__}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def cmd_init_token(args: argparse.Namespace, out: TextIO) -> int:
    if not args.hsm_token:
        raise UsageError("--hsm-token (the new token's label) is required")
    so_pin = _pin(args.so_pin_env, args.so_pin_file, SO_PIN_ENV, "new SO PIN: ").read()
    user_pin = _pin(args.hsm_pin_env, args.hsm_pin_file, PIN_ENV, "new user PIN: ").read()
    from jpki_va.hsm._softhsm import init_softhsm_token  # noqa: PLC0415 (loads pkcs11)

    conf = init_softhsm_token(args.dir, args.hsm_token, so_pin, user_pin, module=_module(args))
    out.write(f"created token {args.hsm_token!r}; SOFTHSM2_CONF={conf}\n")
    return EXIT_OK


def cmd_keys_list(args: argparse.Namespace, out: TextIO) -> int:

    records = args.key_use.ceremonies(args.data_dir) if args.data_dir else {}
    with open_token(token_config(args)) as token:
        keys = token.list_keys()
    rows = [
        {
            "label": k.label,
            "id": k.id,
            "type": k.key_type.value if k.key_type else "other",
            "size": k.size,
            "sensitive": k.sensitive,
            "extractable": k.extractable,
            "private": k.private,
            "always_sensitive": k.always_sensitive,
            "never_extractable": k.never_extractable,
            "ceremony": str(records[k.label]) if k.label in records else None,
        }
        for k in keys
    ]
    if args.json:
        json.dump(rows, out, indent=2)
        out.write("\n")
        return EXIT_OK
    out.write(f"{'LABEL':<28} {'TYPE':<9} {'SIZE':>4} {'SENS':<5} {'EXTR':<5} ID / CEREMONY\n")
    for row in rows:
        ceremony = Path(str(row["ceremony"])).name if row["ceremony"] else "-"
        out.write(
            f"{row['label']:<28} {row['type']:<9} {row['size']:>4} "
            f"{'yes' if row['sensitive'] else 'NO':<5} {'YES' if row['extractable'] else 'no':<5} "
            f"{row['id']} {ceremony}\n"
        )
    return EXIT_OK


def cmd_keys_generate(args: argparse.Namespace, out: TextIO) -> int:
    with open_token(token_config(args)) as token:
        key = token.generate_key(args.label, KeyType(args.type))

    out.write(f"generated {args.type} key {args.label!r} (key id {_key_id(key.public_key())})\n")
    return EXIT_OK


def cmd_keys_public(args: argparse.Namespace, out: TextIO) -> int:
    with open_token(token_config(args)) as token:
        key = token.key(args.label)
    pem = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    if args.out:
        args.out.write_bytes(pem)
    else:
        out.write(pem.decode())
    return EXIT_OK


def cmd_keys_destroy(args: argparse.Namespace, out: TextIO) -> int:
    users = args.key_use.users(args.data_dir, args.label)
    if users:
        raise Refused(f"key {args.label!r} is in use by {', '.join(users)}; not destroyed")
    if not args.yes:
        if not sys.stdin.isatty():
            raise Refused("destroying a key needs --yes (no terminal to confirm on)")
        answer = input(f"Destroy key {args.label!r} for good? Type its label to confirm: ")
        if answer.strip() != args.label:
            raise Refused("not confirmed; nothing destroyed")
    with open_token(token_config(args)) as token:
        try:
            token.destroy_key(args.label)
        except KeyNotFound as exc:
            raise Refused(str(exc)) from None
    out.write(f"destroyed key {args.label!r}\n")
    return EXIT_OK


def open_token(config: HsmConfig) -> Hsm:
    """The token, opened and logged in (python-pkcs11 is loaded here, not at import)."""
    from jpki_va.hsm._token import Hsm  # noqa: PLC0415 (loads pkcs11)

    return Hsm.open(config)


def _key_id(public_key: Any) -> str:
    """RFC 5280 method 1 key identifier, as the CA certificates carry it."""
    return x509.SubjectKeyIdentifier.from_public_key(public_key).digest.hex()
