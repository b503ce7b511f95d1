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


class _Remote(Generic[P, R]):
    """What every remote function offers: spawn, remote, map."""

    name: str
    _client: APIClient | None

    @property
    def client(self) -> APIClient:
        return self._client or default_client()

    def _prepare(self) -> Any:
        """Work done once per spawn or map (e.g. pickling the function)."""
        return None

    def _submit(self, arg_blobs: list[bytes], prepared: Any) -> list[str]:
        raise NotImplementedError

    def spawn(self, *args: P.args, **kwargs: P.kwargs) -> Call:
        """Submit one call and return its handle without waiting."""
        [call_id] = self._submit([serialization.dumps((args, kwargs))], self._prepare())
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
        prepared = self._prepare()
        ids: list[str] = []
        inputs = zip(*iterables, strict=False)
        while batch := list(itertools.islice(inputs, MAP_BATCH)):
            ids += self._submit([serialization.dumps((args, {})) for args in batch], prepared)
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


class Function(_Remote[P, R]):
    """A function with platform hints. Calling it runs it here; `.remote` runs it there."""

    def __init__(self, fn: Callable[P, R], hints: dict[str, Any], *, name: str | None = None,
                 client: APIClient | None = None) -> None:
        self.fn = fn
        self.name = name or f"{fn.__module__}.{fn.__qualname__}"
        self.deploy_name = name or fn.__name__
        self.hints = spec.validate(hints)
        self._given = dict(hints)
        self._explicit_name = name
        self._client = client
        functools.update_wrapper(self, fn)

    def __repr__(self) -> str:
        return f"<podfn.Function {self.name}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    @staticmethod
    def lookup(name: str, *, client: APIClient | None = None) -> DeployedFunction:
        """A deployed function by name: `podfn.Function.lookup("add").remote(1, 2)`."""
        info = (client or default_client()).function(name)
        return DeployedFunction(info["name"], info["spec"], client=client)

    def options(self, **hints: Any) -> Function[P, R]:
        """A copy with some hints overridden, e.g. `f.options(memory="8Gi").remote(x)`."""
        return Function(self.fn, {**self._given, **hints}, name=self._explicit_name,
                        client=self._client)

    def _prepare(self) -> bytes:
        return serialization.dumps(self.fn)

    def _submit(self, arg_blobs: list[bytes], prepared: Any) -> list[str]:
        return self.client.submit(function_name=self.name, function=prepared, args=arg_blobs,
                                  spec=self.hints, versions=serialization.client_versions())

    def deploy(self) -> dict[str, Any]:
        """Register this function (pickled by value) under `deploy_name`; a new version."""
        return self.client.deploy(name=self.deploy_name, function=self._prepare(),
                                  spec=self.hints, versions=serialization.client_versions())


class DeployedFunction(_Remote[..., Any]):
    """A function deployed on the platform, called by name; runs its live version."""

    def __init__(self, name: str, deployed_hints: dict[str, Any], *,
                 overrides: dict[str, Any] | None = None,
                 client: APIClient | None = None) -> None:
        self.name = name
        self.overrides = dict(overrides or {})
        # The API shows a spec's `env` as `env_names` (never values): keep the hints only.
        known = {k: v for k, v in deployed_hints.items() if k in spec.DEFAULTS}
        self.hints = spec.validate({**known, **self.overrides})
        self._deployed_hints = deployed_hints
        self._client = client

    def __repr__(self) -> str:
        return f"<podfn.DeployedFunction {self.name}>"

    def options(self, **hints: Any) -> DeployedFunction:
        return DeployedFunction(self.name, self._deployed_hints,
                                overrides={**self.overrides, **hints}, client=self._client)

    def _submit(self, arg_blobs: list[bytes], prepared: Any) -> list[str]:
        return self.client.submit_deployed(self.name, args=arg_blobs, spec=self.overrides,
                                           versions=serialization.client_versions())


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
