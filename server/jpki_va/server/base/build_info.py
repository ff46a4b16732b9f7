"""`jpki_va_build_info`: which release and Python a process runs, for dashboards."""

from __future__ import annotations

import platform
from importlib import metadata

from prometheus_client import CollectorRegistry, Info


def version() -> str:
    """The installed jpki-va release ("unknown" when run from a bare source tree)."""
    try:
        return metadata.version("jpki-va")
    except metadata.PackageNotFoundError:
        return "unknown"


def register_build_info(registry: CollectorRegistry, role: str) -> None:
    Info(
        "jpki_va_build",
        "The jpki-va release, the role and the Python that runs it (always 1).",
        registry=registry,
    ).info({"version": version(), "role": role, "python": platform.python_version()})
