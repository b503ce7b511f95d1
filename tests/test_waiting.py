"""The API's waits: how a wait lingers for more of its calls (api/waiting.py, issue 12).

A map's gather asks each wait to linger: once one of its calls has finished,
the wait goes on for up to `linger` seconds, or until every call it waits for
has been announced finished, and then looks again. Driven here by the
announcements themselves (FinishWaiter._notified, what the LISTEN connection
calls), without a database.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from podfn_platform.api.waiting import FinishWaiter, Watch


class _Listening:
    connected = threading.Event()
    connected.set()


def _watch(ids: list[str]) -> tuple[FinishWaiter, Watch]:
    waiter = FinishWaiter(db=None)  # type: ignore[arg-type]
    watch = Watch(waiter, _Listening())  # type: ignore[arg-type]
    watch.add(ids)
    return waiter, watch


def _looks(*answers: list[str], during: Callable[[int], None] = lambda _: None
           ) -> tuple[Callable[[], list[str]], list[int]]:
    """A fetch that answers `answers` in turn (then the last one again); `during(n)` runs
    inside look n, as if calls finished right after the look read the database."""
    looks: list[int] = []

    def fetch() -> list[str]:
        looks.append(len(looks))
        during(len(looks) - 1)
        return answers[min(len(looks) - 1, len(answers) - 1)]
    return fetch, looks


def _in_first_look(announce: Callable[[str, str], None], channel: str,
                   call_id: str) -> Callable[[int], None]:
    """A `during` for `_looks`: `call_id` announced on `channel` inside the first look."""
    return lambda look: announce(channel, call_id) if look == 0 else None


def test_a_lingering_wait_looks_again_as_soon_as_every_other_call_is_announced() -> None:
    waiter, watch = _watch(["a", "b", "c"])

    def finish_the_others(look: int) -> None:
        if look == 0:
            waiter._notified("podfn_final", "b")
            waiter._notified("podfn_final", "c")

    fetch, looks = _looks(["a"], ["a", "b", "c"], during=finish_the_others)
    # 600 s of linger: returning at all (pytest's timeout is 120 s) shows it did not wait
    # for the time to be up.
    assert watch.wait(600, fetch, linger=600, id_of=str) == ["a", "b", "c"]
    assert looks == [0, 1]


def test_a_lingering_wait_with_nothing_more_announced_answers_its_first_look() -> None:
    _, watch = _watch(["a", "b"])
    fetch, looks = _looks(["a"], ["a", "b"])
    assert watch.wait(60, fetch, linger=0.05, id_of=str) == ["a"]
    assert looks == [0]


def test_a_lingering_wait_looks_again_when_its_time_is_up_if_more_was_announced() -> None:
    waiter, watch = _watch(["a", "b", "c"])
    fetch, looks = _looks(["a"], ["a", "b"],
                          during=_in_first_look(waiter._notified, "podfn_final", "b"))
    assert watch.wait(60, fetch, linger=0.05, id_of=str) == ["a", "b"]
    assert looks == [0, 1]


def test_without_linger_a_wait_answers_its_first_look_that_found_something() -> None:
    waiter, watch = _watch(["a", "b"])
    fetch, looks = _looks(["a"], ["a", "b"],
                          during=_in_first_look(waiter._notified, "podfn_final", "b"))
    assert watch.wait(60, fetch) == ["a"]
    assert looks == [0]


def test_a_wait_whose_calls_have_all_finished_does_not_linger() -> None:
    _, watch = _watch(["a", "b"])
    fetch, looks = _looks(["a", "b"])
    assert watch.wait(600, fetch, linger=600, id_of=str) == ["a", "b"]
    assert looks == [0]


def test_a_draining_process_does_not_linger() -> None:
    waiter, watch = _watch(["a", "b"])
    fetch, looks = _looks(["a"], ["a", "b"], during=lambda n: waiter.drain() if n == 0 else None)
    assert watch.wait(600, fetch, linger=600, id_of=str) == ["a"]
    assert looks == [0]


def test_a_running_calls_output_is_not_taken_for_its_finish() -> None:
    """podfn_output wakes a wait (a call printed) but is no finish: the linger goes on."""
    waiter, watch = _watch(["a", "b"])
    fetch, looks = _looks(["a"], ["a", "b"],
                          during=_in_first_look(waiter._notified, "podfn_output", "b"))
    assert watch.wait(60, fetch, linger=0.05, id_of=str) == ["a"]
    assert looks == [0]


def test_a_wait_for_the_same_id_twice_stops_lingering_when_it_is_announced() -> None:
    waiter, watch = _watch(["a", "b", "b"])
    fetch, looks = _looks(["a"], ["a", "b"],
                          during=_in_first_look(waiter._notified, "podfn_final", "b"))
    assert watch.wait(600, fetch, linger=600, id_of=str) == ["a", "b"]
    assert looks == [0, 1]


def test_a_drain_while_lingering_ends_the_wait() -> None:
    waiter, watch = _watch(["a", "b"])
    drainer = threading.Timer(0.05, waiter.drain)  # once the linger has begun
    fetch, looks = _looks(["a"], ["a", "b"], during=lambda n: drainer.start() if n == 0 else None)
    try:
        assert watch.wait(600, fetch, linger=600, id_of=str) == ["a"]
    finally:
        drainer.join()
    assert looks == [0]


def test_no_linger_while_the_listener_is_down() -> None:
    waiter = FinishWaiter(db=None)  # type: ignore[arg-type]

    class Down:
        connected = threading.Event()

    watch = Watch(waiter, Down())  # type: ignore[arg-type]
    watch.add(["a", "b"])
    fetch, looks = _looks(["a"], ["a", "b"])
    assert watch.wait(600, fetch, linger=600, id_of=str) == ["a"]
    assert looks == [0]
