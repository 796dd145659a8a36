"""Fixtures shared by several test modules (helpers to import live in daemon_process.py,
provider_standin.py and mqtt_broker.py)."""

from __future__ import annotations

from typing import Iterator

import pytest

from daemon_process import StandinLoop


@pytest.fixture(scope="module")
def standins() -> Iterator[StandinLoop]:
    """Provider stand-ins on a background loop, shared by a module's tests and its daemon."""
    with StandinLoop() as loop:
        yield loop


# A fresh mosquitto per test (persistent: sessions survive stop()/start()); see mqtt_broker.py.
from mqtt_broker import mqtt_broker, mqtt_broker_persistent  # noqa: E402,F401

# A throwaway PostgreSQL cluster for the session (initdb + pg_ctl on a free loopback port) and a
# fresh database per test; see pg_cluster.py.
from pg_cluster import pg_cluster, pg_url  # noqa: E402,F401
