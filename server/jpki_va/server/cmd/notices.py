"""`jpki-va registry notices list|mark-sent`: the outbox of notices to holders.

第15条第2項, 第16条の14第2項, 第34条第2項, 第35条の14第2項: a holder whose certificate
lost effect by a record error is told so. The signer delivers each notice through
its channel (printable files in a spool by default, or a webhook); an operator who
mailed a spooled one records that it was sent with `mark-sent`.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from jpki_va.core.domain import CertKind, serial_hex
from jpki_va.protos import signer_pb2, signer_pb2_grpc
from jpki_va.server.app.config import ConfigError
from jpki_va.server.cmd.signer_client import (
    SubParsers,
    add_signer_connection,
    rpc_errors,
    signer_channel,
)


def add_notice_commands(registry: SubParsers) -> None:
    notices = registry.add_parser("notices", help="notices to holders (第15条第2項 and its twins)")
    commands = notices.add_subparsers(dest="notices_command", required=True, metavar="ACTION")

    listing = commands.add_parser("list", help="the outbox, oldest first")
    listing.add_argument("--pending", action="store_true", help="only notices not yet sent")
    listing.add_argument("--json", action="store_true", help="one JSON array")
    add_signer_connection(listing)
    listing.set_defaults(func=rpc_errors(run_list))

    sent = commands.add_parser("mark-sent", help="record that a notice was sent to its holder")
    sent.add_argument("--id", required=True, type=_notice_id, help="the notice's number")
    sent.add_argument("--json", action="store_true", help="one JSON object")
    add_signer_connection(sent)
    sent.set_defaults(func=rpc_errors(run_mark_sent))


def _notice_id(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a notice number (1 or more), got {text!r}")
    return int(text)


def _time(ts: Timestamp) -> str:
    return ts.ToDatetime(tzinfo=UTC).isoformat()


def notice_json(notice: signer_pb2.HolderNotice) -> dict[str, Any]:
    return {
        "id": notice.id,
        "kind": CertKind(notice.kind).name,
        "serial": serial_hex(int.from_bytes(notice.serial, "big")),
        "article": notice.article,
        "name": notice.name,
        "address": notice.address,
        "municipality_code": notice.municipality_code,
        "lost_at": _time(notice.lost_at),
        "text": notice.text,
        "delivered_at": _time(notice.delivered_at) if notice.HasField("delivered_at") else None,
        "delivery": notice.delivery or None,
        "sent_at": _time(notice.sent_at) if notice.HasField("sent_at") else None,
    }


def _line(row: dict[str, Any]) -> str:
    state = f"sent {row['sent_at']}" if row["sent_at"] else "PENDING"
    where = row["delivery"] or "not delivered yet"
    return (
        f"{row['id']}\t{state}\t{row['kind']} {row['serial']}\t{row['article']}\t"
        f"{row['name']}\t{where}"
    )


def run_list(args: argparse.Namespace) -> int:
    with signer_channel(args) as channel:
        reply = signer_pb2_grpc.SignerServiceStub(channel).ListNotices(
            signer_pb2.ListNoticesRequest(pending_only=args.pending), timeout=args.timeout
        )
    rows = [notice_json(n) for n in reply.notices]
    if args.json:
        print(json.dumps(rows, ensure_ascii=False))
    elif not rows:
        print("no pending notices" if args.pending else "no notices")
    else:
        print("\n".join(_line(r) for r in rows))
    return 0


def run_mark_sent(args: argparse.Namespace) -> int:
    if args.timeout <= 0:
        raise ConfigError("--timeout must be positive")
    with signer_channel(args) as channel:
        reply = signer_pb2_grpc.SignerServiceStub(channel).MarkNoticeSent(
            signer_pb2.MarkNoticeSentRequest(id=args.id), timeout=args.timeout
        )
    row = notice_json(reply.notice)
    print(json.dumps(row, ensure_ascii=False) if args.json else _line(row))
    return 0
