"""Test session setup: one real Prefect API server for the whole session.

`prefect_test_harness` starts Prefect's own server on a temporary SQLite
database. The session gets its own PREFECT_HOME so that result storage and
the default record store do not leak between sessions, and every test that
stores records gets its own SQLite store file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

_home = tempfile.mkdtemp(prefix="prefect-incomplete-tests-")
os.environ["PREFECT_HOME"] = _home
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
for _name in [n for n in os.environ if n.startswith("PREFECT_INCOMPLETE_")]:
    if _name != "PREFECT_INCOMPLETE_TEST_POSTGRES_URL":
        del os.environ[_name]


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """A real Prefect API server, started once per test session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def store_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh SQLite record store for one test, selected through the setting."""
    url = f"sqlite:///{tmp_path / 'incomplete.db'}"
    monkeypatch.setenv("PREFECT_INCOMPLETE_DATABASE_URL", url)
    return url


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The plugin's testing switch: every retry delay is zero."""
    monkeypatch.setenv("PREFECT_INCOMPLETE_TESTING", "true")
