"""One sanitiser for every text a provider adapter turns into an attempt's `detail`.

A detail is stored in the state file, shown by `GET /v1/messages/{id}`, published on the MQTT
events topic and logged, so it must never carry a credential. Chat APIs put the key in the URL
(`https://api.example/bot<TOKEN>/sendMessage`), others in a header or the query; an error
(aiohttp's `ClientResponseError ... url='...'`) or a provider's error body can echo any of them.

`redact(text, secrets)`:
  * every URL is cut to `scheme://host[:port]` (user info, path, query and fragment dropped; a
    dropped path, query or fragment shows as `/…`);
  * every given secret (see `config_secrets`) is replaced by `***`, in any of the renderings
    an error may use (as is, `repr()`-escaped, percent-encoded);
  * whitespace (newlines included) is folded to single spaces and the text bounded.

Every adapter's error path calls it with `config_secrets(...)` of its configuration (the http,
mqtt, vendor and email adapters alike: this is the only sanitiser); the runtime applies it once
more to every detail as a backstop (docs/security.md).
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterable, Mapping
from urllib.parse import parse_qsl, quote, urlsplit

from pydantic import SecretStr

MASK = "***"
MAX_DETAIL = 300
# an adapter bounds the text it has not masked of every secret (a vendor's error body, an
# exception) at MAX_RAW, not MAX_DETAIL: cutting first could leave the head of a secret that
# straddles the cut, which the runtime's backstop (masking every secret of the provider's
# configuration, then cutting to MAX_DETAIL) would no longer recognise
MAX_RAW = 2000
_MIN_SECRET = 6                  # shorter pieces ("v1", "send") are words, not keys
_URL = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]{1,15})://([^\s/?#'\"<>()\[\]]*)[^\s'\"<>()\[\]]*")


def _host_only(m: re.Match[str]) -> str:
    netloc = m.group(2).rpartition("@")[2]          # user:password@ never shown
    cut = len(m.group(0)) > len(m.group(1)) + 3 + len(m.group(2))
    return f"{m.group(1)}://{netloc}" + ("/…" if cut else "")


def config_secrets(url: str | None = None, headers: Mapping[str, str] | None = None,
                   extra: Iterable[str | None] = ()) -> tuple[str, ...]:
    """The pieces of a provider's configuration that may be credentials: the URL's user info,
    path segments and query values, every header value and each word of it (the token of
    "Bearer <token>"), plus `extra` (a password, a secret)."""
    out: set[str] = set()
    if url:
        try:
            parts = urlsplit(url)
        except ValueError:
            parts = None
        if parts is not None:
            if parts.username:
                out.add(parts.username)
            if parts.password:
                out.add(parts.password)
            out.update(seg for seg in parts.path.split("/") if seg)
            for k, v in parse_qsl(parts.query, keep_blank_values=True):
                out.update((k, v))
            if parts.fragment:
                out.add(parts.fragment)
    for value in (headers or {}).values():
        out.add(value)
        out.update(value.split())
    out.update(e for e in extra if e)
    return tuple(sorted((s for s in out if len(s) >= _MIN_SECRET), key=len, reverse=True))


def provider_secrets(config: Any) -> tuple[str, ...]:
    """Every credential in one provider's configuration, for `redact`: each secret value
    (`api_key`, `auth_token`, `password`, `secret_access_key`, `token`, a webhook URL, Apprise
    URLs, the service account, `receipt_secret`) with its pieces (`config_secrets`: a URL's user
    info, path segments and query values; a multi-line value's lines, e.g. a PEM key's; a service
    account's `private_key` and `private_key_id`), plus the fields that are credentials without
    being secret values: the `http` type's URL and headers, ses's `access_key_id`. A vendor may
    quote any of them back in an error body."""
    values: list[str] = []
    for name in type(config).model_fields if hasattr(type(config), "model_fields") else ():
        value = getattr(config, name, None)
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, SecretStr):
                values.append(v.get_secret_value())
    out: list[str] = []
    for v in values:
        out += [v, *config_secrets(url=v if "://" in v else None)]
        out += [line.strip() for line in v.splitlines() if len(line.strip()) >= 16]
        try:
            doc = json.loads(v) if v.lstrip().startswith("{") else None
        except ValueError:
            doc = None
        if isinstance(doc, dict):
            for key in ("private_key", "private_key_id"):
                if isinstance(doc.get(key), str):
                    out += [doc[key], *(ln for ln in doc[key].splitlines() if len(ln) >= 16)]
    if getattr(config, "type", None) == "http":
        out += config_secrets(config.url, config.headers)
    if isinstance(getattr(config, "access_key_id", None), str):
        out.append(config.access_key_id)
    return tuple(sorted((s for s in dict.fromkeys(out) if len(s) >= _MIN_SECRET), key=len, reverse=True))


def _renderings(secret: str) -> list[str]:
    forms = [secret, repr(secret)[1:-1], quote(secret, safe=""), quote(secret)]
    return [f for f in dict.fromkeys(forms) if f]


def redact(text: str, secrets: Iterable[str] = (), limit: int = MAX_DETAIL) -> str:
    """`text` with URLs cut to their host, `secrets` masked, whitespace folded, at most `limit`
    characters."""
    for s in secrets:
        for form in _renderings(s):
            if form in text:
                text = text.replace(form, MASK)
    text = _URL.sub(_host_only, text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def describe_error(e: BaseException, secrets: Iterable[str] = (), limit: int = MAX_RAW) -> str:
    """An exception as one redacted line: "ClientResponseError: 400, message=..., url=https://host"."""
    kind = type(e).__name__
    text = str(e)
    return redact(f"{kind}: {text}" if text.strip() else kind, secrets, limit)
