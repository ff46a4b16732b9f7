"""A tiny generated data set, shared by the bench tests of a module."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from jpki_va import hsm
from jpki_va.bench import datagen
from jpki_va.bench.dataset import DataSet


def generate_small(directory: Path, config: hsm.HsmConfig, holders: int = 300) -> DataSet:
    assert config.softhsm2_conf is not None and config.pin.file is not None
    datagen.generate(
        directory,
        holders,
        seed=11,
        hsm_config=config,
        hsm_info={
            "module": config.module,
            "softhsm2_conf": config.softhsm2_conf,
            "token_label": config.token_label,
            "pin_file": config.pin.file,
        },
        # the session token is shared: keys of this data set get their own labels
        label_prefix=f"bench-{secrets.token_hex(4)}",
        shape=datagen.Shape(partitions=8),
        samples=8,
        pool_size=400,
        http_requests=200,
    )
    return DataSet(directory)


@pytest.fixture(scope="module")
def small_dataset(
    tmp_path_factory: pytest.TempPathFactory, softhsm_token: hsm.HsmConfig
) -> Iterator[DataSet]:
    yield generate_small(tmp_path_factory.mktemp("bench-data"), softhsm_token)
