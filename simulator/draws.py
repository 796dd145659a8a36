"""The simulator's random draws that it makes once per message or attempt, compiled (setup.py):
CPython's own formulas for `random.Random.gauss` and `expovariate`, draw for draw, where the
Random methods are Python code. Same draws, same reports, a fraction of the cost
(docs/performance.md "Simulator: a day of traffic"); tests/test_simulator_compiled.py compares
each with Python's draw by draw."""

from __future__ import annotations

import math
import random
from typing import Callable

_TWOPI = 2.0 * math.pi


class Gauss:
    """rng.gauss(0.0, 1.0), draw for draw, for a stream nothing else draws normals from:
    random.Random.gauss's algorithm as CPython writes it (Box-Muller, the second normal of each
    pair kept for the next call), compiled, where Random.gauss is Python code. Same draws, same
    commit delays and reports, a fraction of the cost; tests/test_simulator_compiled.py compares
    the two draw by draw, so a Python whose gauss differs fails there, not in a report."""

    __slots__ = ("next", "random")

    def __init__(self, rng: random.Random) -> None:
        self.random: Callable[[], float] = rng.random
        self.next: float | None = None

    def draw(self) -> float:
        z = self.next
        self.next = None
        if z is None:
            rnd = self.random
            x2pi = rnd() * _TWOPI
            g2rad = math.sqrt(-2.0 * math.log(1.0 - rnd()))
            z = math.cos(x2pi) * g2rad
            self.next = math.sin(x2pi) * g2rad
        return z


class Exponential:
    """rng.expovariate(rate), draw for draw (CPython's formula, -log(1 - random()) / rate),
    compiled: the gaps of arrivals at one rate (ScenarioModel.traffic.gaps without bursts);
    tests/test_simulator_compiled.py compares the two draw by draw."""

    __slots__ = ("random", "rate")

    def __init__(self, rng: random.Random, rate: float) -> None:
        self.random: Callable[[], float] = rng.random
        self.rate = rate

    def draw(self) -> float:
        return -math.log(1.0 - self.random()) / self.rate
