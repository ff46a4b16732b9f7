"""`jpki-va balancer envoy-config`: the Envoy bootstrap for a fleet of replicas."""

from __future__ import annotations

import argparse
from pathlib import Path

from jpki_va.core.cli import (
    EXIT_OK,
    EXIT_USAGE,
    duration_seconds,
    exit_codes_epilog,
    host_port,
    parse_host_port,
)
from jpki_va.server.app.config import ConfigError
from jpki_va.server.app.envoy_config import Balancing, Replica, render
from jpki_va.server.cmd.signer_client import SubParsers


def add_balancer_commands(sub: SubParsers) -> None:
    balancer = sub.add_parser(
        "balancer",
        help="configuration for the balancer of a fleet",
        epilog=exit_codes_epilog(EXIT_OK, EXIT_USAGE),
    )
    commands = balancer.add_subparsers(dest="balancer_command", required=True, metavar="WHAT")
    envoy = commands.add_parser(
        "envoy-config",
        help="an Envoy bootstrap balancing gRPC and HTTP OCSP over the replicas, with "
        "active gRPC (grpc.health.v1) and HTTP health checks",
        epilog=exit_codes_epilog(EXIT_OK, EXIT_USAGE),
    )
    envoy.add_argument(
        "--replica", action="append", required=True, metavar="GRPC_HOST:PORT,HTTP_HOST:PORT",
        help="a responder replica's --listen and --http-listen; repeatable",
    )  # fmt: skip
    defaults = Balancing()
    for flag, default, text in (
        ("--grpc-listen", defaults.grpc_listen, "gRPC for verifiers"),
        ("--http-listen", defaults.http_listen, "HTTP OCSP and CRLs"),
        ("--admin-listen", defaults.admin_listen, "Envoy's admin (stats, health)"),
    ):
        envoy.add_argument(
            flag, type=host_port, default=default, metavar="HOST:PORT",
            help=f"{text} (default {default})",
        )  # fmt: skip
    envoy.add_argument(
        "--check-interval", type=duration_seconds, default=defaults.check_interval,
        metavar="DURATION", help="between health checks of each replica (default 500ms)",
    )  # fmt: skip
    envoy.add_argument(
        "--retries", type=int, default=defaults.retries,
        help="a failed call is tried again this many times, each on another replica",
    )  # fmt: skip
    envoy.add_argument("--output", metavar="FILE", help="write here (default stdout)")
    envoy.set_defaults(func=run_envoy_config)


def _replica(text: str) -> Replica:
    grpc_address, sep, http_address = text.partition(",")
    try:
        if not sep:
            raise ValueError("give GRPC_HOST:PORT,HTTP_HOST:PORT")
        return Replica(parse_host_port(grpc_address), parse_host_port(http_address))
    except ValueError as exc:
        raise ConfigError(f"--replica {text!r}: {exc}") from None


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
