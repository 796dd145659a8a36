"""routingd in CI (docs/ci.md): the JUnit report against the schema Jenkins reads, GitHub
annotations, and the documented pipelines run command by command on the repository's drills."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import junitparser
import pytest
import xmlschema
import yaml

from routingd.daemon.annotations import github
from routingd.simulator.cli import shipped_drills

REPO = Path(__file__).resolve().parent.parent
DRILLS = REPO / "simulator" / "scenarios"
XSD = Path(__file__).resolve().parent / "junit-jenkins.xsd"
BIN = Path(sys.executable).parent


def routingd(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "routingd.daemon.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def strict_drill(tmp_path: Path) -> tuple[Path, int]:
    """email-primary-hang, 90 s, with a p99 target it misses; and the line of that target."""
    text = (DRILLS / "email-primary-hang.toml").read_text()
    text = text.replace('routing = "routing.toml"', f'routing = "{REPO / "routing.toml"}"')
    text = text.replace('p99_time_to_deliver = "6s"', 'p99_time_to_deliver = "50ms"')
    text = text.replace('duration = "5m"', 'duration = "90s"')
    path = tmp_path / "strict.toml"
    path.write_text(text)
    return path, text.splitlines().index('p99_time_to_deliver = "50ms"') + 1


def test_junit_report_is_valid_for_jenkins_and_names_each_expectation(tmp_path: Path) -> None:
    strict, line = strict_drill(tmp_path)
    junit, png = tmp_path / "out" / "junit.xml", tmp_path / "timeline.png"
    junit.parent.mkdir()
    p = routingd("simulate", str(strict), "email-channel-down", "--routing", str(REPO / "routing.toml"),
                 "--routing", str(DRILLS / "routing-receipts.toml"), "--check", "--junit", str(junit),
                 "--plot", str(png))
    assert p.returncode == 1, p.stderr              # the strict drill misses; the report is written anyway
    xmlschema.XMLSchema(str(XSD)).validate(str(junit))       # raises on any deviation from the schema

    xml = junitparser.JUnitXml.fromfile(str(junit))
    suites = list(xml)
    assert [s.name for s in suites] == [
        f"email-primary-hang with {REPO / 'routing.toml'}",
        f"email-primary-hang with {DRILLS / 'routing-receipts.toml'}",
        f"email-channel-down with {REPO / 'routing.toml'}",
        f"email-channel-down with {DRILLS / 'routing-receipts.toml'}"]     # scenario x routing file
    for s in suites:
        props = {pr.name: pr.value for pr in s.properties()}
        assert props["attachment"] == str(png) and png.exists()
        assert float(s.time) > 0 and props["policy_version"]
        names = [c.name for c in s]
        assert "timeout hierarchy violations" in names and "expect.violations" not in names
        assert s.tests == len(names)
    first = suites[0]
    cases = {c.name: c for c in first}
    assert list(cases) == ["expect.delivered_ratio", "expect.p99_time_to_deliver", "expect.expired",
                           "timeout hierarchy violations", "expect.time_to_route_around"]    # one per [expect]
    missed = cases["expect.p99_time_to_deliver"]
    assert not missed.is_passed and first.failures >= 1
    (failure,) = missed.result
    assert isinstance(failure, junitparser.Failure) and failure.type == "ExpectationMissed"
    assert re.fullmatch(r"p99_time_to_deliver \d+(\.\d+)?s > 0\.05s", failure.message), failure.message
    assert f"{strict}:{line}: expect.p99_time_to_deliver" in failure.text and "target: <= 0.05s" in failure.text
    assert missed._elem.get("file") == str(strict) and missed._elem.get("line") == str(line)
    assert f"[[ATTACHMENT|{png}]]" in (missed.system_out or "")
    assert cases["timeout hierarchy violations"].is_passed
    assert all(c.is_passed for s in suites[2:] for c in s)          # the shipped drill passes


def test_check_format_github_annotates_each_line(tmp_path: Path) -> None:
    bad = tmp_path / "routing.toml"
    bad.write_text('[providers.ses]\ntype = "sandbox"\ntimeout = "soon"\n'
                   '[channels.email]\nproviders = ["ses", "nope"]\n[routes.default]\nchannels = ["email"]\n')
    p = routingd("check", "--format", "github", str(bad))
    assert p.returncode == 1
    lines = p.stderr.strip().splitlines()
    assert lines[0].startswith(f"::error file={bad},line=3,title=routingd check::providers.ses.timeout: bad duration")
    assert lines[1].startswith(f"::error file={bad},line=5,col=21,title=routingd check::"
                               "channels.email.providers.1: unknown provider 'nope'")
    p = routingd("check", str(bad))                      # the same errors, as text lines
    assert p.stderr.strip().splitlines()[0].startswith(f"{bad}:3: providers.ses.timeout: bad duration")


def test_github_annotations_escape_what_the_runner_would_misread() -> None:
    assert github("a,b:c.toml:2: k: 100% sure\nnext") == "::error file=a%2Cb%3Ac.toml,line=2::k: 100%25 sure%0Anext"
    assert github("x.toml: (file): cannot read file") == "::error file=x.toml::(file): cannot read file"
    assert github("routingd simulate: give at least one SCENARIO.toml") == \
        "::error::routingd simulate: give at least one SCENARIO.toml"
    assert github("r.toml: warning: w", "warning") == "::warning file=r.toml::warning: w"


def test_simulate_check_format_github_points_at_the_expect_line(tmp_path: Path) -> None:
    strict, line = strict_drill(tmp_path)
    p = routingd("simulate", str(strict), "--check", "--format", "github")
    assert p.returncode == 1
    (ann,) = p.stderr.strip().splitlines()
    assert ann.startswith(f"::error file={strict},line={line},title=routingd simulate --check::"
                          "expect.p99_time_to_deliver: missed with "), ann


# --------------------------------------------------------------------------- the documented pipelines


def yaml_blocks(doc: Path) -> list[object]:
    return [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", doc.read_text(), re.S)]


def team_repository(where: Path) -> Path:
    """A repository like a team's: routing.toml and drills/ (the shipped drills, pointing at it)."""
    where.mkdir()
    shutil.copy2(REPO / "routing.toml", where / "routing.toml")
    for variant in sorted(DRILLS.glob("routing-*.toml")):      # the drills' own routing files
        shutil.copy2(variant, where / variant.name)
    (where / "drills").mkdir()
    for name, path in shipped_drills().items():
        text = Path(path).read_text().replace('routing = "routing', 'routing = "../routing')
        (where / "drills" / f"{name}.toml").write_text(text)
    return where


def run_commands(commands: list[str], cwd: Path) -> None:
    """Each command as the CI's shell would run it, with this venv's routingd on PATH; the
    install step is the one left out (routingd is installed here; tests/test_packaging.py
    installs the wheel)."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    for cmd in commands:
        if re.match(r"\s*(python -m )?pip install ", cmd):
            assert "routingd[plot]" in cmd              # --plot needs the plot extra
            continue
        p = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", cmd], cwd=cwd, env=env, capture_output=True,
                           text=True, timeout=600)
        assert p.returncode == 0, (cmd, p.stdout[-2000:], p.stderr[-3000:])


def check_reports(repo: Path) -> None:
    junit = repo / "drill-reports" / "junit.xml"
    xmlschema.XMLSchema(str(XSD)).validate(str(junit))
    suites = list(junitparser.JUnitXml.fromfile(str(junit)))
    assert len(suites) == len(shipped_drills())
    assert all(c.is_passed for s in suites for c in s)
    assert (repo / "drill-reports" / "timeline.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.timeout(900)
def test_the_github_actions_workflow_of_docs_ci_runs_on_the_drills(tmp_path: Path) -> None:
    (workflow, *_rest) = [b for b in yaml_blocks(REPO / "docs" / "ci.md") if isinstance(b, dict) and "jobs" in b]
    assert set(workflow[True]["pull_request"]["paths"]) == {"routing.toml", "drills/**"}   # `on:` reads as True
    steps = workflow["jobs"]["routing"]["steps"]
    commands = [s["run"] for s in steps if "run" in s]
    assert any("routingd check" in c for c in commands) and any("--junit" in c for c in commands)
    uses = [s["uses"] for s in steps if "uses" in s]
    assert any(u.startswith("actions/upload-artifact@") for u in uses)
    assert next(s for s in steps if "action-junit-report" in s.get("uses", ""))["with"]["report_paths"] == \
        "drill-reports/junit.xml"
    repo = team_repository(tmp_path / "team")
    run_commands(commands, repo)
    check_reports(repo)


@pytest.mark.timeout(900)
def test_the_gitlab_job_of_docs_ci_runs_on_the_drills(tmp_path: Path) -> None:
    (job,) = [b["routing-drills"] for b in yaml_blocks(REPO / "docs" / "ci.md")
              if isinstance(b, dict) and "routing-drills" in b]
    assert job["artifacts"]["reports"]["junit"] == "drill-reports/junit.xml"
    assert "drill-reports/" in job["artifacts"]["paths"]
    repo = team_repository(tmp_path / "team")
    run_commands(job["script"], repo)
    check_reports(repo)


def test_the_pre_commit_hook_checks_routing_files(tmp_path: Path) -> None:
    (hook,) = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())
    assert hook["id"] == "routingd-check" and hook["language"] == "python"
    files = re.compile(hook["files"])
    assert files.search("routing.toml") and files.search("deploy/routing-prod.toml")
    assert not files.search("drills/email-slow.toml") and not files.search("pyproject.toml")
    good = tmp_path / "routing.toml"
    shutil.copy2(REPO / "routing.toml", good)
    bad = tmp_path / "routing-bad.toml"
    bad.write_text("version = 2\n")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    entry = hook["entry"].split()
    assert subprocess.run([*entry, str(good)], env=env, capture_output=True, timeout=120).returncode == 0
    p = subprocess.run([*entry, str(good), str(bad)], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and p.stderr.startswith(f"{bad}:1: version: "), p.stderr
