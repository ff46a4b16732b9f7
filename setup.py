"""Builds the compiled twins of four hot paths (Cython, optional at install).

- `rpc/_batch_wire.pyx`: the CheckStream encoder (the reference: rpc/batch_wire.py);
- `ledger/_counter_cells.pyx`: the provision ledger's counter cells, one atomic add per
  counted answer (the reference: ledger/counter_cells.py's PyCells);
- `responder/_ocsp_miss.pyx`: an OCSP cache miss's byte work, the usual request read
  and a pre-produced response judged and framed (the references:
  pki/ocsp_wire.usual_request and responder/preproduced.py_served);
- `responder/_lmdb_pages.pyx`: a batch of index lookups walked side by side over the
  mapped LMDB file (the reference: LMDB's own `get`, which answers wherever it is
  missing or declines; responder/lmdb_pages.py).

Everything else about the distribution is in pyproject.toml. The extensions are
optional: where no C compiler (or no Cython) is present, the install goes on with a
warning and the pure-Python twins serve. tests/unit/server/rpc and
tests/unit/server/ledger fail when a compiled module is missing from the installed
tree, so a broken build cannot pass unnoticed where a compiler is expected.
"""

from __future__ import annotations

import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

_EXTENSIONS = {
    "jpki_va.server.rpc._batch_wire": "server/jpki_va/server/rpc/_batch_wire.pyx",
    "jpki_va.server.ledger._counter_cells": "server/jpki_va/server/ledger/_counter_cells.pyx",
    "jpki_va.server.responder._ocsp_miss": "server/jpki_va/server/responder/_ocsp_miss.pyx",
    "jpki_va.server.responder._lmdb_pages": "server/jpki_va/server/responder/_lmdb_pages.pyx",
}


class _OptionalBuildExt(build_ext):
    """build_ext that warns instead of failing when the C toolchain is missing."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # any toolchain failure: fall back
            _warn("the compiled modules", exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            _warn(ext.name, exc)


def _warn(name: str, exc: BaseException) -> None:
    print(f"warning: {name} not built ({exc}); the pure-Python twin will serve", file=sys.stderr)


try:
    from Cython.Build import cythonize
except ImportError:  # pip's isolated build has it (pyproject); a bare setup.py may not
    cythonize = None


def _extensions() -> list[Extension]:
    if cythonize is None:
        _warn("the compiled modules", ImportError("Cython is not installed"))
        return []
    return cythonize(
        [
            Extension(name, [source], extra_compile_args=["-O2"])
            for name, source in _EXTENSIONS.items()
        ],
        compiler_directives={"language_level": "3"},
        quiet=True,
    )


setup(ext_modules=_extensions(), cmdclass={"build_ext": _OptionalBuildExt})
