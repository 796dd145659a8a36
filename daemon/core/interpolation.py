"""${VAR}, ${VAR:-default}, ${credential:NAME} and ${file:PATH} in routing.toml's strings.
The environment is a mapping and secrets are read by a resolver, both passed in by the caller
(daemon/config_files.py, daemon/secrets.py): core does no I/O. `masked` keeps the substituted
values out of error messages.

Re-exported by daemon/core/policy.py, the routing.toml model's entry point.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping

from .errors import Problem

_VAR = re.compile(r"\$\{(?:(credential|file):([^}]*)|([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?)\}")

# Reads a secret for ${credential:NAME} (kind "credential") or ${file:PATH} (kind "file"); raises
# ValueError with a reason that never holds the value. The daemon's is daemon/secrets.py.
SecretResolver = Callable[[str, str], str]


def interpolate(raw: Any, env: Mapping[str, str], loc: tuple = (), problems: list[Problem] | None = None,
                used: dict[str, str] | None = None, secrets: SecretResolver | None = None) -> Any:
    """Replace ${VAR}, ${VAR:-default}, ${credential:NAME} and ${file:PATH} in every string of a
    parsed TOML tree, except under [templates] (message text, where "${" is the author's).

    `used`, when given, collects {value: reference} of every substituted value, so that error
    messages can name the reference instead of echoing its (possibly secret) value."""
    if problems is None:
        problems = []
    if isinstance(raw, dict):
        if loc == () and "templates" in raw:
            return {k: v if k == "templates" else interpolate(v, env, (k,), problems, used, secrets)
                    for k, v in raw.items()}
        return {k: interpolate(v, env, loc + (k,), problems, used, secrets) for k, v in raw.items()}
    if isinstance(raw, list):
        return [interpolate(v, env, loc + (i,), problems, used, secrets) for i, v in enumerate(raw)]
    if isinstance(raw, str) and "${" in raw:
        def sub(m: re.Match) -> str:
            kind, ref = m.group(1), m.group(2)
            if kind is not None:
                return _secret(kind, ref, loc, problems, used, secrets)
            name, default = m.group(3), m.group(4)
            if name in env:
                if used is not None and env[name]:
                    used[env[name]] = name
                return env[name]
            if default is not None:
                return default
            # api_tokens may name an unset variable: that simply means "no token".
            if loc[:2] == ("daemon", "api_tokens"):
                return ""
            problems.append(Problem(loc, f"environment variable {name} is not set "
                                         f"(write ${{{name}:-}} to default it to empty)"))
            return ""
        return _VAR.sub(sub, raw)
    return raw


def _secret(kind: str, ref: str, loc: tuple, problems: list[Problem], used: dict[str, str] | None,
            secrets: SecretResolver | None) -> str:
    if secrets is None:
        problems.append(Problem(loc, f"${{{kind}:{ref}}} cannot be read here (only routingd's daemon and "
                                     "command line read secrets)"))
        return ""
    try:
        value = secrets(kind, ref)
    except ValueError as e:
        problems.append(Problem(loc, f"${{{kind}:{ref}}}: {e}"))
        return ""
    if used is not None and value:
        used[value] = f"{kind}:{ref}"
    return value


def masked(problems: list[Problem], used: Mapping[str, str]) -> list[Problem]:
    """Never echo a value that came from the environment (it may be a secret put in the wrong key):
    name its variable instead."""
    if not used:
        return problems
    out = []
    for p in problems:
        msg = p.msg
        for value in sorted(used, key=len, reverse=True):
            # as is, and as repr() shows it inside a message (a backslash, a tab or both quote
            # kinds come out escaped), and that escaped again (a message quoted by repr once more)
            once = repr(value)[1:-1]
            for form in dict.fromkeys((value, once, repr(once)[1:-1], once.replace("\\'", "'"))):
                if form and form in msg:
                    msg = msg.replace(form, f"${{{used[value]}}}")
        out.append(Problem(p.loc, msg))
    return out
