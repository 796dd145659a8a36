"""Watch one file (routing.toml) for changes and call back, debounced.

The watch is on the file's PARENT directory, filtered to the file's name, because editors and
config-management tools rarely write in place: vim, `sed -i`, Ansible and friends write a temp
file and rename it over the original, which replaces the inode a direct watch would follow. A
deleted and re-created file is therefore seen too.

When the file is a symlink, the directory of its resolved target is watched as well (edits to
the real file), and so is the first component of a relative link (Kubernetes ConfigMap volumes:
`routing.toml -> ..data/routing.toml`, with the `..data` link swapped atomically); after such a
swap the watch follows the new target.

    await watch_file("/etc/routingd/routing.toml", reload_from_file)   # until cancelled

`on_change()` runs once per burst of changes, after `debounce_s` without further changes, and
never concurrently with itself; a change during a call schedules one more call. An exception in
`on_change` is logged and watching goes on. If the directory is missing, it is looked for every
`retry_s` seconds (its appearance counts as a change); if inotify cannot be used (watch limits,
odd filesystems), the directories are polled instead (watchfiles).

A change made before the watch is in place raises no event: the caller read the file, then
started watching it, and an edit in between would go unseen until the next one. Pass
`stale()` to close that gap: it is called once, as soon as the first watch is in place (so any
later edit raises an event), and if it says the file no longer holds what the caller read
(or raises), `on_change()` runs as if the file had changed. With the polling fallback the watch
starts on a thread of watchfiles', a few milliseconds after `stale()` is asked.

The directory usually also holds the state database (routingd.db and its -wal), written many
times a second under load. The watch is a raw inotify watch read on the event loop, with a
mask that leaves plain writes out (IN_MODIFY): the kernel raises nothing for the database's
writes, so they cost neither a thread wake-up nor a filter call. What it asks for -- a file
closed after writing (IN_CLOSE_WRITE: every in-place edit, `>`/`>>`, editors that rewrite the
file), created, deleted, renamed in or out, attributes changed, the directory itself deleted or
moved -- is what a change of a configuration file looks like.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import struct
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncGenerator, Awaitable, Callable

from watchfiles import Change, awatch

log = logging.getLogger("routingd.watch")

OnChange = Callable[[], Awaitable[object]]

# watchfiles (the polling fallback) groups raw events for at most this long (ms) and yields
# after STEP_MS of quiet; it also checks its stop event every STEP_MS.
GROUP_MS = 200
STEP_MS = 50

# inotify(7)
_IN_ATTRIB, _IN_CLOSE_WRITE, _IN_MOVED_FROM, _IN_MOVED_TO = 0x4, 0x8, 0x40, 0x80
_IN_CREATE, _IN_DELETE, _IN_DELETE_SELF, _IN_MOVE_SELF = 0x100, 0x200, 0x400, 0x800
_IN_Q_OVERFLOW, _IN_IGNORED, _IN_ONLYDIR = 0x4000, 0x8000, 0x01000000
_IN_NONBLOCK, _IN_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC
_MASK = (_IN_ATTRIB | _IN_CLOSE_WRITE | _IN_MOVED_FROM | _IN_MOVED_TO | _IN_CREATE | _IN_DELETE
         | _IN_DELETE_SELF | _IN_MOVE_SELF)       # no IN_MODIFY: writes to the database stay silent
_EVENT = struct.Struct("iIII")                    # wd, mask, cookie, len; then len bytes of name


@dataclass(frozen=True)
class Targets:
    """What to watch for one file: directories, and the paths in them that matter."""

    dirs: tuple[str, ...]          # parent first; then the resolved target's directory
    paths: frozenset[str]          # an event on one of these (or on a watched dir) counts


def watch_targets(file: Path) -> Targets:
    parent = str(file.parent)
    paths = {str(file)}
    dirs = [parent]
    try:
        link = os.readlink(file)
    except OSError:
        link = ""
    if link:
        if not os.path.isabs(link):
            first = Path(link).parts[0]
            if first not in (".", ".."):
                paths.add(os.path.join(parent, first))
        real = os.path.realpath(file)
        paths.add(real)
        real_dir = os.path.dirname(real)
        if real_dir != parent and _is_dir(Path(real_dir)):
            dirs.append(real_dir)
    return Targets(tuple(dirs), frozenset(paths))


async def watch_file(path: str | os.PathLike[str], on_change: OnChange, debounce_s: float = 0.5,
                     *, retry_s: float = 1.0, stale: Callable[[], bool] | None = None) -> None:
    """Call `on_change()` whenever the file at `path` changes; returns only when cancelled.

    `stale()`, if given, is asked once when the watch is first in place; True (or an exception)
    counts as a change."""
    file = Path(os.path.abspath(path))
    changed = asyncio.Event()
    stop = asyncio.Event()         # tells the watchfiles thread to stop within STEP_MS
    watcher = asyncio.create_task(_watch_dir(file, changed, stop, retry_s, stale),
                                  name=f"watch {file}")
    watcher.add_done_callback(_report_death)
    try:
        while True:
            await changed.wait()
            while True:            # debounce: wait for a quiet period
                changed.clear()
                try:
                    await asyncio.wait_for(changed.wait(), debounce_s)
                except TimeoutError:
                    break
            try:
                await on_change()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("handling a change of %s failed", file)
    finally:
        stop.set()
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)


def _report_death(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the file watcher stopped: %s; file changes are no longer picked up "
                  "(SIGHUP and POST /-/reload still work)", task.exception())


async def _watch_dir(file: Path, changed: asyncio.Event, stop: asyncio.Event, retry_s: float,
                     stale: Callable[[], bool] | None = None) -> None:
    parent = file.parent
    targets = watch_targets(file)

    def wanted(_change: Change, p: str) -> bool:
        return p in targets.paths or p in targets.dirs

    def watching() -> None:
        """The watch is in place: from now on every change raises an event. Ask `stale()` (the
        first time only) whether the file changed before that."""
        nonlocal stale
        check, stale = stale, None
        if check is None:
            return
        try:
            differs = check()
        except Exception as e:  # noqa: BLE001 - cannot tell: let on_change() look at the file
            log.warning("cannot compare %s with what was loaded (%s); treating it as changed", file, e)
            differs = True
        if differs:
            log.info("%s changed before the watch was in place", file)
            changed.set()

    polling = False        # fall back to polling when inotify cannot be used (limits, odd fs)
    missing = False        # the directory was missing: its appearance counts as a change
    while not stop.is_set():
        if not _is_dir(parent):
            if not missing:
                log.warning("cannot watch %s: directory %s does not exist; checking every %gs",
                            file, parent, retry_s)
                missing = True
            await asyncio.sleep(retry_s)
            continue
        if missing:
            log.info("directory %s is back; watching %s again", parent, file)
            missing = False
            changed.set()
        targets = watch_targets(file)
        try:
            if polling:
                changes = awatch(*targets.dirs, watch_filter=wanted, debounce=GROUP_MS, step=STEP_MS,
                                 stop_event=stop, recursive=False, force_polling=True)
                watching()
            else:
                changes = _inotify_changes(targets.dirs, wanted, watching)
            async with aclosing(changes):
                async for batch in changes:
                    changed.set()
                    now = watch_targets(file)
                    if now.dirs != targets.dirs or any(p in targets.dirs for _, p in batch):
                        break   # a directory went away or the link points elsewhere: rewatch
                    targets = now
            # the iterators end only when `stop` is set (awatch) or never (inotify: cancelled)
        except asyncio.CancelledError:
            raise
        except FileNotFoundError:
            await asyncio.sleep(STEP_MS / 1000)   # a directory went away: look again
            continue
        except Exception as e:                    # inotify limits, permissions, ...
            if not _is_dir(parent):
                continue
            if polling:
                log.warning("cannot watch %s for changes (%s); retrying in %gs", file, e, retry_s)
                await asyncio.sleep(retry_s)
            else:
                log.warning("cannot watch %s with inotify (%s); polling it instead", file, e)
                polling = True
            continue


class _Inotify:
    """A raw inotify instance watching `dirs` (not recursively) with _MASK."""

    def __init__(self, dirs: tuple[str, ...]) -> None:
        libc = _libc()
        fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self.fd = fd
        self.wds: dict[int, str] = {}
        try:
            for d in dirs:
                wd = libc.inotify_add_watch(fd, os.fsencode(d), _MASK | _IN_ONLYDIR)
                if wd < 0:
                    err = ctypes.get_errno()     # ENOENT: FileNotFoundError; ENOSPC: the watch limit
                    raise OSError(err, f"inotify_add_watch: {os.strerror(err)}", d)
                self.wds[wd] = d
        except BaseException:
            os.close(fd)
            raise

    def read(self) -> list[tuple[Change, str]]:
        """Every event waiting, as (change, path); a watched directory that went away (or an
        overflowing queue) is reported as the directory itself."""
        out: list[tuple[Change, str]] = []
        while True:
            try:
                buf = os.read(self.fd, 65536)
            except BlockingIOError:
                return out
            if not buf:
                return out
            i = 0
            while i + _EVENT.size <= len(buf):
                wd, mask, _cookie, n = _EVENT.unpack_from(buf, i)
                name = buf[i + _EVENT.size:i + _EVENT.size + n].rstrip(b"\0")
                i += _EVENT.size + n
                if mask & _IN_Q_OVERFLOW:
                    out.extend((Change.modified, d) for d in self.wds.values())
                    continue
                d = self.wds.get(wd)
                if d is None:
                    continue
                if mask & (_IN_DELETE_SELF | _IN_MOVE_SELF | _IN_IGNORED) or not name:
                    out.append((Change.deleted, d))
                    continue
                kind = (Change.deleted if mask & (_IN_DELETE | _IN_MOVED_FROM)
                        else Change.added if mask & (_IN_CREATE | _IN_MOVED_TO) else Change.modified)
                out.append((kind, os.path.join(d, os.fsdecode(name))))

    def close(self) -> None:
        os.close(self.fd)


async def _inotify_changes(dirs: tuple[str, ...], wanted: Callable[[Change, str], bool],
                           watching: Callable[[], None] | None = None
                           ) -> AsyncGenerator[set[tuple[Change, str]], None]:
    """Batches of wanted changes in `dirs`, read on the event loop (no thread); until cancelled.
    `watching()` is called once the kernel watches every directory."""
    ino = _Inotify(dirs)
    loop = asyncio.get_running_loop()
    readable = asyncio.Event()
    loop.add_reader(ino.fd, readable.set)
    try:
        if watching is not None:
            watching()
        while True:
            await readable.wait()
            readable.clear()
            batch = {(c, p) for c, p in ino.read() if wanted(c, p)}
            if batch:
                yield batch
    finally:
        loop.remove_reader(ino.fd)
        ino.close()


_LIBC: ctypes.CDLL | None = None


def _libc() -> ctypes.CDLL:
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
    return _LIBC


def _is_dir(p: Path) -> bool:
    try:
        return p.is_dir()
    except OSError:
        return False
