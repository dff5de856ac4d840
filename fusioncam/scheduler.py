"""Who runs the network next, when several requests share one model in one process.

A public Space on 2 CPU cores is mostly waiting: one forward at a time uses every core, so the
order of the forwards decides what each visitor waits for. :class:`NetworkScheduler` hands out
*turns*, one forward (or one short stage) each, by three rules:

1. **Priority classes.** :data:`GRADIENT` (a request's first pass: its Grad-CAM map is ready right
   after) goes before :data:`CHUNK` (one chunk of Score-CAM's masked passes, or a derive step),
   which goes before :data:`BACKGROUND` (work nobody waits for, such as filling the example cache).
   A background turn waits while any request that asked for a turn of another class is live (between
   its first turn and :meth:`~NetworkScheduler.done`): it never takes one of a visitor's slots, even
   between two of that visitor's turns.
2. **Round robin within a class.** The waiting owner (request) served least recently goes first, so
   ``N`` requests each progress at about ``1/N`` of the machine, and a new request's first chunk
   comes after at most one chunk of each other request.
3. **At most ``slots`` turns at once** (two: while one turn does its host-side work, building masks
   or reading scores, the other keeps the cores or the GPU busy).

The scheduler never touches the network itself and holds no lock while a turn runs: it is only a
gate. It measures how long turns take, for honest waiting estimates (:meth:`ahead_of`).
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field

GRADIENT, CHUNK, BACKGROUND = 0, 1, 2
PRIORITIES = (GRADIENT, CHUNK, BACKGROUND)


class Cancelled(Exception):
    """The owner of a waiting turn was cancelled (:meth:`NetworkScheduler.cancel`)."""


@dataclass(order=True)
class _Ticket:
    """A waiting turn; tickets sort by (priority, when its owner was last served, arrival)."""

    priority: int
    last_served: float
    arrival: int
    owner: Hashable = field(compare=False)


@dataclass(frozen=True)
class Wait:
    """What a request that has not had a chunk yet waits for: the requests before it and an
    estimate of the seconds until its first chunk."""

    requests_ahead: int
    seconds: float


class NetworkScheduler:
    """Turns on the network for concurrent requests: gradient stages first, Score-CAM chunks round
    robin between requests, background work last (see the module doc)."""

    def __init__(self, slots: int = 1) -> None:
        if slots < 1:
            raise ValueError("the scheduler needs at least one slot")
        self.slots = slots
        self._changed = threading.Condition()
        self._waiting: list[_Ticket] = []
        self._running = 0
        self._served: dict[Hashable, float] = {}      # owner → when its last turn began
        self._owners: dict[Hashable, int] = {}        # owner → its first arrival (live owners)
        self._foreground: set[Hashable] = set()       # live owners that asked for a non-background turn
        self._cancelled: set[Hashable] = set()
        self._arrivals = itertools.count()
        self._turn_seconds: dict[int, float] = {}     # priority → moving average of a turn's length

    @contextlib.contextmanager
    def turn(self, owner: Hashable, priority: int = CHUNK) -> Iterator[None]:
        """Wait for ``owner``'s turn at ``priority``, run the body as that turn, then pass it on.
        Raises :class:`Cancelled` instead of waiting once ``owner`` is cancelled."""
        if priority not in PRIORITIES:
            raise ValueError(f"unknown priority {priority!r}")
        with self._changed:
            if owner in self._cancelled:
                raise Cancelled(owner)
            arrival = next(self._arrivals)
            self._owners.setdefault(owner, arrival)
            if priority != BACKGROUND:
                self._foreground.add(owner)
            ticket = _Ticket(priority, self._served.get(owner, -1.0), arrival, owner)
            self._waiting.append(ticket)
            try:
                self._changed.wait_for(lambda: owner in self._cancelled or (
                    self._running < self.slots and min(self._waiting) is ticket
                    and (priority != BACKGROUND or not self._foreground - {owner})))
            finally:
                self._waiting.remove(ticket)
                self._changed.notify_all()
            if owner in self._cancelled:
                raise Cancelled(owner)
            self._running += 1
            began = time.monotonic()
            if priority != GRADIENT:          # round robin orders the chunks: a gradient turn is no chunk
                self._served[owner] = began
        try:
            yield
        finally:
            with self._changed:
                self._running -= 1
                seconds = time.monotonic() - began
                average = self._turn_seconds.get(priority)
                self._turn_seconds[priority] = seconds if average is None else 0.8 * average + 0.2 * seconds
                self._changed.notify_all()

    def done(self, owner: Hashable) -> None:
        """``owner`` has finished (or left): forget it (and any cancellation of it)."""
        with self._changed:
            self._served.pop(owner, None)
            self._owners.pop(owner, None)
            self._foreground.discard(owner)
            self._cancelled.discard(owner)
            self._changed.notify_all()

    def cancel(self, owner: Hashable) -> None:
        """Make ``owner``'s waiting and future turns raise :class:`Cancelled` (a visitor who left
        frees their share at their next turn)."""
        with self._changed:
            if owner in self._owners:
                self._cancelled.add(owner)
            self._changed.notify_all()

    def ahead_of(self, owner: Hashable) -> Wait:
        """For an ``owner`` that has not had a turn yet: the requests that will have theirs first
        (owners that came earlier and have not been served either: round robin puts every new
        owner before those already served), and the seconds until ``owner``'s first turn at the
        measured turn lengths (theirs, the running turns and the gradient stages waiting now)."""
        with self._changed:
            mine = self._owners.get(owner, float("inf"))
            earlier = sum(1 for o, arrived in self._owners.items() if o != owner and arrived < mine
                          and o in self._foreground and o not in self._served and o not in self._cancelled)
            gradients = sum(1 for t in self._waiting if t.priority == GRADIENT and t.owner != owner)
            chunk, gradient = self._turn_seconds.get(CHUNK, 0.0), self._turn_seconds.get(GRADIENT, 0.0)
            seconds = earlier * (chunk + gradient) + self._running * chunk + gradients * gradient
            return Wait(earlier, seconds)

    def has_served(self, owner: Hashable) -> bool:
        """Whether ``owner`` has had a chunk (a turn other than its gradient stage) since it arrived."""
        with self._changed:
            return owner in self._served

    def requests(self) -> int:
        """How many visitors' requests (owners of non-background turns) are between their first turn
        and :meth:`done`: the requests sharing the network now."""
        with self._changed:
            return len(self._foreground)

    def busy(self) -> bool:
        """Whether a turn runs or waits now."""
        with self._changed:
            return self._running > 0 or bool(self._waiting)
