"""Clean restarts on real daemon processes (docs/reliability.md "Clean restarts").

  * SIGTERM's grace period starts no attempt: a failover due meanwhile is held, its message stays
    pending and the next start tries the backup (before, a never-started attempt timed out, and
    the message was stored undeliverable with the backup never called);
  * the wall clock stepped while the daemon runs: the times it stores follow the wall clock, and
    the deadlines survive the step and a restart after it;
  * the soak (`make soak`): N SIGTERM restarts under load, with messages caught awaiting their
    receipt, in back-off and mid-failover; every message ends delivered with all its options
    tried, no acknowledged receipt is lost, duplicates are counted.
"""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from daemon_process import DaemonProcess, StandinLoop, free_port, ts, wait_until
from provider_standin import sign
from test_crash import LoadGenerator, store_rows

GRACE_CONFIG = """
version = 1
[daemon]
grace = "5s"
[timeouts]
provider = "1s"
channel = "1m"
message = "5m"
[providers.hang]
type = "http"
url = "{hang}"
timeout = "1m"
breaker = false
[providers.p503]
type = "http"
url = "{p503}"
breaker = false
[providers.backup]
type = "http"
url = "{ok}"
[channels.c1]
providers = ["hang"]
[channels.c2]
providers = ["p503", "backup"]
[routes.slow]
channels = ["c1"]
[routes.default]
channels = ["c2"]
"""


def stored(state: Path, mid: str) -> tuple[str, list[tuple[str, str | None, str | None]]]:
    """(status, [(provider, outcome, detail)]) of a message, read from the state file itself."""
    con = sqlite3.connect(state)
    try:
        status = con.execute("SELECT status FROM messages WHERE id = ?", (mid,)).fetchone()[0]
        attempts = con.execute("SELECT provider, outcome, detail FROM attempts WHERE message_id = ? "
                               "ORDER BY started_at, attempt_id", (mid,)).fetchall()
    finally:
        con.close()
    return status, attempts


def test_a_failover_due_in_the_sigterm_grace_waits_for_the_next_start(tmp_path: Path,
                                                                      standins: StandinLoop) -> None:
    """One message hangs on its provider and keeps the 5 s grace period alive; another gets a
    503 during it, so its failover to the backup is due. The backup is not called while stopping,
    nothing times out in its place, the message is left pending -- and the next start delivers
    it through the backup."""
    hang = standins.standin([{"hang": True}])
    p503 = standins.standin([{"status": 503, "delay": 0.5}])
    ok = standins.standin([{"status": 200}])
    d = DaemonProcess(tmp_path, GRACE_CONFIG.format(hang=hang.url, p503=p503.url, ok=ok.url))
    with d:
        m1 = d.send({"to": {"email": "a@example.com"}, "route": "slow"})
        m2 = d.send({"to": {"email": "a@example.com"}})
        standins.call(hang.wait_for(1))
        standins.call(p503.wait_for(1))
        assert d.stop() == 0                   # SIGTERM: the 503 and the failover land in the grace
        assert stored(d.state_path, m1)[0] == "pending"
        status, attempts = stored(d.state_path, m2)
        assert status == "pending", attempts
        assert [a[:2] for a in attempts] == [("p503", "failed")]    # nothing in the backup's name
        assert ok.requests == []
        log = d.log_text()
        d.start()
        st = d.wait_status(m2, "delivered", timeout=20)
        assert [(a["provider"], a["outcome"]) for a in st["attempts"]] == \
            [("p503", "failed"), ("p503", "failed"), ("backup", "delivered")]
        held = [e for e in st["events"] if e["type"] == "attempt_held"]
        assert [(e["channel"], e["provider"]) for e in held] == [("c2", "backup")]
        assert len(ok.requests) == 1
        assert d.stop(signal.SIGKILL) == -signal.SIGKILL
    assert "Traceback" not in log + d.log_text()


# --------------------------------------------------------------------------- a wall-clock step

# Loaded by the daemon's interpreter (sitecustomize, through PYTHONPATH): its time.time() is the
# real one plus the number of seconds in the file TEST_WALL_OFFSET_FILE names, re-read when the
# file changes -- what an NTP step or `date -s` does to that process alone. The monotonic clock
# is left as it is, as a step leaves it.
WALL_HOOK = """
import os, time
_real, _path, _seen = time.time, os.environ["TEST_WALL_OFFSET_FILE"], [None, 0.0]
def _time():
    try:
        st = os.stat(_path)
        if st.st_mtime_ns != _seen[0]:
            with open(_path) as f:
                _seen[:] = [st.st_mtime_ns, float(f.read().strip() or 0)]
    except (OSError, ValueError):
        pass
    return _real() + _seen[1]
time.time = _time
"""

CLOCK_CONFIG = """
version = 1
[daemon]
grace = "200ms"
[timeouts]
provider = "20m"
channel = "30m"
message = "30m"
[providers.hang]
type = "http"
url = "{hang}"
breaker = false
[channels.email]
providers = ["hang"]
[routes.default]
channels = ["email"]
"""


def set_offset(path: Path, seconds: float) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(repr(seconds))
    tmp.replace(path)


@pytest.mark.parametrize("wrong_by", [-3600.0, 3600.0])
def test_a_wall_clock_step_while_running_moves_stored_times_not_deadlines(
        tmp_path: Path, standins: StandinLoop, wrong_by: float) -> None:
    """The wall clock is an hour off when the daemon starts and NTP steps it right while the
    daemon runs. A message in flight across the step and one accepted after it: both read the
    corrected clock (acceptance now, deadline in 30 minutes, idempotency key now), and a restart
    right after keeps both pending with those deadlines -- before, the process kept its start's
    anchor, and a restart after a forward step expired them "while routingd was not running"."""
    hang = standins.standin([{"hang": True}])
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(WALL_HOOK)
    offset = tmp_path / "wall-offset"
    set_offset(offset, wrong_by)
    d = DaemonProcess(tmp_path / "d", CLOCK_CONFIG.format(hang=hang.url),
                      env={"PYTHONPATH": str(hook), "TEST_WALL_OFFSET_FILE": str(offset)})
    with d:
        m1 = d.send({"to": {"email": "a@example.com"}}, idempotency_key="k1")
        st = d.status(m1)
        assert abs(ts(st["accepted_at"]) - (time.time() + wrong_by)) < 30    # the hook works
        standins.call(hang.wait_for(1))
        set_offset(offset, 0.0)                                    # NTP steps the clock right

        def follows() -> bool:
            return abs(ts(d.status(m1)["accepted_at"]) - time.time()) < 30
        wait_until(follows, timeout=15, what="the in-flight message's times follow the step")
        m2 = d.send({"to": {"email": "b@example.com"}}, idempotency_key="k2")
        for mid in (m1, m2):
            st = d.status(mid)
            assert st["status"] == "pending"
            assert abs(ts(st["accepted_at"]) - time.time()) < 30, st
            assert ts(st["message_deadline"]) - ts(st["accepted_at"]) == pytest.approx(1800, abs=0.01)
        assert d.stop() == 0
        con = sqlite3.connect(d.state_path)
        try:
            keys = dict(con.execute("SELECT key, created_at FROM idempotency").fetchall())
        finally:
            con.close()
        assert keys.keys() == {"k1", "k2"} and all(abs(t - time.time()) < 30 for t in keys.values()), keys
        d.start()                                                  # restarted at once, clock right
        for mid in (m1, m2):
            st = d.status(mid)
            assert st["status"] == "pending", st
            assert abs(ts(st["message_deadline"]) - (time.time() + 1800)) < 30, st
        standins.call(hang.wait_for(4))                            # both were resumed and called
        assert d.stop() == 0
    assert "Traceback" not in d.log_text()
    assert "the wall clock stepped by" in (d.workdir / "routingd-1.log").read_text()


# --------------------------------------------------------------------------- the soak

SOAK_CONFIG = """
version = 1
[daemon]
grace = "3s"
[timeouts]
provider = "1s"
channel = "2m"
message = "10m"
[providers.rcpt]
type = "http"
url = "{rcpt}"
confirm = "receipt"
receipt_timeout = "3s"
receipt_secret = "{secret}"
breaker = false
[providers.flaky]
type = "http"
url = "{flaky}"
timeout = "4s"
retries = 2
backoff = {{ base = "500ms", max = "3s" }}
breaker = false
[providers.backup]
type = "http"
url = "{backup}"
[channels.email]
providers = ["rcpt", "flaky", "backup"]
[routes.default]
channels = ["email"]
"""
SECRET = "soak-receipt-secret"


def rcpt_script(seed: int) -> Any:
    """202 and a delivered receipt (some after the 3 s receipt timeout: late receipts), 202 and
    no receipt (receipt timeout, failover), 202 and a failed receipt, or 503 (failover)."""
    rng = random.Random(seed)

    def action(n: int, body: Any) -> dict[str, Any]:
        x = rng.random()
        if x < 0.55:
            return {"status": 202, "receipt": "delivered", "receipt_delay": rng.uniform(0.2, 4.0)}
        if x < 0.70:
            return {"status": 202}
        if x < 0.85:
            return {"status": 202, "receipt": "failed", "receipt_delay": rng.uniform(0.2, 2.0)}
        return {"status": 503}
    return action


def flaky_script(seed: int) -> Any:
    """Mostly 503 (a retry after a back-off of up to 0.5-2 s), else 200; one answer in ten takes
    2.5 s, which keeps a grace period going long enough for a 1 s backup attempt due in it to
    time out if it were started on paper only."""
    rng = random.Random(seed + 1)
    return lambda n, body: {"status": 503 if rng.random() < 0.7 else 200,
                            "delay": 2.5 if rng.random() < 0.1 else 0.05}


def backup_script(seed: int) -> Any:
    rng = random.Random(seed + 2)
    return lambda n, body: {"status": 200, "delay": rng.uniform(0.05, 0.5)}


def run_states(events: list[dict[str, Any]]) -> list[set[str]]:
    """For each run of a message that a restart ended (its events up to the next `started`), the
    states it was stopped in: awaiting_receipt (accepted, no end), attempting (started, no end),
    backoff (a retry scheduled and not started) and held (a retry or failover due in the grace)."""
    runs: list[list[dict[str, Any]]] = []
    for e in events:
        if e["type"] == "started":
            runs.append([])
        if runs:
            runs[-1].append(e)
    out = []
    for evs in runs[:-1]:
        ended = {e["attempt_id"] for e in evs if e["type"] == "attempt_ended"}
        states = set()
        if any(e["type"] == "attempt_accepted" and e["attempt_id"] not in ended for e in evs):
            states.add("awaiting_receipt")
        if any(e["type"] == "attempt_started" and e["attempt_id"] not in ended and
               not any(a["type"] == "attempt_accepted" and a["attempt_id"] == e["attempt_id"] for a in evs)
               for e in evs):
            states.add("attempting")
        last_retry = max((i for i, e in enumerate(evs) if e["type"] == "retry_scheduled"), default=-1)
        if last_retry >= 0 and not any(e["type"] in ("attempt_started", "attempt_held") for e in evs[last_retry:]):
            states.add("backoff")
        if any(e["type"] == "attempt_held" for e in evs):
            states.add("held")
        out.append(states)
    return out


def post_receipt(d: DaemonProcess, attempt_id: str, status: str) -> int:
    raw = json.dumps({"attempt_id": attempt_id, "status": status}).encode()
    try:
        return d.request("POST", "/v1/receipts/rcpt", body=raw, token=False,
                         headers={"Content-Type": "application/json", "X-Routingd-Signature": sign(SECRET, raw)}).status
    except OSError:
        return 0


def run_restart_rounds(tmp_path: Path, *, seed: int, rounds: int, window: tuple[float, float], threads: int,
                       rate_per_thread: float) -> dict[str, Any]:
    rng = random.Random(seed)
    port = free_port()
    with StandinLoop() as loop:
        rcpt = loop.standin(rcpt_script(seed), receipt_url=f"http://127.0.0.1:{port}/v1/receipts/rcpt",
                            receipt_secret=SECRET)
        flaky = loop.standin(flaky_script(seed))
        backup = loop.standin(backup_script(seed))
        d = DaemonProcess(tmp_path, SOAK_CONFIG.format(rcpt=rcpt.url, flaky=flaky.url, backup=backup.url,
                                                       secret=SECRET),
                          listen=f"127.0.0.1:{port}", start_timeout=30)
        load = LoadGenerator(d, threads, rate_per_thread)
        exits: list[int] = []
        try:
            d.start()
            load.start()
            for _ in range(rounds):
                time.sleep(rng.uniform(*window))
                exits.append(d.stop(timeout=30))            # SIGTERM: the 3 s grace, then exit
                d.start()
            time.sleep(rng.uniform(*window))
            load.stop()
            # Receipts the daemon did not take (it was stopping or down) are sent again, as a
            # vendor retries a receipt until it gets its 2xx. Bounded: each at most 20 times.
            for _ in range(20):
                retry = [r for r in list(rcpt.receipts_sent) if r.get("http_status") != 200 and not r.get("resent")]
                if not retry:
                    break
                for r in retry:
                    code = post_receipt(d, r["attempt_id"], r["status"])
                    if code == 200 or code == 404:
                        r["resent"] = code
                time.sleep(0.2)
            deadline = time.monotonic() + 180
            while True:
                status, _ = store_rows(d.state_path)  # type: ignore[arg-type]
                pending = [mid for mid in load.accepted.values() if status.get(mid) == "pending"]
                if not pending or time.monotonic() > deadline:
                    break
                time.sleep(0.25)
            final = {mid: d.status(mid) for mid in load.accepted.values()}
            exits.append(d.stop(timeout=30))
            log = "\n".join((tmp_path / f"routingd-{i}.log").read_text(errors="replace")
                            for i in range(1, d.starts + 1))
        finally:
            d.close()
            load._stop.set()
        receipts = list(rcpt.receipts_sent)
        calls = {"rcpt": len(rcpt.requests), "flaky": len(flaky.requests), "backup": len(backup.requests)}

    assert exits == [0] * (rounds + 1), exits
    assert "Traceback" not in log
    outcome = Counter(st["status"] for st in final.values())
    # ---- 0 messages finished without all their options tried: the backup always delivers, so
    # every message must end delivered; no attempt that never started may have an outcome other
    # than `cancelled` (a message accepted while the daemon began to stop has its first attempts'
    # rows committed with it, then cancelled "not started"; before, a never-started attempt of the
    # grace period timed out and failed over).
    short = {mid: st["status"] for mid, st in final.items() if st["status"] != "delivered"}
    never_started = [(mid, a["attempt_id"], a["outcome"]) for mid, st in final.items() for a in st["attempts"]
                     if "not started" in (a.get("detail") or "") and a["outcome"] != "cancelled"]
    # ---- states the restarts caught messages in
    caught: Counter[str] = Counter()
    for st in final.values():
        for states in run_states(st["events"]):
            caught.update(states)
    resumed = sum(1 for st in final.values() if any(e["type"] == "started" and e.get("run", 0) > 0
                                                    for e in st["events"]))
    # ---- receipts: every delivered receipt the daemon acknowledged (200) counts for its attempt
    outcome_of = {a["attempt_id"]: a["outcome"] for st in final.values() for a in st["attempts"]}
    acked = [r for r in receipts if r.get("http_status") == 200 or r.get("resent") == 200]
    # A receipt that reaches a message finished in an earlier process is recorded as `late_receipt`
    # and changes nothing (docs/configuration.md receipt_timeout): counted, not lost.
    after_finish = {e["attempt_id"] for st in final.values() if st["finished_at"] for e in st["events"]
                    if e["type"] == "late_receipt" and ts(e["at"]) >= ts(st["finished_at"])}
    lost = [r["attempt_id"] for r in acked if r["status"] == "delivered"
            and outcome_of.get(r["attempt_id"]) != "delivered" and r["attempt_id"] not in after_finish]
    last_run = {mid: max([e.get("run", 0) for e in st["events"] if e["type"] == "started"], default=0)
                for mid, st in final.items()}
    lost_earlier_run = [a for a in lost if int(a.rsplit(".", 2)[1]) < last_run.get(a.rsplit(".", 2)[0], 0)]
    lost_same_run = [a for a in lost if a not in set(lost_earlier_run)]
    # ---- duplicates: a message delivered by more than one provider call (counted, not an error)
    duplicates = sum(max(0, sum(a["outcome"] == "delivered" for a in st["attempts"]) - 1) for st in final.values())
    figures = {"seed": seed, "restarts": rounds, "accepted": len(load.accepted), "outcome": dict(outcome),
               "resumed_messages": resumed, "caught_in": dict(caught), "receipts_sent": len(receipts),
               "receipts_acknowledged": len(acked), "receipts_lost": len(lost),
               "receipts_lost_for_an_earlier_run": len(lost_earlier_run),
               "receipts_after_finish": len(after_finish),
               "duplicate_deliveries": duplicates, "provider_calls": calls,
               "finished_short": len(short), "never_started_rows": len(never_started)}
    print("clean-restarts soak:", json.dumps(figures, sort_keys=True))
    assert not short, f"{len(short)} message(s) finished without all their options tried: {list(short.items())[:5]}"
    assert not never_started, never_started[:5]
    assert caught["awaiting_receipt"] and caught["backoff"] and caught["held"], caught
    assert not lost_same_run, f"{len(lost_same_run)} acknowledged delivered receipt(s) did not count: " \
        f"{lost_same_run[:5]}"
    # an attempt awaiting its receipt survives the restart (docs/reliability.md "Restarts"), so a
    # receipt for an attempt of an earlier run counts like any other
    assert not lost_earlier_run, f"{len(lost_earlier_run)} acknowledged delivered receipt(s) for an attempt " \
        f"of an earlier run did not count: {lost_earlier_run[:5]}"
    return figures


@pytest.mark.slow
def test_sigterm_restarts_under_load_finish_every_message_with_all_its_options(tmp_path: Path) -> None:
    run_restart_rounds(tmp_path, seed=1, rounds=8, window=(2.0, 4.0), threads=2, rate_per_thread=8.0)
