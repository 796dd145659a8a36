"""The HTTP face of the daemon: an aiohttp application over the runtime `Router`.

Every answer is JSON (except /metrics); every error is `{"error": "...", "details": [{"loc":
[...], "msg": "..."}]}`. Bearer tokens guard everything but the probes (/healthz, /readyz),
/metrics and /openapi.json; a receipt from a provider with a `receipt_secret` is authenticated
by its HMAC signature instead. See docs/api.md.

The package's modules, one job each: base.py (ApiState, ApiError, the JSON answer), guard.py
(the middleware, auth and browser checks, body reading), v1.py (send and its checks, which Courier's /send shares; status), receipts.py,
ops.py (probes, metrics, reload, config), app.py (create_app). Everything is importable from
`routingd.daemon.api` as before.
"""

from __future__ import annotations

import hmac  # noqa: F401 - tests/test_security.py spies on api.hmac.compare_digest

from .base import (
    Phase as Phase,
    SIGNATURE_HEADER as SIGNATURE_HEADER,
    IDEMPOTENCY_HEADER as IDEMPOTENCY_HEADER,
    PUBLIC_PATHS as PUBLIC_PATHS,
    _ID_RE as _ID_RE,
    PROMETHEUS_CONTENT_TYPE as PROMETHEUS_CONTENT_TYPE,
    _JSON_CONTENT_TYPE as _JSON_CONTENT_TYPE,
    ReloadResult as ReloadResult,
    Reloader as Reloader,
    ApiState as ApiState,
    STATE_KEY as STATE_KEY,
    ApiError as ApiError,
    _encode as _encode,
    json_response as json_response,
    validation_details as validation_details,
    _unavailable as _unavailable,
)
from .guard import (
    api_middleware as api_middleware,
    JSON_BODY_PATHS as JSON_BODY_PATHS,
    _LOOPBACK_HOSTS as _LOOPBACK_HOSTS,
    _loopback_host as _loopback_host,
    browser_check as browser_check,
    json_content_type_check as json_content_type_check,
    auth_check as auth_check,
    token_ok as token_ok,
    _vendor_config as _vendor_config,
    _receipt_secret as _receipt_secret,
    read_body as read_body,
    parse_json_object as parse_json_object,
    json_depth as json_depth,
)
from .receipts import (
    ReceiptBody as ReceiptBody,
    signature_ok as signature_ok,
    sign as sign,
    receipt as receipt,
    vendor_receipt as vendor_receipt,
)
from .v1 import (
    send_key as send_key,
    send_load_check as send_load_check,
    submit_send as submit_send,
    send as send,
    _send_request_fast as _send_request_fast,
    _inflight_limit as _inflight_limit,
    _limit as _limit,
    message_status as message_status,
)
from .ops import (
    healthz as healthz,
    readyz as readyz,
    metrics as metrics,
    openapi as openapi,
    reload as reload,
    config as config,
)
from .app import (
    ProtocolLog as ProtocolLog,
    create_app as create_app,
)
