"""The synthetic traffic's recipients (simulator/runner.py, and the live run of live.py, which
sends the same ones): the standard contact fields and `Recipient`, a recipient with every field
present except the ones a scenario's `[traffic] recipients` shares left out of it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

STANDARD_FIELDS = ("user_id", "email", "phone_number")


class Recipient(Mapping[str, str]):
    """A synthetic recipient: every contact field is present except the `absent` ones."""

    __slots__ = ("absent", "fields")

    def __init__(self, fields: tuple[str, ...], absent: frozenset[str]) -> None:
        self.fields = fields
        self.absent = absent

    def __getitem__(self, key: str) -> str:
        if key in self.absent:
            raise KeyError(key)
        return f"sim-{key}"

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return default if key in self.absent else f"sim-{key}"

    def __iter__(self) -> Iterator[str]:
        return (f for f in self.fields if f not in self.absent)

    def __len__(self) -> int:
        return sum(1 for _ in self)
