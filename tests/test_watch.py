"""routingd.daemon.watch.watch_file against real file edits on a real filesystem (inotify)."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Awaitable, Callable

import pytest

from routingd.daemon.watch import watch_file, watch_targets

DEBOUNCE = 0.25
WAIT = 10.0          # upper bound for anything we wait for


class Recorder:
    """The on_change callback: records what the file held when it was called."""

    def __init__(self, path: Path, fail: bool = False) -> None:
        self.path = path
        self.calls: list[str | None] = []
        self.fail = fail

    async def __call__(self) -> None:
        try:
            self.calls.append(self.path.read_text())
        except FileNotFoundError:
            self.calls.append(None)
        if self.fail:
            raise RuntimeError("reload exploded")

    async def wait_for(self, n: int) -> None:
        deadline = time.monotonic() + WAIT
        while len(self.calls) < n:
            assert time.monotonic() < deadline, f"expected {n} calls, got {self.calls}"
            await asyncio.sleep(0.02)

    async def settle(self) -> None:
        """Give a spurious extra call every chance to happen."""
        await asyncio.sleep(DEBOUNCE + 0.5)


def run(path: Path, scenario: Callable[[Recorder], Awaitable[None]], fail: bool = False,
        touch: Callable[[], None] | None = None, stale: Callable[[], bool] | None = None) -> Recorder:
    """Watch `path` and play `scenario`; without `stale`, after a warm-up that waits until the
    watch sees changes (with `stale`, the scenario starts at once: stale() itself is the sign)."""
    rec = Recorder(path, fail)

    async def main() -> None:
        task = asyncio.create_task(watch_file(path, rec, debounce_s=DEBOUNCE, retry_s=0.1, stale=stale))
        try:
            if stale is None:
                await warm_up(path, rec, touch)
            await scenario(rec)
        finally:
            task.cancel()
            # cancellation is prompt: the watch thread checks its stop event every few ms
            done, _ = await asyncio.wait({task}, timeout=WAIT)
            assert done, "watch_file did not return after cancel"
        assert task.cancelled()

    asyncio.run(asyncio.wait_for(main(), 60))
    return rec


async def warm_up(path: Path, rec: Recorder, touch: Callable[[], None] | None) -> None:
    """The watch starts in a thread: touch the file until it is seen, then forget that call."""
    deadline = time.monotonic() + WAIT
    original = path.read_text()
    await asyncio.sleep(0.15)       # usually enough for the watch thread to start
    while not rec.calls:
        assert time.monotonic() < deadline, "the watcher never saw the file change"
        if touch is None:
            path.write_text(original)
        else:
            touch()
        # leave room for the debounce before touching again (each touch restarts it)
        quiet_until = time.monotonic() + DEBOUNCE + 0.75
        while not rec.calls and time.monotonic() < quiet_until:
            await asyncio.sleep(0.02)
    await rec.settle()
    rec.calls.clear()


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    p = tmp_path / "etc" / "routing.toml"
    p.parent.mkdir()
    p.write_text("v0")
    return p


def test_in_place_edits_are_seen(cfg: Path) -> None:
    async def scenario(rec: Recorder) -> None:
        cfg.write_text("v1")
        await rec.wait_for(1)
        with cfg.open("a") as f:
            f.write("+v2")
        await rec.wait_for(2)
        await rec.settle()

    assert run(cfg, scenario).calls == ["v1", "v1+v2"]


def test_rename_replace_is_seen(cfg: Path) -> None:
    async def scenario(rec: Recorder) -> None:
        for i in (1, 2):      # twice: the watch must follow the name, not the old inode
            tmp = cfg.with_name(f".routing.toml.tmp{i}")
            tmp.write_text(f"v{i}")
            os.replace(tmp, cfg)
            await rec.wait_for(i)
        await rec.settle()

    assert run(cfg, scenario).calls == ["v1", "v2"]


def test_delete_and_recreate(cfg: Path) -> None:
    async def scenario(rec: Recorder) -> None:
        cfg.unlink()
        await rec.wait_for(1)
        cfg.write_text("back")
        await rec.wait_for(2)
        cfg.write_text("edited after")
        await rec.wait_for(3)
        await rec.settle()

    assert run(cfg, scenario).calls == [None, "back", "edited after"]


def test_a_burst_of_writes_gives_one_call(cfg: Path) -> None:
    async def scenario(rec: Recorder) -> None:
        for i in range(6):
            cfg.write_text(f"w{i}")
            await asyncio.sleep(0.08)    # longer than watchfiles' own grouping step
        await rec.wait_for(1)
        await rec.settle()

    assert run(cfg, scenario).calls == ["w5"]


def test_other_files_in_the_directory_are_ignored(cfg: Path) -> None:
    async def scenario(rec: Recorder) -> None:
        (cfg.parent / "routing.toml~").write_text("backup")
        (cfg.parent / "other.toml").write_text("x")
        (cfg.parent / "routing.toml.swp").write_text("x")
        await rec.settle()
        assert rec.calls == []
        cfg.write_text("mine")
        await rec.wait_for(1)

    assert run(cfg, scenario).calls == ["mine"]


def test_a_failing_callback_does_not_stop_the_watch(cfg: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(rec: Recorder) -> None:
        cfg.write_text("a")
        await rec.wait_for(1)
        cfg.write_text("b")
        await rec.wait_for(2)

    with caplog.at_level(logging.ERROR, logger="routingd.watch"):
        rec = run(cfg, scenario, fail=True)
    assert rec.calls[-2:] == ["a", "b"]
    assert "reload exploded" in caplog.text


def test_directory_removed_and_recreated(cfg: Path) -> None:
    async def scenario(rec: Recorder) -> None:
        shutil.rmtree(cfg.parent)
        await rec.wait_for(1)
        await asyncio.sleep(0.3)                 # the watcher now waits for the directory
        cfg.parent.mkdir()
        cfg.write_text("new dir")
        deadline = time.monotonic() + WAIT
        while "new dir" not in rec.calls:
            assert time.monotonic() < deadline, rec.calls
            await asyncio.sleep(0.05)
        n = len(rec.calls)
        await rec.settle()
        cfg.write_text("still watched")
        await rec.wait_for(n + 1)

    calls = run(cfg, scenario).calls
    assert calls[0] is None and calls[-1] == "still watched"


def swap_link(link: Path, target: str) -> None:
    tmp = link.with_name(link.name + "_tmp")
    os.symlink(target, tmp)
    os.replace(tmp, link)


def test_configmap_style_symlink_swap(tmp_path: Path) -> None:
    # Kubernetes: routing.toml -> ..data/routing.toml; ..data -> ..v1, swapped by rename
    d = tmp_path / "cm"
    for v in ("..v1", "..v2", "..v3"):
        (d / v).mkdir(parents=True)
        (d / v / "routing.toml").write_text(v[2:])
    os.symlink("..v1", d / "..data")
    os.symlink("..data/routing.toml", d / "routing.toml")
    cfg = d / "routing.toml"
    t = watch_targets(cfg)
    assert t.dirs == (str(d), str(d / "..v1"))
    assert t.paths == {str(cfg), str(d / "..data"), str(d / "..v1" / "routing.toml")}

    async def scenario(rec: Recorder) -> None:
        swap_link(d / "..data", "..v2")
        await rec.wait_for(1)
        shutil.rmtree(d / "..v1")            # what the kubelet does next
        swap_link(d / "..data", "..v3")
        await rec.wait_for(2)
        await rec.settle()

    # warm-up re-points ..data at ..v1 until the watcher sees it
    assert run(cfg, scenario, touch=lambda: swap_link(d / "..data", "..v1")).calls == ["v2", "v3"]


def test_edits_to_a_symlinked_file_elsewhere(tmp_path: Path) -> None:
    real = tmp_path / "srv" / "conf" / "routing.toml"
    real.parent.mkdir(parents=True)
    real.write_text("r0")
    (tmp_path / "etc").mkdir()
    cfg = tmp_path / "etc" / "routing.toml"
    os.symlink(real, cfg)
    assert watch_targets(cfg).dirs == (str(cfg.parent), str(real.parent))

    async def scenario(rec: Recorder) -> None:
        real.write_text("r1")                 # in place, in the other directory
        await rec.wait_for(1)
        (real.parent / "unrelated").write_text("x")
        await rec.settle()

    assert run(cfg, scenario).calls == ["r1"]


def test_targets_of_a_plain_file(cfg: Path) -> None:
    t = watch_targets(cfg)
    assert t.dirs == (str(cfg.parent),) and t.paths == {str(cfg)}


def test_writes_to_other_open_files_raise_no_event(cfg: Path) -> None:
    """The state database usually sits beside routing.toml: SQLite writes it (and its -wal) through
    open descriptors, many times a second. Those writes must not even wake the watcher; the next
    edit of the config is still seen."""
    from routingd.daemon.watch import _Inotify

    ino = _Inotify((str(cfg.parent),))
    try:
        db = cfg.parent / "routingd.db"
        with db.open("wb") as f:
            assert {p for _, p in ino.read()} == {str(db)}       # created (IN_CREATE)
            for i in range(200):
                f.write(b"page %d\n" % i)
                f.flush()
                os.fsync(f.fileno())
                f.truncate(f.tell())
            assert ino.read() == []                              # writes through an open file: silent
        assert {p for _, p in ino.read()} == {str(db)}           # closed after writing
        cfg.write_text("edited")
        assert (cfg.parent / "routing.toml") in {Path(p) for _, p in ino.read()}
    finally:
        ino.close()


# --------------------------------------------------------------------------- stale(): edits before the watch


class Stale:
    """The stale() callback: counts its calls; `answer` is what it returns (an exception is
    raised), `then` runs first (an edit at the very moment of the check)."""

    def __init__(self, answer: bool | Exception, then: Callable[[], None] | None = None) -> None:
        self.answer = answer
        self.then = then
        self.asked = 0

    def __call__(self) -> bool:
        self.asked += 1
        if self.then is not None:
            self.then()
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    async def wait_asked(self) -> None:
        deadline = time.monotonic() + WAIT
        while not self.asked:
            assert time.monotonic() < deadline, "stale() was never asked"
            await asyncio.sleep(0.02)


def test_a_file_changed_before_the_watch_gives_one_call(cfg: Path) -> None:
    stale = Stale(True)

    async def scenario(rec: Recorder) -> None:
        await rec.wait_for(1)               # no edit at all: stale() said the file changed
        await rec.settle()
        cfg.write_text("v1")                # and the watch is live
        await rec.wait_for(2)
        await rec.settle()

    assert run(cfg, scenario, stale=stale).calls == ["v0", "v1"]
    assert stale.asked == 1


def test_an_unchanged_file_gives_no_call(cfg: Path) -> None:
    stale = Stale(False)

    async def scenario(rec: Recorder) -> None:
        await stale.wait_asked()
        await rec.settle()
        assert rec.calls == []
        cfg.write_text("v1")
        await rec.wait_for(1)
        await rec.settle()

    assert run(cfg, scenario, stale=stale).calls == ["v1"]
    assert stale.asked == 1


def test_stale_is_asked_only_once_the_watch_is_in_place(cfg: Path) -> None:
    """An edit made at the moment stale() runs (after it would have compared: it answers False)
    is still seen, because the kernel already watches the directory when it is asked."""
    stale = Stale(False, then=lambda: cfg.write_text("edited while checking"))

    async def scenario(rec: Recorder) -> None:
        await rec.wait_for(1)
        await rec.settle()

    assert run(cfg, scenario, stale=stale).calls == ["edited while checking"]
    assert stale.asked == 1


def test_a_failing_stale_counts_as_a_change(cfg: Path, caplog: pytest.LogCaptureFixture) -> None:
    stale = Stale(OSError("no such file"))

    async def scenario(rec: Recorder) -> None:
        await rec.wait_for(1)
        await rec.settle()

    with caplog.at_level(logging.WARNING, logger="routingd.watch"):
        assert run(cfg, scenario, stale=stale).calls == ["v0"]
    assert "treating it as changed" in caplog.text and "no such file" in caplog.text
