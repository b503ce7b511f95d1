"""`@remote` and `Function`: a Python function that can also run on the platform."""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any, Generic, ParamSpec, TypeVar, overload

from podfn import serialization, spec
from podfn.call import FIRST_WAIT_SECONDS, Call, default_client, outcome
from podfn.errors import PodfnError
from podfn.http import APIClient, AsyncAPIClient, Submitted
from podfn.interrupt import cancelling_on_interrupt
from podfn.settings import Settings

log = logging.getLogger("podfn")

P = ParamSpec("P")
R = TypeVar("R")

# Calls per submit request in `map`: big enough to amortise HTTP, small enough
# that one request stays well under the API's size limit for small arguments.
MAP_BATCH = 256
# Room left in a request for each frame's length prefix and frame 0 (`meta`).
_PART_OVERHEAD = 256
_REQUEST_SLACK = 64 * 1024
# Ids one `wait` may name (the API's limit per request); a bigger map waits on the
# earliest pending ones first.
MAX_WAIT_IDS = 10_000
# A map's wait asks the API to go on waiting this long (s) for more of its calls once
# one has finished (until all have): calls that finish one by one (a process each)
# then come several to a request. A cold map of 300 cost the API, its Postgres
# backends and the client ~3.4 ms of CPU per call at one result per wait.
GATHER_LINGER = 0.02


def batches(blobs: Iterable[bytes], *, max_count: int, max_bytes: int) -> Iterator[list[bytes]]:
    """Group argument blobs so each batch holds at most `max_count` and (with framing)
    at most `max_bytes`; a blob bigger than `max_bytes` alone goes alone (and the API
    will say it is too large)."""
    batch: list[bytes] = []
    size = 0
    for blob in blobs:
        cost = len(blob) + _PART_OVERHEAD
        if batch and (len(batch) >= max_count or size + cost > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(blob)
        size += cost
    if batch:
        yield batch


class _Remote(Generic[P, R]):
    """What every remote function offers: spawn, remote, map, starmap."""

    name: str
    _client: APIClient | None

    @property
    def client(self) -> APIClient:
        return self._client or default_client()

    def _prepare(self) -> Any:
        """Work done once per spawn or map (e.g. pickling the function)."""
        return None

    def _prepared_size(self, prepared: Any) -> int:
        return len(prepared) if isinstance(prepared, bytes) else 0

    def _submit(self, arg_blobs: list[bytes], prepared: Any) -> list[str]:
        return self._submit_waiting(arg_blobs, prepared).ids

    def _submit_waiting(self, arg_blobs: list[bytes], prepared: Any, *,
                        wait: float | None = None, key: str | None = None) -> Submitted:
        """Submit, and with `wait`, wait in the same request (APIClient.submit_waiting).
        The one submission each kind of remote function defines (with its `_aio` twin);
        a plain submit is this without `wait`."""
        raise NotImplementedError

    def _cancel_many(self, ids: list[str]) -> int:
        return int(self.client.cancel_many(ids=ids)["count"])

    @property
    def spawn(self) -> _Spawn[P]:
        """Submit one call and return its handle without waiting: `f.spawn(x)`, or
        `await f.spawn.aio(x)`. Ctrl-C leaves it running (that is what spawn is for)."""
        return _Spawn(self)

    @property
    def remote(self) -> _RemoteCall[P, R]:
        """Run on the platform and return the result, or raise the remote exception:
        `f.remote(x)`, or `await f.remote.aio(x)` in an event loop.

        Ctrl-C while waiting (or cancelling the awaiting task) cancels the call.
        """
        return _RemoteCall(self)

    async def _submit_aio(self, client: AsyncAPIClient, arg_blobs: list[bytes],
                          prepared: Any) -> list[str]:
        return (await self._submit_waiting_aio(client, arg_blobs, prepared)).ids

    def _submit_waiting_aio(self, client: AsyncAPIClient, arg_blobs: list[bytes], prepared: Any,
                            *, wait: float | None = None,
                            key: str | None = None) -> Awaitable[Submitted]:
        raise NotImplementedError

    def remote_gen(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        """For a generator function (or an async one): run it on the platform and iterate
        what it yields, each item as soon as the call produced it, in order; then raise
        the remote exception if it failed. Ctrl-C, or leaving the loop early, cancels
        the call."""
        call = self.spawn(*args, **kwargs)
        finished = False
        try:
            with cancelling_on_interrupt(self._cancel_many, [call.id]):
                yield from call.items()
            finished = True
        finally:
            if not finished:
                with contextlib.suppress(PodfnError):
                    self._cancel_many([call.id])

    def map(self, *iterables: Iterable[Any], kwargs: dict[str, Any] | None = None,
            return_exceptions: bool = False, order_outputs: bool = True) -> Iterator[Any]:
        """Run once per element (zip of `iterables`), yielding results as they come.

        `kwargs` are passed to every call. Calls are submitted in batches
        bounded by count and by bytes (PODFN_MAX_REQUEST_BYTES); if a batch
        cannot be submitted, the calls already submitted are cancelled and the
        error is raised. With `return_exceptions`, a failed call yields its
        exception instead of raising it; `order_outputs=False` yields in
        completion order. Ctrl-C cancels every call this map submitted.
        """
        return self.starmap(zip(*iterables, strict=False), kwargs=kwargs,
                            return_exceptions=return_exceptions, order_outputs=order_outputs)

    def starmap(self, arg_tuples: Iterable[Iterable[Any]], *,
                kwargs: dict[str, Any] | None = None, return_exceptions: bool = False,
                order_outputs: bool = True) -> Iterator[Any]:
        """Like `map`, but each element is the tuple of one call's positional arguments."""
        extra = dict(kwargs or {})
        prepared = self._prepare()
        blobs = (serialization.dumps((tuple(args), extra)) for args in arg_tuples)
        budget = (Settings.from_env().max_request_bytes - self._prepared_size(prepared)
                  - _REQUEST_SLACK)
        ids: list[str] = []
        with cancelling_on_interrupt(self._cancel_many, ids):
            try:
                for batch in batches(blobs, max_count=MAP_BATCH, max_bytes=budget):
                    ids += self._submit(batch, prepared)
            except PodfnError as exc:
                if ids:
                    cancelled = self._cancel_many(ids)
                    exc.add_note(f"podfn: {self.name}.map could not submit all its calls; "
                                 f"cancelled the {cancelled} it had submitted")
                raise
        return self._gather(ids, return_exceptions=return_exceptions, ordered=order_outputs)

    def _gather(self, ids: list[str], *, return_exceptions: bool,
                ordered: bool) -> Iterator[Any]:
        from tqdm import tqdm  # imported when first needed: it is slow to import

        # One client for the whole map: `self.client` reads the settings each time.
        client = self.client
        position = {call_id: i for i, call_id in enumerate(ids)}
        pending = set(ids)
        done: dict[int, dict[str, Any]] = {}
        next_index = 0
        bar = tqdm(total=len(ids), desc=self.name.rsplit(".", 1)[-1], unit="call",
                   disable=not sys.stderr.isatty(), leave=False)
        try:
            while pending:
                # Each round trip brings every finished call it can, results included as
                # raw bytes (podfn/frames.py), in whatever order they finished.
                waiting_on = sorted(pending, key=position.__getitem__)[:MAX_WAIT_IDS]
                with cancelling_on_interrupt(self._cancel_many, pending):
                    finished = client.wait(waiting_on, 30.0, linger=GATHER_LINGER)
                for call in finished:
                    pending.discard(call["id"])
                    done[position[call["id"]]] = call
                    bar.update(1)
                if ordered:
                    while next_index in done:
                        yield self._value(done.pop(next_index), client, return_exceptions)
                        next_index += 1
                else:
                    for index in sorted(done):
                        yield self._value(done.pop(index), client, return_exceptions)
        finally:
            bar.close()

    @staticmethod
    def _value(call: dict[str, Any], client: APIClient, return_exceptions: bool) -> Any:
        try:
            return outcome(call, client)
        except Exception as exc:
            if return_exceptions:
                return exc
            raise


class _Spawn(Generic[P]):
    def __init__(self, fn: _Remote[P, Any]) -> None:
        self._fn = fn

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Call:
        fn = self._fn
        [call_id] = fn._submit([serialization.dumps((args, kwargs))], fn._prepare())
        return Call(call_id, client=fn._client)

    async def aio(self, *args: P.args, **kwargs: P.kwargs) -> Call:
        fn = self._fn
        blob, prepared = serialization.dumps((args, kwargs)), fn._prepare()
        async with AsyncAPIClient.like(fn.client) as client:
            [call_id] = await fn._submit_aio(client, [blob], prepared)
        return Call(call_id, client=fn._client)


class _RemoteCall(Generic[P, R]):
    def __init__(self, fn: _Remote[P, R]) -> None:
        self._fn = fn

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Submit and wait in one request (issue 12); if the call takes longer than that
        request waits, wait for it as `Call.result` does.

        Ctrl-C during the first request, before the call's id is known, sends the
        submission again with its Idempotency-Key and without waiting: that names
        the call it made (or makes it), which is then cancelled.
        """
        fn = self._fn
        blob, prepared = serialization.dumps((args, kwargs)), fn._prepare()
        client, key = fn.client, uuid.uuid4().hex
        try:
            submitted = fn._submit_waiting([blob], prepared, wait=FIRST_WAIT_SECONDS, key=key)
        except KeyboardInterrupt:
            with cancelling_on_interrupt(fn._cancel_many,
                                         _replayed_ids(fn, blob, prepared, key)):
                raise
        if submitted.finished:
            return outcome(submitted.finished[0], client)  # type: ignore[no-any-return]
        with cancelling_on_interrupt(fn._cancel_many, submitted.ids):
            return Call(submitted.ids[0], client=fn._client).result()  # type: ignore[no-any-return]

    async def aio(self, *args: P.args, **kwargs: P.kwargs) -> R:
        import asyncio

        fn = self._fn
        blob, prepared = serialization.dumps((args, kwargs)), fn._prepare()
        key = uuid.uuid4().hex
        async with AsyncAPIClient.like(fn.client) as client:
            try:
                submitted = await fn._submit_waiting_aio(client, [blob], prepared,
                                                         wait=FIRST_WAIT_SECONDS, key=key)
            except asyncio.CancelledError:  # before the id is known: learn it, as above
                with contextlib.suppress(PodfnError):
                    again = await fn._submit_waiting_aio(client, [blob], prepared, key=key)
                    await client.cancel_many(ids=again.ids)
                raise
            try:
                if submitted.finished:
                    return outcome(await client.complete(submitted.finished[0]),  # type: ignore[no-any-return]
                                   None)
                return await Call(submitted.ids[0], client=fn._client).result.aio(  # type: ignore[no-any-return]
                    client=client)
            except asyncio.CancelledError:  # the awaiting task was cancelled (or Ctrl-C)
                with contextlib.suppress(PodfnError):
                    await client.cancel_many(ids=submitted.ids)
                raise


def _replayed_ids(fn: _Remote[Any, Any], blob: bytes, prepared: Any, key: str) -> list[str]:
    """The ids of the calls an interrupted submission made, from its replay (none if the
    platform cannot be asked)."""
    try:
        return fn._submit_waiting([blob], prepared, key=key).ids
    except PodfnError:
        return []


class Function(_Remote[P, R]):
    """A function with platform hints. Calling it runs it here; `.remote` runs it there."""

    def __init__(self, fn: Callable[P, R], hints: dict[str, Any], *, name: str | None = None,
                 client: APIClient | None = None) -> None:
        self.fn = fn
        # One naming rule: a call is recorded under the name a deploy would use (the
        # function's own, or @remote(name=...)), so `podfn calls --function add` finds
        # the `.remote` calls and the deployed ones alike.
        self.name = self.deploy_name = name or fn.__name__
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

    def _submit_waiting(self, arg_blobs: list[bytes], prepared: Any, *,
                        wait: float | None = None, key: str | None = None) -> Submitted:
        return self.client.submit_waiting(
            function_name=self.name, function=prepared, args=arg_blobs, spec=self.hints,
            versions=serialization.client_versions(), wait=wait, key=key)

    def _submit_waiting_aio(self, client: AsyncAPIClient, arg_blobs: list[bytes], prepared: Any,
                            *, wait: float | None = None,
                            key: str | None = None) -> Awaitable[Submitted]:
        return client.submit_waiting(
            function_name=self.name, function=prepared, args=arg_blobs, spec=self.hints,
            versions=serialization.client_versions(), wait=wait, key=key)

    def deploy(self) -> dict[str, Any]:
        """Register this function (pickled by value) under `deploy_name`: a new live
        version, unless code and hints equal the live version's (`unchanged` in the answer)."""
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

    def _submit_waiting(self, arg_blobs: list[bytes], prepared: Any, *,
                        wait: float | None = None, key: str | None = None) -> Submitted:
        return self.client.submit_deployed_waiting(
            self.name, args=arg_blobs, spec=self.overrides,
            versions=serialization.client_versions(), wait=wait, key=key)

    def _submit_waiting_aio(self, client: AsyncAPIClient, arg_blobs: list[bytes], prepared: Any,
                            *, wait: float | None = None,
                            key: str | None = None) -> Awaitable[Submitted]:
        return client.submit_deployed_waiting(
            self.name, args=arg_blobs, spec=self.overrides,
            versions=serialization.client_versions(), wait=wait, key=key)


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
