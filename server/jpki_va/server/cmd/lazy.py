"""Command handlers named by their import path and loaded when their command runs.

Every start of `jpki-va` builds the whole parser. Importing each command's code at
that point would load lmdb, python-pkcs11 and the gRPC server for `--help` or for a
verifier's `check`; a handler named ``"module:function"`` costs nothing until used.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable


def lazy(target: str) -> Callable[[argparse.Namespace], int]:
    """The handler ``module:function``, imported on its first call."""
    module_name, _, function = target.partition(":")
    if not module_name or not function:
        raise ValueError(f"handler {target!r} must look like 'package.module:function'")

    def run(args: argparse.Namespace) -> int:
        handler: Callable[[argparse.Namespace], int] = getattr(
            importlib.import_module(module_name), function
        )
        return handler(args)

    return run
