"""Fixtures shared by the integration tests: one throwaway PostgreSQL server for the whole run,
and an `opener` that runs a test once on SQLite and once on PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pipeline.logger.store import Store, open_store
from tests.helpers.postgres import fresh_database, postgres_server, unavailable_reason

Opener = Callable[[], Store]


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """A PostgreSQL server started once; each test takes a fresh database on it."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    with postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    """A function that opens (and re-opens) the same database, so tests can see what persisted."""
    if request.param == "sqlite":
        path = tmp_path / "results.sqlite"
        return lambda: open_store(path)
    url = fresh_database(request.getfixturevalue("pg_server"))
    return lambda: open_store(url)
