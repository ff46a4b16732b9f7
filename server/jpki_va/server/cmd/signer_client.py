"""`jpki-va registry …`: operators' calls into the signer's registry.

Each part of the registry registers its own subcommands on the group made here, so
they live in their own modules (verifiers: jpki_va.server.cmd.verifiers).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from jpki_va.client._probe import mismatch, not_the_service
from jpki_va.core.cli import (
    EXIT_HSM_UNAVAILABLE,
    EXIT_OK,
    EXIT_SERVER,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    duration_seconds,
    exit_codes_epilog,
    fail,
    host_port,
)
from jpki_va.core.loopback import VERIFIER_HEADER, is_loopback_target
from jpki_va.server.app.config import ConfigError

if TYPE_CHECKING:
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]
else:  # not subscriptable at run time
    SubParsers = argparse._SubParsersAction


def add_registry_group(sub: SubParsers) -> SubParsers:
    registry = sub.add_parser(
        "registry",
        help="operator calls into the signer's registry",
        epilog=exit_codes_epilog(
            EXIT_OK, EXIT_USAGE, EXIT_SERVER, EXIT_UNREACHABLE, EXIT_HSM_UNAVAILABLE
        ),
    )
    add_signer_connection(registry)
    return registry.add_subparsers(dest="registry_command", required=True, metavar="SUBJECT")


_CONNECTION_DEFAULTS: dict[str, object] = {
    "ca": None,
    "client_cert": None,
    "client_key": None,
    "insecure_loopback": False,
    "timeout": 30.0,
}


def add_signer_connection(parser: argparse.ArgumentParser) -> None:
    """The signer connection options.

    They are accepted before the subcommand (`jpki-va registry --signer H:P lose …`)
    and after it; SUPPRESS keeps a later parser from overwriting an earlier value with
    its default, and `rpc_errors` fills in the defaults of what was not given.
    """
    group = parser.add_argument_group("signer connection")
    keep = argparse.SUPPRESS
    group.add_argument(
        "--signer", default=keep, type=host_port, metavar="HOST:PORT", help="signer address"
    )
    group.add_argument("--ca", default=keep, metavar="FILE", help="PEM roots of the signer's TLS")
    group.add_argument(
        "--client-cert", default=keep, metavar="FILE", help="PEM client certificate (mTLS)"
    )
    group.add_argument("--client-key", default=keep, metavar="FILE", help="PEM client key (mTLS)")
    group.add_argument(
        "--insecure-loopback",
        action="store_true",
        default=keep,
        help="plaintext to 127.0.0.1 (demos, tests)",
    )
    group.add_argument(
        "--timeout", type=duration_seconds, default=keep, metavar="DURATION",
        help="deadline of each call (default 30s)",
    )  # fmt: skip


def _complete_connection(args: argparse.Namespace) -> None:
    if getattr(args, "signer", None) is None:
        raise ConfigError("--signer HOST:PORT is required")
    for name, default in _CONNECTION_DEFAULTS.items():
        if not hasattr(args, name):
            setattr(args, name, default)


def _read(path: str | None, option: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{option} {path}: {exc.strerror}") from None


def signer_channel(args: argparse.Namespace) -> grpc.Channel:
    return channel_to(args.signer, args)


def channel_to(
    target: str, args: argparse.Namespace, options: tuple[tuple[str, str], ...] = ()
) -> grpc.Channel:
    """mTLS from --ca, --client-cert and --client-key, or --insecure-loopback plaintext."""
    if args.insecure_loopback:
        if args.ca or args.client_cert or args.client_key:
            raise ConfigError("--insecure-loopback cannot be combined with TLS options")
        if not is_loopback_target(target):
            raise ConfigError(f"--insecure-loopback only connects to loopback, not {target}")
        return grpc.insecure_channel(target, options=options)
    if args.client_cert is None or args.client_key is None:
        raise ConfigError("--client-cert and --client-key are required (or --insecure-loopback)")
    credentials = grpc.ssl_channel_credentials(
        _read(args.ca, "--ca"),
        _read(args.client_key, "--client-key"),
        _read(args.client_cert, "--client-cert"),
    )
    return grpc.secure_channel(target, credentials, options=options)


def demo_identity(args: argparse.Namespace) -> tuple[tuple[str, str | bytes], ...]:
    """Metadata naming the verifier on a plaintext loopback channel (demos, tests)."""
    verifier = getattr(args, "verifier", None)
    if verifier is None:
        return ()
    if not args.insecure_loopback:
        raise ConfigError("--verifier is for --insecure-loopback; with TLS the certificate says")
    return ((VERIFIER_HEADER, verifier),)


def _cause(exc: grpc.Call) -> str | None:
    """The signer's word on why it is UNAVAILABLE (none from a signer not reached)."""
    # Here, not at the top: the server's rpc package stays out of `jpki-va --help`.
    from jpki_va.server.rpc.server_common import CAUSE  # noqa: PLC0415

    return next((str(value) for key, value in exc.trailing_metadata() or () if key == CAUSE), None)


def _hsm_unavailable(cause: str | None) -> bool:
    from jpki_va.server.rpc.server_common import HSM_UNAVAILABLE  # noqa: PLC0415

    return cause == HSM_UNAVAILABLE


def _explain(args: argparse.Namespace, code: grpc.StatusCode) -> str | None:
    """A wrong address or transport, named with the flag that fixes it."""
    if code == grpc.StatusCode.UNAVAILABLE:
        return mismatch(args.signer, used_tls=not args.insecure_loopback, role="signer")
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return not_the_service(args.signer, "jpki.va.v1.SignerService", "signer", "responder")
    return None


def rpc_errors(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """gRPC errors become one line on stderr and exit code 3 (4: no answer; 5: the
    signer answered that its HSM is unavailable)."""

    def wrapped(args: argparse.Namespace) -> int:
        _complete_connection(args)
        try:
            return run(args)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
            details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            cause = _cause(exc) if isinstance(exc, grpc.Call) else None
            if _hsm_unavailable(cause):
                fail(
                    f"jpki-va {args.command}",
                    "the signer is up but its HSM is not, so nothing was done; retry when "
                    f"the HSM is back ({details})",
                )
                return EXIT_HSM_UNAVAILABLE
            fail(f"jpki-va {args.command}", _explain(args, code) or f"{code.name}: {details}")
            unreachable = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
            # A cause is the signer's own answer (its snapshot store down, say).
            return EXIT_UNREACHABLE if code in unreachable and cause is None else EXIT_SERVER

    return wrapped
