"""The daemon's sandbox provider and the simulator draw from one provider model.

Both call routingd.daemon.core.behaviour.draw_answer with the sandbox provider's own config and a random
stream seeded "<seed>:<provider>"; the same seed therefore gives the same answers in both.
"""

from __future__ import annotations

import asyncio
import random
import textwrap
from pathlib import Path

import pytest

from routingd.daemon.adapters import AdapterContext, AttemptRequest
from routingd.daemon.core.behaviour import OUTAGE_KINDS, BehaviourSpec, RateWindow, behaviour_of, draw_answer
from routingd.daemon.config_files import load_policy
from routingd.daemon.core.policy import parse_policy
from routingd.daemon.providers import SandboxAdapter
from routingd.simulator.providers import SimProvider
from routingd.simulator.scenario import parse_scenario
from routingd.simulator.setup import bind_scenario

REPO = Path(__file__).resolve().parent.parent
SEED = 42


def sandbox_policy(fail: str = "none", error_rate: float = 0.3) -> str:
    return textwrap.dedent(f"""
        version = 1
        [providers.box]
        type = "sandbox"
        latency = {{ median = "1ms", p99 = "4ms" }}
        error_rate = {error_rate}
        fail = "{fail}"
        [channels.email]
        providers = ["box"]
        [routes.default]
        channels = ["email"]
    """)


def scenario_for(tmp: Path) -> str:
    return textwrap.dedent(f"""
        duration = "1s"
        seed = {SEED}
        routing = "routing.toml"
        [traffic]
        rate = 1
    """)


def daemon_outcomes(cfg: object, n: int) -> list[tuple]:
    async def main() -> list[tuple]:
        adapter = SandboxAdapter("box", cfg, AdapterContext(rng_seed=SEED))
        out = []
        for i in range(n):
            req = AttemptRequest(f"m{i}", f"m{i}.0.1", "email", "box", 1, 5.0, f"m{i}:email:box")
            o = await asyncio.wait_for(adapter.send(req), 5.0)
            out.append((o.status, o.network, o.retry_after_s))
        await adapter.close()
        return out
    return asyncio.run(main())


def sim_answers(tmp: Path, policy_text: str, n: int) -> list:
    (tmp / "routing.toml").write_text(policy_text)
    sc = parse_scenario(scenario_for(tmp), str(tmp / "s.toml"))
    setup = bind_scenario(sc, load_policy(str(tmp / "routing.toml")))
    box = setup.providers()["box"]
    return [box.answer(float(i), confirm_receipt=False) for i in range(n)]


@pytest.mark.parametrize("fail", ["none", "error", "throttle", "down", "flaky"])
def test_daemon_sandbox_and_simulator_give_the_same_answers(tmp_path: Path, fail: str) -> None:
    text = sandbox_policy(fail)
    cfg = parse_policy(text).providers["box"]
    n = 60
    daemon = daemon_outcomes(cfg, n)
    sim = [(None, True, None) if a.kind == "refused" else (a.status, False, a.retry_after_s)
           for a in sim_answers(tmp_path, text, n)]
    assert daemon == sim
    if fail == "none":   # the comparison is not vacuous: errors are interleaved with successes
        assert {s for s, _, _ in daemon} == {200, 503}


def test_simulator_uses_the_sandbox_providers_own_behaviour(tmp_path: Path) -> None:
    policy = load_policy(str(REPO / "routing.toml"))
    sc = parse_scenario(textwrap.dedent("""
        duration = "1m"
        routing = "routing.toml"
        [traffic]
        rate = 1
        [providers.sendgrid]
        error_rate = 0.25
    """), str(REPO / "drill.toml"))
    setup = bind_scenario(sc, policy)
    ses = policy.providers["ses"]
    assert setup.specs["ses"] == behaviour_of(ses)
    assert setup.specs["ses"].latency.median == 80 and setup.specs["ses"].latency.p99 == 400
    # a scenario key overrides only itself; the rest stays the routing file's
    assert setup.specs["sendgrid"].error_rate == 0.25
    assert setup.specs["sendgrid"].latency == policy.providers["sendgrid"].latency
    # same seed, same stream: the simulator's draws are draw_answer's with the sandbox config
    sim = setup.providers()["ses"]
    rng = random.Random(f"{setup.seed}:ses")
    for i in range(200):
        assert sim.answer(i * 0.01, False) == draw_answer(ses, ses.fail, rng, i * 0.01, None, False)


@pytest.mark.parametrize("kind", OUTAGE_KINDS)
def test_each_outage_kind_changes_the_answer_inside_its_window_only(kind: str) -> None:
    policy = load_policy(str(REPO / "simulator" / "scenarios" / "routing-receipts.toml"))
    sc = parse_scenario(textwrap.dedent(f"""
        duration = "1m"
        routing = "routing-receipts.toml"
        [traffic]
        rate = 1
        [[outages]]
        provider = "ses"
        start = "10s"
        duration = "10s"
        kind = "{kind}"
    """), str(REPO / "simulator" / "scenarios" / "x.toml"))
    ses = bind_scenario(sc, policy).providers()["ses"]
    assert ses.mode_at(9.99)[0] == "none" and ses.mode_at(20.0)[0] == "none"
    assert ses.mode_at(10.0)[0] == kind and ses.mode_at(19.99)[0] == kind
    inside = [ses.answer(15.0, confirm_receipt=True) for _ in range(200)]
    outside = [ses.answer(25.0, confirm_receipt=True) for _ in range(200)]
    assert all(a.kind == "response" and a.receipt_delay_s is not None for a in outside
               if a.status == 202)
    if kind == "down":
        assert all(a.kind == "refused" for a in inside)
    elif kind == "hang":
        assert all(a.kind == "hang" for a in inside)
    elif kind == "error":
        assert all(a.status == 503 for a in inside)
    elif kind == "throttle":
        assert all(a.status == 429 and a.retry_after_s == 1.0 for a in inside)
    elif kind == "slow":
        med = sorted(a.delay_s for a in inside)[100]
        assert med > 5 * sorted(a.delay_s for a in outside)[100]
    elif kind == "flaky":
        share = sum(a.status == 503 for a in inside) / len(inside)
        assert 0.35 < share < 0.65            # flaky default error rate 0.5
    elif kind == "no-receipts":
        assert all(a.status == 202 and a.receipt_delay_s is None for a in inside)


def test_outage_parameters_reach_the_model() -> None:
    spec = BehaviourSpec()
    rng = random.Random(1)
    assert draw_answer(spec.model_copy(update={"throttle_retry_after": 2500}), "throttle", rng, 0.0).retry_after_s == 2.5
    policy = load_policy(str(REPO / "routing.toml"))
    sc = parse_scenario(textwrap.dedent("""
        duration = "1m"
        routing = "routing.toml"
        [traffic]
        rate = 1
        [[outages]]
        provider = "ses"
        start = "0s"
        duration = "10s"
        kind = "flaky"
        error_rate = 1.0
        [[outages]]
        provider = "sendgrid"
        start = "0s"
        duration = "10s"
        kind = "throttle"
        retry_after = "3s"
    """), str(REPO / "x.toml"))
    provs = bind_scenario(sc, policy).providers()
    assert all(provs["ses"].answer(1.0, False).status == 503 for _ in range(50))
    assert provs["sendgrid"].answer(1.0, False).retry_after_s == 3.0


@pytest.mark.parametrize("spec", [
    BehaviourSpec(),                                                               # constant latency
    BehaviourSpec.model_validate({"latency": {"median": 80, "p99": 400}, "error_rate": 0.2}),
    BehaviourSpec.model_validate({"latency": {"median": 5, "p99": 900}, "rate_limit": "40/s",
                                  "receipt_delay": {"median": 1000, "p99": 9000}}),
    BehaviourSpec.model_validate({"latency": 0, "error_rate": 1.0}),
])
@pytest.mark.parametrize("fail", ["none", *OUTAGE_KINDS])
def test_the_simulators_draws_are_draw_answers_draw_for_draw(spec: BehaviourSpec, fail: str) -> None:
    """SimProvider.draw (the tuple form the simulator uses) gives draw_answer's floats -- the form
    the daemon's sandbox uses -- and consumes the same random draws, in every fail mode, with and
    without receipts."""
    sim = SimProvider("p", spec, random.Random(5), fail)
    rng, window = random.Random(5), RateWindow(spec.rate_limit)
    statuses = set()
    for i in range(400):
        now, receipt = i * 0.013, i % 3 == 0
        want = draw_answer(spec, fail, rng, now, window, receipt)
        assert sim.answer(now, receipt) == want
        statuses.add(want.status)
    assert rng.random() == sim.rng.random()            # the streams are still in step
    if fail == "none" and spec.rate_limit:             # not vacuous: 429s, 202s with receipts
        assert {202, 200, 429} <= statuses
