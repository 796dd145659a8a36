"""The routing tables of routing.toml: [channels.NAME], [routes.NAME] (with their nested
{ method, channels } groups, which a request's inline routing shares: daemon/core/request.py),
[templates.NAME], and `PolicyModel`, the schema of the whole file.

Re-exported by daemon/core/policy.py, the routing.toml model's entry point.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Discriminator, Field, Tag, model_validator

from .behaviour import Duration
from .provider_models import Provider
from .sections import DaemonSection, FailoverSection, Strict, TimeoutsSection


class ChannelSection(Strict):
    providers: list[str] = Field(min_length=1)
    method: Literal["single", "all"] = "single"
    timeout: Duration | None = None
    requires: str | None = None


class RouteGroup(Strict):
    method: Literal["single", "all"] = "single"
    channels: list["RouteItem"] = Field(min_length=1)


def _route_item_kind(v: Any) -> str | None:
    if isinstance(v, str):
        return ":channel"
    if isinstance(v, (dict, RouteGroup)):
        return ":group"
    return None


# A channel name or a nested { method, channels } group. Discriminated so that a bad group
# reports only its own problems (not also "should be a valid string").
RouteItem = Annotated[
    Union[Annotated[str, Tag(":channel")], Annotated[RouteGroup, Tag(":group")]],
    Discriminator(_route_item_kind, custom_error_type="route_item",
                  custom_error_message="expected a channel name or a { method, channels } table"),
]
RouteGroup.model_rebuild()


class RouteSection(Strict):
    method: Literal["single", "all"] = "single"
    # under a provider's rate limit, higher goes first (docs/configuration.md "Rate limits and priorities")
    priority: int = Field(default=0, ge=-1000, le=1000)
    channels: list[RouteItem] = Field(min_length=1)
    timeouts: TimeoutsSection = TimeoutsSection()


# --------------------------------------------------------------------------- templates


class TemplatePart(Strict):
    """One channel's part of a [templates.NAME] table (docs/configuration.md "[templates]"):
    subject/title fill the title, text/body the text, html the HTML part."""

    subject: str | None = None
    title: str | None = None
    text: str | None = None
    body: str | None = None
    html: str | None = None

    @model_validator(mode="after")
    def _one_each(self) -> "TemplatePart":
        if self.subject is not None and self.title is not None:
            raise ValueError("give subject or title, not both (both fill the title)")
        if self.text is not None and self.body is not None:
            raise ValueError("give text or body, not both (both fill the text)")
        if all(getattr(self, k) is None for k in ("subject", "title", "text", "body", "html")):
            raise ValueError("a template part needs at least one of subject, title, text, body, html")
        return self


TemplatesSection = dict[str, dict[str, TemplatePart]]     # NAME -> channel name -> part


class PolicyModel(Strict):
    version: Literal[1] = 1
    daemon: DaemonSection = DaemonSection()
    timeouts: TimeoutsSection = TimeoutsSection()
    failover: FailoverSection = FailoverSection()
    providers: dict[str, Provider] = Field(default_factory=dict)
    channels: dict[str, ChannelSection] = Field(default_factory=dict)
    routes: dict[str, RouteSection] = Field(default_factory=dict)
    templates: TemplatesSection = Field(default_factory=dict)
