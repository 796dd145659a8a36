"""`routingd simulate --junit FILE`: the reports as JUnit XML, the test report CI systems show
(docs/ci.md "The JUnit report").

One <testsuite> per run (scenario x routing file), one <testcase> per `[expect]` key; the
always-checked `violations` is the case "timeout hierarchy violations". A missed expectation is a
<failure> whose message reads like the check line ("p99_time_to_deliver 7.2s > 6s") and whose
body names target, actual, routing file and the scenario's file and line. The shape is the one
Jenkins' JUnit schema describes (tests/junit-jenkins.xsd), which GitLab and GitHub reporters read.
"""

from __future__ import annotations

import os
import socket
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from typing import Any, Sequence

from ..daemon.core.toml_lines import key_positions, locate

# how the actual value must relate to the target for the case to pass
_SIGN = {"delivered_ratio": ">=", "min_provider_failovers": ">=", "min_channel_failovers": ">=", "min_spilled": ">="}
_MISS = {">=": "<", "<=": ">"}
_SECONDS = {"p50_time_to_deliver", "p95_time_to_deliver", "p99_time_to_deliver", "max_time_to_deliver",
            "time_to_route_around"}
VIOLATIONS_CASE = "timeout hierarchy violations"


def _value(name: str, v: Any) -> str:
    if v is None:
        return "never" if name == "time_to_route_around" else "none"
    if name in _SECONDS:
        return f"{v:g}s"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def expect_line(text: str | None, name: str, positions: dict | None = None) -> int | None:
    """The line of `[expect] name` in the scenario text (the [expect] table's for a default)."""
    if text is None:
        return None
    pos = locate(text, ("expect", name), positions)
    return pos[0] if pos else None


def _case(suite: ET.Element, rep: dict[str, Any], e: dict[str, Any], line: int | None,
          plot: str | None) -> bool:
    name = e["name"]
    case = ET.SubElement(suite, "testcase", {
        "name": VIOLATIONS_CASE if name == "violations" else f"expect.{name}",
        "classname": f"routingd.simulate.{rep['scenario']}",
        "file": rep["scenario_file"],
        "time": "0",
    })
    if line is not None:
        case.set("line", str(line))
    if not e["ok"]:
        sign = _SIGN.get(name, "<=")
        actual, target = _value(name, e["actual"]), _value(name, e["target"])
        where = f"{rep['scenario_file']}:{line}" if line is not None else rep["scenario_file"]
        failure = ET.SubElement(case, "failure", {
            "type": "ExpectationMissed",
            "message": f"{name} {actual} {_MISS[sign]} {target}" if e["actual"] is not None
            else f"{name} {actual} (target {sign} {target})",
        })
        failure.text = (f"{where}: expect.{name}: missed with {rep['routing']}\n"
                        f"target: {sign} {target}\nactual: {actual}\n"
                        f"scenario: {rep['scenario']} ({rep['scenario_file']})\n"
                        f"routing: {rep['routing']} (policy version {rep['policy_version']})\n"
                        f"seed: {rep['seed']}\n")
    if plot is not None:       # GitLab and Jenkins' junit-attachments read this marker
        ET.SubElement(case, "system-out").text = f"[[ATTACHMENT|{os.path.abspath(plot)}]]"
    return bool(e["ok"])


def junit_xml(reports: Sequence[dict[str, Any]], texts: dict[str, str | None],
              plot: str | None = None) -> bytes:
    """The JUnit document of these reports. `texts`: scenario file -> its text (for the lines)."""
    root = ET.Element("testsuites", {"name": "routingd simulate"})
    stamp = datetime.now(timezone.utc).replace(microsecond=0, tzinfo=None).isoformat()
    host = socket.gethostname()
    total = failures = 0
    wall = 0.0
    positions = {f: key_positions(t) for f, t in texts.items() if t is not None}
    for i, rep in enumerate(reports):
        suite = ET.SubElement(root, "testsuite", {
            "name": f"{rep['scenario']} with {rep['routing']}",
            "id": str(i), "package": "routingd.simulate", "file": rep["scenario_file"],
            "timestamp": stamp, "hostname": host, "time": f"{rep['wall_s']:.3f}",
        })
        props = ET.SubElement(suite, "properties")
        for key in ("scenario", "scenario_file", "routing", "policy_version", "seed", "duration_s", "rate",
                    "messages", "sim_end_s"):
            ET.SubElement(props, "property", {"name": key, "value": str(rep[key])})
        if plot is not None:
            ET.SubElement(props, "property", {"name": "attachment", "value": os.path.abspath(plot)})
        text = texts.get(rep["scenario_file"])
        pos = positions.get(rep["scenario_file"])
        n = missed = 0
        for e in rep["expect"]:
            n += 1
            if not _case(suite, rep, e, expect_line(text, e["name"], pos), plot):
                missed += 1
        suite.set("tests", str(n))
        suite.set("failures", str(missed))
        suite.set("errors", "0")
        suite.set("skipped", "0")
        total += n
        failures += missed
        wall += rep["wall_s"]
    root.set("tests", str(total))
    root.set("failures", str(failures))
    root.set("errors", "0")
    root.set("time", f"{wall:.3f}")
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


__all__ = ["VIOLATIONS_CASE", "expect_line", "junit_xml"]
