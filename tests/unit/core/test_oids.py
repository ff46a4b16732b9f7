"""The private OID arc: every component within 32 bits, one operator setting."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from cryptography import x509

from jpki_va.core import oids


def _components(oid: x509.ObjectIdentifier) -> list[int]:
    return [int(p) for p in oid.dotted_string.split(".")]


def test_every_private_oid_is_under_the_arc_and_fits_in_32_bits() -> None:
    found = [v for v in vars(oids).values() if isinstance(v, x509.ObjectIdentifier)]
    found += [oids.policy_oid(k) for k in (1, 2, 3, 4)]
    assert len(found) == 11
    for oid in found:
        assert oid.dotted_string.startswith(oids.ARC + ".")
        assert max(_components(oid)) < 2**32


def test_the_default_arc_is_the_documentation_enterprise_number() -> None:
    # RFC 5612: 32473 is the private enterprise number reserved for documentation.
    assert oids.DEFAULT_ARC == "1.3.6.1.4.1.32473.1"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("2.25.236596762878449458762717213103481541297", "32 bits"),
        ("1.3.6.1.4.1.4294967296", "32 bits"),
        ("1", "dotted-decimal"),
        ("1.3.x", "dotted-decimal"),
        ("1.03.6", "dotted-decimal"),
        ("3.1.2", "not a valid OID"),
        ("1.40.2", "not a valid OID"),
    ],
)
def test_a_bad_arc_is_refused_with_a_reason(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        oids.valid_arc(text)


def test_the_operator_sets_the_arc_for_every_oid() -> None:
    code = (
        "from jpki_va.core import oids; "
        "print(oids.OID_LOSS_CAUSE.dotted_string, oids.policy_oid(2).dotted_string)"
    )
    env = {**os.environ, oids.ENV_ARC: "1.2.392.200149.8"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True
    ).stdout.split()
    assert out == ["1.2.392.200149.8.1", "1.2.392.200149.8.10.2"]


def test_a_bad_arc_in_the_environment_is_one_line_and_exit_2() -> None:
    env = {**os.environ, oids.ENV_ARC: "2.25.236596762878449458762717213103481541297"}
    result = subprocess.run(
        [sys.executable, "-c", "import jpki_va.core.oids"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.splitlines()
    assert "every component of '2.25.236596762878449458762717213103481541297' must fit" in line
