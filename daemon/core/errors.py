"""The one error tree of routingd (daemon/errors.py re-exports it beside the daemon's own).

Every error routingd raises on purpose -- a bad file, a bad request, a full disk -- derives from
`RoutingdError` and prints as `lines()`: one actionable line per problem, never a traceback.
A configuration file's errors (routing.toml, a scenario, the process settings) share one shape,
`ConfigError`: "PATH: key.path: reason" per problem. It lives in the core because the policy and
plan errors do; the core stays free of I/O (tests/test_core_purity.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .toml_lines import key_positions, where

__all__ = ["ConfigError", "PlanError", "Problem", "RoutingdError"]


class RoutingdError(Exception):
    """Base of every error routingd raises on purpose; `lines()` are ready to print."""

    def lines(self) -> list[str]:
        return str(self).splitlines() or [type(self).__name__]


@dataclass(frozen=True)
class Problem:
    """One problem at a key path: `loc` as a user writes it (("providers", "ses", "url"))."""

    loc: tuple[str | int, ...]
    msg: str

    @property
    def key_path(self) -> str:
        return ".".join(str(p) for p in self.loc) or "(file)"


class ConfigError(RoutingdError):
    """A configuration file is invalid; `problems` lists every reason, `lines()` one
    "PATH[:LINE[:COL]]: key.path: reason" each. `text`, the file's text when known, gives each
    key's line (core/toml_lines.py), the way `nginx -t` names them."""

    def __init__(self, path: str, problems: Sequence[Problem], text: str | None = None) -> None:
        self.path = path
        self.problems = list(problems)
        self.text = text
        super().__init__(path)

    def __str__(self) -> str:
        return "\n".join(self.lines())

    def lines(self) -> list[str]:
        positions = key_positions(self.text) if self.text is not None else None
        return [f"{where(self.path, self.text, p.loc, p.msg, positions)}: {p.key_path}: {p.msg}"
                for p in self.problems]


class PlanError(RoutingdError):
    """A request names something the policy lacks (unknown route/channel/provider), or overrides
    a timeout past what a plan can hold: the client's 422."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(f"{p.key_path}: {p.msg}" for p in problems))

    def lines(self) -> list[str]:
        return [f"{p.key_path}: {p.msg}" for p in self.problems]
