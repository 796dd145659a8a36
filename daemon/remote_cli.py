"""`routingd status [MESSAGE_ID]` and `routingd providers`: what a running daemon says, read over
its HTTP API (the same answers as GET /v1/messages/{id} and GET /v1/providers, docs/api.md) and
printed for a terminal, or as the API's JSON with --json.

The daemon is found at --url, else $ROUTINGD_URL, else the `listen` address of the config
(--config, $ROUTINGD_CONFIG or ./routing.toml) when it can be read, else 127.0.0.1:8080; the
token is --token, else $ROUTINGD_TOKEN. Errors are one line and exit 1 (unreachable, 401, 404).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any

EXIT_OK = 0
EXIT_FAILED = 1
_TIMEOUT_S = 10.0


class RemoteError(Exception):
    """One line for the operator: why the daemon's answer could not be shown."""


def add_remote_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", metavar="URL",
                   help="the daemon (default: $ROUTINGD_URL, else the config's listen address)")
    p.add_argument("--token", metavar="TOKEN", help="API token (default: $ROUTINGD_TOKEN)")
    p.add_argument("--config", "-c", metavar="PATH",
                   help="routing.toml whose [daemon] listen names the daemon (default: $ROUTINGD_CONFIG "
                        "or ./routing.toml)")
    p.add_argument("--json", action="store_true", help="print the API's JSON answer")


def _base_url(args: argparse.Namespace) -> str:
    url = args.url or os.environ.get("ROUTINGD_URL")
    if url:
        return url.rstrip("/")
    try:
        from .config_files import load_policy
        from .settings import parse_listen
        path = args.config or os.environ.get("ROUTINGD_CONFIG") or "routing.toml"
        listen = load_policy(path).model.daemon.listen
        addr = parse_listen(listen)
        host = "127.0.0.1" if addr.host in ("0.0.0.0", "", "::") else addr.host
        return f"http://{host}:{addr.port}" if ":" not in host else f"http://[{host}]:{addr.port}"
    except Exception:  # noqa: BLE001 - no readable config: the default address
        return "http://127.0.0.1:8080"


def fetch(args: argparse.Namespace, path: str) -> Any:
    """GET base + path as JSON; RemoteError with one line on any failure."""
    base = _base_url(args)
    token = args.token or os.environ.get("ROUTINGD_TOKEN")
    req = urllib.request.Request(base + path, headers={"Accept": "application/json"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=_TIMEOUT_S) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as e:
        try:
            err = json.loads(e.read()).get("error", "")
        except (ValueError, AttributeError):
            err = ""
        if e.code == 401:
            raise RemoteError(f"{base}: the token was not accepted (give --token or set ROUTINGD_TOKEN)") from None
        raise RemoteError(f"{base}{path}: HTTP {e.code}{': ' + err if err else ''}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise RemoteError(f"cannot reach routingd at {base}: {reason} (is it running? --url names another)") from None


def _t(value: Any) -> str:
    return "-" if value is None else str(value)


def status_command(args: argparse.Namespace) -> int:
    try:
        if args.message_id is None:
            doc = fetch(args, "/v1/config")
            ready = fetch(args, "/readyz")
        else:
            doc = fetch(args, f"/v1/messages/{args.message_id}")
    except RemoteError as e:
        print(f"routingd: {e}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(doc if args.message_id else {"config": doc, "ready": ready}, indent=2))
        return EXIT_OK
    if args.message_id is None:
        print(f"policy {doc.get('version')} from {doc.get('path')} (loaded {doc.get('loaded_at')})")
        print(f"ready: {ready.get('status', ready)}" if isinstance(ready, dict) else f"ready: {ready}")
        return EXIT_OK
    print(f"message {doc['message_id']}: {doc['status']}  route {_t(doc.get('route'))}  "
          f"accepted {doc.get('accepted_at')}  finished {_t(doc.get('finished_at'))}")
    for a in doc.get("attempts", []):
        code = a.get("status_code")
        outcome = a.get("outcome") or "running"
        print(f"  {a['attempt_id']}  {a['channel']}/{a['provider']} try {a['try']}  {outcome}"
              f"{' ' + str(code) if code is not None else ''}  {a['started_at']} -> {_t(a.get('ended_at'))}"
              f"{'  ' + a['detail'] if a.get('detail') else ''}")
    return EXIT_OK


def providers_command(args: argparse.Namespace) -> int:
    try:
        doc = fetch(args, "/v1/providers")
    except RemoteError as e:
        print(f"routingd: {e}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(doc, indent=2))
        return EXIT_OK
    rows = [("provider", "type", "breaker", "drained", "attempts", "success", "p50 ms", "p99 ms")]
    for p in doc.get("providers", []):
        recent = p.get("recent", {})
        lat = recent.get("latency_ms", {})
        rate = recent.get("success_rate")
        rows.append((p["name"], _t(p.get("type")), p["breaker"]["state"], "yes" if p.get("drained") else "no",
                     str(recent.get("attempts", 0)), "-" if rate is None else f"{rate:.1%}",
                     _t(lat.get("p50")), _t(lat.get("p99"))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    window = doc.get("providers", [{}])[0].get("recent", {}).get("window_s") if doc.get("providers") else None
    if window:
        print(f"(recent: the last {window:g}s)")
    return EXIT_OK
