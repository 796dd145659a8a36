"""pydantic's validation errors in routing.toml's words: the one formatter
(`problems_from_validation`) for files (routing.toml, scenarios) and requests (HTTP and MQTT
`details`) alike, with user-written key paths, TOML's spelling of values and a "did you mean"
for an unknown key; and the bare-millisecond duration warning. Both look keys up in the models
by pydantic's error locations (`_keys_at`).

Re-exported by daemon/core/policy.py, the routing.toml model's entry point.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Mapping, Union

from pydantic import BaseModel, ValidationError

from .errors import Problem
from .durations import parse_duration_ms as _parse_duration_ms
from .provider_models import PROVIDER_TYPES
from .routing_model import PolicyModel


def user_loc(raw_loc: tuple) -> tuple[str | int, ...]:
    """pydantic's error location without the union-branch names it inserts.

    Branch tags of our own unions start with ':' (no user name can); a provider's `type` tag
    sits right after providers.NAME; the rest are pydantic's names of model/function branches.
    """
    out: list[str | int] = []
    for i, p in enumerate(raw_loc):
        if isinstance(p, str):
            if p.startswith(":") or p.startswith("literal[") or p.startswith("function-"):
                continue
            if p in ("RouteGroup", "BreakerSection", "InlineRouting"):
                continue
            if i == 2 and raw_loc[0] == "providers" and p in PROVIDER_TYPES:
                continue
            if p in ("str", "int") and i > 0 and not _is_mapping_key(raw_loc, i):
                continue
        out.append(p)
    return tuple(out)


def _is_mapping_key(raw_loc: tuple, i: int) -> bool:
    # providers.NAME / channels.NAME / routes.NAME / headers.NAME: user-chosen keys
    return raw_loc[i - 1] in ("providers", "channels", "routes", "headers", "templates")


def problems_from_validation(err: ValidationError, prefix: tuple[str | int, ...] = ()) -> list[Problem]:
    """The one formatter of pydantic's errors, for files (routing.toml, scenarios) and requests
    (HTTP and MQTT `details`) alike: user-written key paths, one wording ("unknown key",
    "required key is missing"), the first message per location."""
    out: list[Problem] = []
    for e in err.errors():
        loc = user_loc(e["loc"])
        msg = e["msg"]
        if e["type"] in ("greater_than_equal", "less_than_equal") and isinstance(e.get("input"), str):
            # a bound on a duration (the only text compared with a number: durations are read
            # as milliseconds): lease = "500ms" is below 1000 *milliseconds*, say so
            msg += f" (milliseconds), got {toml_repr(e['input'])}"
        for pre in ("Value error, ", "Assertion failed, "):
            if msg.startswith(pre):
                msg = msg[len(pre):]
        if e["type"] == "extra_forbidden":
            msg = "unknown key" + _valid_keys_hint(err.title, e["loc"])
        elif e["type"] in _EXPECTED:
            msg = f"expected {_EXPECTED[e['type']]}, got {toml_repr(e.get('input'))}"
        elif e["type"] == "literal_error":
            msg = f"{msg}, got {toml_repr(e.get('input'))}"
        elif e["type"] == "missing":
            msg = "required key is missing"
        elif e["type"] in ("union_tag_invalid", "union_tag_not_found"):
            # A discriminated union (provider `type`): name the key and the choices.
            ctx = e.get("ctx") or {}
            key = str(ctx.get("discriminator", "type")).strip("'")
            kind = "provider " if "providers" in loc else ""
            expected = _expected_tags(ctx)
            if e["type"] == "union_tag_invalid":
                msg = f"unknown {kind}{key} {ctx.get('tag')!r}; expected one of: {expected}"
            else:
                msg = f"required key is missing; expected one of: {expected}"
            loc = loc + (key,)
        out.append(Problem(prefix + loc, _GOT_PY.sub(lambda m: "got " + toml_repr(m.group(1) == "True"), msg)))
    # Unions report once per branch; keep the first message per location.
    seen: dict[tuple, Problem] = {}
    for p in out:
        seen.setdefault(p.loc, p)
    return list(seen.values())


# pydantic's type errors in TOML's words, with what was given (strict: "1" is not an integer).
_EXPECTED = {"int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
             "bool_type": "true or false", "bool_parsing": "true or false", "string_type": "a string",
             "float_type": "a number", "float_parsing": "a number", "dict_type": "a table",
             "model_type": "a table", "model_attributes_type": "a table", "list_type": "an array"}
# A validator's "got {v!r}" of a boolean says True/False, Python's spelling; the file says true/false.
_GOT_PY = re.compile(r"\bgot (True|False)\b")


def toml_repr(v: Any) -> str:
    """A value as the file spells it: true, "1", 1.5, a table, an array."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, dict):
        return "a table"
    if isinstance(v, list):
        return "an array"
    return "nothing" if v is None else type(v).__name__


def _valid_keys_hint(title: str, raw_loc: tuple) -> str:
    """'; did you mean 'retries'? valid keys: ...' for an unknown key, from the model the error
    is about (found by the ValidationError's title); '' when the table's keys are not known."""
    import difflib

    keys = _keys_at(_model_named(title), tuple(raw_loc[:-1]))
    if not keys:
        return ""
    close = difflib.get_close_matches(str(raw_loc[-1]), keys, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{hint} valid keys: {', '.join(keys)}" if hint else f"; valid keys: {', '.join(keys)}"


def bare_millisecond_warnings(raw: Any, model: Any = None, loc: tuple = (), path: tuple = ()) -> list[str]:
    """A duration written as a bare integer under 1000 is milliseconds (docs/configuration.md
    "Durations"): `provider = 2` is 2 ms, almost surely meant as 2 s; say so (a warning, since
    it is valid). `loc` is pydantic's location (with a provider's `type` as its branch tag),
    `path` the user's key path."""
    model = PolicyModel if model is None else model
    out: list[str] = []
    items = list(raw.items()) if isinstance(raw, dict) else list(enumerate(raw)) if isinstance(raw, list) else []
    if isinstance(raw, dict) and isinstance(raw.get("type"), str):
        loc = loc + (raw["type"],)
    for k, v in items:
        if isinstance(v, (dict, list)):
            out += bare_millisecond_warnings(v, model, loc + (k,), path + (k,))
        elif (isinstance(raw, dict) and isinstance(v, int) and not isinstance(v, bool) and 0 < v < 1000
              and _is_duration(model, loc + (k,))):
            key = ".".join(str(p) for p in path + (k,))
            out.append(f"{key} = {v} is {v} ms (a bare integer duration is milliseconds); "
                       f"write \"{v}s\" for seconds, or \"{v}ms\" to say you mean milliseconds")
    return out


def _model_fields(cls: Any) -> dict[str, Any]:
    """A pydantic model class's fields (typed Any: in the compiled core's build, where pydantic is
    not installed, mypy cannot see that the class is a BaseModel)."""
    return dict(cls.model_fields)


def _is_duration(model: Any, loc: tuple) -> bool:
    import typing

    parent = _keys_at(model, loc[:-1], want_model=True)
    if not (isinstance(parent, type) and issubclass(parent, BaseModel)):
        return False
    field = next((f for n, f in _model_fields(parent).items() if loc[-1] in (n, f.alias)), None)
    if field is None:
        return False
    todo: list[Any] = [*field.metadata, field.annotation]
    for _ in range(64):
        if not todo:
            break
        x = todo.pop()
        if getattr(x, "func", None) is _parse_duration_ms:
            return True
        todo += list(getattr(x, "__metadata__", ())) + list(typing.get_args(x))
    return False


def _model_named(name: str) -> type[BaseModel] | None:
    found: list[type[BaseModel]] = []
    todo: list[Any] = [BaseModel]
    seen: set[Any] = set()
    while todo:
        cls = todo.pop()
        sub: Any
        for sub in cls.__subclasses__():
            if sub not in seen:
                seen.add(sub)
                todo.append(sub)
                if sub.__name__ == name and sub.__module__.startswith(("routingd.", "daemon.", "simulator.")):
                    found.append(sub)
    return found[0] if len(found) == 1 else None


def _keys_at(model: Any, loc: tuple, want_model: bool = False) -> Any:
    """The keys of the table at pydantic's `loc` (branch tags included) inside `model` (with
    `want_model`: its model class); None when unknown. A provider table's tag is its `type`."""
    import typing

    t: Any = model
    i = 0
    for _ in range(64):                       # bounded: loc is short, every step consumes or unwraps
        origin = typing.get_origin(t)
        if origin is Annotated:
            t = typing.get_args(t)[0]
        elif origin is Union or type(t).__name__ == "UnionType":
            members = [m for m in typing.get_args(t) if m is not type(None)]
            nxt = loc[i] if i < len(loc) else None
            picked = None
            for m in members:
                meta = getattr(m, "__metadata__", ())
                base = typing.get_args(m)[0] if typing.get_origin(m) is Annotated else m
                tags = {getattr(x, "tag", None) for x in meta}
                ftype = getattr(base, "model_fields", {}).get("type")
                lits = set(typing.get_args(ftype.annotation)) if ftype is not None else set()
                if nxt is not None and (nxt in tags or nxt in lits or nxt == getattr(base, "__name__", None)):
                    picked, i = base, i + 1
                    break
            if picked is None:
                bases = [typing.get_args(m)[0] if typing.get_origin(m) is Annotated else m for m in members]
                models = [m for m in bases if isinstance(m, type) and issubclass(m, BaseModel)]
                if len(models) != 1:
                    return None
                picked = models[0]
            t = picked
        elif origin is dict:
            if i >= len(loc):
                return None
            t, i = typing.get_args(t)[1], i + 1
        elif origin is list:
            if i >= len(loc):
                return None
            t, i = typing.get_args(t)[0], i + 1
        elif isinstance(t, type) and issubclass(t, BaseModel):
            if i >= len(loc):
                return t if want_model else [f.alias or n for n, f in _model_fields(t).items()]
            name = loc[i]
            field = next((f for n, f in _model_fields(t).items() if name in (n, f.alias)), None)
            if field is None:
                return None
            t, i = field.annotation, i + 1
        else:
            return None
    return None


def _expected_tags(ctx: Mapping[str, Any]) -> str:
    tags = ctx.get("expected_tags")
    if tags:
        return ", ".join(t.strip().strip("'") for t in str(tags).split(","))
    return ", ".join(PROVIDER_TYPES)
