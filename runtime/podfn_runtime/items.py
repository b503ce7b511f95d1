"""Generator functions: each item stored as it is produced, in order.

A call whose function returns a generator (or an async generator) is drained
here; every item is pickled and stored through the protocol's `yield_item`
(migration 0007) before the generator is asked for the next one, so a client
iterating `f.remote_gen(...)` sees it while the call still runs. Items are
stored by index, and storing an index twice changes nothing: a retried write
or a retried attempt never shows a reader an item twice. The call's result is
the number of items yielded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import cloudpickle

from podfn_runtime.database import RuntimeDatabase

OnItem = Callable[[int, Any], None]


class ItemTooLarge(ValueError):
    """An item pickled larger than the platform stores."""


def drain(generator: Iterator[Any], on_item: OnItem) -> int:
    count = 0
    for item in generator:
        on_item(count, item)
        count += 1
    return count


async def drain_async(generator: AsyncIterator[Any], on_item: OnItem) -> int:
    count = 0
    async for item in generator:
        on_item(count, item)
        count += 1
    return count


def pickled(index: int, item: Any, limit: int) -> bytes:
    """Item `index` pickled, if the platform stores that much."""
    data: bytes = cloudpickle.dumps(item)
    if len(data) > limit:
        raise ItemTooLarge(
            f"item {index} is {len(data)} bytes pickled, more than the platform's limit "
            f"of {limit} bytes (PODFN_MAX_RESULT_BYTES); yield something smaller")
    return data


class ItemWriter:
    """`on_item` for `execute`: pickle and store one item (retried like every write)."""

    def __init__(self, db: RuntimeDatabase, call_id: str, attempt: int, limit: int) -> None:
        self._db = db
        self._call_id = call_id
        self._attempt = attempt
        self._limit = limit
        self.stale = False

    @property
    def limit(self) -> int:
        return self._limit

    def __call__(self, index: int, item: Any) -> None:
        self.store(index, pickled(index, item, self._limit))

    def store(self, index: int, data: bytes) -> None:
        """Store item `index`, pickled already (a forked call's child pickles it)."""
        if self.stale:
            return
        written = self._db.transition("yield_item", id=self._call_id, attempt=self._attempt,
                                      index=index, data=data)
        if written is None:
            self.stale = True  # the call moved on; the outcome write will say so
