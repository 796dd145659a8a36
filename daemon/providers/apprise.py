"""Provider adapter of type `apprise`: the long tail of chat and push services (Teams, Discord,
Telegram, ntfy, Pushover, Matrix, ...) through the Apprise library, one attempt notifying every
URL in `urls` with the rendered title and text (Apprise's async_notify).

Apprise answers only yes or no: a vendor's reason (throttled, bad credentials, unknown channel)
does not reach routingd. A "no" is therefore a 502 (retryable: failover.on's "5xx"), never a 4xx,
and a "no" from several URLs sends again to those that had succeeded (docs/providers.md
"apprise"). There is no message id. Apprise URLs hold their credentials: details never name
them; Apprise's own logger is kept at WARNING or above, because at DEBUG it logs the URLs it posts to.
"""

from __future__ import annotations

import logging
from typing import Any

from ..adapters import AdapterContext, AttemptRequest, ProviderAdapter, register_adapter
from ..core.engine import Outcome

log = logging.getLogger("routingd.providers.apprise")


class AppriseAdapter(ProviderAdapter):
    def __init__(self, name: str, config: Any, ctx: AdapterContext) -> None:
        import apprise

        logging.getLogger("apprise").setLevel(max(logging.WARNING, logging.getLogger("apprise").getEffectiveLevel()))
        self.name = name
        self.count = len(config.urls)
        self.broken: str | None = None
        self.apprise = apprise.Apprise()
        for i, url in enumerate(config.urls):
            if not self.apprise.add(url.get_secret_value()):
                scheme = url.get_secret_value().split("://", 1)[0]
                self.broken = f"apprise: urls[{i}] ({scheme}://...) is not a URL Apprise can notify"
                log.warning("provider %s: %s; every attempt fails until the configuration is fixed", name, self.broken)
                break

    async def send(self, req: AttemptRequest) -> Outcome:
        if self.broken is not None:
            return Outcome(network=True, detail=self.broken)
        content = req.body()
        if not content.title and not content.text:
            return Outcome(status=400, detail="nothing to send: the rendered title and text are empty")
        result = await self.apprise.async_notify(body=content.text or content.title, title=content.title)
        try:
            if result:
                return Outcome(status=200)
            status = getattr(result, "status", None)       # Apprise 2 says a little more than no
            failed = getattr(result, "failed_count", None)
            more = f" ({getattr(status, 'name', status)}, {failed} of {self.count} URLs failed)" if failed is not None else ""
            return Outcome(status=502, detail=f"apprise: not delivered{more}; Apprise gives no reason")
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()


register_adapter("apprise", AppriseAdapter)
