"""`routingd simulate` / `python -m routingd.simulator.cli`: the shipped drills, --check, --json, --plot,
side-by-side routing files, and one-line errors for bad scenario files."""

from __future__ import annotations

import json
import re
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from routingd.simulator.cli import _ProgressBar, main, shipped_drills

REPO = Path(__file__).resolve().parent.parent
DRILLS = REPO / "simulator" / "scenarios"
KINDS = {"down", "hang", "error", "throttle", "slow", "flaky", "no-receipts"}


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "routingd.simulator.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def test_every_shipped_drill_meets_its_expectations_with_the_bundled_policy(tmp_path: Path) -> None:
    drills = shipped_drills()
    assert len(drills) >= 7
    kinds: set[str] = set()
    for path in drills.values():
        text = Path(path).read_text()
        kinds |= {k for k in KINDS if f'kind = "{k}"' in text}
        assert "[expect]" in text
    assert kinds == KINDS                       # every outage kind is drilled at least once
    out = tmp_path / "drills.json"
    p = cli(*drills.values(), "--check", "--json", str(out))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Traceback" not in p.stderr
    runs = json.loads(out.read_text())["runs"]
    assert [r["scenario"] for r in runs] == list(drills)
    for r in runs:
        assert r["ok"] and r["violations"] == 0 and r["pending"] == 0, r["scenario"]
        assert r["messages"] == r["delivered"] + r["undeliverable"] + r["expired"]
        assert r["expect"] and all(e["ok"] for e in r["expect"])
        assert {"scenario", "routing", "seed", "messages", "delivered", "undeliverable", "expired",
                "delivered_ratio", "duplicates", "time_to_deliver_s", "attempts_per_message",
                "failovers", "providers", "outages", "violations", "expect", "wall_s"} <= set(r)
        assert set(r["time_to_deliver_s"]) == {"p50", "p95", "p99", "max"}
        for st in r["providers"].values():
            assert {"attempts", "delivered", "failed", "timeouts", "skipped"} <= set(st)
        for o in r["outages"]:
            assert set(o) == {"provider", "kind", "start_s", "end_s", "time_to_route_around_s"}
    by_name = {r["scenario"]: r for r in runs}
    assert by_name["email-channel-down"]["failovers"]["channel"] > 0
    # the bundled breaker detects the hang by its slow-call marks (half of ses's 2 s timeout, the
    # default since issue 20): no attempt waits out the timeout any more
    assert by_name["email-primary-hang"]["providers"]["ses"]["slow"] > 0
    assert by_name["email-primary-hang"]["providers"]["ses"]["skipped"] > 0
    assert by_name["email-receipts-never-come"]["routing"].endswith("routing-receipts.toml")


def test_check_exits_1_when_an_expectation_is_missed(tmp_path: Path) -> None:
    text = (DRILLS / "email-primary-hang.toml").read_text()
    text = text.replace('routing = "routing.toml"', f'routing = "{REPO / "routing.toml"}"')
    text = text.replace('p99_time_to_deliver = "6s"', 'p99_time_to_deliver = "50ms"')
    path = tmp_path / "strict.toml"
    path.write_text(text.replace('duration = "5m"', 'duration = "90s"'))
    p = cli(str(path), "--check")
    assert p.returncode == 1
    lines = p.stderr.strip().splitlines()
    line = text.splitlines().index('p99_time_to_deliver = "50ms"') + 1
    assert len(lines) == 1 and lines[0].startswith(f"{path}:{line}: expect.p99_time_to_deliver: missed")
    assert "MISS" in p.stdout
    # without --check the same run is just a report
    assert cli(str(path)).returncode == 0


def test_side_by_side_routing_files_json_and_plot(tmp_path: Path) -> None:
    no_breaker = tmp_path / "no-breaker.toml"
    no_breaker.write_text((REPO / "routing.toml").read_text().replace(
        'retries = 1\n', 'retries = 1\nbreaker = false\n'))
    scenario = tmp_path / "short.toml"
    scenario.write_text((DRILLS / "email-primary-hang.toml").read_text().replace(
        'duration = "5m"', 'duration = "2m"'))
    out, png = tmp_path / "out.json", tmp_path / "timeline.png"
    p = cli(str(scenario), "--routing", str(REPO / "routing.toml"), "--routing", str(no_breaker),
            "--json", str(out), "--plot", str(png), "--seed", "5")
    assert p.returncode == 0, p.stderr
    runs = json.loads(out.read_text())["runs"]
    assert [r["routing"] for r in runs] == [str(REPO / "routing.toml"), str(no_breaker)]
    assert runs[0]["seed"] == runs[1]["seed"] == 5
    assert runs[0]["messages"] == runs[1]["messages"]           # the same seeded traffic
    assert runs[0]["providers"]["ses"]["skipped"] > 0
    assert runs[1]["providers"]["ses"]["skipped"] == 0
    assert runs[1]["time_to_deliver_s"]["p50"] > runs[0]["time_to_deliver_s"]["p50"]
    header = [line for line in p.stdout.splitlines() if line.startswith("routing ")][0]
    assert "routing.toml" in header and "no-breaker.toml" in header     # columns
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


BAD = {
    "unknown key": ('duration = "1m"\nroutig = "x"\n[traffic]\nrate = 1\n', "routig: unknown key"),
    "bad duration": ('duration = "ten minutes"\n[traffic]\nrate = 1\n', "duration: bad duration"),
    "no traffic": ('duration = "1m"\n', "traffic: required key is missing"),
    "bad rate": ('duration = "1m"\n[traffic]\nrate = "fast"\n', "traffic.rate: bad rate"),
    "param of another kind": ('duration = "1m"\n[traffic]\nrate = 1\n[[outages]]\nprovider = "ses"\n'
                              'start = "0s"\nduration = "1m"\nkind = "hang"\nfactor = 3\n',
                              "outages.0: factor applies only to kind = \"slow\""),
    "unknown kind": ('duration = "1m"\n[traffic]\nrate = 1\n[[outages]]\nprovider = "ses"\n'
                     'start = "0s"\nduration = "1m"\nkind = "meltdown"\n', "outages.0.kind:"),
    "unknown provider": ('duration = "1m"\n[traffic]\nrate = 1\n[[outages]]\nprovider = "mailgun"\n'
                         'start = "0s"\nduration = "1m"\nkind = "down"\n',
                         "outages.0.provider: unknown provider 'mailgun'"),
    "unknown route": ('duration = "1m"\n[traffic]\nrate = 1\nroute = "nope"\n', "traffic.route: unknown route 'nope'"),
    "bad expect": ('duration = "1m"\n[traffic]\nrate = 1\n[expect]\ndelivered = 1\n', "expect.delivered: unknown key"),
    "not toml": ('duration = \n', ": not valid TOML"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_scenario_files_give_one_line_errors(tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]) -> None:
    body, expected = BAD[case]
    path = tmp_path / "bad.toml"
    path.write_text(f'routing = "{REPO / "routing.toml"}"\n' + body)
    assert main([str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and all(re.match(re.escape(str(path)) + r"(:\d+(:\d+)?)?: ", line) for line in err), err
    if case != "no traffic":        # the line of the key (a missing top-level table has none)
        assert all(re.match(re.escape(str(path)) + r":\d+", line) for line in err), err
    assert any(expected in line for line in err), err
    assert not any("Traceback" in line for line in err)


def test_missing_files_and_no_traceback(tmp_path: Path) -> None:
    orphan = tmp_path / "orphan.toml"
    orphan.write_text('duration = "1m"\nrouting = "nowhere/routing.toml"\n[traffic]\nrate = 1\n')
    p = cli(str(tmp_path / "absent.toml"), str(orphan))
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert lines[0].startswith(f"{tmp_path / 'absent.toml'}: (file): cannot read file")
    assert lines[1].startswith(f"{orphan}:2: routing: routing file") and "--routing" in lines[1]
    assert "Traceback" not in p.stderr
    bad_routing = tmp_path / "routing.toml"
    bad_routing.write_text('version = 1\n[timeouts]\nprovider = "soon"\n')
    p = cli("email-primary-hang", "--routing", str(bad_routing))
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [f"{bad_routing}:3: timeouts.provider: "
                                             + p.stderr.split("timeouts.provider: ", 1)[1].strip()]


def test_list_names_the_shipped_drills() -> None:
    p = cli("--list")
    assert p.returncode == 0
    assert set(line.split()[0] for line in p.stdout.splitlines()) == set(shipped_drills())


def test_progress_bar_only_on_a_terminal_after_two_seconds(tmp_path: Path) -> None:
    master, slave = pty.openpty()
    try:
        with os.fdopen(slave, "w", closefd=True) as tty:
            bar = _ProgressBar(tty, "drill")
            bar(0.5)
            assert not bar.drawn                # under 2 s: silent
            bar.t0 -= 3.0                       # as if the run had gone on for 3 s
            bar(0.5)
            bar.close()
            out = os.read(master, 4096).decode()
        assert "drill [" in out and "50%" in out
    finally:
        os.close(master)
    with open(tmp_path / "log", "w") as f:
        bar = _ProgressBar(f, "drill")
        bar.t0 -= 3.0
        bar(0.5)
    assert (tmp_path / "log").read_text() == ""


def test_plot_without_matplotlib_is_one_clear_line_and_a_failure(tmp_path: Path) -> None:
    """matplotlib is the `plot` extra: a server installs routingd without it (the module is marked
    unimportable here, as Python does for a module that is not installed)."""
    png = tmp_path / "t.png"
    prog = ("import sys; sys.modules['matplotlib'] = None; "
            "from routingd.simulator.cli import main; sys.exit(main(sys.argv[1:]))")
    p = subprocess.run([sys.executable, "-c", prog, str(DRILLS / "email-brownout.toml"), "--plot", str(png)],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stdout + p.stderr
    assert p.stderr == ("routingd simulate: --plot needs matplotlib, which is not installed: "
                        "pip install 'routingd[plot]'\n")
    assert p.stdout == "" and not png.exists()
