"""`jpki-va balancer envoy-config`: the Envoy bootstrap for a fleet of replicas."""

from __future__ import annotations

import argparse
from pathlib import Path

from jpki_va.server.app.config import ConfigError
from jpki_va.server.app.envoy_config import Balancing, Replica, render
from jpki_va.server.cmd.signer_client import SubParsers


def add_balancer_commands(sub: SubParsers) -> None:
    balancer = sub.add_parser("balancer", help="configuration for the balancer of a fleet")
    commands = balancer.add_subparsers(dest="balancer_command", required=True, metavar="WHAT")
    envoy = commands.add_parser(
        "envoy-config",
        help="an Envoy bootstrap balancing gRPC and HTTP OCSP over the replicas, with "
        "active gRPC (grpc.health.v1) and HTTP health checks",
    )
    envoy.add_argument(
        "--replica", action="append", required=True, metavar="GRPC_HOST:PORT,HTTP_HOST:PORT",
        help="a responder replica's --listen and --http-listen; repeatable",
    )  # fmt: skip
    defaults = Balancing()
    envoy.add_argument("--grpc-listen", default=defaults.grpc_listen, help="for verifiers")
    envoy.add_argument("--http-listen", default=defaults.http_listen, help="HTTP OCSP, CRLs")
    envoy.add_argument("--admin-listen", default=defaults.admin_listen, help="Envoy's admin")
    envoy.add_argument(
        "--check-interval", type=float, default=defaults.check_interval,
        help="seconds between health checks of each replica",
    )  # fmt: skip
    envoy.add_argument(
        "--retries", type=int, default=defaults.retries,
        help="a failed call is tried again this many times, each on another replica",
    )  # fmt: skip
    envoy.add_argument("--output", metavar="FILE", help="write here (default stdout)")
    envoy.set_defaults(func=run_envoy_config)


def _replica(text: str) -> Replica:
    grpc_address, sep, http_address = text.partition(",")
    if not sep or not grpc_address or not http_address:
        raise ConfigError(f"--replica {text!r}: give GRPC_HOST:PORT,HTTP_HOST:PORT")
    return Replica(grpc_address.strip(), http_address.strip())


def run_envoy_config(args: argparse.Namespace) -> int:
    try:
        text = render(
            [_replica(r) for r in args.replica],
            Balancing(
                grpc_listen=args.grpc_listen,
                http_listen=args.http_listen,
                admin_listen=args.admin_listen,
                check_interval=args.check_interval,
                retries=args.retries,
            ),
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        print(text, end="")
    return 0
