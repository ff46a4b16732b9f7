"""Builds the compiled twin of the CheckStream encoder (server/.../rpc/_batch_wire.pyx).

Everything else about the distribution is in pyproject.toml. The extension is
optional: where no C compiler (or no Cython) is present, the install goes on with a
warning and the pure-Python encoder (rpc/batch_wire.py) serves. tests/unit/server/rpc
fails when the compiled module is missing from the installed tree, so a broken build
cannot pass unnoticed where a compiler is expected.
"""

from __future__ import annotations

import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

_SOURCE = "server/jpki_va/server/rpc/_batch_wire.pyx"
_NAME = "jpki_va.server.rpc._batch_wire"


class _OptionalBuildExt(build_ext):
    """build_ext that warns instead of failing when the C toolchain is missing."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # any toolchain failure: fall back
            _warn(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            _warn(exc)


def _warn(exc: BaseException) -> None:
    print(
        f"warning: {_NAME} not built ({exc}); the pure-Python encoder will serve",
        file=sys.stderr,
    )


try:
    from Cython.Build import cythonize
except ImportError:  # pip's isolated build has it (pyproject); a bare setup.py may not
    cythonize = None


def _extensions() -> list[Extension]:
    if cythonize is None:
        _warn(ImportError("Cython is not installed"))
        return []
    return cythonize(
        [Extension(_NAME, [_SOURCE], extra_compile_args=["-O2"])],
        compiler_directives={"language_level": "3"},
        quiet=True,
    )


setup(ext_modules=_extensions(), cmdclass={"build_ext": _OptionalBuildExt})
