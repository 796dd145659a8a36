"""The state file and its -wal/-shm are created 0600 whatever the umask (docs/security.md):
they hold recipients and message contents."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

from routingd.daemon.store import Store


def test_state_file_wal_and_shm_are_private_under_umask_022(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    old = os.umask(0o022)

    async def go() -> None:
        store = Store(str(path))
        await store.open()
        try:
            for suffix in ("", "-wal", "-shm"):
                f = Path(str(path) + suffix)
                assert f.exists(), f
                mode = stat.S_IMODE(f.stat().st_mode)
                assert mode == 0o600, (f.name, oct(mode))
        finally:
            await store.close()

    try:
        asyncio.run(asyncio.wait_for(go(), 30))
    finally:
        os.umask(old)
