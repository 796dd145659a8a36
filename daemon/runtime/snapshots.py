"""The policy versions messages are routed under, each with its provider adapters: a message keeps
the policy it was accepted under (a reload changes only new messages), and a version's adapters
are closed once no message uses it."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..adapters import AdapterContext, ProviderAdapter, build_adapter
from ..config_files import parse_policy_text
from ..core.policy import Policy, PolicyError
from ..providers import UnavailableAdapter
from ..secrets import read_secret
from ..store import Store
from .base import _Snapshot

log = logging.getLogger("routingd.runtime")


class Snapshots:
    def __init__(self, policy: Policy, ctx: AdapterContext, store: Store) -> None:
        self._ctx = ctx
        self._store = store
        self._snapshots: dict[str, _Snapshot] = {policy.version: _Snapshot(policy)}
        self.closing: set[asyncio.Task[None]] = set()

    def of(self, policy: Policy) -> _Snapshot:
        """The snapshot of this policy's version (made on first use)."""
        snap = self._snapshots.get(policy.version)
        if snap is None:
            snap = self._snapshots[policy.version] = _Snapshot(policy)
        return snap

    def retire(self, version: str, current: str, loop: asyncio.AbstractEventLoop | None) -> None:
        """Drop a version no message uses any more (not the current one) and close its adapters."""
        snap = self._snapshots.get(version)
        if snap is None or snap.refs > 0 or version == current:
            return
        del self._snapshots[version]
        if snap.adapters and loop is not None:
            task = loop.create_task(self._close_adapters(snap))
            self.closing.add(task)
            task.add_done_callback(self.closing.discard)

    async def close_all(self) -> None:
        """Close every adapter, and wait (5 s at most) for those retire() is closing."""
        for snap in self._snapshots.values():
            await self._close_adapters(snap)
        if self.closing:
            await asyncio.wait(list(self.closing), timeout=5.0)

    async def _close_adapters(self, snap: _Snapshot) -> None:
        adapters, snap.adapters = list(snap.adapters.values()), {}
        for a in adapters:
            try:
                await a.close()
            except Exception:  # noqa: BLE001
                log.exception("closing provider adapter %s failed", getattr(a, "name", a))

    async def snapshot_for(self, version: str, current: Policy) -> tuple[_Snapshot, str | None]:
        """A stored message's policy version, read from the store's policies table if it is not
        in memory; if it is missing or no longer loads, the current policy's, with why."""
        snap = self._snapshots.get(version)
        if snap is not None:
            return snap, None
        problem: str | None = None
        src = await self._store.policy_source(version)
        if src is None:
            problem = f"policy version {version} is not in the store"
        else:
            try:
                policy = parse_policy_text(src[0], src[1], secrets=read_secret)
            except PolicyError as e:
                problem = f"policy version {version} no longer loads: {'; '.join(e.lines())}"
            else:
                snap = self._snapshots[version] = _Snapshot(policy)
                return snap, None
        return self._snapshots[current.version], problem

    def adapter(self, snap: _Snapshot, provider: str) -> ProviderAdapter:
        a = snap.adapters.get(provider)
        if a is None:
            cfg = snap.policy.providers[provider]
            try:
                a = build_adapter(provider, cfg, self._ctx)
            except LookupError:
                a = UnavailableAdapter(provider, f"no adapter for type {cfg.type!r}")
            snap.adapters[provider] = a
        return a

    def provider_config(self, provider: str, current: Policy) -> Any:
        """The provider's config in the current policy, else in a policy messages still use."""
        cfg = current.providers.get(provider)
        if cfg is None:
            for snap in self._snapshots.values():
                cfg = snap.policy.providers.get(provider)
                if cfg is not None:
                    break
        return cfg
