"""`--format github`: error lines as GitHub Actions workflow commands (docs/ci.md).

Every error line of `routingd check` and `routingd simulate` is `PATH[:LINE[:COL]]: rest`
(docs/configuration.md "routingd check"); GitHub shows `::error file=PATH,line=LINE,col=COL::rest`
as an annotation on that line of the pull request's diff. Formatting from the printed line keeps
one source of truth for where an error is.
"""

from __future__ import annotations

import re

_LOCATED = re.compile(r"^(?P<file>[^\n]+?):(?P<line>\d+)(?::(?P<col>\d+))?: (?P<msg>.*)$", re.S)
_PLAIN = re.compile(r"^(?P<file>[^\n]+?): (?P<msg>.*)$", re.S)
FORMATS = ("text", "github")


def _data(s: str) -> str:
    """The escaping of a workflow command's message (the runner's own rules)."""
    return s.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _prop(s: str) -> str:
    return _data(s).replace(":", "%3A").replace(",", "%2C")


def github(line: str, level: str = "error", title: str = "") -> str:
    """One error line as a workflow command; a line without a file becomes a plain `::error::`."""
    props: list[str] = []
    m = _LOCATED.match(line)
    if m:
        props.append(f"file={_prop(m['file'])}")
        props.append(f"line={m['line']}")
        if m["col"]:
            props.append(f"col={m['col']}")
        msg = m["msg"]
    else:
        p = _PLAIN.match(line)
        if p and not p["file"].startswith("routingd "):   # "routingd simulate: ..." names no file
            props.append(f"file={_prop(p['file'])}")
            msg = p["msg"]
        else:
            msg = line
    if title:
        props.append(f"title={_prop(title)}")
    return f"::{level} {','.join(props)}::{_data(msg)}" if props else f"::{level}::{_data(msg)}"


def render(line: str, fmt: str, level: str = "error", title: str = "") -> str:
    """`line` as printed in format `fmt` ("text": unchanged)."""
    return github(line, level, title) if fmt == "github" else line


__all__ = ["FORMATS", "github", "render"]
