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
from jpki_va.server.app.envoy_config import REPLICA_NAME, Balancing, EnvoyTls, Replica, render
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
    tls = envoy.add_argument_group(
        "TLS (replicas beyond loopback; all of the files, or none)",
        "Envoy verifies the verifiers' client certificates and passes each on to the "
        "replica in x-forwarded-client-cert; the replicas trust it from --proxy-cert only",
    )
    for flag, text in _TLS_FILES:
        tls.add_argument(flag, metavar="FILE", help=text)
    tls.add_argument(
        "--replica-name", default=REPLICA_NAME, metavar="DNS",
        help=f"the name in every replica's server certificate (default {REPLICA_NAME})",
    )  # fmt: skip
    envoy.set_defaults(func=run_envoy_config)


_TLS_FILES = (
    ("--tls-cert", "Envoy's server certificate chain for verifiers (PEM)"),
    ("--tls-key", "its private key (PEM)"),
    ("--client-ca", "the CA of the verifiers' client certificates (PEM)"),
    ("--replica-ca", "the CA of the replicas' server certificates (PEM)"),
    ("--proxy-cert", "Envoy's client certificate to the replicas (their --trusted-proxy-cert)"),
    ("--proxy-key", "its private key (PEM)"),
)


def _tls(args: argparse.Namespace) -> EnvoyTls | None:
    names = [flag[2:].replace("-", "_") for flag, _ in _TLS_FILES]
    given = [getattr(args, name) for name in names]
    if not any(given):
        return None
    if not all(given):
        raise ConfigError(" ".join(flag for flag, _ in _TLS_FILES) + " go together")
    for (flag, _), value in zip(_TLS_FILES, given, strict=True):
        if not Path(value).is_file():
            raise ConfigError(f"{flag} {value} does not exist")
    cert, key, client_ca, replica_ca, proxy_cert, proxy_key = (Path(v).resolve() for v in given)
    return EnvoyTls(
        cert, key, client_ca, replica_ca, proxy_cert, proxy_key, replica_name=args.replica_name
    )


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
                tls=_tls(args),
            ),
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        print(text, end="")
    return 0
