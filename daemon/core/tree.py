"""The tree a `Delivery` (engine.py) walks: one node per group, channel and provider run of the plan,
the provider run's states and the table of their transitions, and the deadline ranks.

Names, not strings: a run's state and a deadline's rank are small ints named by Final constants
(mypyc inlines them; an int compares faster than a string and no Enum object is made per step).
RUN_TRANSITIONS is the one table of the run-state machine; tests/test_engine_states.py checks
that the engine never makes a transition it does not list.
"""

from __future__ import annotations

from typing import Final

from .commands import AttemptRecord
from .plan import ChannelStep, GroupStep, ProviderStep

# --------------------------------------------------------------------------- provider-run states

IDLE: Final = 0             # not tried yet
ATTEMPTING: Final = 1       # an attempt is in flight (StartAttempt given, no answer yet)
AWAITING: Final = 2         # answered 2xx, waiting for its delivery receipt
BACKOFF: Final = 3          # waiting out the back-off before its next try
HELD: Final = 4             # would start an attempt while draining: held for the next run
DONE: Final = 5             # ended (delivered, failed, cut, skipped); never leaves it
QUEUED: Final = 6           # waiting for its turn on a rate-limited provider (daemon/core/limiter.py)

RUN_STATE_NAMES: Final = ("idle", "attempting", "awaiting", "backoff", "held", "done", "queued")

# state -> the states a run may move to from it (the engine asserts nothing at run time; the
# test runs the engine with every assignment checked against this table)
RUN_TRANSITIONS: Final[dict[int, frozenset[int]]] = {
    IDLE: frozenset({ATTEMPTING, AWAITING, HELD, QUEUED, DONE}),   # first try / adopted / held / queued / skipped or cut
    ATTEMPTING: frozenset({AWAITING, BACKOFF, DONE}),       # 2xx, awaiting its receipt / retry / end
    AWAITING: frozenset({BACKOFF, DONE}),                    # failed receipt or receipt timeout / end
    BACKOFF: frozenset({ATTEMPTING, HELD, QUEUED, DONE}),    # the retry / held while draining / queued / end
    QUEUED: frozenset({ATTEMPTING, HELD, DONE}),             # its slot / held while draining / spilled or cut
    HELD: frozenset({DONE}),                                 # cut with its channel
    DONE: frozenset({DONE}),
}

# --------------------------------------------------------------------------- deadline ranks
#
# Deadlines due at the same time fire by rank, then plan order: the message's before a channel's
# before an attempt's.

RANK_MESSAGE: Final = 0     # the message deadline
RANK_CHANNEL: Final = 1     # a channel deadline
RANK_ATTEMPT: Final = 2     # an attempt's deadline, or its receipt deadline
RANK_BACKOFF: Final = 3     # a back-off wake-up (the retry)
RANK_SLOW: Final = 4        # an attempt's slow-call mark (breaker `slow`)

# --------------------------------------------------------------------------- the tree nodes
#
# Every node carries its position in the plan's pre-order (`pre`) and that of its last descendant
# (`end`): n lies under node iff node.pre < n.pre <= node.end. Deadline ties are broken by `pre`
# (plan order), and cuts walk only the nodes that ever started instead of the whole tree. A node
# names its parent by its `pre` (a key of Delivery._nodes), not by reference: the tree holds no reference
# cycle, so a finished Delivery is freed as soon as its driver drops it, without the cyclic GC.


class _Node:
    __slots__ = ("parent", "result", "delivered", "started", "pre", "end")

    parent: int                      # the parent's `pre` (its key in Delivery._nodes); -1: the root
    result: str | None               # None while running; "delivered" | "failed" | "skipped"
    delivered: bool                  # something under it delivered (set by late receipts too)
    started: bool
    pre: int                         # position in the plan's pre-order
    end: int                         # position of its last descendant


class _Group(_Node):
    __slots__ = ("method", "children", "idx", "launching")

    def __init__(self, step: GroupStep, parent: int, pre: int) -> None:
        self.parent = parent
        self.result = None
        self.delivered = False
        self.started = False
        self.pre = self.end = pre
        self.method = step.method
        self.children: list[_Node] = []
        self.idx = 0
        self.launching = False


class _Channel(_Node):
    __slots__ = ("step", "method", "children", "idx", "launching", "deadline", "rejected", "holding")

    def __init__(self, step: ChannelStep, parent: int, pre: int) -> None:
        self.parent = parent
        self.result = None
        self.delivered = False
        self.started = False
        self.pre = pre
        self.step = step
        self.method = step.method
        self.children: list[_Node] = []             # its runs, made when it starts (most never do)
        self.end = pre + len(step.providers)
        self.idx = 0
        self.launching = False
        self.deadline = 0.0
        self.rejected = False
        self.holding = False                        # a provider of it is held (Delivery.drain)


class _Run(_Node):
    """One provider inside one channel: its tries, back-off and current attempt."""

    __slots__ = ("step", "tries", "attempt", "state", "wake_at", "slow_at", "slow_counted")

    def __init__(self, step: ProviderStep, parent: int, pre: int) -> None:
        self.parent = parent
        self.result = None
        self.delivered = False
        self.started = False
        self.pre = self.end = pre
        self.step = step
        self.tries = 0
        self.attempt: AttemptRecord | None = None
        self.state = IDLE                       # a run state (above); moves per RUN_TRANSITIONS
        self.wake_at: float | None = None
        self.slow_at: float | None = None       # the current attempt's slow-call mark, while pending
        self.slow_counted = False               # the current attempt already counted as a breaker failure


def _build(step: GroupStep, parent: int, pre: int, nodes: "dict[int, _Group | _Channel]") -> _Group:
    """The group and the channels under it, registered in `nodes` by `pre` (runs come later)."""
    group = _Group(step, parent, pre)
    nodes[pre] = group
    children = group.children
    me = pre
    for s in step.items:
        if isinstance(s, ChannelStep):
            chan = _Channel(s, me, pre + 1)
            nodes[pre + 1] = chan
            child: _Node = chan
        else:
            child = _build(s, me, pre + 1, nodes)
        children.append(child)
        pre = child.end
    group.end = pre
    return group


def _by_pre(node: _Node) -> int:
    return node.pre


class _Resume:
    """What adopt() learned from the attempts of earlier runs, consulted as nodes start."""

    __slots__ = ("delivered", "first", "awaiting")

    def __init__(self) -> None:
        self.delivered: set[int] = set()                # channel pres delivered in an earlier run
        self.first: dict[int, int] = {}                 # `single` node pre -> child index to start at
        self.awaiting: dict[int, AttemptRecord] = {}    # run pre -> its attempt awaiting a receipt


def _name(node: _Node) -> str:
    if isinstance(node, _Run):
        return node.step.provider
    if isinstance(node, _Channel):
        return node.step.channel
    return "group"
