"""What an operator reads in the log: outages, reload changes, and the log line format.

    OutageLog(router)            an event listener (Router.add_event_listener): a breaker opening
                                 is one WARNING line (provider, why, for how long); its half-open
                                 probe, a failed probe and its closing are INFO lines; a message
                                 that ends undeliverable or expired is one WARNING line (its
                                 route and its last failure) on logger routingd.messages
    policy_changes(old, new)     what a reload changed: "providers changed: ses; routes added: x"
    configure_logging(level, fmt="text")   stderr handler: "text" (one line per record) or "json"
                                 (one JSON object per line); under journald (JOURNAL_STREAM names
                                 our stderr) no timestamp of ours and a <N> syslog priority prefix,
                                 so `journalctl -p warning` filters by level (docs/operations.md "Logs")

The listener learns everything from the engine's events (breaker_opened, breaker_closed,
attempt_started, attempt_ended), so it needs no hook in the Router and no state of the breakers
itself: a provider whose breaker opened is "open" here until its breaker_closed event; an attempt
started on it meanwhile is the half-open probe.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from collections import OrderedDict
from typing import Any

log = logging.getLogger("routingd.providers")
msg_log = logging.getLogger("routingd.messages")
_FAILED_ENDS = frozenset({"undeliverable", "expired"})
_LAST_FAILURES = 100_000        # messages whose last failure is remembered for their end line, at most
_END_LINES = 10                 # end lines per window; past them the ends are counted, then summarised
_END_WINDOW_S = 60.0

_OK = frozenset({"delivered", "accepted"})


def _why(data: dict[str, Any]) -> str:
    outcome = str(data.get("outcome", "?"))
    code = data.get("status_code")
    detail = data.get("detail")
    text = f"{outcome} {code}" if code is not None else outcome
    return f"{text} ({detail})" if detail else text


class OutageLog:
    """Router event listener: breaker transitions as log lines (see the module docstring)."""

    def __init__(self, router: Any, end_lines: int = _END_LINES, end_window_s: float = _END_WINDOW_S) -> None:
        self.router = router
        # Under load one line per failed message would drown the log: the first `end_lines` of a
        # window get their own line, the rest are counted and summarised when the window closes.
        self._end_lines, self._end_window_s = end_lines, end_window_s
        self._window_lines = 0
        self._window_open = False
        self._suppressed: dict[str, int] = {}
        self._opened_at: dict[str, float] = {}      # provider -> when its breaker opened
        self._probe: dict[str, str] = {}            # provider -> attempt id of its probe
        self._last: dict[str, str] = {}             # provider -> its last failed outcome
        self._msg_last: OrderedDict[str, str] = OrderedDict()   # message -> "provider: why" of its last failure

    def _breaker(self, provider: str) -> tuple[int | None, float | None]:
        """(failures, cooldown seconds) of the provider in the current policy, if known."""
        try:
            b = self.router.policy.model.providers[provider].breaker
        except (AttributeError, KeyError):
            return None, None
        if b is False:
            return None, None
        return int(b.failures), float(b.cooldown) / 1000.0

    def __call__(self, message_id: str, event: Any) -> None:
        type_ = event.type
        if type_ == "finished":
            self._finished(message_id, event)
            return
        if type_ not in ("attempt_ended", "attempt_started", "breaker_opened", "breaker_closed"):
            return
        data = event.data
        provider = str(data.get("provider", ""))
        if type_ == "attempt_ended":
            outcome = data.get("outcome")
            if outcome not in _OK:
                self._last[provider] = _why(data)
                if outcome != "cancelled":
                    self._msg_last[message_id] = f"{provider}: {self._last[provider]}"
                    self._msg_last.move_to_end(message_id)
                    if len(self._msg_last) > _LAST_FAILURES:
                        self._msg_last.popitem(last=False)
            if self._probe.get(provider) == data.get("attempt_id"):
                del self._probe[provider]
                if outcome not in _OK:
                    _, cooldown = self._breaker(provider)
                    log.info("provider %s: half-open probe %s failed (%s); breaker stays open%s",
                             provider, data.get("attempt_id"), self._last[provider],
                             f" for {cooldown:g}s" if cooldown is not None else "")
        elif type_ == "attempt_started":
            if provider in self._opened_at and provider not in self._probe:
                self._probe[provider] = str(data.get("attempt_id"))
                log.info("provider %s: breaker half-open, probing with attempt %s (message %s)",
                         provider, data.get("attempt_id"), message_id)
        elif type_ == "breaker_opened":
            if provider in self._opened_at:
                return
            self._opened_at[provider] = event.at
            failures, cooldown = self._breaker(provider)
            why = f"{failures} consecutive failures" if failures is not None else "consecutive failures"
            last = self._last.get(provider)
            log.warning("provider %s: breaker OPEN after %s%s; new attempts skip it for %s, then one "
                        "probe is let through", provider, why, f", last: {last}" if last else "",
                        f"{cooldown:g}s" if cooldown is not None else "its cooldown")
        else:
            opened = self._opened_at.pop(provider, None)
            self._probe.pop(provider, None)
            self._last.pop(provider, None)
            log.info("provider %s: breaker closed%s; back in rotation", provider,
                     f" after {event.at - opened:.1f}s open" if opened is not None else "")


    def _finished(self, message_id: str, event: Any) -> None:
        """A message that ends without a delivery is one WARNING line: what an operator needs to
        find it (its id, for GET /v1/messages/ID) and why, without reading its history -- up to
        `end_lines` a window; the others of the window are counted in one summary line."""
        last = self._msg_last.pop(message_id, None)
        status = str(event.data.get("status"))
        if status not in _FAILED_ENDS:
            return
        if not self._window_open:
            self._window_open = True
            asyncio.get_running_loop().call_later(self._end_window_s, self._close_window)
        if self._window_lines >= self._end_lines:
            self._suppressed[status] = self._suppressed.get(status, 0) + 1
            return
        self._window_lines += 1
        why = "its message deadline passed" if status == "expired" else "every option was tried"
        msg_log.warning("message %s ended %s: %s%s", message_id, status, why,
                        f"; last failure: {last}" if last else "; no attempt was made")

    def _close_window(self) -> None:
        if self._suppressed:
            counts = ", ".join(f"{n} {status}" for status, n in sorted(self._suppressed.items()))
            msg_log.warning("%s more message(s) ended without a delivery in the last %gs (%s), past the %d "
                            "logged one by one; routingd_messages_finished_total counts them all",
                            sum(self._suppressed.values()), self._end_window_s, counts, self._end_lines)
        self._suppressed = {}
        self._window_lines = 0
        self._window_open = False


# --------------------------------------------------------------------------- reloads


def policy_changes(old: Any, new: Any) -> str:
    """One phrase naming the [providers], [channels], [routes] (and other tables) a reload added,
    removed or changed, e.g. "providers changed: ses; routes added: urgent"."""
    a = old.model.model_dump(mode="json")
    b = new.model.model_dump(mode="json")
    parts: list[str] = []
    for table in ("providers", "channels", "routes", "templates"):
        x, y = a.get(table) or {}, b.get(table) or {}
        if not isinstance(x, dict) or not isinstance(y, dict):
            continue
        for verb, names in (("added", sorted(set(y) - set(x))), ("removed", sorted(set(x) - set(y))),
                            ("changed", sorted(k for k in set(x) & set(y) if x[k] != y[k]))):
            if names:
                parts.append(f"{table} {verb}: {', '.join(names)}")
    others = sorted(k for k in set(a) | set(b)
                    if k not in ("providers", "channels", "routes", "templates") and a.get(k) != b.get(k))
    if others:
        parts.append(f"changed: {', '.join('[' + k + ']' for k in others)}")
    return "; ".join(parts) if parts else "no table changed (comments or formatting only)"


# --------------------------------------------------------------------------- line format

# syslog priorities (sd-daemon(3)): journald reads a "<N>" prefix as the line's level
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def under_journald(env: Any = None, fd: int = 2) -> bool:
    """Is `fd` (stderr) connected to the journal? systemd sets JOURNAL_STREAM=DEV:INODE of it."""
    value = (os.environ if env is None else env).get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep:
        return False
    try:
        st = os.fstat(fd)
        return st.st_dev == int(dev) and st.st_ino == int(ino)
    except (OSError, ValueError):
        return False


class TextFormatter(logging.Formatter):
    """Every record on one line, a traceback included: every line break (\\n, but also \\r,
    \\v, \\f, \\x1c-\\x1e, \\x85, \\u2028, \\u2029, what str.splitlines() breaks at) becomes
    " | ", so a value from a request cannot start a forged log line; under journald without our
    timestamp (the journal has its own) and with a "<N>" priority prefix."""

    def __init__(self, journald: bool = False) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s" if journald
                         else "%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        line = " | ".join(super().format(record).splitlines())
        if self.journald:
            return f"<{_PRIORITY.get(record.levelno, 6)}>{line}"
        return line


_JSON_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (RFC 3339 UTC; left out under journald), level, logger,
    message, and exception when there is one."""

    def __init__(self, journald: bool = False) -> None:
        super().__init__()
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {}
        if not self.journald:
            t = time.gmtime(record.created)
            obj["time"] = time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}Z"
        obj["level"] = record.levelname.lower()
        obj["logger"] = record.name
        obj["message"] = record.getMessage()
        if record.exc_info:
            obj["exception"] = self.formatException(record.exc_info)
        # json.dumps escapes the C0 line breaks; these three it leaves as they are
        line = json.dumps(obj, ensure_ascii=False).translate(_JSON_BREAKS)
        if self.journald:
            return f"<{_PRIORITY.get(record.levelno, 6)}>{line}"
        return line


def formatter(fmt: str = "text") -> logging.Formatter:
    journald = under_journald()
    return JsonFormatter(journald) if fmt == "json" else TextFormatter(journald)


def configure_logging(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING if level.upper() != "DEBUG" else logging.DEBUG)
    # urllib3 (under Apprise's and google-auth's requests) logs every request's path and query at
    # DEBUG, and an Apprise URL keeps its token there: never below INFO (docs/security.md)
    logging.getLogger("urllib3").setLevel(max(logging.INFO, root.level))


def set_format(fmt: str) -> None:
    """Switch the format of the handlers configure_logging() installed ([daemon] log_format at a reload)."""
    for h in logging.getLogger().handlers:
        h.setFormatter(formatter(fmt))
