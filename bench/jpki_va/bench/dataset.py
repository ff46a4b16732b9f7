"""Where a generated data set keeps its parts, and what it says about itself.

A data set directory is self-contained: the SoftHSM2 token with the CA keys, the
signer's data directory (registry + snapshots), the root certificate, the serial
pool the load draws from, signed sample certificates and the peers' inputs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jpki_va import hsm
from jpki_va.core.domain import CertKind

INFO = "dataset.json"
POOL = "pool.json"
CATEGORIES = ("good", "revoked", "unknown")


class DataSetError(Exception):
    """The directory is not a (complete) generated data set."""


@dataclass(frozen=True)
class Pool:
    """Serials the load draws from, by category: (kind, serial) pairs."""

    good: list[tuple[CertKind, int]]
    revoked: list[tuple[CertKind, int]]
    unknown: list[tuple[CertKind, int]]

    def category(self, name: str) -> list[tuple[CertKind, int]]:
        if name not in CATEGORIES:
            raise ValueError(f"unknown category {name!r}")
        items: list[tuple[CertKind, int]] = getattr(self, name)
        return items

    def to_json(self) -> dict[str, Any]:
        return {name: [[int(k), s] for k, s in self.category(name)] for name in CATEGORIES}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Pool:
        def pairs(name: str) -> list[tuple[CertKind, int]]:
            return [(CertKind(k), int(s)) for k, s in data[name]]

        return cls(good=pairs("good"), revoked=pairs("revoked"), unknown=pairs("unknown"))


@dataclass(frozen=True)
class DataSet:
    root: Path

    @property
    def hsm_dir(self) -> Path:
        return self.root / "hsm"

    @property
    def signer_dir(self) -> Path:
        """The signer's --data-dir: registry/ and snapshots/ inside."""
        return self.root / "signer"

    @property
    def registry_dir(self) -> Path:
        return self.signer_dir / "registry"

    @property
    def snapshot_dir(self) -> Path:
        return self.signer_dir / "snapshots"

    @property
    def responder_dir(self) -> Path:
        return self.root / "responder"

    @property
    def root_pem(self) -> Path:
        return self.root / "root.pem"

    @property
    def samples_dir(self) -> Path:
        return self.root / "samples"

    @property
    def peers_dir(self) -> Path:
        return self.root / "peers"

    @property
    def info_file(self) -> Path:
        return self.root / INFO

    def info(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.info_file.read_text())
        except FileNotFoundError:
            raise DataSetError(
                f"{self.root} has no {INFO}: generate it with `jpki-va bench datagen`"
            ) from None
        except ValueError as exc:
            raise DataSetError(f"{self.info_file} is not valid JSON: {exc}") from None
        return data

    def pool(self) -> Pool:
        try:
            return Pool.from_json(json.loads((self.root / POOL).read_text()))
        except FileNotFoundError:
            raise DataSetError(f"{self.root} has no {POOL}") from None
        except (ValueError, KeyError) as exc:
            raise DataSetError(f"{self.root / POOL} is malformed: {exc}") from None

    def hsm_config(self) -> hsm.HsmConfig:
        return hsm_config_from(self.root, self.info()["hsm"])


def hsm_config_from(root: Path, table: dict[str, Any]) -> hsm.HsmConfig:
    """The data set's token; relative paths are relative to the data set directory."""
    conf = table.get("softhsm2_conf")
    return hsm.HsmConfig(
        module=table["module"],
        token_label=table["token_label"],
        pin=hsm.PinSource(file=str(root / table["pin_file"])),
        softhsm2_conf=None if conf is None else str(root / conf),
    )
