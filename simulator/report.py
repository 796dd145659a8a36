"""The report of a run (docs/simulator.md "The report"), its [expect] verdicts and the text table.

Units: times in seconds (floats, rounded to the microsecond), counts as integers.
"""

from __future__ import annotations

import os
from typing import Any

from ..daemon.core.durations import format_duration_ms

from .runner import RunResult
from .scenario import ExpectSection


def _r(x: float | None, nd: int = 6) -> float | None:
    return None if x is None else round(x, nd)


def _expect(ex: ExpectSection, rep: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    ttd = rep["time_to_deliver_s"]

    def add(name: str, target: Any, actual: Any, ok: bool) -> None:
        out.append({"name": name, "target": target, "actual": actual, "ok": bool(ok)})

    def at_most(name: str, target: float | int | None, actual: float | int | None, scale: float = 1.0) -> None:
        if target is None:
            return
        t = target / scale if scale != 1.0 else target
        add(name, t, actual, actual is not None and actual <= t + 1e-9)

    def at_least(name: str, target: float | int | None, actual: float | int | None) -> None:
        if target is None:
            return
        add(name, target, actual, actual is not None and actual >= target - 1e-12)

    at_least("delivered_ratio", ex.delivered_ratio, rep["delivered_ratio"])
    for q in ("p50", "p95", "p99", "max"):
        at_most(f"{q}_time_to_deliver", getattr(ex, f"{q}_time_to_deliver"), ttd[q], 1000.0)
    at_most("expired", ex.expired, rep["expired"])
    at_most("undeliverable", ex.undeliverable, rep["undeliverable"])
    at_most("duplicates", ex.duplicates, rep["duplicates"])
    at_most("violations", ex.violations, rep["violations"])
    at_most("attempts_per_message", ex.attempts_per_message, rep["attempts_per_message"]["mean"])
    if ex.time_to_route_around is not None:
        times = [o["time_to_route_around_s"] for o in rep["outages"]]
        worst = None if not times or any(t is None for t in times) else max(times)
        at_most("time_to_route_around", ex.time_to_route_around, worst, 1000.0)
    at_least("min_provider_failovers", ex.min_provider_failovers, rep["failovers"]["provider"])
    at_least("min_channel_failovers", ex.min_channel_failovers, rep["failovers"]["channel"])
    spilled = sum(st.get("spilled", 0) for st in rep["providers"].values())
    at_most("spilled", ex.spilled, spilled)
    at_least("min_spilled", ex.min_spilled, spilled)
    at_most("throttled", ex.throttled, sum(st.get("throttled", 0) for st in rep["providers"].values()))
    return out


def build_report(res: RunResult) -> dict[str, Any]:
    m = res.metrics
    setup = res.setup
    sc = setup.scenario
    s = m.summary()
    ttd = m.time_to_deliver     # a bounded sketch: within 0.5% of the exact percentiles (metrics.py)
    duration = sc.duration_s
    outages = []
    for o, ra in zip(setup.outages, m.route_around):
        outages.append({"provider": o.provider, "kind": o.kind, "start_s": _r(o.start_s), "end_s": _r(o.end_s),
                        "time_to_route_around_s": _r(ra.seconds())})
    violations = res.checker.total
    rep: dict[str, Any] = {
        "scenario": sc.name,
        "scenario_file": sc.path,
        "routing": setup.routing_path,
        "policy_version": setup.policy.version,
        "seed": setup.seed,
        "duration_s": _r(duration),
        "rate": float(sc.model.traffic.rate),
        "messages": s["messages"],
        "delivered": s["delivered"],
        "undeliverable": s["undeliverable"],
        "expired": s["expired"],
        "cancelled": s["cancelled"],                    # messages the client cancelled ([traffic] cancel)
        "cancelled_attempts": m.cancelled_attempts,     # attempts those cancels stopped
        "pending": res.pending,
        # a message the client cancelled is no delivery the routing missed: not counted in the ratio
        "delivered_ratio": _r(s["delivered"] / wanted if (wanted := s["messages"] - s["cancelled"]) else None),
        "duplicates": m.duplicates,
        "time_to_deliver_s": {q: _r(ttd.quantile(v)) for q, v in
                              (("p50", 50), ("p95", 95), ("p99", 99), ("max", 100))},
        "attempts_per_message": {"mean": _r(m.attempts_total / m.messages if m.messages else None, 4),
                                 "max": m.attempts_max},
        "failovers": {"provider": m.failovers.get("provider", 0), "channel": m.failovers.get("channel", 0)},
        "providers": {p: st.to_json() for p, st in m.stats.items()},
        "outages": outages,
        "violations": violations,
        "violation_kinds": dict(res.checker.counts),
        "sim_end_s": _r(res.sim_end_s),
    }
    rep["expect"] = _expect(sc.model.expect, rep)
    rep["ok"] = all(e["ok"] for e in rep["expect"])
    rep["wall_s"] = round(res.wall_s, 3)
    return rep


# ------------------------------------------------------------------------------ the table


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4f}".rstrip("0").rstrip(".") if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def _secs(v: float | None) -> str:
    if v is None:
        return "-"
    if v < 1.0:
        return f"{v * 1000:.0f}ms"
    return f"{v:.2f}s"


def _pct(v: float | None) -> str:
    """A ratio as a percent, as few decimals as it needs: 1.0 -> 100%, 0.9995 -> 99.95%."""
    if v is None:
        return "-"
    return f"{v * 100:.4f}".rstrip("0").rstrip(".") + "%"


_EXPECT_RATIOS = {"delivered_ratio"}
_EXPECT_SIGN = {"delivered_ratio": ">=", "min_provider_failovers": ">=", "min_channel_failovers": ">=",
                "min_spilled": ">="}
_EXPECT_SECS = {"p50_time_to_deliver", "p95_time_to_deliver", "p99_time_to_deliver", "max_time_to_deliver",
                "time_to_route_around"}


def _rows(rep: dict[str, Any]) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = [
        ("messages", _fmt(rep["messages"])),
        ("delivered", _fmt(rep["delivered"])),
        ("undeliverable", _fmt(rep["undeliverable"])),
        ("expired", _fmt(rep["expired"])),
        ("delivered ratio", _pct(rep["delivered_ratio"])),
        ("duplicates", _fmt(rep["duplicates"])),
    ]
    for q in ("p50", "p95", "p99", "max"):
        rows.append((f"time to deliver {q}", _secs(rep["time_to_deliver_s"][q])))
    apm = rep["attempts_per_message"]
    rows.append(("attempts/message mean, max", f"{_fmt(apm['mean'])}, {apm['max']}"))
    rows.append(("failovers provider, channel", f"{rep['failovers']['provider']}, {rep['failovers']['channel']}"))
    for p, st in rep["providers"].items():
        # ok + fail + timeout + cancel add up to attempts (but for any still running at the end);
        # skips are not attempts
        rows.append((f"{p}: attempts/ok/fail/timeout/cancel/skip",
                     f"{st['attempts']}/{st['delivered']}/{st['failed']}/{st['timeouts']}/{st['cancelled']}"
                     f"/{st['skipped']}"))
        if st.get("queued") or st.get("spilled"):     # routingd's own outbound limit at work
            rows.append((f"{p}: queued/spilled", f"{st['queued']}/{st['spilled']}"))
    for o in rep["outages"]:
        label = f"outage {o['provider']} {o['kind']} {_secs(o['start_s'])}-{_secs(o['end_s'])}: route-around"
        t = o["time_to_route_around_s"]
        rows.append((label, "never" if t is None else _secs(t)))
    rows.append(("violations", _fmt(rep["violations"])))
    for e in rep["expect"]:
        sign = _EXPECT_SIGN.get(e["name"], "<=")
        fmt = _secs if e["name"] in _EXPECT_SECS else _pct if e["name"] in _EXPECT_RATIOS else _fmt
        label = f"expect {e['name']} {sign} {fmt(e['target'])}"
        rows.append((label, f"{fmt(e['actual'])} {'ok' if e['ok'] else 'MISS'}"))
    rows.append(("wall time", f"{rep['wall_s']:.2f}s"))
    return rows


def format_table(reports: list[dict[str, Any]]) -> str:
    """One table per scenario; runs of the same scenario (routing files) side by side."""
    blocks: list[str] = []
    by_scenario: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for rep in reports:
        by_scenario.setdefault((rep["scenario_file"], rep["scenario"]), []).append(rep)
    for (_, name), reps in by_scenario.items():
        cols = [dict(_rows(r)) for r in reps]
        labels: list[str] = []
        for r in reps:
            for label, _ in _rows(r):
                if label not in labels:
                    labels.append(label)
        heads = [_short(r["routing"]) for r in reps]
        w0 = max(len(x) for x in labels + ["routing"])
        widths = [max([len(h)] + [len(c.get(label, "")) for label in labels]) for h, c in zip(heads, cols)]
        r0 = reps[0]
        title = (f"scenario {name}: {format_duration_ms(int(round(r0['duration_s'] * 1000)))} at "
                 f"{_fmt(r0['rate'])}/s, seed {r0['seed']}")
        lines = [title, "  ".join(["routing".ljust(w0)] + [h.rjust(w) for h, w in zip(heads, widths)])]
        lines.append("  ".join(["-" * w0] + ["-" * w for w in widths]))
        for label in labels:
            lines.append("  ".join([label.ljust(w0)] + [c.get(label, "").rjust(w) for c, w in zip(cols, widths)]))
        verdict = ", ".join(f"{_short(r['routing'])}: {'ok' if r['ok'] else 'FAILED'}" for r in reps)
        lines.append(f"expectations: {verdict}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def _short(path: str) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:
        rel = path
    return rel if len(rel) <= len(path) else path
