"""The thin server's embedded app for the tests: the product's, with the test's clocks.

Envoy loads it (`tests.thin_embedded:app`) in its own interpreter, so the ManualClock and
ManualMonotonic a test moves reach it through the files tests/harness.py names.
"""

from __future__ import annotations

import os
from pathlib import Path

from authority.server import Application, build_application
from authority.settings import Settings
from authority.thin_app import embedded_app
from tests.harness import CLOCK_FILE_ENV, MONOTONIC_FILE_ENV, SharedClock, SharedMonotonic


def _build(settings: Settings) -> Application:
    return build_application(
        settings,
        clock=SharedClock(Path(os.environ[CLOCK_FILE_ENV])),
        monotonic=SharedMonotonic(Path(os.environ[MONOTONIC_FILE_ENV])),
    )


app = embedded_app(_build)
