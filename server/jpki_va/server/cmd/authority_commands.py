"""The work behind `jpki-va hsm ceremony|ca|ocsp-signer` and the registry's key users.

Loaded only when one of these commands runs (see :mod:`jpki_va.server.cmd.lazy`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TextIO

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from jpki_va.core.cli import parse_duration
from jpki_va.core.clock import SystemClock
from jpki_va.core.domain import CertKind
from jpki_va.hsm._cli import (
    EXIT_OK,
    Command,
    UsageError,
    open_token,
    run_command,
    token_config,
)
from jpki_va.server.pki.cert_profile import ProfileSettings
from jpki_va.server.pki.lint import LintError
from jpki_va.server.registry.transactions import Registry, RegistryError
from jpki_va.server.signer.authority import Authority, AuthorityError, signer_meta
from jpki_va.server.signer.ceremony import (
    RECORDS_DIR,
    CeremonyConfig,
    CeremonyError,
    read_records,
    run_ceremony,
)
from jpki_va.server.signer.rotation import rotate_issuer
from jpki_va.server.signer.service import SignerError, certify_ocsp_signer


def ceremonies(data_dir: Path) -> dict[str, Path]:
    """Key label -> the ceremony record that created or certified it."""
    return read_records(data_dir / RECORDS_DIR)


def key_users(data_dir: Path, label: str) -> list[str]:
    """The CA generations and signers in the registry that use ``label``."""
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


def _run(command: Command) -> Callable[[argparse.Namespace], int]:
    return run_command(
        command,
        usage_errors=(CeremonyError,),
        failures=(AuthorityError, RegistryError, SignerError, LintError),
    )


def _validity(text: str) -> timedelta:
    try:
        validity = parse_duration(text)
    except ValueError as exc:
        raise UsageError(f"--validity: {exc}") from None
    if not validity:
        raise UsageError("--validity must be longer than 0")
    return validity


def _registry_dir(data_dir: Path) -> Path:
    registry = data_dir / "registry"
    if not (registry / "data.mdb").is_file():
        raise UsageError(f"{data_dir} holds no signer registry")
    return registry


def cmd_ceremony_run(args: argparse.Namespace, out: TextIO) -> int:
    config = CeremonyConfig.from_toml(args.config)
    data_dir = args.data_dir or config.data_dir
    if data_dir is None:
        raise UsageError("--data-dir is required (the config names no data_dir)")
    with open_token(token_config(args)) as token:
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
    validity = _validity(args.validity) if args.validity else None
    registry_dir = _registry_dir(args.data_dir)
    with open_token(token_config(args)) as token:
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
    validity = _validity(args.validity)
    csr_der = _read_csr(args.csr)
    registry_dir = _registry_dir(args.data_dir)
    with open_token(token_config(args)) as token:
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


ceremony_run = _run(cmd_ceremony_run)
ca_rotate = _run(cmd_ca_rotate)
ca_list = _run(cmd_ca_list)
ocsp_signer_issue = _run(cmd_ocsp_signer_issue)
