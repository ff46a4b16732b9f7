"""`jpki-va registry verifier add|remove|list` and `jpki-va token request|verify`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from jpki_va.client._cli import add_token_verify
from jpki_va.core.cli import (
    EXIT_OK,
    EXIT_SERVER,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    exit_codes_epilog,
    slug_choice,
)
from jpki_va.core.domain import Role
from jpki_va.protos import signer_pb2_grpc, verifiers_pb2
from jpki_va.server.app.config import ConfigError
from jpki_va.server.cmd.signer_client import (
    SubParsers,
    add_signer_connection,
    demo_identity,
    rpc_errors,
    signer_channel,
)


def add_verifier_commands(registry: SubParsers) -> None:
    verifier = registry.add_parser("verifier", help="verifiers and their roles (DESIGN §7)")
    commands = verifier.add_subparsers(dest="verifier_command", required=True, metavar="ACTION")

    add = commands.add_parser("add", help="register a verifier (or --replace one)")
    add.add_argument("--id", required=True, help="verifier id (letters, digits, . _ -)")
    add.add_argument(
        "--cert", action="append", required=True, metavar="FILE",
        help="its mTLS client certificate (PEM or DER); repeatable for renewals",
    )  # fmt: skip
    add.add_argument(
        "--role", action="append", required=True, **slug_choice(Role),
        help="repeatable: a verifier may hold several roles",
    )  # fmt: skip
    add.add_argument("--agreement", help="reference of the 取決め (第38条の3第3項)")
    add.add_argument(
        "--agreement-date", metavar="YYYY-MM-DD", help="date of the agreement: effective from"
    )
    add.add_argument(
        "--agreement-terms", metavar="TEXT", help="the agreed terms, or their reference"
    )
    add.add_argument(
        "--agreement-until", metavar="YYYY-MM-DD", help="last day the agreement is in effect"
    )
    add.add_argument("--replace", action="store_true", help="replace an existing verifier")
    add_signer_connection(add)
    add.set_defaults(func=rpc_errors(run_add))

    remove = commands.add_parser("remove", help="remove a verifier")
    remove.add_argument("--id", required=True)
    add_signer_connection(remove)
    remove.set_defaults(func=rpc_errors(run_remove))

    listing = commands.add_parser("list", help="list verifiers")
    listing.add_argument("--json", action="store_true", help="one JSON array")
    add_signer_connection(listing)
    listing.set_defaults(func=rpc_errors(run_list))


def add_token_commands(sub: SubParsers) -> None:
    token = sub.add_parser(
        "token",
        help="verifier tokens (特定利用者証明検証者証明符号)",
        epilog="request: "
        + exit_codes_epilog(EXIT_OK, EXIT_USAGE, EXIT_SERVER, EXIT_UNREACHABLE)
        + "; verify: see its --help",
    )
    commands = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")

    request = commands.add_parser("request", help="ask the signer for this verifier's token")
    request.add_argument("--out", metavar="FILE", help="write the token here (default stdout)")
    request.add_argument("--verifier", help="verifier id (only with --insecure-loopback)")
    add_signer_connection(request)
    request.set_defaults(func=rpc_errors(run_request))

    add_token_verify(commands)


def _certificate_der(path: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"--cert {path}: {exc.strerror}") from None
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificate(data).public_bytes(Encoding.DER)
        return x509.load_der_x509_certificate(data).public_bytes(Encoding.DER)
    except ValueError:
        raise ConfigError(f"--cert {path}: not a PEM or DER certificate") from None


def _info_json(info: verifiers_pb2.VerifierInfo) -> dict[str, object]:
    return {
        "id": info.id,
        "roles": [Role(r).slug for r in info.roles],
        "cert_fingerprints": [f.hex() for f in info.cert_fingerprints],
        "agreement": info.agreement or None,
        "agreement_date": info.agreement_date or None,
        "agreement_terms": info.agreement_terms or None,
        "agreement_until": info.agreement_until or None,
    }


def run_add(args: argparse.Namespace) -> int:
    request = verifiers_pb2.AddVerifierRequest(
        id=args.id,
        roles=[int(Role.from_slug(r)) for r in args.role],  # type: ignore[misc]
        client_certificate_der=[_certificate_der(p) for p in args.cert],
        agreement=args.agreement or "",
        agreement_date=args.agreement_date or "",
        agreement_terms=args.agreement_terms or "",
        agreement_until=args.agreement_until or "",
        replace=args.replace,
    )
    with signer_channel(args) as channel:
        reply = signer_pb2_grpc.SignerServiceStub(channel).AddVerifier(
            request, timeout=args.timeout
        )
    print(json.dumps(_info_json(reply.verifier), ensure_ascii=False))
    return 0


def run_remove(args: argparse.Namespace) -> int:
    with signer_channel(args) as channel:
        signer_pb2_grpc.SignerServiceStub(channel).RemoveVerifier(
            verifiers_pb2.RemoveVerifierRequest(id=args.id), timeout=args.timeout
        )
    print(f"removed verifier {args.id}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    with signer_channel(args) as channel:
        reply = signer_pb2_grpc.SignerServiceStub(channel).ListVerifiers(
            verifiers_pb2.ListVerifiersRequest(), timeout=args.timeout
        )
    rows = [_info_json(v) for v in reply.verifiers]
    if args.json:
        print(json.dumps(rows, ensure_ascii=False))
        return 0
    for row in rows:
        roles = ",".join(row["roles"])  # type: ignore[arg-type]
        agreement = row["agreement"] or "-"
        print(f"{row['id']}\t{roles}\tagreement={agreement}\tcerts={len(row['cert_fingerprints'])}")  # type: ignore[arg-type]
    return 0


def run_request(args: argparse.Namespace) -> int:
    metadata = demo_identity(args)
    with signer_channel(args) as channel:
        reply = signer_pb2_grpc.SignerServiceStub(channel).IssueVerifierToken(
            verifiers_pb2.IssueVerifierTokenRequest(), timeout=args.timeout, metadata=metadata
        )
    if args.out is None:
        print(reply.token)
    else:
        try:
            Path(args.out).write_text(reply.token + "\n")
        except OSError as exc:
            raise ConfigError(f"--out {args.out}: {exc.strerror}") from None
    return 0
