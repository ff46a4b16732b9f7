"""`jpki-va hsm …`: the operators' admin commands for the token and the key ceremonies.

Registered by server/cli.py through :func:`add_commands`. Every subcommand takes the
same module, token and PIN options. A PIN comes from an environment variable, a file
or an interactive prompt, never from argv. Errors are one line on stderr: exit code 2
for bad input or configuration, 1 for an operation that failed or was refused.

The ceremony, rotation and OCSP-signer commands act on the signer's registry (its
``--data-dir``) offline; a running signer picks their results up on its next use.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TextIO

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from hsm._config import DEFAULT_MODULE, HsmConfig, KeyType, PinSource
from hsm._errors import HsmConfigError, HsmError, KeyNotFound
from hsm._inventory import module_info
from hsm._softhsm import init_softhsm_token
from hsm._token import Hsm
from server.authority import Authority, AuthorityError, signer_meta
from server.ceremony import RECORDS_DIR, CeremonyConfig, CeremonyError, read_records, run_ceremony
from server.clock import SystemClock
from server.domain import CertKind
from server.lint import LintError
from server.profiles import ProfileSettings, key_id
from server.registry import Registry, RegistryError
from server.rotation import rotate_issuer
from server.signer import SignerError, certify_ocsp_signer

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

#: The PIN environment variable used when no PIN option is given (same as the signer's).
PIN_ENV = "JPKI_VA_HSM_PIN"
SO_PIN_ENV = "JPKI_VA_HSM_SO_PIN"
_DURATION = re.compile(r"^(\d+)([dhm])$")


class UsageError(Exception):
    """Bad options or input: exit code 2."""


class Refused(Exception):
    """The operation would be unsafe or the operator declined it: exit code 1."""


def parse_duration(text: str) -> timedelta:
    """``7d``, ``36h`` or ``90m``."""
    match = _DURATION.match(text.strip())
    if not match or int(match.group(1)) <= 0:
        raise UsageError(f"duration {text!r} must look like 7d, 36h or 90m")
    n = int(match.group(1))
    return {"d": timedelta(days=n), "h": timedelta(hours=n), "m": timedelta(minutes=n)}[
        match.group(2)
    ]


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("token")
    group.add_argument("--module", help=f"PKCS#11 module (default {DEFAULT_MODULE})")
    group.add_argument("--token", metavar="LABEL", help="token label")
    group.add_argument(
        "--pin-env", metavar="NAME", help=f"environment variable holding the PIN ({PIN_ENV})"
    )
    group.add_argument("--pin-file", metavar="FILE", help="file whose first line is the PIN")
    group.add_argument("--softhsm2-conf", metavar="FILE", help="SOFTHSM2_CONF for SoftHSM2")
    return common


def _data_dir(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        required=required,
        help="the signer's data directory (registry and ceremony records)",
    )


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:  # noqa: PLR0915 (one flat list of options reads best)
    common = _common()
    hsm_parser = subparsers.add_parser(
        "hsm",
        help="HSM administration and key ceremonies",
        description="Administer the PKCS#11 token and run the authority's key ceremonies.",
        epilog="exit codes: 0 done, 1 failed or refused, 2 usage or input error",
    )
    groups = hsm_parser.add_subparsers(dest="hsm_command", required=True, metavar="COMMAND")

    info = groups.add_parser("info", parents=[common], help="module, slots, tokens, mechanisms")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(func=_run(cmd_info))

    init = groups.add_parser(
        "init-token",
        parents=[common],
        help="create a SoftHSM2 token (label --token, user PIN from the PIN options)",
    )
    init.add_argument("--dir", type=Path, required=True, help="directory for config + tokens")
    init.add_argument("--so-pin-env", metavar="NAME", help=f"SO PIN variable ({SO_PIN_ENV})")
    init.add_argument("--so-pin-file", metavar="FILE", help="file whose first line is the SO PIN")
    init.set_defaults(func=_run(cmd_init_token))

    keys = groups.add_parser("keys", help="keys in the token").add_subparsers(
        dest="keys_command", required=True, metavar="COMMAND"
    )
    listing = keys.add_parser("list", parents=[common], help="private keys and their flags")
    _data_dir(listing, required=False)
    listing.add_argument("--json", action="store_true", help="print a JSON array")
    listing.set_defaults(func=_run(cmd_keys_list))
    generate = keys.add_parser("generate", parents=[common], help="generate a signing key")
    generate.add_argument("--label", required=True)
    generate.add_argument("--type", required=True, choices=[t.value for t in KeyType])
    generate.set_defaults(func=_run(cmd_keys_generate))
    public = keys.add_parser("public", parents=[common], help="a key's public key (PEM)")
    public.add_argument("--label", required=True)
    public.add_argument("--out", type=Path, help="write here instead of stdout")
    public.set_defaults(func=_run(cmd_keys_public))
    destroy = keys.add_parser(
        "destroy", parents=[common], help="destroy a key no CA or signer uses"
    )
    destroy.add_argument("--label", required=True)
    destroy.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    _data_dir(destroy, required=True)
    destroy.set_defaults(func=_run(cmd_keys_destroy))

    ceremony = groups.add_parser("ceremony", help="key ceremonies").add_subparsers(
        dest="ceremony_command", required=True, metavar="COMMAND"
    )
    run = ceremony.add_parser(
        "run", parents=[common], help="create what a ceremony config names (idempotent)"
    )
    run.add_argument("config", type=Path, metavar="CONFIG", help="ceremony config (TOML)")
    _data_dir(run, required=False)
    run.set_defaults(func=_run(cmd_ceremony_run))

    ca = groups.add_parser("ca", help="issuing-CA generations").add_subparsers(
        dest="ca_command", required=True, metavar="COMMAND"
    )
    kinds = [k.slug for k in CertKind]
    rotate = ca.add_parser("rotate", parents=[common], help="new generation: same name, new key")
    rotate.add_argument("--kind", required=True, choices=kinds)
    rotate.add_argument(
        "--validity", help="lifetime of the new generation, e.g. 4380d (default: as the old)"
    )
    _data_dir(rotate, required=True)
    rotate.set_defaults(func=_run(cmd_ca_rotate))
    ca_list = ca.add_parser("list", parents=[common], help="the CA generations in the registry")
    _data_dir(ca_list, required=True)
    ca_list.set_defaults(func=_run(cmd_ca_list))

    ocsp = groups.add_parser("ocsp-signer", help="delegated OCSP signers").add_subparsers(
        dest="ocsp_command", required=True, metavar="COMMAND"
    )
    issue = ocsp.add_parser(
        "issue", parents=[common], help="certify a responder key (OCSPSigning, ocsp-nocheck)"
    )
    issue.add_argument("--csr", type=Path, required=True, help="PKCS#10 request (PEM or DER)")
    issue.add_argument(
        "--kind", choices=kinds, help="only the active generation of this kind (default: all)"
    )
    issue.add_argument("--validity", default="7d", help="lifetime (default 7d)")
    issue.add_argument("--out", type=Path, required=True, help="PEM file of the certificates")
    _data_dir(issue, required=True)
    issue.set_defaults(func=_run(cmd_ocsp_signer_issue))


Command = Callable[[argparse.Namespace, TextIO], int]


def _run(command: Command) -> Callable[[argparse.Namespace], int]:
    """One-line errors and exit codes for every hsm subcommand."""

    def run(args: argparse.Namespace) -> int:
        where = "jpki-va hsm"
        try:
            return command(args, sys.stdout)
        except (UsageError, HsmConfigError, CeremonyError) as exc:
            print(f"{where}: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except (Refused, HsmError, AuthorityError, RegistryError, SignerError, LintError) as exc:
            print(f"{where}: {exc}", file=sys.stderr)
            return EXIT_FAILED
        except OSError as exc:
            print(
                f"{where}: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "),
                file=sys.stderr,
            )
            return EXIT_FAILED

    return run


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
    return str(args.module or DEFAULT_MODULE)


def _config(args: argparse.Namespace) -> HsmConfig:
    if not args.token:
        raise UsageError("--token is required")
    pin = _pin(args.pin_env, args.pin_file, PIN_ENV, f"PIN of token {args.token}: ")
    return HsmConfig(
        module=_module(args), token_label=args.token, pin=pin, softhsm2_conf=args.softhsm2_conf
    )


def _registry_dir(data_dir: Path) -> Path:
    registry = data_dir / "registry"
    if not (registry / "data.mdb").is_file():
        raise UsageError(f"{data_dir} holds no signer registry")
    return registry


# -- commands ---------------------------------------------------------------------------


def cmd_info(args: argparse.Namespace, out: TextIO) -> int:
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
    if not args.token:
        raise UsageError("--token (the new token's label) is required")
    so_pin = _pin(args.so_pin_env, args.so_pin_file, SO_PIN_ENV, "new SO PIN: ").read()
    user_pin = _pin(args.pin_env, args.pin_file, PIN_ENV, "new user PIN: ").read()
    conf = init_softhsm_token(args.dir, args.token, so_pin, user_pin, module=_module(args))
    out.write(f"created token {args.token!r}; SOFTHSM2_CONF={conf}\n")
    return EXIT_OK


def cmd_keys_list(args: argparse.Namespace, out: TextIO) -> int:

    records = read_records(args.data_dir / RECORDS_DIR) if args.data_dir else {}
    with Hsm.open(_config(args)) as token:
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
    with Hsm.open(_config(args)) as token:
        key = token.generate_key(args.label, KeyType(args.type))

    out.write(
        f"generated {args.type} key {args.label!r} (key id {key_id(key.public_key()).hex()})\n"
    )
    return EXIT_OK


def cmd_keys_public(args: argparse.Namespace, out: TextIO) -> int:
    with Hsm.open(_config(args)) as token:
        key = token.key(args.label)
    pem = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    if args.out:
        args.out.write_bytes(pem)
    else:
        out.write(pem.decode())
    return EXIT_OK


def _key_users(data_dir: Path, label: str) -> list[str]:
    """Why ``label`` must stay: the CA generations and signers in the registry using it."""

    registry = Registry(_registry_dir(data_dir))
    try:
        now = SystemClock().now()
        with registry.read() as tx:
            records = tx.issuers()
            signers = signer_meta(tx)
        users = []
        for record in records:
            if record.key_label != label:
                continue
            what = "root CA" if record.kind is None else f"{record.kind.name} issuing CA"
            if record.active:
                users.append(f"the active {what}")
            elif record.certificate.not_valid_after_utc > now:
                # An old generation still signs the CRLs of what it issued.
                users.append(f"an older {what} generation that still signs CRLs")
        for name, (signer_label, _) in signers.items():
            if signer_label == label:
                users.append(f"the {name.replace('_', ' ')}")
        return users
    finally:
        registry.close()


def cmd_keys_destroy(args: argparse.Namespace, out: TextIO) -> int:
    users = _key_users(args.data_dir, args.label)
    if users:
        raise Refused(f"key {args.label!r} is in use by {', '.join(users)}; not destroyed")
    if not args.yes:
        if not sys.stdin.isatty():
            raise Refused("destroying a key needs --yes (no terminal to confirm on)")
        answer = input(f"Destroy key {args.label!r} for good? Type its label to confirm: ")
        if answer.strip() != args.label:
            raise Refused("not confirmed; nothing destroyed")
    with Hsm.open(_config(args)) as token:
        try:
            token.destroy_key(args.label)
        except KeyNotFound as exc:
            raise Refused(str(exc)) from None
    out.write(f"destroyed key {args.label!r}\n")
    return EXIT_OK


def cmd_ceremony_run(args: argparse.Namespace, out: TextIO) -> int:

    config = CeremonyConfig.from_toml(args.config)
    data_dir = args.data_dir or config.data_dir
    if data_dir is None:
        raise UsageError("--data-dir is required (the config names no data_dir)")
    with Hsm.open(_config(args)) as token:
        registry = Registry(Path(data_dir) / "registry")
        try:
            result = run_ceremony(
                token, registry, SystemClock(), config, record_dir=Path(data_dir) / RECORDS_DIR
            )
        finally:
            registry.close()
    for item in result.created:
        out.write(f"created {item.describe()}\n")
    if not result.created:
        out.write("nothing to do: every key and certificate is in place\n")
    if result.record is not None:
        out.write(f"ceremony record: {result.record}\n")
    return EXIT_OK


def cmd_ca_rotate(args: argparse.Namespace, out: TextIO) -> int:

    validity = parse_duration(args.validity) if args.validity else None
    registry_dir = _registry_dir(args.data_dir)
    with Hsm.open(_config(args)) as token:
        registry = Registry(registry_dir)
        try:
            rotation = rotate_issuer(
                token,
                registry,
                SystemClock(),
                CertKind.from_slug(args.kind),
                validity=validity,
                record_dir=args.data_dir / RECORDS_DIR,
            )
        finally:
            registry.close()
    out.write(
        f"{rotation.kind.name}: {rotation.old.key_label} ({rotation.old.key_id.hex()}) -> "
        f"{rotation.new.key_label} ({rotation.new.key_id.hex()}), now active\n"
    )
    out.write(f"rotation record: {rotation.record}\n")
    return EXIT_OK


def cmd_ca_list(args: argparse.Namespace, out: TextIO) -> int:

    registry = Registry(_registry_dir(args.data_dir))
    try:
        with registry.read() as tx:
            records = tx.issuers()
    finally:
        registry.close()
    records.sort(key=lambda r: (r.kind or 0, r.certificate.not_valid_before_utc))
    for r in records:
        cert = r.certificate
        out.write(
            f"{'ROOT' if r.kind is None else r.kind.name:<12} {r.key_label:<24} "
            f"{'active' if r.active else 'inactive':<8} {r.key_id.hex()} "
            f"{cert.not_valid_before_utc:%Y-%m-%d}..{cert.not_valid_after_utc:%Y-%m-%d}\n"
        )
    return EXIT_OK


def _read_csr(path: Path) -> bytes:
    data = path.read_bytes()
    try:
        csr = (
            x509.load_pem_x509_csr(data) if b"-----BEGIN" in data else x509.load_der_x509_csr(data)
        )
    except ValueError as exc:
        raise UsageError(f"{path} is not a PKCS#10 request: {exc}") from None
    return csr.public_bytes(Encoding.DER)


def cmd_ocsp_signer_issue(args: argparse.Namespace, out: TextIO) -> int:

    validity = parse_duration(args.validity)
    csr_der = _read_csr(args.csr)
    registry_dir = _registry_dir(args.data_dir)
    with Hsm.open(_config(args)) as token:
        registry = Registry(registry_dir)
        try:
            authority = Authority(token, registry)
            key_ids = []
            if args.kind:
                key_ids = [authority.active_issuer(CertKind.from_slug(args.kind)).key_id]
            issued = certify_ocsp_signer(
                authority,
                csr_der,
                key_ids,
                now=SystemClock().now(),
                backdate=ProfileSettings().backdate,
                validity=validity,
            )
        finally:
            registry.close()
    pem = b"".join(cert.public_bytes(Encoding.PEM) for _, cert in issued)
    args.out.write_bytes(pem)
    for issuer, cert in issued:
        kind = "root" if issuer.kind is None else issuer.kind.name
        out.write(
            f"{kind} {issuer.key_label}: serial {cert.serial_number:X}, "
            f"until {cert.not_valid_after_utc.isoformat()}\n"
        )
    out.write(f"wrote {len(issued)} certificates to {args.out}\n")
    return EXIT_OK
