"""`routingd simulate` as an operator meets it (issue 18): a mistyped drill name, an output path
that cannot be written, a scenario's reference errors shown with its parse errors, a provider's
attempts that add up in the table, ratios as percents, plots that compare on one y-axis."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from routingd.simulator.cli import main, prepare, run_all
from routingd.simulator.report import build_report, format_table

REPO = Path(__file__).resolve().parent.parent
DRILLS = REPO / "simulator" / "scenarios"


def _short_drill(tmp_path: Path, name: str = "email-primary-hang", duration: str = "2m") -> Path:
    path = tmp_path / f"{name}.toml"
    text = (DRILLS / f"{name}.toml").read_text()
    text = re.sub(r'(?m)^duration = "[^"]+"', f'duration = "{duration}"', text, count=1)
    text = text.replace('routing = "routing.toml"', f'routing = "{DRILLS / "routing.toml"}"')
    path.write_text(text)
    return path


def test_a_mistyped_drill_name_is_an_unknown_drill_with_a_suggestion(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["email-primary-hnag"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "unknown drill 'email-primary-hnag'" in err[0]
    assert "did you mean 'email-primary-hang'" in err[0] and "--list" in err[0]
    assert "cannot read file" not in err[0]


@pytest.mark.parametrize("flag", ["--plot", "--json", "--junit"])
def test_an_unwritable_output_fails_before_the_run(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    # The drill takes a while to run: the error must come without it (no table on stdout).
    assert main(["email-primary-hang", flag, "/nope/x.out"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.strip() == f"/nope/x.out: cannot write the {dict(zip(['--plot', '--json', '--junit'], ['plot', 'JSON report', 'JUnit report']))[flag]} ({flag}): directory /nope does not exist"


def test_reference_errors_come_with_the_parse_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(f'routing = "{DRILLS / "routing.toml"}"\nduration = "ten minutes"\n[traffic]\nrate = 1\n'
                    'route = "nope"\n[[outages]]\nprovider = "mailgun"\nstart = "0s"\nduration = "1m"\n'
                    'kind = "down"\n')
    assert main([str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:2: duration: bad duration" in err
    assert f"{path}:5: traffic.route: unknown route 'nope'" in err
    assert f"{path}:7: outages.0.provider: unknown provider 'mailgun'" in err


def test_the_table_adds_up_a_providers_attempts_and_prints_ratios_as_percent(tmp_path: Path) -> None:
    setups, errors = prepare([str(_short_drill(tmp_path))], [], None)
    assert errors == []
    reports = [build_report(r) for r in run_all(setups)]
    table = format_table(reports)
    rows = {line.split("  ")[0].strip(): line.split()[-1] for line in table.splitlines() if ": attempts/" in line}
    assert rows, table
    for label, value in rows.items():
        assert label.endswith("attempts/ok/fail/timeout/cancel/skip"), label
        attempts, ok, fail, timeout, cancel, _skip = (int(x) for x in value.split("/"))
        assert attempts == ok + fail + timeout + cancel, (label, value)
    assert any(int(v.split("/")[4]) > 0 for v in rows.values()), table      # the hang's attempts are cut
    ratio_rows = [line for line in table.splitlines() if "ratio" in line]
    assert ratio_rows and all(re.search(r"\d%", line) for line in ratio_rows), ratio_rows
    assert all(not re.search(r"\s1$", line) for line in ratio_rows), ratio_rows
    json.dumps(reports)


def test_comparison_plots_share_one_y_axis_per_row(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from routingd.simulator.plot import build_figure

    no_breaker = tmp_path / "no-breaker.toml"
    no_breaker.write_text((DRILLS / "routing.toml").read_text().replace('retries = 1\n', 'retries = 1\nbreaker = false\n'))
    setups, errors = prepare([str(_short_drill(tmp_path))], [str(DRILLS / "routing.toml"), str(no_breaker)], 3)
    assert errors == []
    fig = build_figure(run_all(setups, trace=True))
    try:
        axes = fig.axes
        assert len(axes) == 6
        rows = [[ax for ax in axes if ax.get_subplotspec().rowspan.start == r] for r in range(3)]
        for row in rows:
            assert len(row) == 2
            assert row[0].get_ylim() == row[1].get_ylim()
    finally:
        plt.close(fig)


LIMITED_ROUTING = """
version = 1
[providers.ses]
type = "sandbox"
latency = "20ms"
timeout = "2s"
outbound_rate_limit = "14/s"
burst = 14
[providers.backup]
type = "sandbox"
latency = "20ms"
[channels.email]
providers = ["ses", "backup"]
requires = "email"
timeout = "{channel_timeout}"
[routes.default]
channels = ["email"]
"""


@pytest.mark.parametrize("channel_timeout, queues", [("30s", True), ("2s", False)])
def test_the_report_counts_queued_and_spilled_under_the_outbound_limit(
        tmp_path: Path, channel_timeout: str, queues: bool) -> None:
    """docs/simulator.md "Outbound rate limits": twice ses's limit queues on it while a whole
    provider timeout still fits before the channel deadline, else spills over to backup; the table
    shows PROVIDER: queued/spilled."""
    (tmp_path / "routing.toml").write_text(LIMITED_ROUTING.format(channel_timeout=channel_timeout))
    (tmp_path / "s.toml").write_text('duration = "10s"\nseed = 1\nrouting = "routing.toml"\n'
                                     '[traffic]\nrate = 30\n[providers.ses]\nrate_limit = "14/s"\n')
    setups, errors = prepare([str(tmp_path / "s.toml")], [], None)
    assert errors == []
    (report,) = [build_report(r) for r in run_all(setups)]
    ses = report["providers"]["ses"]
    assert report["delivered"] == report["messages"]
    if queues:
        assert ses["queued"] > 0 and ses["spilled"] == 0, ses
    else:
        assert ses["spilled"] > 0 and ses["queued"] == 0, ses
        assert report["providers"]["backup"]["attempts"] >= ses["spilled"]
    row = [ln for ln in format_table([report]).splitlines() if ln.startswith("ses: queued/spilled")]
    assert row and row[0].split()[-1] == f"{ses['queued']}/{ses['spilled']}", row
