"""Provider adapter of type `sandbox` (registered with routingd.daemon.adapters on import).

An in-process stand-in drawing latency, errors, rate limits and outages from
routingd.daemon.core.behaviour.draw_answer -- the same model the simulator uses. "hang" never answers (the
runtime cancels it at the deadline), "refused" is a network failure, and with confirm = "receipt"
a `delivered` receipt is fed back into the runtime through AdapterContext.receipts after the
drawn receipt delay.

Its `outages` switch the fail mode at wall-clock instants (core mode_at, the simulator's rule):
`simulate --live` drives a drill's outage timeline through them, with no reload at the switch.

Besides send(), it offers `timed_answer(req) -> (delay_s | None, Outcome, after)`: the whole
answer drawn at once (delay None: it never answers), `after()` (or None) to be run when the
answer is taken (it starts the receipt). The runtime uses it to answer with one loop timer
instead of a task, a coroutine and a sleeping future per attempt; send() is the same answer,
awaited.
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
from typing import Any

from ..adapters import AdapterContext, AttemptRequest, ProviderAdapter, TimedAnswer, register_adapter
from ..core.behaviour import OutageWindow, RateWindow, draw_answer, mode_at
from ..core.engine import Outcome

_NO_ANSWER = Outcome(network=True, detail="no answer (sandbox fail = 'hang')")   # never given out


class SandboxAdapter(ProviderAdapter):
    answers_at_once = True

    def __init__(self, name: str, config: Any, ctx: AdapterContext) -> None:
        self.name = name
        self.config = config
        self.ctx = ctx
        seed = None if ctx.rng_seed is None else f"{ctx.rng_seed}:{name}"
        self.rng = random.Random(seed)
        self.window = RateWindow(config.rate_limit)
        # its `outages` on the wall clock (time.time(), the clock a TOML date-time names)
        self.outages = tuple(sorted(
            (OutageWindow(o.start.timestamp(), o.start.timestamp() + o.duration / 1000.0, o.kind,
                          config.model_copy(update=o.behaviour_update())) for o in config.outages),
            key=lambda w: w.start_s))
        self.receipt_tasks: set[asyncio.Task[None]] = set()

    async def send(self, req: AttemptRequest) -> Outcome:
        delay, outcome, after = self.timed_answer(req)
        if delay is None:
            await asyncio.get_running_loop().create_future()   # never resolves: cancelled at the deadline
        else:
            await asyncio.sleep(delay)
        if after is not None:
            after()
        return outcome

    def timed_answer(self, req: AttemptRequest) -> TimedAnswer:
        """The answer to `req` drawn now: after delay_s seconds (None: never), this Outcome; run
        `after()` when it is taken (not if the attempt was cancelled first)."""
        cfg = self.config
        fail, spec = mode_at(cfg.fail, cfg, self.outages, time.time()) if self.outages else (cfg.fail, cfg)
        answer = draw_answer(spec, fail, self.rng, time.monotonic(), self.window,
                             confirm_receipt=cfg.confirm == "receipt")
        if answer.kind == "hang":
            return None, _NO_ANSWER, None
        if answer.kind == "refused":
            return answer.delay_s, Outcome(network=True, detail=f"connection refused (sandbox fail = {fail!r})"), None
        after = None
        if answer.receipt_delay_s is not None and self.ctx.receipts is not None:
            after = functools.partial(self._start_receipt, req.attempt_id, answer.receipt_delay_s)
        detail = "" if answer.status is None or 200 <= answer.status < 300 else f"sandbox status {answer.status}"
        return answer.delay_s, Outcome(status=answer.status, retry_after_s=answer.retry_after_s, detail=detail), after

    def _start_receipt(self, attempt_id: str, delay_s: float) -> None:
        task = asyncio.get_running_loop().create_task(self._receipt(attempt_id, delay_s))
        self.receipt_tasks.add(task)
        task.add_done_callback(self.receipt_tasks.discard)

    async def _receipt(self, attempt_id: str, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        if self.ctx.receipts is not None:
            await self.ctx.receipts(self.name, attempt_id, "delivered")

    async def close(self) -> None:
        for t in list(self.receipt_tasks):
            t.cancel()
        self.receipt_tasks.clear()


register_adapter("sandbox", SandboxAdapter)
