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
from uuid import uuid4

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


POSTGRES_ENV = "PREFECT_INCOMPLETE_TEST_POSTGRES_URL"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A URL to a fresh schema of the test PostgreSQL database, dropped at the end."""
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(
            f"PostgreSQL store tests are off: set {POSTGRES_ENV}, e.g. "
            "postgresql+psycopg://postgres@127.0.0.1:5432/test"
        )

    from sqlalchemy import create_engine, make_url, text
    from sqlalchemy.pool import NullPool

    from prefect_incomplete import store as store_module

    schema = f"prefect_incomplete_test_{uuid4().hex[:12]}"
    admin = create_engine(base, poolclass=NullPool)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    options = {"options": f"-csearch_path={schema}"}
    url = make_url(base).update_query_dict(options)
    yield url.render_as_string(hide_password=False)

    for database in store_module._databases.values():
        if database.engine.url.query.get("options") == options["options"]:
            database.engine.dispose()
    with admin.begin() as connection:
        connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()
