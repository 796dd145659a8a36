"""Where a key is in a TOML text: the line (and column) of a key path, for error lines
`routing.toml:14: providers.ses.timeout: ...` (docs/configuration.md "routingd check").

tomllib gives no positions for values, so this is a small scanner of its own. It reads the text
once, recording the position of every key it defines: `[tables]`, `[[arrays of tables]]` (each
element by index: `outages.1.kind`), dotted keys (`a.b = 1` inside `[t]` is `t.a.b`), quoted
keys, inline tables (`headers = { Authorization = "..." }`, nested too) and arrays, whose
elements are located by index (`channels.2`, or `providers.0.name` for an array of inline tables).
It never raises: on text it cannot follow it stops and keeps what it found, and a key path it
does not know is located at its longest known prefix (a missing key: at its table's header), or
not at all. Sans-IO, pure text.
"""

from __future__ import annotations

import re
from typing import Sequence

Loc = tuple[str | int, ...]
Pos = tuple[int, int]            # 1-based line, 1-based column

_BARE = re.compile(r"[A-Za-z0-9_-]+")
_TOML_ERROR_AT = re.compile(r"\(at line (\d+), column (\d+)\)")
_ESCAPES = {"b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r", '"': '"', "\\": "\\"}


class _Stop(Exception):
    """The text is not TOML this scanner can follow; keep what was found so far."""


class _Scanner:
    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0
        self.found: dict[Loc, Pos] = {}
        self.array_len: dict[Loc, int] = {}      # [[x]] path (indices resolved) -> elements so far
        self.line_starts = [0] + [m.end() for m in re.finditer("\n", text)]

    # ------------------------------------------------------------------ positions
    def pos(self, i: int) -> Pos:
        lo, hi = 0, len(self.line_starts) - 1
        while lo < hi:                              # the last line start <= i
            mid = (lo + hi + 1) // 2
            if self.line_starts[mid] <= i:
                lo = mid
            else:
                hi = mid - 1
        return lo + 1, i - self.line_starts[lo] + 1

    def record(self, loc: Loc, i: int) -> None:
        self.found.setdefault(loc, self.pos(i))

    # ------------------------------------------------------------------ lexing
    def peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def skip_ws(self, newlines: bool = False) -> None:
        while self.i < len(self.s):
            c = self.s[self.i]
            if c in " \t\r" or (newlines and c == "\n"):
                self.i += 1
            elif c == "#":
                while self.i < len(self.s) and self.s[self.i] != "\n":
                    self.i += 1
            else:
                return

    def string(self) -> str:
        s, i = self.s, self.i
        for q in ('"""', "'''"):
            if s.startswith(q, i):
                end = s.find(q, i + 3)
                while end != -1 and q == '"""' and _escaped(s, end):
                    end = s.find(q, end + 1)
                if end == -1:
                    raise _Stop
                while s.startswith(q[0], end + 3):      # up to two quotes may close the content
                    end += 1
                self.i = end + 3
                return s[i + 3:end]
        q = s[i]
        out: list[str] = []
        j = i + 1
        while j < len(s) and s[j] != q:
            if s[j] == "\n":
                raise _Stop
            if q == '"' and s[j] == "\\" and j + 1 < len(s):
                e = s[j + 1]
                if e in _ESCAPES:
                    out.append(_ESCAPES[e])
                    j += 2
                    continue
                n = {"u": 4, "U": 8}.get(e)
                if n is not None:
                    try:
                        out.append(chr(int(s[j + 2:j + 2 + n], 16)))
                    except ValueError:
                        raise _Stop from None
                    j += 2 + n
                    continue
                raise _Stop
            out.append(s[j])
            j += 1
        if j >= len(s):
            raise _Stop
        self.i = j + 1
        return "".join(out)

    def key(self) -> list[tuple[str, int]]:
        """A dotted key: its parts and where each starts."""
        parts: list[tuple[str, int]] = []
        while True:
            self.skip_ws()
            start = self.i
            c = self.peek()
            if c in ('"', "'"):
                parts.append((self.string(), start))
            else:
                m = _BARE.match(self.s, self.i)
                if not m:
                    raise _Stop
                parts.append((m.group(), start))
                self.i = m.end()
            self.skip_ws()
            if self.peek() != ".":
                return parts
            self.i += 1

    # ------------------------------------------------------------------ values
    def value(self, loc: Loc) -> None:
        c = self.peek()
        if c in ('"', "'"):
            self.string()
        elif c == "[":
            self.i += 1
            n = 0
            while True:
                self.skip_ws(newlines=True)
                if self.peek() == "]":
                    self.i += 1
                    return
                if not self.peek():
                    raise _Stop
                self.record(loc + (n,), self.i)
                self.value(loc + (n,))
                n += 1
                self.skip_ws(newlines=True)
                if self.peek() == ",":
                    self.i += 1
        elif c == "{":
            self.i += 1
            while True:
                self.skip_ws()
                if self.peek() == "}":
                    self.i += 1
                    return
                self.keyval(loc)
                self.skip_ws()
                if self.peek() == ",":
                    self.i += 1
                elif self.peek() != "}":
                    raise _Stop
        else:                                   # number, bool, date: up to a delimiter
            m = re.compile(r"[^,\]\}\n#]*").match(self.s, self.i)
            assert m is not None
            if not m.group().strip():
                raise _Stop
            self.i = m.end()

    def keyval(self, table: Loc) -> None:
        parts = self.key()
        loc = table
        for name, start in parts:
            loc = loc + (name,)
            self.record(loc, start)
        if self.peek() != "=":
            raise _Stop
        self.i += 1
        self.skip_ws()
        self.value(loc)

    # ------------------------------------------------------------------ document
    def header_loc(self, parts: list[tuple[str, int]], is_array: bool, start: int) -> Loc:
        """The table path with the index of every array of tables on the way; each table is
        located at its header's `[` (an error about it names the header's line)."""
        loc: Loc = ()
        for k, (name, _) in enumerate(parts):
            loc = loc + (name,)
            last = k == len(parts) - 1
            if last and is_array:
                n = self.array_len.get(loc, 0)
                self.array_len[loc] = n + 1
                self.record(loc, start)
                loc = loc + (n,)
                self.record(loc, start)
            else:
                self.record(loc, start)
                if loc in self.array_len:            # [[a]] then [a.b] / [[a.b]]: inside a's last element
                    loc = loc + (self.array_len[loc] - 1,)
        return loc

    def document(self) -> None:
        table: Loc = ()
        while True:
            self.skip_ws(newlines=True)
            if self.i >= len(self.s):
                return
            if self.peek() == "[":
                start = self.i
                is_array = self.s.startswith("[[", self.i)
                self.i += 2 if is_array else 1
                parts = self.key()
                close = "]]" if is_array else "]"
                if not self.s.startswith(close, self.i):
                    raise _Stop
                self.i += len(close)
                table = self.header_loc(parts, is_array, start)
            else:
                self.keyval(table)


def _escaped(s: str, i: int) -> bool:
    n = 0
    while i - n - 1 >= 0 and s[i - n - 1] == "\\":
        n += 1
    return n % 2 == 1


def key_positions(text: str) -> dict[Loc, Pos]:
    """Every key path found in `text` -> (line, column) where it is first defined."""
    sc = _Scanner(text)
    try:
        sc.document()
    except (_Stop, RecursionError):
        pass
    return sc.found


def locate(text: str, loc: Sequence[str | int], positions: dict[Loc, Pos] | None = None) -> Pos | None:
    """(line, column) of key path `loc` in `text`: of its longest prefix found (a missing key is
    located at its table), None when not even the first part is in the text."""
    found = key_positions(text) if positions is None else positions
    key = tuple(loc)
    while key:
        if key in found:
            return found[key]
        key = key[:-1]
    return None


def where(path: str, text: str | None, loc: Sequence[str | int], msg: str = "",
          positions: dict[Loc, Pos] | None = None) -> str:
    """The location part of an error line: `PATH:LINE` for a key that starts its line,
    `PATH:LINE:COLUMN` for one inside a line (an inline table, an array element) and for a TOML
    syntax error, plain `PATH` when the line is unknown."""
    if not loc:
        m = _TOML_ERROR_AT.search(msg)
        return f"{path}:{m.group(1)}:{m.group(2)}" if m else path
    if text is None:
        return path
    pos = locate(text, loc, positions)
    if pos is None:
        return path
    line, col = pos
    first = text.split("\n", line)[line - 1] if line else ""
    if col == len(first) - len(first.lstrip(" \t")) + 1:
        return f"{path}:{line}"
    return f"{path}:{line}:{col}"


__all__ = ["key_positions", "locate", "where"]
