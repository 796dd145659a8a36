"""The adapter that stands in for a provider whose type has no adapter (or failed to build)."""

from __future__ import annotations

from ..adapters import AttemptRequest, ProviderAdapter
from ..core.engine import Outcome


class UnavailableAdapter(ProviderAdapter):
    """Stands in for a provider whose type has no adapter: every attempt is a network failure."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason

    async def send(self, req: AttemptRequest) -> Outcome:
        return Outcome(network=True, detail=self.reason)
