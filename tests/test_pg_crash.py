"""kill -9 one of three under load: three real `routingd serve` on ONE PostgreSQL database, a
load spread over them, and at seeded random moments one of them SIGKILLed and started again
(docs/scaling.md "Leases", docs/reliability.md "One of three killed under load").

Each round: the load runs for a random while, one of the three (chosen by the seed) is SIGKILLed
and started again at once with the same routing.toml and store (a new node id, as a supervisor
would restart it) -- in some rounds started about when its lease runs out and SIGKILLed again
while it opens, claims or resumes; the round ends once every message it owned at the kill has
been taken over.
After the last round the load stops, everything finishes, the daemons stop cleanly, and the
database and the stand-ins' records are read.

The providers are real HTTP stand-ins on loopback: `primary` answers after 0-400 ms, 503s 8 % and
hangs 8 % (cut at its 1 s timeout: failover), `backup` answers 200 after 0-100 ms. Each process
sends its own name in a header (`X-Node: ${ROUTINGD_TEST_NODE}`, set per process start: the
policy text, hence its version, is the same for all), so every call the stand-ins receive is
attributed to the process that made it, whichever policy snapshot a taken-over message runs under.

Asserted:
  * 0 lost: every message answered 202 (by any of the three; a send cut by a kill is resent, with
    its Idempotency-Key, to the next one) is in the database, one message per key, and ends
    `delivered`; the API of a daemon agrees on a sample;
  * every call a stand-in received has its attempt row (written before the call);
  * takeover: each message the victim owned at the kill is resumed by another process (its cut
    attempts ended `cancelled`, or its next run's first attempt started) within lease + claim
    interval + a loaded machine's margin after the kill, measured from the database's timestamps,
    and never before the victim's lease (its `nodes` row) ran out;
  * duplicates, counted at the stand-ins per Idempotency-Key (`<message>:<channel>:<provider>`):
    a key is never called twice by one process run; every repeat comes after the kill (or a
    logged late lease renewal) of the process that made the call before it, for a message that
    process owned; never after a committed delivery. So the repeats of a round are bounded by
    the victim's calls for the messages it owned (counted from the data), and the "unknown
    outcome" repeats -- the provider may have acted on the first call -- and the duplicate
    deliveries a kill made (a message answered 2xx twice, the first answer never committed) by
    the calls in flight at the victim at the kill (its attempts the takeover found open). A
    message answered 2xx twice without a kill (the answer came after the daemon gave the call
    up at its timeout, as a starved event loop on a busy machine may) is counted apart; none
    is answered 2xx again after a delivery the daemon committed.

The seed (ROUTINGD_PG_CRASH_SEED, default below) and the number of rounds (ROUTINGD_PG_CRASH_ROUNDS)
are printed: a failure is replayed with the same seed (the kill moments and victims, the
stand-ins' answers in arrival order). The figures are printed per round (`pg-crash round:`) and
as one `pg-crash-test:` JSON line, also written to $ROUTINGD_REPORT_DIR when set. Marked `slow`:
`make soak` runs it (31-41 s on the shared 2-core machine at load average 3.5-4.8).
"""

from __future__ import annotations

import json
import os
import random
import statistics
import time
from collections import Counter, defaultdict
from contextlib import ExitStack
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import psycopg
import pytest

from daemon_process import DaemonProcess, StandinLoop, wait_until
from provider_standin import seeded_answers
from test_crash import LoadGenerator

SEED = int(os.environ.get("ROUTINGD_PG_CRASH_SEED", "20261206"))
ROUNDS = int(os.environ.get("ROUTINGD_PG_CRASH_ROUNDS", "6"))
NODES = 3
LEASE_S = 2.0
CLAIM_S = LEASE_S / 3           # daemon/cluster.py: min(CLAIM_EVERY_S, lease/3)
# A loaded 2-core machine (three daemons, PostgreSQL, the load and other people's builds) may be
# seconds late to run a claim or a resume: the bound asserted is lease + claim interval + this.
# The measured figures (printed, docs/reliability.md) are what tells how long a takeover takes.
MARGIN_S = 20.0
INTERRUPTED = "interrupted: routingd stopped during the attempt"     # daemon/runtime/resume.py

CONFIG = """
version = 1
[daemon]
grace = "1s"
lease = "2s"
[timeouts]
provider = "1s"
channel = "60s"
message = "5m"
[providers.primary]
type = "http"
url = "{primary}"
headers = {{ X-Node = "${{ROUTINGD_TEST_NODE}}" }}
breaker = false
[providers.backup]
type = "http"
url = "{backup}"
headers = {{ X-Node = "${{ROUTINGD_TEST_NODE}}" }}
timeout = "20s"
breaker = false
[channels.email]
providers = ["primary", "backup"]
[routes.default]
channels = ["email"]
"""


def primary_script(seed: int) -> Any:
    """Slow answers, 503s, hangs (cut at the 1 s provider timeout); per seed, in arrival order."""
    return seeded_answers(seed, 0.4, error=0.08, hang=0.08)


def backup_script(seed: int) -> Any:
    return seeded_answers(seed + 1, 0.1)


@dataclass
class Kill:
    """One round's kill, and what the database said right after it."""

    round: int
    slot: int
    tag: str                    # the victim's X-Node: "d<slot>.<start number>"
    node: str                   # its node id (messages.owner)
    at: float                   # time.time() of the SIGKILL (the daemons' clocks are wall-anchored)
    at_mono: float              # time.monotonic() of it (the stand-ins' clock)
    owned: dict[str, int]       # message id -> its run, for the pending messages the victim owned
    lease_until: float = 0.0    # the victim's lease as last renewed (database clock, epoch seconds)
    restart_s: float = 0.0      # SIGKILL to the new process's readyz 200
    figures: dict[str, Any] = field(default_factory=dict)


def _header(req: Any, name: str) -> str | None:
    for k, v in req.headers.items():
        if k.lower() == name.lower():
            return str(v)
    return None


def _run_of(attempt_id: str) -> int:
    return int(attempt_id.split(".")[1])       # "<message_id>.<run>.<n>" (core/engine.py)


def _is_2xx(req: Any) -> bool:
    return req.finished == "answered" and 200 <= int(req.action.get("status", 200)) < 300 \
        and not req.action.get("hang")


def _start(d: DaemonProcess, env: dict[str, str], slot: int) -> str:
    tag = f"d{slot}.{d.starts + 1}"
    env["ROUTINGD_TEST_NODE"] = tag
    d.start()
    return tag


def _kill(d: DaemonProcess, r: int, slot: int, tag: str, pg_url: str) -> Kill:
    """SIGKILL `d`, then read its node id and the pending messages it owned (none when it died
    before its store opened: no node row)."""
    pid = d.pid
    at, at_mono = time.time(), time.monotonic()
    d.kill()
    with psycopg.connect(pg_url) as c:
        row = c.execute("SELECT node FROM nodes WHERE node LIKE %s ORDER BY started_at DESC LIMIT 1",
                        (f"%/{pid}/%",)).fetchone()
        node = str(row[0]) if row is not None else ""
        owned = {str(m): int(run) for m, run in c.execute(
            "SELECT id, run FROM messages WHERE owner = %s AND status = 'pending'", (node,))}
    return Kill(r, slot, tag, node, at, at_mono, owned)


def test_one_of_three_sigkilled_under_load_loses_nothing(tmp_path: Path, pg_url: str) -> None:
    seed, rounds = SEED, ROUNDS
    print(f"\npg-crash: seed {seed} (ROUTINGD_PG_CRASH_SEED), {rounds} rounds (ROUTINGD_PG_CRASH_ROUNDS), "
          f"load average {os.getloadavg()[0]:.2f}")
    rng = random.Random(seed)
    kills: list[Kill] = []
    with StandinLoop() as loop, ExitStack() as stack:
        primary = loop.standin(primary_script(seed))
        backup = loop.standin(backup_script(seed))
        config = CONFIG.format(primary=primary.url, backup=backup.url)
        envs = [{"ROUTINGD_STORE": pg_url} for _ in range(NODES)]
        ds = [DaemonProcess(tmp_path / f"d{i}", config, env=envs[i], start_timeout=60) for i in range(NODES)]
        for d in ds:
            stack.callback(d.close)
        tags = [_start(d, envs[i], i) for i, d in enumerate(ds)]
        load = LoadGenerator(ds, threads=3, rate_per_thread=30)
        stack.callback(load._stop.set)
        started = time.monotonic()
        load.start()
        for r in range(rounds):
            time.sleep(rng.uniform(1.0, 4.0))          # the seeded random moment; the load runs
            slot = rng.randrange(NODES)
            round_kills = [_kill(ds[slot], r, slot, tags[slot], pg_url)]
            if rng.random() < 0.3:
                # started again about when the victim's lease runs out, so that its start claims
                # (Router.start: load_pending) race the others' claims, and killed again while it
                # opens, claims, resumes, or just after
                time.sleep(max(0.0, round_kills[0].at_mono + rng.uniform(1.0, 2.0) - time.monotonic()))
                envs[slot]["ROUTINGD_TEST_NODE"] = tags[slot] = f"d{slot}.{ds[slot].starts + 1}"
                ds[slot].spawn()
                time.sleep(rng.uniform(0.3, 2.0))
                if ds[slot].running:
                    round_kills.append(_kill(ds[slot], r, slot, tags[slot], pg_url))
            tags[slot] = _start(ds[slot], envs[slot], slot)        # as a supervisor restarts it
            for k in round_kills:
                k.restart_s = time.monotonic() - k.at_mono
                k.figures["accepted_so_far"] = len(load.accepted)
            kills.extend(round_kills)
            nodes = [k.node for k in round_kills if k.node]

            def taken_over(nodes: list[str] = nodes) -> bool:
                with psycopg.connect(pg_url) as c:
                    row = c.execute("SELECT count(*) FROM messages WHERE owner = ANY(%s) AND status = 'pending'",
                                    (nodes,)).fetchone()
                return row is not None and row[0] == 0
            wait_until(taken_over, timeout=LEASE_S + CLAIM_S + 60, what=f"round {r}: the victim's messages taken over")
        load.stop()
        load_s = time.monotonic() - started
        accepted = dict(load.accepted)

        def all_finished() -> bool:
            with psycopg.connect(pg_url) as c:
                pending = {str(x[0]) for x in c.execute("SELECT id FROM messages WHERE status = 'pending'")}
            return not pending & set(accepted.values())
        wait_until(all_finished, timeout=120, what="every accepted message finished")
        sample = rng.sample(sorted(accepted.values()), min(30, len(accepted)))
        api_status = {mid: ds[rng.randrange(NODES)].status(mid)["status"] for mid in sample}
        for d in ds:
            assert d.stop() == 0, d.log_tail()
        logs = {f"d{i}.{n}": (tmp_path / f"d{i}" / f"routingd-{n}.log").read_text(errors="replace")
                for i, d in enumerate(ds) for n in range(1, d.starts + 1)}
        calls = list(primary.requests) + list(backup.requests)
    with psycopg.connect(pg_url) as c:
        status = {str(m): str(s) for m, s in c.execute("SELECT id, status FROM messages")}
        by_key: dict[str, list[str]] = defaultdict(list)
        for key, mid in c.execute("SELECT idempotency_key, id FROM messages WHERE idempotency_key IS NOT NULL"):
            by_key[str(key)].append(str(mid))
        attempts = {str(a[0]): a for a in c.execute(
            "SELECT attempt_id, message_id, provider, started_at, ended_at, outcome, detail FROM attempts")}
        for k in kills:         # the victim's last renewal (read now: one in flight at the kill may commit late)
            row = c.execute("SELECT extract(epoch FROM lease_until) FROM nodes WHERE node = %s", (k.node,)).fetchone()
            assert row is not None or not k.owned
            k.lease_until = float(row[0]) if row is not None else k.at

    # ---- nothing lost
    assert all("Traceback" not in text for text in logs.values()), "a Traceback in a daemon log"
    lost = [k for k, mid in accepted.items() if mid not in status]
    assert not lost, f"{len(lost)} accepted message(s) are not in the database: {lost[:5]}"
    assert all(by_key.get(k) == [mid] for k, mid in accepted.items()), "a key made two messages, or its 202 named another"
    outcome = Counter(status[mid] for mid in accepted.values())
    assert outcome["delivered"] == len(accepted), outcome           # the backup always answers
    assert all(st == status[mid] for mid, st in api_status.items())

    # ---- write-ahead: every call has its attempt row
    unrecorded = [q.json["attempt_id"] for q in calls if q.json["attempt_id"] not in attempts]
    assert not unrecorded, f"{len(unrecorded)} provider call(s) with no attempt row: {unrecorded[:5]}"
    tag_of = {q.json["attempt_id"]: _header(q, "X-Node") for q in calls}
    assert None not in tag_of.values(), "a call without its process's X-Node"

    # ---- takeover: from the database's timestamps, within lease + claim interval (+ margin)
    runs: dict[str, dict[int, list[Any]]] = defaultdict(lambda: defaultdict(list))   # message -> run -> attempts
    for a in attempts.values():
        runs[a[1]][_run_of(a[0])].append(a)
    for k in kills:
        took: list[float] = []
        after_lease: list[float] = []
        for mid, run in k.owned.items():
            marks = [a[4] for a in runs[mid].get(run, []) if a[6] == INTERRUPTED] + \
                    [a[3] for later, rows in runs[mid].items() if later > run for a in rows]
            assert marks, f"round {k.round}: {mid} (run {run} at {k.tag}) shows no takeover in the database"
            at = min(marks)
            took.append(at - k.at)
            after_lease.append(at - k.lease_until)
        slow = [round(t, 2) for t in took if t > LEASE_S + CLAIM_S + MARGIN_S]
        assert not slow, f"round {k.round}: takeovers {slow} s after the kill (bound {LEASE_S + CLAIM_S + MARGIN_S})"
        early = [round(t, 3) for t in after_lease if t < -0.05]
        assert not early, f"round {k.round}: taken over {early} s before the victim's lease ran out"
        k.figures.update(owned_at_kill=len(k.owned), lease_left_at_kill_s=round(k.lease_until - k.at, 2),
                         takeover_max_s=round(max(took), 2) if took else None,
                         takeover_median_s=round(statistics.median(took), 2) if took else None,
                         after_lease_expiry_max_s=round(max(after_lease), 2) if after_lease else None,
                         restart_s=round(k.restart_s, 1))

    # ---- duplicates, counted at the stand-ins
    by_tag = {k.tag: k for k in kills}
    late_renewal = {tag for tag, text in logs.items() if "lease ran out before it was renewed" in text}
    keyed: dict[str, list[Any]] = defaultdict(list)
    for q in calls:
        keyed[q.idempotency_key].append(q)
    inflight: dict[str, set[str]] = defaultdict(set)          # victim -> its attempts the takeover found open
    cut_calls: dict[str, int] = Counter()                     # victim -> its calls for the messages it owned
    for q in calls:
        aid = q.json["attempt_id"]
        k = by_tag.get(tag_of[aid])
        if k is None or q.json["message_id"] not in k.owned or _run_of(aid) != k.owned[q.json["message_id"]]:
            continue
        cut_calls[k.tag] += 1
        if attempts[aid][6] == INTERRUPTED:
            inflight[k.tag].add(aid)
    repeats: dict[str, Counter] = defaultdict(Counter)
    unexplained: list[str] = []
    for key, qs in keyed.items():
        qs.sort(key=lambda q: _run_of(q.json["attempt_id"]))
        run_list = [_run_of(q.json["attempt_id"]) for q in qs]
        assert len(set(run_list)) == len(run_list), f"{key} was called twice by one process run: {run_list}"
        for first, again in pairwise(qs):
            aid = first.json["attempt_id"]
            a, tag = attempts[aid], tag_of[aid]
            k = by_tag.get(tag)
            if a[5] == "delivered":
                unexplained.append(f"{key}: called again after its delivery was committed ({aid}, {tag})")
            elif k is not None and k.at_mono < again.received_at \
                    and k.owned.get(first.json["message_id"]) == _run_of(aid):
                # (the first call was made before the kill: a dead process calls nobody; the
                # stand-ins, on this busy test process, may record its arrival a little later)
                repeats[k.tag]["in_flight" if aid in inflight[k.tag] else "channel_started_over"] += 1
            elif tag in late_renewal:
                repeats["late renewal"]["after_a_late_renewal"] += 1
            else:
                why = "never killed" if k is None else (
                    f"killed at {k.at_mono:.3f}, the repeat received at {again.received_at:.3f}, "
                    f"owned at the kill: run {k.owned.get(first.json['message_id'])}")
                unexplained.append(f"{key}: {aid} ({tag}, {a[5]}) then {again.json['attempt_id']} "
                                   f"({_header(again, 'X-Node')}): {tag} {why}")
    assert not unexplained, f"{len(unexplained)} repeated call(s) no kill explains: {unexplained[:5]}"
    # A message answered 2xx twice. Either the first answer never counted: its process died
    # before committing it (in flight at a kill), or the 2xx reached the daemon after it had
    # given the call up (its 1 s timeout; a starved event loop on a busy machine runs the timer
    # first) and the message failed over -- at-least-once, not a kill's doing, counted apart.
    # Never after a delivery the daemon committed.
    twice: dict[str, int] = Counter()
    ok_calls: dict[str, list[Any]] = defaultdict(list)
    for q in calls:
        if _is_2xx(q):
            ok_calls[q.json["message_id"]].append(q)
    for mid, qs in ok_calls.items():
        qs.sort(key=lambda q: (_run_of(q.json["attempt_id"]), q.received_at))
        for q in qs[:-1]:
            aid = q.json["attempt_id"]
            tag, a = tag_of[aid], attempts[aid]
            k = by_tag.get(tag)
            assert a[5] != "delivered", f"{mid} answered 2xx again after {aid} ({tag}) committed its delivery"
            if k is not None and aid in inflight[k.tag]:
                twice[k.tag] += 1
            elif tag in late_renewal:
                twice["late renewal"] += 1
            else:
                assert a[6] != INTERRUPTED and a[5] in ("failed", "timeout"), \
                    f"{mid} answered 2xx twice, the first ({aid}, {tag}: {a[5]}, {a[6]!r}) neither cut by a kill nor given up"
                twice["given up before the answer"] += 1
    for k in kills:
        rep = repeats[k.tag]
        assert rep["in_flight"] <= len(inflight[k.tag]) and twice[k.tag] <= len(inflight[k.tag])
        assert rep.total() <= cut_calls[k.tag]
        k.figures.update(calls_in_flight_at_kill=len(inflight[k.tag]), victim_calls_for_owned=cut_calls[k.tag],
                         repeated_calls=rep.total(), repeats_after_in_flight_call=rep["in_flight"],
                         repeats_channel_started_over=rep["channel_started_over"], answered_2xx_twice=twice[k.tag])
        print(f"pg-crash round: {json.dumps({'round': k.round, 'victim': k.tag, **k.figures})}")
    assert len({k.round for k in kills}) == rounds

    repeated = sum(r.total() for r in repeats.values())
    took_all = [k.figures["takeover_max_s"] for k in kills if k.figures["takeover_max_s"] is not None]
    summary = {
        "seed": seed, "rounds": rounds, "sigkills": len(kills),
        "sigkills_while_starting": len(kills) - rounds, "load_seconds": round(load_s, 1),
        "accepted": len(accepted), "accepted_per_second": round(len(accepted) / load_s, 1),
        "accepted_by": dict(Counter(f"d{j}" for j in load.accepted_by.values())),
        "resent_after_a_cut_connection": load.resent, "of_which_replayed_same_id": load.replayed,
        "answered_503": load.unavailable, "other_answers": dict(load.other), "lost": len(lost),
        "delivered": outcome["delivered"], "provider_calls": len(calls),
        "owned_at_kill": sum(len(k.owned) for k in kills),
        "calls_in_flight_at_kill": sum(len(v) for v in inflight.values()),
        "takeover_max_s": max(took_all) if took_all else None, "bound_s": LEASE_S + CLAIM_S,
        "repeated_calls": repeated, "repeats_per_sigkill": round(repeated / max(1, len(kills)), 1),
        "repeats_after_in_flight_call": sum(r["in_flight"] for r in repeats.values()),
        "repeats_channel_started_over": sum(r["channel_started_over"] for r in repeats.values()),
        "repeats_after_a_late_renewal": repeats["late renewal"]["after_a_late_renewal"],
        "answered_2xx_twice": sum(v for t, v in twice.items() if t in by_tag),
        "answered_2xx_after_the_daemon_gave_up": twice["given up before the answer"],
        "late_renewals": sorted(late_renewal),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    line = json.dumps(summary)
    print(f"pg-crash-test: {line}")
    report_dir = os.environ.get("ROUTINGD_REPORT_DIR")
    if report_dir:
        Path(report_dir).mkdir(parents=True, exist_ok=True)
        (Path(report_dir) / f"pg-crash-summary-{seed}.json").write_text(line + "\n")
    assert len(accepted) > 0


pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
