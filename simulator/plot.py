"""`--plot OUT.png`: a timeline per run (matplotlib, Agg backend, no display needed).

Rows: attempts per second by provider; failed attempts (failures, timeouts, refusals) per
second by provider; time-to-deliver p50/p95/p99 of the messages accepted in each time bin.
It reads every attempt of the run (RunResult.trace: `simulate --plot` runs with trace=True, so
its memory grows with the run). Outage windows are shaded in every row. Several runs (routing files, scenarios) are columns,
and the columns of a row share one y-axis: with an axis of its own per column, the better policy's
small spike would be drawn as tall as the worse one's large one (docs/simulator.md "Plot").
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from .metrics import WAITED
from .runner import RunResult

_NICE = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600)


def _bin_width(span_s: float, bins: int = 120) -> float:
    raw = span_s / bins
    for w in _NICE:
        if w >= raw:
            return float(w)
    return float(math.ceil(raw / 3600) * 3600)


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    pos = (len(values) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


def write_plot(results: Sequence[RunResult], path: str, labels: Sequence[str] | None = None) -> None:
    import matplotlib.pyplot as plt

    fig = build_figure(results, labels)
    try:
        fig.savefig(path)
    finally:
        plt.close(fig)


def build_figure(results: Sequence[RunResult], labels: Sequence[str] | None = None) -> Any:
    """The figure of write_plot (the caller closes it): 3 rows, a column per run."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(results)
    fig, axes = plt.subplots(3, n, figsize=(max(6.0, 5.2 * n), 7.2), sharex="col", sharey="row",
                             squeeze=False, dpi=80)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for col, res in enumerate(results):
        m = res.trace
        if m is None:
            raise ValueError("the plot needs the run's trace: run(..., trace=True)")
        span = max(res.setup.scenario.duration_s, 1.0)
        end = max(res.sim_end_s, span)
        w = _bin_width(end)
        nb = int(end // w) + 1
        xs = [i * w for i in range(nb)]
        used = sorted({p for p in m.a_prov} | {p for p in m.s_prov})
        att = {p: [0] * nb for p in used}
        bad = {p: [0] * nb for p in used}
        for prov, t0, te, out in zip(m.a_prov, m.a_start, m.a_end, m.a_outcome):
            att[prov][int(t0 // w)] += 1
            if out in WAITED and te is not None:
                bad[prov][min(int(te // w), nb - 1)] += 1
        ax_a, ax_f, ax_t = axes[0][col], axes[1][col], axes[2][col]
        for k, p in enumerate(used):
            c = colors[k % len(colors)]
            name = m.providers[p]
            ax_a.step(xs, [v / w for v in att[p]], where="post", color=c, label=name, lw=1.2)
            if any(bad[p]):
                ax_f.step(xs, [v / w for v in bad[p]], where="post", color=c, label=name, lw=1.2)
        # time to deliver by accept-time bin
        per_bin: dict[int, list[float]] = {}
        for a, d, s in zip(m.accepted_at, m.delivered_at, m.status):
            if s == "delivered" and d is not None:
                per_bin.setdefault(int(a // w), []).append(d - a)
        bins = sorted(per_bin)
        for q, style in ((0.5, "-"), (0.95, "--"), (0.99, ":")):
            ax_t.plot([b * w + w / 2 for b in bins], [_pct(per_bin[b], q) for b in bins], style,
                      color="black", lw=1.1, label=f"p{int(q * 100)}")
        for ax in (ax_a, ax_f, ax_t):
            for o in res.setup.outages:
                ax.axvspan(o.start_s, min(o.end_s, end), color="tab:red", alpha=0.12, lw=0)
            ax.grid(True, alpha=0.3)
        for o in res.setup.outages:
            ax_a.text(o.start_s, 1.0, f" {o.provider} {o.kind}", transform=ax_a.get_xaxis_transform(),
                      va="top", ha="left", fontsize=8, color="tab:red")
        title = labels[col] if labels else f"{res.setup.scenario.name}\n{_rel(res.setup.routing_path)}"
        ax_a.set_title(title, fontsize=9)
        ax_a.set_ylabel("attempts/s")
        ax_f.set_ylabel("failed attempts/s")
        ax_t.set_ylabel("time to deliver (s)")
        ax_t.set_xlabel("simulated time (s)")
        if bins and max(_pct(per_bin[b], 0.99) for b in bins) > 20 * max(_pct(per_bin[b], 0.5) for b in bins):
            ax_t.set_yscale("log")
        ax_a.legend(fontsize=7, loc="upper right")
        if ax_f.get_legend_handles_labels()[0]:
            ax_f.legend(fontsize=7, loc="upper right")
        ax_t.legend(fontsize=7, loc="upper right")
        ax_t.set_xlim(0, end)
    fig.tight_layout()
    return fig


def _rel(path: str) -> str:
    import os
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return rel if len(rel) < len(path) else path
