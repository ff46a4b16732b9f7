"""The command-line vocabulary every jpki-va command shares.

One parser per kind of value, so `jpki-va signer`, `responder`, `hsm`, `registry`,
`demo`, the verifier commands and `jpki-va-client` read a kind, a duration or an
address alike; one error line; one table of exit codes. Standard library only: the
verifier's distribution ships it.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from jpki_va.core.domain import SluggedEnum

#: Exit codes, the same for every command. README.md's table and each command's
#: --help epilog are made from this.
EXIT_OK = 0
EXIT_FAILED = 1  # the operation failed or was refused; `token verify`: not valid
EXIT_USAGE = 2  # bad options, input or configuration; a role that cannot start
EXIT_SERVER = 3  # the server answered with an error
EXIT_UNREACHABLE = 4  # no answer from the server (down, wrong port, wrong transport)
EXIT_HSM_UNAVAILABLE = 5  # the signer answered, but its HSM did not: nothing was done
EXIT_INTERRUPTED = 130  # Ctrl-C before a command finished (the roles stop cleanly: 0)

EXIT_CODES: dict[int, str] = {
    EXIT_OK: "done",
    EXIT_FAILED: "failed or refused",
    EXIT_USAGE: "usage, input or configuration error",
    EXIT_SERVER: "the server answered with an error",
    EXIT_UNREACHABLE: "no answer from the server",
    EXIT_HSM_UNAVAILABLE: "the signer's HSM is unavailable, nothing was done",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
}


def exit_codes_epilog(*codes: int, words: dict[int, str] | None = None) -> str:
    """The --help epilog listing ``codes``; ``words`` says what some mean for one command."""
    said = {**EXIT_CODES, **(words or {})}
    return "exit codes: " + ", ".join(f"{code} {said[code]}" for code in codes)


def error_line(prog: str, message: str) -> str:
    """``jpki-va signer: error: …``: argparse's own usage errors look the same."""
    return f"{prog}: error: {message}"


def fail(prog: str, message: str) -> None:
    """Print the one error line of a command on stderr."""
    print(error_line(prog, message), file=sys.stderr, flush=True)


def warn(prog: str, message: str) -> None:
    print(f"{prog}: warning: {message}", file=sys.stderr, flush=True)


# -- kinds, causes, roles: every spelling the project prints ------------------------------


def slug_choice(
    cls: type[SluggedEnum], members: Iterable[SluggedEnum] | None = None
) -> dict[str, Any]:
    """``type`` and ``metavar`` for ``--kind`` and its like: a member in any spelling the
    project prints (``card-sign``, ``CARD_SIGN``, ``card_sign``) becomes its slug, the
    form the commands store; --help shows the slugs.

        parser.add_argument("--kind", **slug_choice(CertKind))
    """
    allowed = list(cls) if members is None else list(members)
    slugs = [m.slug for m in allowed]

    def parse(text: str) -> str:
        try:
            slug = cls.from_slug(text).slug
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        if slug not in slugs:
            raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(slugs)}")
        return slug

    parse.__name__ = cls.__name__  # argparse names the type in its messages
    return {"type": parse, "metavar": "{" + ",".join(slugs) + "}"}


# -- durations -----------------------------------------------------------------------------

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
DURATION_SYNTAX = "a duration like 500ms, 5s, 90m, 24h or 3650d (a bare number: seconds)"


def parse_duration(value: str | float) -> timedelta:
    """``500ms``, ``5s``, ``90m``, ``24h``, ``3650d``, or a number of seconds.

    The one duration syntax of every option, TOML setting and ceremony config.
    Raises ValueError naming the syntax.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected {DURATION_SYNTAX}, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(value.strip().lower())
        if match is None:
            raise ValueError(f"expected {DURATION_SYNTAX}, got {value!r}")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2) or "s"]
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative, got {value!r}")
    return timedelta(seconds=seconds)


def duration_seconds(text: str) -> float:
    """An argparse ``type``: a duration, in seconds."""
    try:
        return parse_duration(text).total_seconds()
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


duration_seconds.__name__ = "duration"


# -- addresses -----------------------------------------------------------------------------


def parse_host_port(text: str) -> str:
    """``HOST:PORT`` with an explicit port (``[::1]:50051`` for IPv6).

    gRPC would take a bare host as port 443; a responder never listens there, so a
    forgotten port is an error here rather than a timeout later.
    """
    value = text.strip()
    host, sep, port = value.rpartition(":")
    if value.startswith("[") and not host.endswith("]"):
        host, sep, port = value, "", ""
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError(f"{text!r} needs a port: HOST:PORT, e.g. 127.0.0.1:50051")
    return value


def host_port(text: str) -> str:
    """An argparse ``type``: ``HOST:PORT``."""
    try:
        return parse_host_port(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


host_port.__name__ = "address"
