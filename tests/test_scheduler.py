"""The network scheduler: gradient stages first, Score-CAM chunks round robin, background last."""

from __future__ import annotations

import threading
import time

import pytest

from fusioncam.scheduler import BACKGROUND, CHUNK, GRADIENT, Cancelled, NetworkScheduler


def _run_queued(scheduler: NetworkScheduler, jobs: list[tuple[str, int]]) -> list[str]:
    """Hold the network, queue ``jobs`` (owner, priority) one after the other, release it, and
    return the order in which their turns ran."""
    order: list[str] = []
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with scheduler.turn("holder", CHUNK):
            holding.set()
            release.wait(5)
        scheduler.done("holder")

    def job(owner: str, priority: int) -> None:
        with scheduler.turn(owner, priority):
            order.append(owner)
        scheduler.done(owner)

    holder = threading.Thread(target=hold)
    holder.start()
    assert holding.wait(5)
    threads = []
    for owner, priority in jobs:
        thread = threading.Thread(target=job, args=(owner, priority))
        thread.start()
        threads.append(thread)
        deadline = time.monotonic() + 5
        while sum(1 for t in scheduler._waiting) < len(threads) and time.monotonic() < deadline:
            time.sleep(0.005)
    release.set()
    for thread in [holder, *threads]:
        thread.join(5)
    return order


def test_gradient_stages_go_before_every_chunk_and_background_last() -> None:
    scheduler = NetworkScheduler()
    order = _run_queued(scheduler, [("idle", BACKGROUND), ("a", CHUNK), ("b", CHUNK), ("new", GRADIENT)])
    assert order[0] == "new" and order[-1] == "idle"


def test_chunks_go_round_robin_between_requests() -> None:
    scheduler = NetworkScheduler()
    for owner in ("b", "a"):           # both have had a chunk; "a" most recently
        with scheduler.turn(owner, CHUNK):
            time.sleep(0.01)
    order = _run_queued(scheduler, [("a", CHUNK), ("b", CHUNK), ("c", CHUNK)])
    assert order == ["c", "b", "a"]     # a new request first, then the one served longest ago


def test_one_turn_at_a_time_per_slot() -> None:
    scheduler = NetworkScheduler(slots=1)
    inside, most = [0], [0]
    lock = threading.Lock()

    def work(owner: str) -> None:
        for _ in range(5):
            with scheduler.turn(owner, CHUNK):
                with lock:
                    inside[0] += 1
                    most[0] = max(most[0], inside[0])
                time.sleep(0.002)
                with lock:
                    inside[0] -= 1

    threads = [threading.Thread(target=work, args=(f"r{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert most[0] == 1


def test_a_cancelled_request_gives_up_its_turns() -> None:
    scheduler = NetworkScheduler()
    with scheduler.turn("gone", CHUNK):
        pass
    scheduler.cancel("gone")
    with pytest.raises(Cancelled), scheduler.turn("gone", CHUNK):
        pass
    scheduler.done("gone")
    with scheduler.turn("gone", CHUNK):   # a finished owner's name may be used again
        pass


def test_waiting_estimate_counts_the_requests_before_the_first_chunk() -> None:
    scheduler = NetworkScheduler()
    for owner in ("early", "mine"):
        with scheduler.turn(owner, GRADIENT):   # arrived; no chunk yet
            pass
    with scheduler.turn("served", CHUNK):
        time.sleep(0.02)
    wait = scheduler.ahead_of("mine")
    assert wait.requests_ahead == 1           # "early" comes first; "served" has had a chunk: after "mine"
    assert wait.seconds > 0
    with scheduler.turn("early", CHUNK):
        pass
    assert scheduler.ahead_of("mine").requests_ahead == 0
    assert scheduler.has_served("early") and not scheduler.has_served("mine")


def test_background_waits_while_a_visitors_request_is_live_even_between_its_turns() -> None:
    scheduler = NetworkScheduler(slots=2)
    with scheduler.turn("visitor", GRADIENT):   # a visitor's request has begun; no turn of it runs now
        pass
    assert scheduler.requests() == 1
    ran = threading.Event()

    def background() -> None:
        with scheduler.turn("examples", BACKGROUND):
            ran.set()
        scheduler.done("examples")

    thread = threading.Thread(target=background)
    thread.start()
    assert not ran.wait(0.3)                    # two free slots, yet the background turn waits
    assert scheduler.ahead_of("visitor").requests_ahead == 0   # and is never counted ahead of a visitor
    scheduler.done("visitor")                   # the visitor's request ended
    assert ran.wait(5)
    thread.join(5)
    assert scheduler.requests() == 0
