"""`jpki-va health`: a signer's or responder's gRPC health (grpc.health.v1), as a
container HEALTHCHECK or a Kubernetes exec probe asks it.

Exit 0 when SERVING, 1 when NOT_SERVING or the service is unknown, 4 when there is no
answer. The probe runs inside the container against 127.0.0.1, so over mTLS it needs
a client certificate from the role's client CA and, usually, `--tls-server-name` for
the name in the server certificate. Every option defaults to a `JPKI_VA_HEALTH_*`
environment variable, so an image's HEALTHCHECK line is the same in every deployment
and the deployment sets the files.
"""

from __future__ import annotations

import argparse
import os

import grpc

from jpki_va.core.cli import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    duration_seconds,
    exit_codes_epilog,
    fail,
    host_port,
)
from jpki_va.server.app.config import ConfigError
from jpki_va.server.cmd.lazy import lazy
from jpki_va.server.cmd.signer_client import SubParsers, channel_to

ENV = "JPKI_VA_HEALTH_"


def _env(name: str) -> str | None:
    return os.environ.get(ENV + name) or None


def add_health_command(sub: SubParsers) -> None:
    health = sub.add_parser(
        "health",
        help="ask a signer or responder whether it serves (grpc.health.v1)",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        epilog=exit_codes_epilog(
            EXIT_OK,
            EXIT_FAILED,
            EXIT_USAGE,
            EXIT_UNREACHABLE,
            words={EXIT_OK: "SERVING", EXIT_FAILED: "NOT_SERVING or unknown service"},
        ),
    )
    health.add_argument(
        "--server", type=host_port, default=_env("SERVER"), metavar="HOST:PORT",
        help="the signer's or responder's gRPC address",
    )  # fmt: skip
    health.add_argument(
        "--service", default=_env("SERVICE") or "",
        help="a service or part (jpki-va.ingest, jpki-va.publish); default: the server as a whole",
    )  # fmt: skip
    health.add_argument(
        "--timeout", type=duration_seconds, default=_env("TIMEOUT") or 5.0, metavar="DURATION",
        help="deadline of the call (default 5s)",
    )  # fmt: skip
    tls = health.add_argument_group("transport ($JPKI_VA_HEALTH_CA, _CLIENT_CERT, ...)")
    tls.add_argument("--ca", default=_env("CA"), metavar="FILE", help="PEM roots of the server")
    tls.add_argument("--client-cert", default=_env("CLIENT_CERT"), metavar="FILE")
    tls.add_argument("--client-key", default=_env("CLIENT_KEY"), metavar="FILE")
    tls.add_argument(
        "--tls-server-name", default=_env("TLS_SERVER_NAME"), metavar="NAME",
        help="the name the server certificate carries, when it is not the address's",
    )  # fmt: skip
    tls.add_argument(
        "--insecure-loopback", action="store_true", default=bool(_env("INSECURE_LOOPBACK")),
        help="plaintext to 127.0.0.1 (demos, tests)",
    )  # fmt: skip
    health.set_defaults(func=lazy("jpki_va.server.cmd.health:run_health"))


def run_health(args: argparse.Namespace) -> int:
    # Here, not at the top: `jpki-va --help` loads no health stubs.
    from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: PLC0415

    prog = "jpki-va health"
    if args.server is None:
        fail(prog, "--server HOST:PORT is required (or JPKI_VA_HEALTH_SERVER)")
        return EXIT_USAGE
    options = (
        () if args.tls_server_name is None
        else (("grpc.ssl_target_name_override", args.tls_server_name),)
    )  # fmt: skip
    try:
        channel = channel_to(args.server, args, options)
    except ConfigError as exc:
        fail(prog, str(exc))
        return EXIT_USAGE
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
            details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            fail(prog, f"{args.server}: {code.name}: {details}")
            return EXIT_FAILED if code is grpc.StatusCode.NOT_FOUND else EXIT_UNREACHABLE
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{args.server} {args.service or '(server)'}: {status}")
    return EXIT_OK if reply.status == health_pb2.HealthCheckResponse.SERVING else EXIT_FAILED
