"""`@remote` and `Function`: a Python function that can also run on the platform."""

from __future__ import annotations

import functools
import itertools
import logging
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, ParamSpec, TypeVar, overload

from tqdm import tqdm

from podfn import serialization, spec
from podfn.call import Call, default_client, outcome
from podfn.http import APIClient

log = logging.getLogger("podfn")

P = ParamSpec("P")
R = TypeVar("R")

# Calls per submit request in `map`: big enough to amortise HTTP, small enough
# that one request stays well under the API's size limit for small arguments.
MAP_BATCH = 256


class Function(Generic[P, R]):
    """A function with platform hints. Calling it runs it here; `.remote` runs it there."""

    def __init__(self, fn: Callable[P, R], hints: dict[str, Any], *, name: str | None = None,
                 client: APIClient | None = None) -> None:
        self.fn = fn
        self.name = name or f"{fn.__module__}.{fn.__qualname__}"
        self.hints = spec.validate(hints)
        self._given = dict(hints)
        self._client = client
        functools.update_wrapper(self, fn)

    def __repr__(self) -> str:
        return f"<podfn.Function {self.name}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    @property
    def client(self) -> APIClient:
        return self._client or default_client()

    def options(self, **hints: Any) -> Function[P, R]:
        """A copy with some hints overridden, e.g. `f.options(memory="8Gi").remote(x)`."""
        return Function(self.fn, {**self._given, **hints}, name=self.name, client=self._client)

    def _submit(self, arg_blobs: list[bytes], function: bytes | None = None) -> list[str]:
        return self.client.submit(
            function_name=self.name,
            function=function if function is not None else serialization.dumps(self.fn),
            args=arg_blobs,
            spec=self.hints,
            versions=serialization.client_versions(),
        )

    def spawn(self, *args: P.args, **kwargs: P.kwargs) -> Call:
        """Submit one call and return its handle without waiting."""
        [call_id] = self._submit([serialization.dumps((args, kwargs))])
        return Call(call_id, client=self._client)

    def remote(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run on the platform and return the result, or raise the remote exception."""
        return self.spawn(*args, **kwargs).result()  # type: ignore[no-any-return]

    def map(self, *iterables: Iterable[Any], return_exceptions: bool = False,
            order_outputs: bool = True) -> Iterator[Any]:
        """Run once per element (zip of `iterables`), yielding results as they come.

        Calls are submitted in batches. With `return_exceptions`, a failed
        call yields its exception instead of raising it; `order_outputs=False`
        yields in completion order.
        """
        function = serialization.dumps(self.fn)
        ids: list[str] = []
        inputs = zip(*iterables, strict=False)
        while batch := list(itertools.islice(inputs, MAP_BATCH)):
            ids += self._submit([serialization.dumps((args, {})) for args in batch], function)
        return self._gather(ids, return_exceptions=return_exceptions, ordered=order_outputs)

    def _gather(self, ids: list[str], *, return_exceptions: bool,
                ordered: bool) -> Iterator[Any]:
        position = {call_id: i for i, call_id in enumerate(ids)}
        pending = set(ids)
        done: dict[int, dict[str, Any]] = {}
        next_index = 0
        bar = tqdm(total=len(ids), desc=self.name.rsplit(".", 1)[-1], unit="call",
                   disable=not sys.stderr.isatty(), leave=False)
        try:
            while pending:
                for call in self.client.wait(sorted(pending, key=position.__getitem__), 30.0):
                    pending.discard(call["id"])
                    done[position[call["id"]]] = call
                    bar.update(1)
                if ordered:
                    while next_index in done:
                        yield self._value(done.pop(next_index), return_exceptions)
                        next_index += 1
                else:
                    for index in sorted(done):
                        yield self._value(done.pop(index), return_exceptions)
        finally:
            bar.close()

    @staticmethod
    def _value(call: dict[str, Any], return_exceptions: bool) -> Any:
        try:
            return outcome(call)
        except Exception as exc:
            if return_exceptions:
                return exc
            raise


@overload
def remote(fn: Callable[P, R], /) -> Function[P, R]: ...
@overload
def remote(*, name: str | None = None, **hints: Any) -> Callable[[Callable[P, R]], Function[P, R]]: ...


def remote(fn: Callable[P, R] | None = None, /, *, name: str | None = None,
           **hints: Any) -> Function[P, R] | Callable[[Callable[P, R]], Function[P, R]]:
    """Mark a function to run on the platform: `@remote` or `@remote(cpu="2", memory="4Gi")`.

    Hints: cpu, memory, gpu, image, env, timeout (s), retries, retry_backoff (s),
    node_selector, tolerations, labels, annotations, service_account, pod_patch.
    A malformed hint raises InvalidSpec here, naming it.
    """
    if fn is not None:
        return Function(fn, hints, name=name)

    def decorate(f: Callable[P, R]) -> Function[P, R]:
        return Function(f, hints, name=name)

    return decorate
