"""Crash under load: a real `routingd serve` is SIGKILLed at seeded random moments while a load
generator sends, and restarted on the same state file; nothing it answered 202 is lost.

Each round: start the daemon (sometimes it is killed again while it is still starting and
resuming), let the load run for a random while, SIGKILL. Then a last start drains everything.
The first provider of the channel confirms by receipt (`confirm = "receipt"`): a vendor-like
sender posts its signed `delivered` / `failed` receipts throughout, before, during and right after
the kills, sending each again after a connection error or a 503 until it is answered.

Asserted:
  * every message that got a 202 is in the store and ends delivered (the backup provider always
    answers, and the message timeout outlives the test): none lost, none left pending, none
    finished without all its options tried;
  * every receipt the daemon acknowledged (200) counts: a `delivered` one made its attempt
    delivered or is recorded as a delivery / duplicate of its message, or reached a message that
    had finished (a `late_receipt`); a `failed` one ended its attempt or is a `late_receipt`;
    none is unmatched (404);
  * a client that lost its connection in the crash and resent with the same Idempotency-Key got
    one message, never two;
  * every call a provider stand-in received has its attempt's row in the state file (the row is
    committed before the call goes out, so no kill can leave a call without a record);
  * duplicate provider calls (the same Idempotency-Key seen twice by a real HTTP stand-in) are
    counted; each one comes from another process run (never two within one run: the attempt
    id carries the run), so no key is sent more often than there were process runs.
The figures are printed (pytest -s) as one `crash-test:` JSON line and written to
crash-summary.json in the test's directory (and to $ROUTINGD_REPORT_DIR when set).

The short variant runs in `make test`; the long one is marked `slow`: `make test` leaves it out
(pytest's addopts deselect `slow`) and `make soak` (`pytest -m slow`), which CI also runs, runs it.
"""

from __future__ import annotations

import heapq
import http.client
import json
import os
import random
import sqlite3
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlsplit

import pytest

from daemon_process import DaemonProcess, StandinLoop
from provider_standin import seeded_answers, sign

CONFIG = """
version = 1
[daemon]
grace = "200ms"
[timeouts]
provider = "500ms"
channel = "2m"
message = "5m"
[providers.rcpt]
type = "http"
url = "{rcpt}"
confirm = "receipt"
receipt_timeout = "4s"
receipt_secret = "{secret}"
breaker = false
[providers.primary]
type = "http"
url = "{primary}"
[providers.backup]
type = "http"
url = "{backup}"
# After a restart every attempt whose receipt deadline passed while the daemon was down fails
# over at once, and the primary's breaker sends them on: a herd of calls on a busy 2-core machine.
# The backup gets the time to answer them (it always does), so every message ends delivered.
timeout = "20s"
breaker = false
[channels.email]
providers = ["rcpt", "primary", "backup"]
[routes.default]
channels = ["email"]
"""


def primary_script(seed: int) -> Any:
    """A provider with a bit of everything: slow answers, 503, hangs (cancelled at the 500ms
    attempt timeout), connection resets; deterministic per seed and arrival order."""
    return seeded_answers(seed, 0.2, error=0.10, hang=0.04, reset=0.04)


def backup_script(seed: int) -> Any:
    return seeded_answers(seed + 1, 0.1)


SECRET = "crash-receipt-secret"


@dataclass
class ReceiptSender:
    """The vendor side of `confirm = "receipt"`: receipts queued by the rcpt stand-in's script are
    POSTed, signed, to the daemon's /v1/receipts/rcpt when due, by `threads` threads, at whatever
    URL the daemon has now (a restart gets a new port). A receipt that meets a dead daemon (no URL,
    a connection error) or a 503 is sent again 50 ms later, until it gets another answer, as a
    vendor retries until it gets its 2xx; `stop()` waits (bounded) until every queued one has been
    answered. Each receipt's final answer is kept in `answered`, with the process run it went to."""

    daemon: DaemonProcess
    threads: int = 2
    answered: list[dict[str, Any]] = field(default_factory=list)
    queued: int = 0
    retried: set[int] = field(default_factory=set)    # receipts sent again (a connection error, a 503)
    answered_503: int = 0
    _heap: list[tuple[float, int, str, str]] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _busy: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    def queue(self, attempt_id: str, status: str, due: float) -> None:
        with self._cond:
            self.queued += 1
            heapq.heappush(self._heap, (due, self.queued, attempt_id, status))
            self._cond.notify()

    def start(self) -> None:
        for i in range(self.threads):
            t = threading.Thread(target=self._run, name=f"receipts-{i}", daemon=True)
            t.start()
            self._workers.append(t)

    def stop(self, timeout: float) -> None:
        """Wait until every queued receipt was answered (bounded), then end the threads."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._heap or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.5))
            left_over = len(self._heap) + self._busy
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        for t in self._workers:
            t.join(20)
        assert not any(t.is_alive() for t in self._workers), "a receipt thread did not stop"
        assert not left_over, f"{left_over} receipt(s) not answered within {timeout}s"

    def _next(self) -> tuple[float, int, str, str] | None:
        with self._cond:
            while not self._stop.is_set():
                now = time.monotonic()
                if self._heap and self._heap[0][0] <= now:
                    self._busy += 1
                    return heapq.heappop(self._heap)
                self._cond.wait(min(0.5, self._heap[0][0] - now) if self._heap else 0.5)
            return None

    def _run(self) -> None:
        while (item := self._next()) is not None:
            due, n, attempt_id, status = item
            url, run = self.daemon.url, self.daemon.starts
            code = 0
            if url:
                raw = json.dumps({"attempt_id": attempt_id, "status": status}).encode()
                u = urlsplit(url)
                conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
                try:
                    conn.request("POST", "/v1/receipts/rcpt", body=raw,
                                 headers={"Content-Type": "application/json", "X-Routingd-Signature": sign(SECRET, raw)})
                    r = conn.getresponse()
                    r.read()
                    code = r.status
                except (OSError, http.client.HTTPException):
                    code = 0
                finally:
                    conn.close()
            with self._cond:
                self._busy -= 1
                if code in (0, 503):
                    self.retried.add(n)
                    self.answered_503 += code == 503
                    heapq.heappush(self._heap, (time.monotonic() + 0.05, n, attempt_id, status))
                else:
                    self.answered.append({"attempt_id": attempt_id, "status": status, "http_status": code,
                                          "run": run})
                self._cond.notify_all()


def rcpt_script(seed: int, receipts: ReceiptSender) -> Any:
    """A provider that confirms by receipt: 202 then a `delivered` receipt after 0.05-5 s (past
    the 4 s receipt timeout: a late receipt), 202 and no receipt ever (receipt timeout, failover),
    202 then a `failed` receipt, or 503 (failover). The receipts go to `receipts` to be sent."""
    rng = random.Random(seed + 2)

    def action(n: int, body: Any) -> dict[str, Any]:
        x = rng.random()
        attempt_id = body.get("attempt_id") if isinstance(body, dict) else None
        if x < 0.55 and attempt_id:
            receipts.queue(attempt_id, "delivered", time.monotonic() + rng.uniform(0.05, 5.0))
        elif x < 0.65:
            pass
        elif x < 0.85 and attempt_id:
            receipts.queue(attempt_id, "failed", time.monotonic() + rng.uniform(0.05, 1.5))
        else:
            return {"status": 503}
        return {"status": 202, "delay": rng.uniform(0.0, 0.05)}

    return action


@dataclass
class LoadGenerator:
    """Threads that POST /v1/send as long as `running`, each logical send with its own
    Idempotency-Key, resent with that same key until it gets an answer (as a careful client does
    when the connection drops). The daemon's URL is read afresh after every failure (a restart
    gets a new port).

    `daemon` may be several daemons on one database (tests/test_pg_crash.py): the sends are then
    spread over those that run (send n of thread i goes to the (i + n)-th), and a send whose
    connection failed is resent, with its key, to the next one. `accepted_by` names the daemon
    (its index) that answered each key's 202."""

    daemon: DaemonProcess | Sequence[DaemonProcess]
    threads: int
    rate_per_thread: float
    accepted: dict[str, str] = field(default_factory=dict)      # idempotency key -> message id
    accepted_by: dict[str, int] = field(default_factory=dict)   # idempotency key -> daemon index
    replayed: int = 0
    resent: int = 0
    unavailable: int = 0
    failures: int = 0
    other: Counter = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for i in range(self.threads):
            t = threading.Thread(target=self._run, args=(i,), name=f"load-{i}", daemon=True)
            t.start()
            self._workers.append(t)

    def stop(self) -> None:
        self._stop.set()
        for t in self._workers:
            t.join(20)
        assert not any(t.is_alive() for t in self._workers), "a load thread did not stop"

    def _target(self, k: int) -> tuple[int, str]:
        """(index, URL) of the k-th daemon (round robin) that runs; URL "" when none does."""
        ds = [self.daemon] if isinstance(self.daemon, DaemonProcess) else list(self.daemon)
        live = [(j, d.url) for j, d in enumerate(ds) if d.url and (len(ds) == 1 or d.running)]
        return live[k % len(live)] if live else (-1, "")

    def _run(self, i: int) -> None:
        conns: dict[str, http.client.HTTPConnection] = {}
        n = 0
        interval = 1.0 / self.rate_per_thread
        next_at = time.monotonic()
        while not self._stop.is_set():
            key = f"load-{i}-{n}"
            body = json.dumps({"message": {"to": {"email": f"u{i}-{n}@example.com"},
                                           "content": {"title": "crash test", "body": key}}})
            tries = 0
            while not self._stop.is_set():
                j, url = self._target(i + n + tries)
                if not url:
                    time.sleep(0.02)
                    continue
                for stale in [u for u in conns if u != url and u not in self._urls()]:
                    conns.pop(stale).close()         # a daemon restarted on another port
                conn = conns.get(url)
                if conn is None:
                    u = urlsplit(url)
                    conn = conns[url] = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
                tries += 1
                try:
                    conn.request("POST", "/v1/send", body=body,
                                 headers={"Content-Type": "application/json", "Idempotency-Key": key})
                    r = conn.getresponse()
                    data = r.read()
                except (OSError, http.client.HTTPException):
                    conns.pop(url).close()
                    with self._lock:
                        self.failures += 1
                    time.sleep(0.02)
                    continue
                if r.status == 202:
                    with self._lock:
                        self.accepted[key] = json.loads(data)["message_id"]
                        self.accepted_by[key] = j
                        self.replayed += r.getheader("Idempotent-Replayed") == "true"
                        self.resent += tries > 1
                    break
                with self._lock:
                    if r.status == 503:
                        self.unavailable += 1
                    else:
                        self.other[r.status] += 1
                time.sleep(0.05)
            n += 1
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                next_at = time.monotonic()
        for conn in conns.values():
            conn.close()

    def _urls(self) -> set[str]:
        ds = [self.daemon] if isinstance(self.daemon, DaemonProcess) else list(self.daemon)
        return {d.url for d in ds if d.url}


def store_rows(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(message id -> status, idempotency key -> message id) read from the state file."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        status = dict(conn.execute("SELECT id, status FROM messages"))
        keys: dict[str, list[str]] = defaultdict(list)
        for key, mid in conn.execute("SELECT idempotency_key, id FROM messages WHERE idempotency_key IS NOT NULL"):
            keys[key].append(mid)
    finally:
        conn.close()
    doubled = {k: v for k, v in keys.items() if len(v) > 1}
    assert not doubled, f"an Idempotency-Key made two messages: {list(doubled.items())[:5]}"
    return status, {k: v[0] for k, v in keys.items()}


@dataclass
class StoredReceipts:
    """What the state file says about attempts and the receipt events of their messages."""

    outcome: dict[str, str | None]                  # attempt id -> outcome
    finished_at: dict[str, float | None]            # message id -> finished_at
    events: dict[str, list[tuple[str, float, dict[str, Any]]]]   # attempt id -> (type, at, data)


def stored_receipts(path: Path) -> StoredReceipts:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        outcome = dict(conn.execute("SELECT attempt_id, outcome FROM attempts"))
        finished_at = dict(conn.execute("SELECT id, finished_at FROM messages"))
        events: dict[str, list[tuple[str, float, dict[str, Any]]]] = defaultdict(list)
        rows = [(t, at, json.loads(data)) for t, at, data in conn.execute("SELECT type, at, data FROM events")]
        for (text,) in conn.execute("SELECT events FROM event_log ORDER BY seq"):
            rows.extend((t, at, data or {}) for t, at, data in json.loads(text))
        for t, at, data in rows:
            if isinstance(data, dict) and data.get("attempt_id"):
                events[data["attempt_id"]].append((t, at, data))
    finally:
        conn.close()
    return StoredReceipts(outcome, finished_at, events)


def attempt_ids(path: Path) -> set[str]:
    """Every attempt id with a row in the state file."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return {r[0] for r in conn.execute("SELECT attempt_id FROM attempts")}
    finally:
        conn.close()


def run_crash_rounds(tmp_path: Path, *, variant: str, seed: int, rounds: int, window: tuple[float, float],
                     threads: int, rate_per_thread: float) -> dict[str, Any]:
    rng = random.Random(seed)
    with StandinLoop() as loop:
        d = DaemonProcess(tmp_path, None, start_timeout=30)
        receipts = ReceiptSender(d)
        rcpt = loop.standin(rcpt_script(seed, receipts))
        primary = loop.standin(primary_script(seed))
        backup = loop.standin(backup_script(seed))
        d.write_config(CONFIG.format(rcpt=rcpt.url, primary=primary.url, backup=backup.url, secret=SECRET))
        load = LoadGenerator(d, threads, rate_per_thread)
        kills: list[float] = []            # time.monotonic() of each SIGKILL (the stand-ins' clock too)
        kills_while_starting = 0
        runs = 0
        started = time.monotonic()
        try:
            d.start()
            runs += 1
            receipts.start()
            load.start()
            for r in range(rounds):
                time.sleep(rng.uniform(*window))
                kills.append(time.monotonic())
                d.kill()
                if rng.random() < 0.3:         # killed again while it starts and resumes
                    d.spawn()
                    runs += 1
                    time.sleep(rng.uniform(0.2, 1.2))
                    if d.running:
                        kills.append(time.monotonic())
                        d.kill()
                        kills_while_starting += 1
                d.start()
                runs += 1
            time.sleep(rng.uniform(*window))
            load.stop()
            load_s = time.monotonic() - started
            # drain: every accepted message must reach a terminal status in this last run
            deadline = time.monotonic() + (240 if variant == "soak" else 60)
            while True:
                status, by_key = store_rows(d.state_path)  # type: ignore[arg-type]
                pending = [mid for mid in load.accepted.values() if status.get(mid) == "pending"]
                if not pending or time.monotonic() > deadline:
                    break
                time.sleep(0.25)
            # every receipt the provider still owes is answered (a delivered one for a message
            # that finished meanwhile is a late receipt or a duplicate, counted below)
            receipts.stop(timeout=60)
            sample = rng.sample(sorted(load.accepted.values()), min(50, len(load.accepted)))
            api_status = {mid: d.status(mid)["status"] for mid in sample}
            assert d.stop() == 0
            recorded = attempt_ids(d.state_path)  # type: ignore[arg-type]
            view = stored_receipts(d.state_path)  # type: ignore[arg-type]
            log = "\n".join((tmp_path / f"routingd-{i}.log").read_text(errors="replace")
                            for i in range(1, d.starts + 1))
        finally:
            d.close()
            load._stop.set()
            receipts._stop.set()
        requests = list(rcpt.requests) + list(primary.requests) + list(backup.requests)

    # ---- nothing lost
    lost = [k for k, mid in load.accepted.items() if mid not in status]
    assert not lost, f"{len(lost)} accepted message(s) are not in the store: {lost[:5]}"
    assert all(by_key.get(k) == mid for k, mid in load.accepted.items()), "a key's 202 named another message"
    not_terminal = {mid: status[mid] for mid in load.accepted.values() if status[mid] == "pending"}
    assert not not_terminal, f"{len(not_terminal)} accepted message(s) still pending: {list(not_terminal)[:5]}"
    outcome = Counter(status[mid] for mid in load.accepted.values())
    assert set(outcome) <= {"delivered", "undeliverable", "expired"}
    assert outcome["delivered"] == len(load.accepted), outcome     # the backup always answers
    assert all(st == status[mid] for mid, st in api_status.items())
    assert "Traceback" not in log

    # ---- write-ahead: a call a provider received always has its attempt row, whenever the kill came
    unrecorded = [q.json["attempt_id"] for q in requests if q.json["attempt_id"] not in recorded]
    assert not unrecorded, f"{len(unrecorded)} provider call(s) with no attempt row: {unrecorded[:5]}"

    # ---- receipts: each one the daemon acknowledged (2xx) counts. A `delivered` one either made
    # its attempt delivered, or was recorded as counting for its message (a `delivered` or
    # `duplicate` event naming the attempt), or came after its message had finished (a
    # `late_receipt` at or after finished_at, which changes nothing). A `failed` one ended its
    # attempt `failed` or was recorded as a `late_receipt`. None may be unmatched (404): the
    # attempt row is committed before the call the receipt answers.
    codes = Counter(r["http_status"] for r in receipts.answered)
    assert set(codes) <= {200}, f"receipts answered other than 200: {dict(codes)}"
    acked = [r for r in receipts.answered if r["http_status"] == 200]
    assert len(acked) == receipts.queued
    lost_receipts: list[str] = []
    late_after_finish = counted = 0
    for r in acked:
        aid, st = r["attempt_id"], r["status"]
        evs = view.events.get(aid, [])
        finished = view.finished_at.get(aid.rsplit(".", 2)[0])
        if st == "delivered":
            if view.outcome.get(aid) == "delivered" or any(t in ("delivered", "duplicate") for t, _, _ in evs):
                counted += 1
                continue
            if finished is not None and any(t == "late_receipt" and data.get("status") == st and at >= finished - 1e-6
                                            for t, at, data in evs):
                late_after_finish += 1
                continue
        elif view.outcome.get(aid) == "failed" or any(t == "late_receipt" and data.get("status") == st
                                                      for t, _, data in evs):
            continue
        lost_receipts.append(f"{aid} {st} (outcome {view.outcome.get(aid)}, run {r['run']}, events "
                             f"{[(t, round(at, 3), data.get('status')) for t, at, data in evs]}, finished {finished})")
    assert not lost_receipts, f"{len(lost_receipts)} acknowledged receipt(s) did not count: {lost_receipts[:5]}"
    duplicate_deliveries = sum(1 for evs in view.events.values() for t, _, _ in evs if t == "duplicate")

    # ---- duplicates: count them, and show each one is a crash's doing
    calls: dict[str, list[Any]] = defaultdict(list)
    for req in requests:
        if req.idempotency_key:
            calls[req.idempotency_key].append(req)
    duplicates = 0
    for key, reqs in calls.items():
        reqs.sort(key=lambda q: q.received_at)
        # attempt ids are "<message_id>.<run>.<n>"; the run goes up by one each time a process
        # start resumes the message, so distinct runs = distinct process runs
        run_of = [q.json["attempt_id"].split(".")[1] for q in reqs]
        assert len(set(run_of)) == len(run_of), f"{key} was sent twice within one process run: {run_of}"
        duplicates += len(reqs) - 1
    max_calls = max((len(r) for r in calls.values()), default=0)
    assert max_calls <= runs

    summary = {
        "variant": variant, "seed": seed, "rounds": rounds, "sigkills": len(kills), "sigkills_while_starting": kills_while_starting,
        "process_runs": runs, "load_seconds": round(load_s, 1), "accepted": len(load.accepted),
        "accepted_per_second": round(len(load.accepted) / load_s, 1),
        "resent_after_a_dropped_connection": load.resent, "of_which_replayed_same_id": load.replayed,
        "answered_503": load.unavailable, "other_answers": dict(load.other),
        "connection_failures_while_down": load.failures, "lost": len(lost), **{k: outcome[k] for k in
                                                                               ("delivered", "undeliverable", "expired")},
        "provider_calls": len(requests), "duplicate_provider_calls": duplicates,
        "duplicates_per_sigkill": round(duplicates / max(1, len(kills)), 1),
        "max_calls_for_one_key": max_calls,
        "receipts_sent": receipts.queued, "receipts_acknowledged": len(acked), "receipts_lost": len(lost_receipts),
        "receipts_resent_after_a_connection_error_or_503": len(receipts.retried),
        "receipts_answered_503": receipts.answered_503,
        "delivered_receipts_counted": counted,
        "delivered_receipts_after_finish": late_after_finish,
        "duplicate_deliveries": duplicate_deliveries,
    }
    line = json.dumps(summary)
    print(f"\ncrash-test: {line}")
    (tmp_path / "crash-summary.json").write_text(line + "\n")
    report_dir = os.environ.get("ROUTINGD_REPORT_DIR")
    if report_dir:
        name = f"crash-summary-{variant}-{seed}.json"
        Path(report_dir).mkdir(parents=True, exist_ok=True)
        (Path(report_dir) / name).write_text(line + "\n")
    return summary


def test_sigkill_under_load_loses_nothing_short(tmp_path: Path) -> None:
    s = run_crash_rounds(tmp_path, variant="short", seed=20261121, rounds=4, window=(0.4, 1.5), threads=3, rate_per_thread=80)
    assert s["accepted"] > 0 and s["sigkills"] >= 4


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sigkill_under_load_loses_nothing_soak(tmp_path: Path, seed: int) -> None:
    s = run_crash_rounds(tmp_path, variant="soak", seed=seed, rounds=15, window=(0.5, 4.0), threads=4, rate_per_thread=100)
    assert s["accepted"] > 0 and s["sigkills"] >= 15
