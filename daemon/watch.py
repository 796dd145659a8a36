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
odd filesystems), the directories are polled instead.
"""

from __future__ import annotations

import asyncio
import logging
import os
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

from watchfiles import Change, awatch

log = logging.getLogger("routingd.watch")

OnChange = Callable[[], Awaitable[object]]

# watchfiles groups raw events for at most this long (ms) and yields after STEP_MS of quiet;
# it also checks its stop event every STEP_MS, which bounds how long cancellation takes.
GROUP_MS = 200
STEP_MS = 50


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
                     *, retry_s: float = 1.0) -> None:
    """Call `on_change()` whenever the file at `path` changes; returns only when cancelled."""
    file = Path(os.path.abspath(path))
    changed = asyncio.Event()
    stop = asyncio.Event()         # tells the watchfiles thread to stop within STEP_MS
    watcher = asyncio.create_task(_watch_dir(file, changed, stop, retry_s),
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


async def _watch_dir(file: Path, changed: asyncio.Event, stop: asyncio.Event, retry_s: float) -> None:
    parent = file.parent
    targets = watch_targets(file)

    def wanted(_change: Change, p: str) -> bool:
        return p in targets.paths or p in targets.dirs

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
            changes = awatch(*targets.dirs, watch_filter=wanted, debounce=GROUP_MS, step=STEP_MS,
                             stop_event=stop, recursive=False, force_polling=polling or None)
            async with aclosing(changes):
                async for batch in changes:
                    changed.set()
                    now = watch_targets(file)
                    if now.dirs != targets.dirs or any(p in targets.dirs for _, p in batch):
                        break   # a directory went away or the link points elsewhere: rewatch
                    targets = now
            # awatch ends only when `stop` is set
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


def _is_dir(p: Path) -> bool:
    try:
        return p.is_dir()
    except OSError:
        return False
