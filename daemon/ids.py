"""Process-level helpers of the Router that hold no routing state: message ids (time-ordered,
unguessable) and the cyclic garbage collector's tuning for a daemon that allocates per message.
"""

from __future__ import annotations

import gc
import os
import time

__all__ = ["freeze_startup", "new_message_id", "tune_gc"]


class _RandomHex:
    """Unguessable hex strings from os.urandom, drawn 4 KiB at a time (one syscall per 512 ids
    instead of one per id); a forked child starts with a fresh buffer."""

    _CHUNK = 4096

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._buf, self._pos = b"", 0

    def take(self, nbytes: int) -> str:
        pos = self._pos
        if pos + nbytes > len(self._buf):
            self._buf, pos = os.urandom(self._CHUNK), 0
        self._pos = pos + nbytes
        return self._buf[pos:pos + nbytes].hex()


_random_hex = _RandomHex()


_GC_GEN0 = 10_000


def tune_gc() -> None:
    """Raise the cyclic collector's young-generation threshold to _GC_GEN0 (CPython: 700).

    Every message allocates a few hundred container objects that reference counting frees
    again; with the default threshold the collector runs every few messages, a large share of
    the ingress path (docs/performance.md "Figures behind code choices"). Counted net of frees,
    10,000 young objects are reached rarely, and cycles are still collected. Only ever raised,
    never lowered (an embedding application may have chosen more)."""
    g0, g1, g2 = gc.get_threshold()
    if 0 < g0 < _GC_GEN0:
        gc.set_threshold(_GC_GEN0, g1, g2)


def freeze_startup() -> None:
    """Move what the start built (modules, classes, the policy, the app: ~75,000 objects, all
    alive until exit) out of the cyclic collector's reach (gc.freeze), after collecting the
    start's garbage so that none of it is frozen.

    A full collection walks every tracked object and the event loop stands still meanwhile:
    walking the start's objects alone took 36-40 ms on the 2-core machine, enough with the
    rest to push healthy calls past their slow-call mark (docs/performance.md "Figures behind
    code choices"; runtime/router.py _RECENT bounds the rest). Called
    once by the daemon before it routes; not by the Router, which an embedding program (or
    a test) may start many times in one process."""
    gc.collect()
    gc.freeze()


def new_message_id() -> str:
    """Time-ordered, unguessable, dot-free (attempt ids are "<message_id>.<run>.<n>"): 11 hex
    digits of milliseconds since the epoch, then 64 random bits."""
    return f"{int(time.time() * 1000):011x}{_random_hex.take(8)}"
