"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.services import postgres_server, redis_server


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a real redis-server on 127.0.0.1, shared by the whole session."""
    with redis_server() as url:
        yield url


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """SQLAlchemy URL of a real PostgreSQL on 127.0.0.1, shared by the whole session."""
    with postgres_server() as url:
        yield url
