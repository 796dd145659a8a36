"""Message templates: `[templates.NAME]` parts per channel, compiled once per policy and rendered
per message from its `data` and `to` (docs/providers.md "Content").

Pure: Jinja2 compiles and renders strings here (no loader, so no include/import of files); the
sandboxed environment refuses unsafe attribute access, undefined variables are errors
(StrictUndefined), and only the `html` part is HTML-escaped. Errors come back as
(location, message) pairs; the policy turns them into Problems, the daemon into a 422.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from jinja2 import StrictUndefined, TemplateSyntaxError, Undefined
from jinja2.sandbox import SandboxedEnvironment

# A part's keys and the Content field each fills (daemon/adapters.py Content: title, text, html).
PART_FIELDS: dict[str, str] = {"subject": "title", "title": "title", "text": "text", "body": "text",
                               "html": "html"}

Loc = tuple[str | int, ...]
Issue = tuple[Loc, str]



def _json_default(o: Any) -> Any:
    # `{{ x | tojson }}` hands an undefined x to json.dumps: make it the usual "'x' is undefined"
    if isinstance(o, Undefined):
        o._fail_with_undefined_error()
    raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")


def _environment(autoescape: bool) -> SandboxedEnvironment:
    env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=autoescape, keep_trailing_newline=True)
    env.policies["json.dumps_kwargs"] = {"sort_keys": True, "default": _json_default}
    return env


_TEXT_ENV = _environment(False)
_HTML_ENV = _environment(True)
_ORIGIN = "<template>"      # the file name Jinja gives a template from a string; marks its frames


@dataclass(frozen=True)
class Rendered:
    """One channel's content, rendered: what routingd.daemon.adapters.Content holds."""

    title: str = ""
    text: str = ""
    html: str | None = None


@dataclass(frozen=True)
class _Field:
    key: str                  # the key in routing.toml (subject, title, text, body, html)
    target: str               # title | text | html
    template: Any             # jinja2.Template


def environment(html: bool) -> SandboxedEnvironment:
    """The sandboxed environment for a part (html=True: autoescaped); the http provider's body
    template uses the text one."""
    return _HTML_ENV if html else _TEXT_ENV


def compile_source(source: str, html: bool = False) -> tuple[Any, str | None]:
    """(template, None), or (None, "line N: reason") for a syntax error."""
    try:
        return environment(html).from_string(source), None
    except TemplateSyntaxError as e:
        return None, f"template syntax error at line {e.lineno}: {e.message}"


class TemplateSet:
    """Every template of a policy, compiled. Immutable once built; shared by all messages."""

    def __init__(self, parts: Mapping[str, Mapping[str, tuple[_Field, ...]]]) -> None:
        self._parts = parts

    @property
    def names(self) -> list[str]:
        return sorted(self._parts)

    def __contains__(self, name: object) -> bool:
        return name in self._parts

    def channels(self, name: str) -> list[str]:
        return list(self._parts.get(name, {}))

    def render(self, name: str, channel: str, data: Mapping[str, Any] | None,
               to: Mapping[str, Any]) -> tuple[Rendered | None, list[Issue]]:
        """Template `name`'s part for `channel` (None: the template has no such part), or the
        problems that stop it, located in the request (message.data, message.to, message.template)."""
        fields = self._parts[name].get(channel)
        if fields is None:
            return None, []
        data = dict(data or {})
        # data's keys are variables of their own ({{ host }}); `data` and `to` name the whole
        # objects, and win over data keys of those names (reachable as data["to"]).
        context = {**data, "data": data, "to": dict(to)}
        out: dict[str, Any] = {}
        issues: list[Issue] = []
        for f in fields:
            try:
                out[f.target] = f.template.render(context)
            except Exception as e:  # noqa: BLE001 - any error of a template is the request's 422
                issues.append(_render_issue(name, channel, f.key, e))
        if issues:
            return None, issues
        return Rendered(out.get("title", ""), out.get("text", ""), out.get("html")), []


def _render_issue(name: str, channel: str, key: str, e: Exception) -> Issue:
    from jinja2 import UndefinedError
    from jinja2.exceptions import SecurityError

    where = f"templates.{name}.{channel}.{key}"
    line = template_line(e)
    if line is not None:
        where += f" (line {line})"
    if isinstance(e, UndefinedError):
        return ("message", "data"), f"{where}: {e.message} (give it in message.data or message.to)"
    if isinstance(e, SecurityError):
        return ("message", "template"), f"{where}: refused by the template sandbox: {e}"
    return ("message", "data"), f"{where}: {type(e).__name__}: {e}"


def template_line(e: BaseException) -> int | None:
    """The template line an error was raised at (Jinja rewrites its frames to the template's
    lines), or None."""
    line = None
    tb = e.__traceback__
    for _ in range(1000):           # bounded walk of the traceback
        if tb is None:
            break
        if tb.tb_frame.f_code.co_filename == _ORIGIN:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def compile_templates(raw: Mapping[str, Mapping[str, Any]],
                      channels: Iterable[str]) -> tuple[TemplateSet, list[Issue]]:
    """Compile `[templates]` (NAME -> channel -> part; a part is a pydantic model or mapping of
    subject/title/text/body/html -> source). Issues name the key path in routing.toml: unknown
    channels and syntax errors with their line in the template."""
    known = list(channels)
    issues: list[Issue] = []
    compiled: dict[str, dict[str, tuple[_Field, ...]]] = {}
    for name, parts in raw.items():
        compiled[name] = {}
        for channel, part in parts.items():
            if channel not in known:
                issues.append((("templates", name, channel), f"unknown channel {channel!r}"
                               + (f"; defined channels: {', '.join(sorted(known))}" if known else "")))
                continue
            values = part if isinstance(part, Mapping) else part.model_dump(exclude_none=True)
            fields: list[_Field] = []
            for key, source in values.items():
                if source is None:
                    continue
                template, error = compile_source(source, html=PART_FIELDS[key] == "html")
                if error is not None:
                    issues.append((("templates", name, channel, key), error))
                    continue
                fields.append(_Field(key, PART_FIELDS[key], template))
            compiled[name][channel] = tuple(fields)
    return TemplateSet(compiled), issues


EMPTY = TemplateSet({})
