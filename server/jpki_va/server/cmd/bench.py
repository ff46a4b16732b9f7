"""`jpki-va bench …`: hands the rest of the command line to the bench harness.

The bench is a distribution of its own (the `bench` extra), absent from the responder
image; it is imported only when this command runs, and its own parser reads the
arguments, so `jpki-va bench --help` shows the bench's steps.
"""

from __future__ import annotations

import argparse

from jpki_va.core.cli import EXIT_USAGE, fail
from jpki_va.server.cmd.signer_client import SubParsers


def add_bench_command(sub: SubParsers) -> None:
    bench = sub.add_parser(
        "bench",
        help="benchmark harness (data, load, ceilings, peers); needs the bench extra",
        add_help=False,
        prefix_chars="\0",  # every argument, options included, is the bench's own
    )
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    bench.set_defaults(func=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    try:
        from jpki_va.bench.cli import add_commands  # noqa: PLC0415 (optional, and heavy)
    except ImportError as exc:
        fail(
            "jpki-va bench",
            f"the bench harness is not installed ({exc.name}); "
            "install the bench extra: pip install 'jpki-va[bench]'",
        )
        return EXIT_USAGE
    parser = argparse.ArgumentParser(prog="jpki-va")
    add_commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    bench_args = parser.parse_args(["bench", *args.bench_args])
    code: int = bench_args.func(bench_args)
    return code
