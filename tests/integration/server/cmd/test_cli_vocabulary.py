"""One CLI vocabulary: kinds in every spelling, one duration syntax, the same option
names for the same thing in every command, exit codes in every --help."""

from __future__ import annotations

import argparse
import subprocess
from datetime import timedelta

import pytest

from jpki_va.core.cli import EXIT_USAGE, parse_duration
from jpki_va.server.cmd.main import build_parser
from tests.support import JPKI_VA


@pytest.mark.parametrize("spelling", ["card-sign", "CARD_SIGN", "card_sign", "Card-Sign"])
@pytest.mark.parametrize(
    "argv",
    [
        ["check", "--server", "127.0.0.1:1", "--serial", "01", "--kind"],
        ["crl", "--server", "127.0.0.1:1", "--kind"],
        ["registry", "lose", "--serial", "01", "--cause", "HOLDER_REQUEST", "--kind"],
        ["hsm", "ca", "rotate", "--data-dir", "d", "--kind"],
    ],
)
def test_a_kind_in_every_spelling_the_project_prints(argv: list[str], spelling: str) -> None:
    args = build_parser().parse_args([*argv, spelling])
    assert args.kind == "card-sign"


def test_durations_share_one_syntax() -> None:
    assert parse_duration("500ms") == timedelta(milliseconds=500)
    assert parse_duration("5s") == parse_duration("5") == parse_duration(5) == timedelta(seconds=5)
    assert parse_duration("90m") == timedelta(minutes=90)
    assert parse_duration("24h") == timedelta(days=1)
    assert parse_duration("3650d") == timedelta(days=3650)
    for bad in ("a week", "-5s", "5y", "", True):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad)


def test_seconds_options_take_durations() -> None:
    parser = build_parser()
    check = parser.parse_args(["check", "--server", "h:1", "--kind", "card-auth", "--serial", "1",
                               "--timeout", "1500ms"])  # fmt: skip
    assert check.timeout == 1.5
    lose = parser.parse_args(
        ["registry", "--signer", "h:2", "--timeout", "1m", "lose", "--kind", "card-auth",
         "--serial", "1", "--cause", "holder-request"]
    )  # fmt: skip
    assert lose.timeout == 60.0


def test_hsm_options_are_named_alike_in_signer_and_hsm() -> None:
    parser = build_parser()
    hsm = [
        "--hsm-module",
        "m.so",
        "--hsm-token",
        "t",
        "--hsm-pin-file",
        "p",
        "--softhsm2-conf",
        "c",
    ]
    signer = parser.parse_args(["signer", *hsm])
    keys = parser.parse_args(["hsm", "keys", "list", *hsm])
    ceremony = parser.parse_args(["hsm", "ceremony", "run", "x.toml", *hsm])
    for args in (signer, keys, ceremony):
        assert (args.hsm_module, args.hsm_token, args.hsm_pin_file, args.softhsm2_conf) == (
            "m.so", "t", "p", "c",
        )  # fmt: skip
    # The spellings of earlier releases still work, unlisted.
    old = parser.parse_args(["hsm", "keys", "list", "--module", "m.so", "--token", "t",
                             "--pin-env", "E"])  # fmt: skip
    assert (old.hsm_module, old.hsm_token, old.hsm_pin_env) == ("m.so", "t", "E")
    assert parser.parse_args(["demo", "--dir", "x"]).data_dir.name == "x"


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every leaf command with the epilog of itself or of the group it sits in."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                if name == "bench":  # the bench's own parser, loaded when it runs
                    continue
                found.append((*path, name))
                found += _commands(child, (*path, name))
    return found


def test_every_command_documents_its_exit_codes() -> None:
    parser = build_parser()
    assert "exit codes: 0 done" in (parser.epilog or "")
    missing = []
    for path in _commands(parser):
        node = parser
        epilogs = []
        for name in path:
            sub = next(a for a in node._actions if isinstance(a, argparse._SubParsersAction))
            node = sub.choices[name]
            epilogs.append(node.epilog or "")
        if not any("exit codes:" in e for e in epilogs):
            missing.append(" ".join(path))
    assert not missing


@pytest.mark.parametrize(
    "argv",
    [
        ["check", "--kind", "card-sign", "--serial", "01", "--server", "localhost"],
        ["registry", "--signer", "127.0.0.1", "--insecure-loopback", "verifier", "list"],
    ],
)
def test_an_address_without_a_port_is_an_error_not_port_443(argv: list[str]) -> None:
    result = subprocess.run(
        [*JPKI_VA, *argv], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == EXIT_USAGE
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("jpki-va ") and ": error: " in last and "needs a port" in last
