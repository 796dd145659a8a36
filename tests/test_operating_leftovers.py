"""Issue 18 leftovers: no lock file after a clean stop, no *_created series, drained providers in
/metrics, a summary line when messages end undeliverable or expired."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from routingd.daemon.metrics import Metrics
from routingd.daemon.store import Store, StoreError


def test_a_clean_stop_removes_the_lock_file_and_the_lock_still_guards(tmp_path: Path) -> None:
    path = str(tmp_path / "routingd.db")

    async def main() -> None:
        first = Store(path)
        await first.open()
        assert Path(path + ".lock").exists()
        second = Store(path)
        with pytest.raises(StoreError, match="in use by another routingd process"):
            await second.open()
        await first.close()
        assert not Path(path + ".lock").exists()
        again = Store(path)                          # the next start takes it as before
        await again.open()
        with pytest.raises(StoreError, match="in use by another routingd process"):
            await Store(path).open()
        await again.close()
        assert not Path(path + ".lock").exists()
    asyncio.run(main())


def test_metrics_export_no_created_series_and_show_drained_providers() -> None:
    m = Metrics()
    m.message_accepted()
    m.message_finished("delivered")
    m.attempt_ended("email", "ses", "delivered")
    m.failover("provider")
    m.resume_failed.inc()
    m.connections_closed.labels(reason="idle").inc()
    m.provider_drained.labels(provider="ses").set(1)
    text = m.render().decode()
    assert "routingd_messages_accepted_total 1.0" in text
    assert "_created" not in text, [line for line in text.splitlines() if "_created" in line]
    assert 'routingd_provider_drained{provider="ses"} 1.0' in text
