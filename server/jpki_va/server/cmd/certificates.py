"""`jpki-va registry issue|mobile-apply|lose|resident-event|issuer-compromise|consent|publish`.

Operator commands on certificates, registered on the `registry` group
(jpki_va.server.cmd.signer_client), each one SignerService call. Every command prints what it
changed (which certificates lost effect, and why); `--json` prints one JSON object
instead. Exit codes: 0 done, 2 usage or input error, 3 the signer refused (its
message is printed), 4 the signer is unreachable, 5 the signer answered but its HSM
is unavailable (nothing was done; retry when it is back).

A change is durable when the command returns 0, but responders learn it from the next
snapshot. When publishing is failing, the reply says so: `publishing` in the JSON
(`failing`, `error`, `failures`, `last_published`), and a warning on stderr that the
change is recorded but not yet published; the exit code is still 0.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from datetime import UTC, date
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from google.protobuf.timestamp_pb2 import Timestamp

from jpki_va.core.cli import slug_choice, warn
from jpki_va.core.domain import (
    CertKind,
    CrlReason,
    LossCause,
    serial_from_hex,
    serial_hex,
    serial_to_bytes,
)
from jpki_va.protos import signer_pb2, signer_pb2_grpc, va_pb2
from jpki_va.server.app.config import ConfigError
from jpki_va.server.cmd.signer_client import (
    SubParsers,
    add_signer_connection,
    rpc_errors,
    signer_channel,
)
from jpki_va.server.law.issuer_compromise import CompromiseNature
from jpki_va.server.law.loss_recording import OPERATOR_CAUSES, OPERATOR_REASONS, HolderRequest
from jpki_va.server.law.resident_change import ResidentEvent

Stub = signer_pb2_grpc.SignerServiceStub
_REQUEST_WORD = {
    "APPLICATION": "the holder's application (申請)",
    "NOTIFICATION": "the holder's notification (届出)",
}
Command = Callable[[argparse.Namespace, Stub], dict[str, Any]]


def add_certificate_commands(registry: SubParsers) -> None:
    issue = registry.add_parser("issue", help="issue a card certificate")
    issue.add_argument(
        "--kind", required=True, **slug_choice(CertKind, [k for k in CertKind if not k.is_mobile])
    )
    issue.add_argument("--resident-code", required=True, metavar="CODE")
    issue.add_argument("--municipality", required=True, metavar="CODE", help="6 digits")
    issue.add_argument("--name", required=True)
    issue.add_argument("--address", required=True)
    issue.add_argument("--birth-date", required=True, metavar="YYYY-MM-DD")
    issue.add_argument("--sex", required=True)
    issue.add_argument("--pubkey", required=True, metavar="FILE", help="PEM or DER public key")
    issue.add_argument("--out", required=True, metavar="FILE", help="write the certificate (PEM)")
    _finish(issue, _issue)

    _add_mobile_apply(registry)

    lose = registry.add_parser(
        "lose", help="record a loss of effect (holder request, record error)"
    )
    lose.add_argument("--kind", required=True, **slug_choice(CertKind))
    lose.add_argument("--serial", required=True, metavar="HEX")
    lose.add_argument("--cause", required=True, **slug_choice(LossCause, OPERATOR_CAUSES))
    lose.add_argument("--reason", **slug_choice(CrlReason, OPERATOR_REASONS))
    lose.add_argument(
        "--holder-request",
        **slug_choice(HolderRequest),
        help="holder-request: the holder's application (申請, default) or notification (届出)",
    )
    _finish(lose, _lose)

    event = registry.add_parser("resident-event", help="a resident record changed (第12条, 第31条)")
    event.add_argument("--resident-code", required=True, metavar="CODE")
    event.add_argument("--event", required=True, **slug_choice(ResidentEvent))
    event.add_argument("--minor", action="store_true", help="a minor correction")
    event.add_argument("--planned-date", metavar="YYYY-MM-DD", help="move-out: planned date")
    event.add_argument(
        "--deletion-by-move-out",
        action="store_true",
        help="record-deleted: the deletion follows a move-out notice",
    )
    _finish(event, _resident_event)

    compromise = registry.add_parser(
        "issuer-compromise", help="an issuing CA key leaked, was lost or damaged (第14条)"
    )
    compromise.add_argument("--kind", required=True, **slug_choice(CertKind))
    compromise.add_argument(
        "--generation", required=True, metavar="AKI", help="the generation's key id (hex)"
    )
    compromise.add_argument(
        "--what",
        **slug_choice(CompromiseNature),
        help="what happened to the key (漏えい, 滅失, 毀損), for the public announcement",
    )
    _finish(compromise, _issuer_compromise)

    consent = registry.add_parser(
        "consent", help="a holder's consent to giving signing records to a verifier"
    )
    consent.add_argument("action", choices=["grant", "withdraw", "show"])
    consent.add_argument("--resident-code", required=True, metavar="CODE")
    consent.add_argument("--verifier", metavar="ID", help="required for grant and withdraw")
    consent.add_argument(
        "--and-successors",
        action="store_true",
        help="grant: cover the holder's later signing certificates too, not only those now",
    )
    _finish(consent, _consent)

    publish = registry.add_parser("publish", help="publish a snapshot now")
    publish.add_argument("--full", action="store_true", help="a full snapshot, not a delta")
    _finish(publish, _publish)


def _add_mobile_apply(registry: SubParsers) -> None:
    """`registry mobile-apply begin|complete` (第16条の2, 第35条の2)."""
    mobile = registry.add_parser(
        "mobile-apply", help="a smartphone certificate in two steps (第16条の2, 第35条の2)"
    )
    steps = mobile.add_subparsers(dest="mobile_step", required=True, metavar="STEP")
    begin = steps.add_parser(
        "begin", help="the notice of the four basic items, signed with the CARD_SIGN key"
    )
    begin.add_argument(
        "--kind", required=True, **slug_choice(CertKind, [k for k in CertKind if k.is_mobile])
    )
    begin.add_argument("--notice", required=True, metavar="FILE", help="the notice (UTF-8 text)")
    begin.add_argument(
        "--signature",
        required=True,
        metavar="FILE",
        help="openssl dgst -sha256 -sign card-sign-key.pem -out FILE notice.txt",
    )
    begin.add_argument(
        "--card-certificate",
        required=True,
        metavar="FILE",
        help="the CARD_SIGN certificate (PEM or DER)",
    )
    _finish(begin, _mobile_begin)
    complete = steps.add_parser(
        "complete", help="the device's public key with its proof of possession (a CSR)"
    )
    complete.add_argument("--application", required=True, metavar="ID", help="from begin")
    complete.add_argument(
        "--csr", required=True, metavar="FILE", help="PKCS#10 of the device key (PEM or DER)"
    )
    complete.add_argument(
        "--out", required=True, metavar="FILE", help="write the certificate (PEM)"
    )
    _finish(complete, _mobile_complete)


def _finish(parser: argparse.ArgumentParser, command: Command) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    add_signer_connection(parser)
    parser.set_defaults(func=rpc_errors(lambda args: _run(args, command)))


def _run(args: argparse.Namespace, command: Command) -> int:
    if args.timeout <= 0:
        raise ConfigError("--timeout must be positive")
    with signer_channel(args) as channel:
        result = command(args, signer_pb2_grpc.SignerServiceStub(channel))
    if args.json:
        print(json.dumps(result, ensure_ascii=False, sort_keys=True))
    else:
        print(_text(result))
    publishing = result.get("publishing")
    if publishing is not None and publishing["failing"]:
        warn(
            f"jpki-va {args.command}",
            f"recorded, but not yet published: {publishing['error']}; responders answer "
            "the previous status until a publish succeeds",
        )
    return 0


# commands ---------------------------------------------------------------------------------
def _issue(args: argparse.Namespace, stub: Stub) -> dict[str, Any]:
    kind = CertKind.from_slug(args.kind)
    request = signer_pb2.IssueCertificateRequest(
        kind=int(kind),  # type: ignore[arg-type]
        resident_code=args.resident_code,
        municipality_code=args.municipality,
        holder=signer_pb2.HolderInfo(
            name=args.name, address=args.address, birth_date=args.birth_date, sex=args.sex
        ),
        public_key_der=_public_key(args.pubkey),
    )
    return _issued(args, kind, stub.IssueCertificate(request, timeout=args.timeout))


def _issued(
    args: argparse.Namespace, kind: CertKind, reply: signer_pb2.IssueCertificateResponse
) -> dict[str, Any]:
    cert = x509.load_der_x509_certificate(reply.certificate_der)
    try:
        Path(args.out).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    except OSError as error:
        raise ConfigError(f"--out {args.out}: {error.strerror}") from None
    return {
        "issued": {
            "kind": kind.name,
            "serial": serial_hex(int.from_bytes(reply.serial, "big")),
            "not_after": cert.not_valid_after_utc.isoformat(),
            "out": args.out,
        },
        "changes": [_loss(c) for c in reply.superseded],
        "publishing": _publishing(reply.publishing),
    }


def _mobile_begin(args: argparse.Namespace, stub: Stub) -> dict[str, Any]:
    kind = CertKind.from_slug(args.kind)
    card = _read(args.card_certificate, "--card-certificate")
    try:
        if b"-----BEGIN" in card:
            card = x509.load_pem_x509_certificate(card).public_bytes(serialization.Encoding.DER)
        else:
            x509.load_der_x509_certificate(card)
    except ValueError:
        raise ConfigError(
            f"--card-certificate {args.card_certificate}: not a PEM or DER certificate"
        ) from None
    reply = stub.BeginMobileApplication(
        signer_pb2.BeginMobileApplicationRequest(
            kind=int(kind),  # type: ignore[arg-type]
            notice=_read(args.notice, "--notice"),
            notice_signature=_read(args.signature, "--signature"),
            card_certificate_der=card,
        ),
        timeout=args.timeout,
    )
    holder = reply.holder
    return {
        "application": {
            "id": reply.application_id,
            "kind": kind.name,
            "expires_at": _time(reply.expires_at),
            "card_serial": serial_hex(int.from_bytes(reply.card_serial, "big")),
            "holder": {
                "name": holder.name,
                "birth_date": holder.birth_date,
                "sex": holder.sex,
                "address": holder.address,
            },
        }
    }


def _mobile_complete(args: argparse.Namespace, stub: Stub) -> dict[str, Any]:
    reply = stub.CompleteMobileApplication(
        signer_pb2.CompleteMobileApplicationRequest(
            application_id=args.application, csr=_read(args.csr, "--csr")
        ),
        timeout=args.timeout,
    ).issued
    return _issued(args, CertKind(reply.kind), reply)


def _lose(args: argparse.Namespace, stub: Stub) -> dict[str, Any]:
    request = signer_pb2.RecordLossRequest(
        kind=int(CertKind.from_slug(args.kind)),  # type: ignore[arg-type]
        serial=serial_to_bytes(_serial(args.serial)),
        cause=int(LossCause.from_slug(args.cause)),  # type: ignore[arg-type]
    )
    if args.reason is not None:
        request.reason = int(CrlReason.from_slug(args.reason))  # type: ignore[assignment]
    if args.holder_request is not None:
        request.holder_request = int(HolderRequest.from_slug(args.holder_request))  # type: ignore[assignment]
    reply = stub.RecordLoss(request, timeout=args.timeout)
    return {
        "changes": [_loss(c) for c in reply.changes],
        "publishing": _publishing(reply.publishing),
    }


def _resident_event(args: argparse.Namespace, stub: Stub) -> dict[str, Any]:
    event = ResidentEvent.from_slug(args.event)
    if args.planned_date is not None:
        try:
            date.fromisoformat(args.planned_date)
        except ValueError:
            raise ConfigError(f"--planned-date {args.planned_date!r} is not YYYY-MM-DD") from None
    reply = stub.RecordResidentEvent(
        signer_pb2.RecordResidentEventRequest(
            resident_code=args.resident_code,
            event=int(event),  # type: ignore[arg-type]
            minor=args.minor,
            planned_date=args.planned_date or "",
            deletion_by_move_out=args.deletion_by_move_out,
        ),
        timeout=args.timeout,
    )
    out: dict[str, Any] = {
        "event": event.slug,
        "changes": [_loss(c) for c in reply.changes],
        "publishing": _publishing(reply.publishing),
    }
    if reply.HasField("move_out_deadline"):
        out["move_out_deadline"] = _time(reply.move_out_deadline)
    return out


def _issuer_compromise(args: argparse.Namespace, stub: Stub) -> dict[str, Any]:
    try:
        key_id = bytes.fromhex(args.generation.replace(":", ""))
    except ValueError:
        raise ConfigError(f"--generation {args.generation!r} is not hexadecimal") from None
    kind = CertKind.from_slug(args.kind)
    reply = stub.RecordIssuerCompromise(
        signer_pb2.RecordIssuerCompromiseRequest(
            kind=int(kind),  # type: ignore[arg-type]
            issuer_key_id=key_id,
            nature=0 if args.what is None else int(CompromiseNature.from_slug(args.what)),  # type: ignore[arg-type]
        ),
        timeout=args.timeout,
    )
    return {
        "compromise": {
            "kind": kind.name,
            "generation": reply.issuer.key_id.hex(),
            "time": _time(reply.compromised_at),
            "certificates": reply.certificates,
            "cause": LossCause.ISSUER_KEY_COMPROMISE.name,
            "reason": CrlReason.CA_COMPROMISE.name,
        },
        "publishing": _publishing(reply.publishing),
    }


def _consent(args: argparse.Namespace, stub: Stub) -> dict[str, Any]:
    if args.action == "show":
        reply = stub.ListConsents(
            signer_pb2.ListConsentsRequest(
                resident_code=args.resident_code, verifier=args.verifier or ""
            ),
            timeout=args.timeout,
        )
        return {"consents": [_consent_json(c) for c in reply.consents]}
    if not args.verifier:
        raise ConfigError(f"consent {args.action} needs --verifier")
    granted = stub.RecordConsent(
        signer_pb2.RecordConsentRequest(
            resident_code=args.resident_code,
            verifier=args.verifier,
            grant=args.action == "grant",
            successors=args.and_successors,
        ),
        timeout=args.timeout,
    )
    return {"consent": _consent_json(granted.consent)}


def _publish(args: argparse.Namespace, stub: Stub) -> dict[str, Any]:
    reply = stub.PublishSnapshot(
        signer_pb2.PublishSnapshotRequest(full=args.full), timeout=args.timeout
    )
    return {
        "snapshot": {
            "sequence": reply.sequence,
            "name": reply.name,
            "type": reply.type,
            "crls": reply.crl_count,
            "records": reply.record_count,
            "losses": reply.loss_count,
        }
    }


# output -------------------------------------------------------------------------------------
def _loss(change: signer_pb2.LossOfEffect) -> dict[str, Any]:
    out: dict[str, Any] = {
        "kind": CertKind(change.kind).name,
        "serial": serial_hex(int.from_bytes(change.serial, "big")),
        "cause": LossCause(change.cause).name,
        "reason": CrlReason(change.reason).name,
        "time": _time(change.time),
    }
    if change.holder_request:
        out["holder_request"] = HolderRequest(change.holder_request).name
    if change.trigger_kind != va_pb2.CERT_KIND_UNSPECIFIED:
        out["trigger"] = {
            "kind": CertKind(change.trigger_kind).name,
            "serial": serial_hex(int.from_bytes(change.trigger_serial, "big")),
            "cause": LossCause(change.trigger_cause).name,
        }
    return out


def _publishing(publishing: signer_pb2.Publishing) -> dict[str, Any]:
    return {
        "failing": publishing.failing,
        "error": publishing.error or None,
        "failures": publishing.failures,
        "last_published": (
            _time(publishing.last_published) if publishing.HasField("last_published") else None
        ),
    }


def _consent_json(consent: signer_pb2.Consent) -> dict[str, Any]:
    return {
        "verifier": consent.verifier,
        "granted_at": _time(consent.granted_at),
        "withdrawn_at": _time(consent.withdrawn_at) if consent.HasField("withdrawn_at") else None,
        "in_effect": not consent.HasField("withdrawn_at"),
        "covers": [
            f"{CertKind(c.kind).name} {serial_hex(int.from_bytes(c.serial, 'big'))}"
            for c in consent.covers
        ],
        "successors": consent.successors,
    }


def _text(result: dict[str, Any]) -> str:
    lines = []
    if "issued" in result:
        i = result["issued"]
        lines.append(f"issued {i['kind']} {i['serial']} (until {i['not_after']}) to {i['out']}")
    if "application" in result:
        a = result["application"]
        lines.append(
            f"{a['kind']} application {a['id']} on CARD_SIGN {a['card_serial']} confirmed; "
            f"complete it before {a['expires_at']}"
        )
    if "event" in result:
        lines.append(f"recorded {result['event']}")
    if "move_out_deadline" in result:
        lines.append(f"auth certificates lose effect at {result['move_out_deadline']} "
                     "unless a move-in follows")  # fmt: skip
    lines.extend(_change_line(c) for c in result.get("changes", []))
    if "changes" in result and not result["changes"] and "issued" not in result:
        lines.append("no certificate lost effect")
    if "compromise" in result:
        c = result["compromise"]
        lines.append(
            f"{c['kind']} generation {c['generation']} compromised at {c['time']}: "
            f"its {c['certificates']} certificates lost effect ({c['cause']}, {c['reason']})"
        )
    if "consent" in result:
        lines.append(_consent_text(result["consent"]))
    if "consents" in result:
        lines.extend(_consent_text(c) for c in result["consents"])
        if not result["consents"]:
            lines.append("no consents")
    if "snapshot" in result:
        s = result["snapshot"]
        lines.append(
            f"published {s['type']} snapshot {s['sequence']} ({s['name']}): "
            f"{s['records']} records, {s['crls']} CRLs, {s['losses']} losses"
        )
    return "\n".join(lines)


def _change_line(c: dict[str, Any]) -> str:
    line = f"{c['kind']} {c['serial']} lost effect: {c['cause']} ({c['reason']}) at {c['time']}"
    if "holder_request" in c:
        line += f", {_REQUEST_WORD[c['holder_request']]}"
    if "trigger" in c:
        t = c["trigger"]
        line += f", after {t['kind']} {t['serial']} ({t['cause']})"
    return line


def _consent_text(c: dict[str, Any]) -> str:
    if c["in_effect"]:
        scope = ", ".join(c["covers"]) + (" and successors" if c["successors"] else "")
        return f"consent for {c['verifier']}: in effect since {c['granted_at']}, covers {scope}"
    return f"consent for {c['verifier']}: withdrawn at {c['withdrawn_at']}"


# input --------------------------------------------------------------------------------------
def _read(path: str, option: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ConfigError(f"{option} {path}: {error.strerror}") from None


def _public_key(path: str) -> bytes:
    data = _read(path, "--pubkey")
    try:
        if b"-----BEGIN" in data:
            key = serialization.load_pem_public_key(data)
        else:
            key = serialization.load_der_public_key(data)
    except (ValueError, TypeError):
        raise ConfigError(f"--pubkey {path}: not a PEM or DER public key") from None
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _serial(text: str) -> int:
    try:
        return serial_from_hex(text)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def _time(ts: Timestamp) -> str:
    return ts.ToDatetime(tzinfo=UTC).isoformat()
