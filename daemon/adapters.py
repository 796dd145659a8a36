"""The one small interface every provider adapter implements (http, sandbox, mqtt, ...).

The runtime starts one `send()` task per StartAttempt command and cancels the task when the
engine says CancelAttempt (deadline hit, delivered elsewhere). An adapter therefore never needs
its own timeout logic: it answers with an engine `Outcome`, or is cancelled.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, ClassVar, Coroutine

from .core.engine import Outcome
from .core.limiter import Pacer

if TYPE_CHECKING:           # the adapters' collaborators, named for the type checker only
    import aiohttp

    from .mqtt import MqttLink

# An adapter that draws its whole answer at once: (delay_s until it answers, or None: it never
# does; the Outcome; a callback to run when it answers, or None)
TimedAnswer = tuple["float | None", Outcome, "Callable[[], None] | None"]


@dataclass(frozen=True)
class Content:
    """What one attempt's provider delivers, already rendered for its channel: from the message's
    template for that channel, or else from content.title / content.body (docs/providers.md)."""

    title: str = ""                   # email subject, push title
    text: str = ""                    # email text part, sms text, push body, chat text
    html: str | None = None           # email HTML part (None: text only)


@dataclass(frozen=True)
class AttemptRequest:
    message_id: str
    attempt_id: str
    channel: str
    provider: str
    try_no: int
    deadline_s: float                 # seconds left until the attempt deadline when sent
    idempotency_key: str              # "<message_id>:<channel>:<provider>"
    to: dict[str, Any] = field(default_factory=dict)
    content: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    rendered: Content | None = None   # set by the runtime from the message's template, if any

    def body(self) -> Content:
        """The content to deliver: the rendered template, else content.title / content.body."""
        if self.rendered is not None:
            return self.rendered
        title = self.content.get("title")
        body = self.content.get("body")
        return Content(title="" if title is None else str(title), text="" if body is None else str(body))

    def payload(self) -> dict[str, Any]:
        """The JSON body providers receive (docs/architecture.md "One message, end to end")."""
        return {"message_id": self.message_id, "attempt_id": self.attempt_id, "channel": self.channel,
                "to": self.to, "content": self.content, "metadata": self.metadata}


class ProviderAdapter(ABC):
    """Sends one attempt to one provider. Instances are built per provider per policy snapshot."""

    name: str
    # Optional capability: an adapter that sets this answers through timed_answer() instead of
    # send(): the runtime arms one loop timer for the answer instead of running a task (the
    # sandbox adapter, which draws latency and outcome at once).
    answers_at_once: ClassVar[bool] = False
    # The credentials the runtime masks in every detail of this adapter's attempts (redact.py):
    # build_adapter() sets those of the configuration; an adapter adds what it derives from them
    # (an HTTP Basic header, an access token).
    masked: tuple[str, ...] = ()

    @abstractmethod
    async def send(self, req: AttemptRequest) -> Outcome:
        """Deliver (or hand over) one attempt; may be cancelled at any await."""

    def timed_answer(self, req: AttemptRequest) -> TimedAnswer:
        """The whole answer at once (only where `answers_at_once` is set)."""
        raise NotImplementedError(f"{type(self).__name__} answers through send()")

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources when the policy snapshot that built it is retired."""


@dataclass
class AdapterContext:
    """Shared, process-wide resources adapters may use."""

    http_session: aiohttp.ClientSession | None = None   # one per process (the Router makes it)
    mqtt: MqttLink | None = None      # the daemon's MQTT connection (daemon/mqtt/link.py), if configured
    rng_seed: int | None = None
    # Feeds a delivery receipt back into the runtime: receipts(provider, attempt_id, status) -> known?
    # Set by the Router (it is Router.receipt); the sandbox adapter uses it for confirm = "receipt".
    receipts: Callable[[str, str, str], Awaitable[bool]] | None = None
    # Each rate-limited provider's departure gate (PacingGate), shared by the adapters of every
    # policy snapshot; a reload that changes the limit starts a new one.
    gates: dict[str, "PacingGate"] = field(default_factory=dict)
    share: float = 1.0      # this process's part of each limit (runtime/ratelimit.py RateLimits.set_share)

    def gate(self, provider: str, rate: float, burst: float) -> "PacingGate":
        g = self.gates.get(provider)
        if g is None or (g.pacer.rate, g.pacer.burst) != (rate, burst):
            g = self.gates[provider] = PacingGate(Pacer(rate, burst, self.share))
        return g


AdapterFactory = Callable[[str, Any, AdapterContext], ProviderAdapter]
_FACTORIES: dict[str, AdapterFactory] = {}


def register_adapter(type_name: str, factory: AdapterFactory) -> None:
    """Register the factory for a provider `type` (called by each adapter module on import)."""
    _FACTORIES[type_name] = factory


def build_adapter(name: str, config: Any, ctx: AdapterContext) -> ProviderAdapter:
    try:
        factory = _FACTORIES[config.type]
    except KeyError:
        raise LookupError(f"provider {name!r}: no adapter for type {config.type!r}") from None
    from .providers.redact import provider_secrets     # here: the providers package imports this module

    adapter = factory(name, config, ctx)
    found = (*provider_secrets(config), *adapter.masked)
    adapter.masked = tuple(sorted(dict.fromkeys(found), key=len, reverse=True))
    limit = config.outbound_limit() if hasattr(config, "outbound_limit") else None
    if limit is not None and limit.rate is not None and not adapter.answers_at_once:
        adapter.send = _paced(adapter.send, ctx.gate(name, limit.rate, limit.depth()))  # type: ignore[method-assign,assignment]
    return adapter


_Send = Callable[[AttemptRequest], Coroutine[Any, Any, Outcome]]


class PacingGate:
    """One rate-limited provider's calls leaving, in order, no faster than its limit (core/
    limiter.py Pacer: the commits before the calls and a busy loop may bunch calls the limiter
    spaced). A call goes at once when no one waits and a token is there; else it waits its turn
    in a queue that one timer releases: every call whose token has come leaves in the same loop
    iteration, so a busy loop costs no throughput. A call cancelled while it waits takes no token."""

    def __init__(self, pacer: Pacer) -> None:
        self.pacer = pacer
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._timer: asyncio.TimerHandle | None = None

    async def enter(self) -> None:
        loop = asyncio.get_running_loop()
        if not self._waiting and self.pacer.wait(loop.time()) == 0.0:
            return                          # its token taken: it leaves now
        fut: asyncio.Future[None] = loop.create_future()
        self._waiting.append(fut)
        if self._timer is None:
            self._release(loop)
        await fut

    def _release(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        q = self._waiting
        while q:                            # bounded: each turn pops a call or returns
            if q[0].done():                 # cancelled while it waited
                q.popleft()
                continue
            wait = self.pacer.wait(loop.time())
            if wait > 0.0:
                self._timer = loop.call_later(wait, self._release, loop)
                return
            q.popleft().set_result(None)


def _paced(send: _Send, gate: PacingGate) -> _Send:
    """`send` through the provider's PacingGate. The wait is part of the attempt's time, like the commit."""

    async def paced_send(req: AttemptRequest) -> Outcome:
        await gate.enter()
        return await send(req)
    return paced_send
