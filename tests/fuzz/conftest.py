"""Hypothesis settings for the fuzz targets.

`ci` (the default) keeps every target to a bounded number of examples so the whole
folder stays well under three minutes in `./tasks test`; `deep` is for a longer hunt
by hand (`JPKI_VA_FUZZ=deep pytest tests/fuzz`). No example database, and what
hypothesis keeps between runs goes to a temporary directory: a run leaves nothing in
the repository. What a failure needs to replay, hypothesis prints (the failing
example and `@reproduce_failure`). Every failure found becomes a regression test
beside the code's own tests.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

from hypothesis import HealthCheck, settings
from hypothesis.configuration import set_hypothesis_home_dir

_HOME = tempfile.mkdtemp(prefix="jpki-va-hypothesis-")
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)
set_hypothesis_home_dir(_HOME)

settings.register_profile(
    "ci",
    max_examples=200,
    deadline=None,  # a shared CI machine; the bound is the example count
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "deep",
    max_examples=2_000,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("JPKI_VA_FUZZ", "ci"))
