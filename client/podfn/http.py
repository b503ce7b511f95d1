"""The client's one connection to the podfn API (`APIClient`, and `AsyncAPIClient` for asyncio).

Every transport or HTTP error becomes a podfn error here, with the URL and a
next step, so the rest of the client never sees httpx or http.client (the
submissions and waits go over http.client's kept-alive connections,
podfn/transport.py, the rest over httpx). httpx is imported on
first use, not with `import podfn`: it is about half of podfn's import time,
which `podfn --help` and scripts that never reach the platform should not pay.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

from podfn import frames, transport
from podfn.errors import NotAuthorized, NotFound, PlatformError, PlatformUnreachable
from podfn.settings import Settings

if TYPE_CHECKING:
    import ssl

    import httpx

# Seconds the server may hold a long-poll beyond what we asked for before we
# call the connection dead.
_WAIT_SLACK = 15.0
_RETRIES = 4  # for requests that are safe to repeat
T = TypeVar("T")
# `wait` and a waiting submission ask for finished calls with their payloads as raw
# bytes (podfn/frames.py); an API that does not know the framing answers JSON, which is
# read as before.
_WAIT_ACCEPT = f"{frames.MEDIA_TYPE}, application/json;q=0.5"
# A submission's payloads are handed to httpx in pieces of at most this size (see
# _framed_submission).
SEND_STEP = 1024 * 1024
# Body pieces smaller than this are joined into one (see _framed_submission).
JOIN_BYTES = 64 * 1024


class APIClient:
    def __init__(self, url: str, token: str | None, *, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        import httpx

        self._http = httpx.Client(base_url=self.url, headers=_headers(token), timeout=timeout,
                                  verify=_tls())
        self._timeout = timeout
        # Submissions and `wait` go over these (podfn/transport.py says when they do not).
        self._direct = transport.Connections(self.url, _headers(token), _tls) \
            if transport.direct(self.url) else None

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> APIClient:
        url, token = (settings or Settings.from_env()).platform()
        return cls(url, token)

    def close(self) -> None:
        self._http.close()
        if self._direct is not None:
            self._direct.close()

    def __enter__(self) -> APIClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, *, timeout: float | None = None,
                 **kwargs: Any) -> Any:
        import httpx

        try:
            response = self._http.request(
                method, path, timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
                **kwargs,
            )
        except httpx.TransportError as exc:
            raise _unreachable(self.url, exc) from exc
        if response.status_code >= 400:
            raise _error_from(response)
        return response.json()

    def _idempotent(self, request: Any) -> Any:
        """Run a request that is safe to repeat, retrying transport errors and 5xx
        (an API restarting, a long-poll cut by a rolling update) with backoff."""
        for attempt in range(_RETRIES):
            try:
                return request()
            except PlatformError as exc:
                retryable = isinstance(exc, PlatformUnreachable) or (exc.status or 0) >= 500
                if not retryable or attempt == _RETRIES - 1:
                    raise
                time.sleep(0.2 * 2**attempt)
        raise AssertionError("unreachable")

    def _submit_once(self, path: str, meta: dict[str, Any], parts: list[tuple[str, bytes]], *,
                     wait: float | None = None, key: str | None = None) -> Submitted:
        """POST a framed submission; retried on transport errors and 5xx with one
        Idempotency-Key, so a retry can never create the calls twice. With `wait`, the
        same request waits for the calls (see `submit_waiting`); without, the answer is
        JSON (`_submitted_json` reads it)."""
        request = _submit_request(meta, parts, wait, key)
        return self._post_streamed(path, request, _submitted_frames, _submitted_json)

    def _post_streamed(self, path: str, request: dict[str, Any],
                       from_frames: Callable[[list[bytearray]], T],
                       from_json: Callable[[Any], T]) -> T:
        """POST and read the answer as it streams in: frames (filled in place) or JSON,
        each made into what the caller wants; retried as `_idempotent` says (the
        request must be safe to send again: a wait, or a submission with its key)."""
        import httpx

        if self._direct is not None:
            return self._idempotent(  # type: ignore[no-any-return]
                lambda: self._post_direct(path, request, from_frames, from_json))

        def fetch() -> T:
            try:
                with self._http.stream("POST", path, **request) as response:
                    if response.status_code >= 400:
                        response.read()
                        raise _error_from(response)
                    if _framed(response):
                        return from_frames(frames.decode(response.iter_bytes()))
                    return from_json(json.loads(response.read()))
            except (httpx.TransportError, frames.FramingError) as exc:
                raise _lost(self.url, path, exc) from exc
        return self._idempotent(fetch)  # type: ignore[no-any-return]

    def _post_direct(self, path: str, request: dict[str, Any],
                     from_frames: Callable[[list[bytearray]], T],
                     from_json: Callable[[Any], T]) -> T:
        """`_post_streamed`'s one try over the kept-alive connections (podfn/transport.py)."""
        assert self._direct is not None
        headers = dict(request.get("headers") or {})
        if "json" in request:
            body: list[bytes | memoryview] = [json.dumps(request["json"]).encode()]
            headers["Content-Type"] = "application/json"
        else:
            body = list(request["content"])
        try:
            with self._direct.post(path, params=request.get("params"), headers=headers,
                                   body=body, timeout=request.get("timeout", self._timeout),
                                   ) as reply:
                if reply.status >= 400:
                    raise _error(reply.status, reply.reason, reply.read(), self.url + path)
                if reply.content_type.startswith(frames.MEDIA_TYPE):
                    return from_frames(frames.decode(reply.pieces()))
                try:
                    answer = json.loads(reply.read())
                except ValueError as exc:  # garbled on its way: asked again
                    raise transport.TransportError(f"an answer that is not JSON ({exc})") \
                        from exc
                return from_json(answer)
        except (transport.TransportError, frames.FramingError) as exc:
            raise _lost(self.url, path, exc) from exc

    def submit(self, *, function_name: str, function: bytes, args: Sequence[bytes],
               spec: dict[str, Any], versions: dict[str, str]) -> list[str]:
        """Record one call per element of `args`, all running `function`; their ids."""
        return self.submit_waiting(function_name=function_name, function=function, args=args,
                                   spec=spec, versions=versions).ids

    def submit_waiting(self, *, function_name: str, function: bytes, args: Sequence[bytes],
                       spec: dict[str, Any], versions: dict[str, str],
                       wait: float | None = None, key: str | None = None) -> Submitted:
        """`submit`, and with `wait` in the same request: wait up to `wait` s for one of the
        calls to finish (issue 12: `.remote(x)` is one round trip when it finishes in
        time). `key` is the Idempotency-Key (a fresh one by default): the same key again
        gives the same calls, which is how an interrupted caller learns their ids."""
        meta = {"function_name": function_name, "spec": spec, "client": versions}
        return self._submit_once("/v1/calls", meta,
                                 [("function", function), *(("args", a) for a in args)],
                                 wait=wait, key=key)

    def submit_deployed(self, name: str, *, args: Sequence[bytes], spec: dict[str, Any],
                        versions: dict[str, str]) -> list[str]:
        """Calls of a deployed function's live version, with hint overrides."""
        return self.submit_deployed_waiting(name, args=args, spec=spec, versions=versions).ids

    def submit_deployed_waiting(self, name: str, *, args: Sequence[bytes],
                                spec: dict[str, Any], versions: dict[str, str],
                                wait: float | None = None, key: str | None = None) -> Submitted:
        """`submit_deployed`, waiting as `submit_waiting` does."""
        meta = {"spec": spec, "client": versions}
        return self._submit_once(f"/v1/functions/{quote(name, safe='')}/calls", meta,
                                 [("args", a) for a in args], wait=wait, key=key)

    def deploy(self, *, name: str, function: bytes, spec: dict[str, Any],
               versions: dict[str, str]) -> dict[str, Any]:
        meta = {"name": name, "spec": spec, "client": versions}
        files = [("function", ("function", function, "application/octet-stream"))]
        return dict(self._request("POST", "/v1/functions", data={"meta": json.dumps(meta)},
                                  files=files))

    def functions(self) -> list[dict[str, Any]]:
        return list(self._request("GET", "/v1/functions")["functions"])

    def function(self, name: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/v1/functions/{quote(name, safe='')}"))

    def usage(self, last: int) -> list[dict[str, Any]]:
        return list(self._request("GET", "/v1/usage", params={"last": last})["functions"])

    def rollback(self, name: str, version: int | None) -> dict[str, Any]:
        return dict(self._request("POST", f"/v1/functions/{quote(name, safe='')}/rollback",
                                  json={"version": version}))

    def invoke(self, name: str, body: dict[str, Any], wait: float) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body): 200 when finished, 202 while it runs."""
        import httpx

        try:
            response = self._http.post(f"/v1/functions/{quote(name, safe='')}/invoke",
                                       json=body, params={"wait": wait},
                                       timeout=wait + _WAIT_SLACK)
        except httpx.TransportError as exc:
            raise PlatformUnreachable(f"cannot reach the podfn API at {self.url}: {exc}") from exc
        if response.status_code >= 400:
            raise _error_from(response)
        return response.status_code, dict(response.json())

    def create_token(self, name: str, scopes: Sequence[str]) -> dict[str, Any]:
        return dict(self._request("POST", "/v1/tokens", json={"name": name,
                                                               "scopes": list(scopes)}))

    def tokens(self) -> list[dict[str, Any]]:
        return list(self._request("GET", "/v1/tokens")["tokens"])

    def revoke_token(self, ref: str) -> dict[str, Any]:
        return dict(self._request("POST", f"/v1/tokens/{quote(ref, safe='')}/revoke"))

    def get_call(self, call_id: str) -> dict[str, Any]:
        return dict(self._idempotent(lambda: self._request("GET", f"/v1/calls/{call_id}")))

    def wait(self, ids: Sequence[str], wait: float, *, max_bytes: int | None = None,
             linger: float = 0.0) -> list[dict[str, Any]]:
        """Finished calls among `ids`, waiting up to `wait` s for one, with their pickled
        results (`result`) and exceptions (`error.pickle`) as bytes: as many as about
        `max_bytes` of payloads allow (the server's cap by default; at least one); the
        others come in a later call. From an API that answers JSON, only small results
        come along, any other is fetched with `result_bytes`. `linger`: once one has
        finished, the API waits up to that many seconds more for the others (an API
        from before it ignores it)."""
        return self._post_streamed("/v1/calls/wait",
                                   _wait_request(ids, wait, max_bytes, linger),
                                   _from_frames, _calls_json)

    def _download(self, path: str) -> tuple[str, bytes]:
        """GET a streamed body whole: (content type, bytes). A body cut short (the API
        restarting mid-stream) is a transport error, so it is fetched again."""
        import httpx

        def fetch() -> tuple[str, bytes]:
            try:
                with self._http.stream("GET", path) as response:
                    body = response.read()
            except httpx.TransportError as exc:
                raise PlatformUnreachable(
                    f"lost the podfn API at {self.url} while reading {path} "
                    f"({type(exc).__name__}: {exc})") from exc
            if response.status_code >= 400:
                raise _error_from(response)
            return response.headers.get("content-type", ""), body
        return self._idempotent(fetch)  # type: ignore[no-any-return]

    def result_bytes(self, call_id: str) -> bytes:
        """A succeeded call's pickled result, streamed from GET /v1/calls/{id}/result."""
        kind, body = self._download(f"/v1/calls/{quote(call_id, safe='')}/result")
        if not kind.startswith("application/octet-stream"):
            raise PlatformError(f"call {call_id} has no pickled result (the API answered "
                                f"{kind or 'without a content type'})")
        return body

    def result_value(self, call_id: str) -> Any:
        """A succeeded HTTP invoke's JSON value, from GET /v1/calls/{id}/result."""
        _kind, body = self._download(f"/v1/calls/{quote(call_id, safe='')}/result")
        return json.loads(body)["value"]

    def error_bytes(self, call_id: str) -> bytes:
        """A failed call's pickled exception, streamed from GET /v1/calls/{id}/error."""
        return self._download(f"/v1/calls/{quote(call_id, safe='')}/error")[1]

    def cancel(self, call_id: str) -> dict[str, Any]:
        return dict(self._request("POST", f"/v1/calls/{call_id}/cancel"))

    def cancel_many(self, *, ids: Sequence[str] | None = None, function: str | None = None,
                    state: str | None = None, mine: bool = False,
                    dry_run: bool = False) -> dict[str, Any]:
        """Cancel calls by ids and/or filters (safe to repeat); `matched` lists them."""
        body: dict[str, Any] = {"mine": mine, "dry_run": dry_run}
        for key, value in (("ids", None if ids is None else list(ids)), ("function", function),
                           ("state", state)):
            if value is not None:
                body[key] = value
        return dict(self._idempotent(lambda: self._request("POST", "/v1/calls/cancel",
                                                           json=body)))

    def logs(self, call_id: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/v1/calls/{call_id}/logs"))

    def logs_from(self, call_id: str, offset: int, *, attempt: int | None = None,
                  wait: float = 0.0) -> dict[str, Any]:
        """The output chunks from `offset` (in the attempt's combined output), waiting up
        to `wait` s for some: {chunks, next_offset, done, attempt, current_attempt, state}."""
        params: dict[str, Any] = {"offset": offset, "wait": wait}
        if attempt is not None:
            params["attempt"] = attempt
        return dict(self._idempotent(lambda: self._request(
            "GET", f"/v1/calls/{call_id}/logs", params=params, timeout=wait + _WAIT_SLACK)))

    def items_from(self, call_id: str, start: int, *, wait: float = 0.0) -> dict[str, Any]:
        """A generator call's items from index `start` (data as pickled bytes), waiting up
        to `wait` s for one: {items, next, done, state}."""
        import httpx

        path = f"/v1/calls/{call_id}/items"

        def fetch() -> dict[str, Any]:
            try:
                response = self._http.get(path, params={"start": start, "wait": wait},
                                          headers={"Accept": _WAIT_ACCEPT},
                                          timeout=wait + _WAIT_SLACK)
                if response.status_code >= 400:
                    raise _error_from(response)
                if not _framed(response):
                    body = dict(response.json())
                    body["items"] = [{**item, "data": base64.b64decode(item["data"])}
                                     for item in body["items"]]
                    return body
                parts = frames.decode([response.content])
                body = frames.header(parts)
                for item in body["items"]:
                    item["data"] = parts[item.pop("data_frame")]
                return body
            except (httpx.TransportError, frames.FramingError) as exc:
                raise _lost(self.url, path, exc) from exc
            except (IndexError, KeyError, TypeError) as exc:
                raise _lost(self.url, path, frames.FramingError(str(exc))) from exc
        return self._idempotent(fetch)  # type: ignore[no-any-return]

    def list_calls(self, **filters: Any) -> list[dict[str, Any]]:
        params = {k: v for k, v in filters.items() if v is not None}
        return list(self._request("GET", "/v1/calls", params=params)["calls"])


class AsyncAPIClient:
    """The asyncio twin of what `.aio` needs from APIClient: submit, wait, cancel.

    Built on httpx.AsyncClient; use it as `async with AsyncAPIClient(url, token)`
    (an async client belongs to one event loop, so `.aio` makes one per operation).
    """

    def __init__(self, url: str, token: str | None, *, timeout: float = 30.0) -> None:
        import httpx

        self.url = url.rstrip("/")
        self._http = httpx.AsyncClient(base_url=self.url, headers=_headers(token),
                                       timeout=timeout, verify=_tls())

    @classmethod
    def like(cls, client: APIClient) -> AsyncAPIClient:
        """An async client for the same platform and token as `client`."""
        return cls(client.url, client.token)

    async def __aenter__(self) -> AsyncAPIClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, *, timeout: float | None = None,
                       **kwargs: Any) -> Any:
        import httpx

        try:
            response = await self._http.request(
                method, path, timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
                **kwargs,
            )
        except httpx.TransportError as exc:
            raise _unreachable(self.url, exc) from exc
        if response.status_code >= 400:
            raise _error_from(response)
        return response.json()

    async def _idempotent(self, request: Callable[[], Awaitable[Any]]) -> Any:
        """As APIClient._idempotent, sleeping in the event loop between tries."""
        import asyncio

        for attempt in range(_RETRIES):
            try:
                return await request()
            except PlatformError as exc:
                retryable = isinstance(exc, PlatformUnreachable) or (exc.status or 0) >= 500
                if not retryable or attempt == _RETRIES - 1:
                    raise
                await asyncio.sleep(0.2 * 2**attempt)
        raise AssertionError("unreachable")

    async def _submit_once(self, path: str, meta: dict[str, Any],
                           parts: list[tuple[str, bytes]], *, wait: float | None = None,
                           key: str | None = None) -> Submitted:
        """As APIClient._submit_once, in the event loop (the body's pieces are streamed
        anew on each try)."""
        request = _submit_request(meta, parts, wait, key)
        pieces = request.pop("content")

        def content() -> dict[str, Any]:  # the body's pieces streamed anew on each try
            async def stream() -> AsyncIterator[bytes]:
                for piece in pieces:
                    yield piece  # (a memoryview: httpx sends any buffer, its hint says bytes)
            return {**request, "content": stream()}

        if wait is None:
            body = await self._idempotent(lambda: self._request("POST", path, **content()))
            return Submitted([c["id"] for c in body["calls"]], [])
        return await self._post_streamed(path, content, _submitted_frames, _submitted_json)

    async def _post_streamed(self, path: str, request: Callable[[], dict[str, Any]],
                             from_frames: Callable[[list[bytearray]], T],
                             from_json: Callable[[Any], T]) -> T:
        """As APIClient._post_streamed, in the event loop; `request` makes each try's
        arguments (an async body cannot be read twice)."""
        import httpx

        async def fetch() -> T:
            try:
                async with self._http.stream("POST", path, **request()) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        raise _error_from(response)
                    if _framed(response):
                        pieces = [piece async for piece in response.aiter_bytes()]
                        return from_frames(frames.decode(pieces))
                    return from_json(json.loads(await response.aread()))
            except (httpx.TransportError, frames.FramingError) as exc:
                raise _lost(self.url, path, exc) from exc
        return await self._idempotent(fetch)  # type: ignore[no-any-return]

    async def submit(self, *, function_name: str, function: bytes, args: Sequence[bytes],
                     spec: dict[str, Any], versions: dict[str, str]) -> list[str]:
        return (await self.submit_waiting(function_name=function_name, function=function,
                                          args=args, spec=spec, versions=versions)).ids

    async def submit_waiting(self, *, function_name: str, function: bytes,
                             args: Sequence[bytes], spec: dict[str, Any],
                             versions: dict[str, str], wait: float | None = None,
                             key: str | None = None) -> Submitted:
        meta = {"function_name": function_name, "spec": spec, "client": versions}
        return await self._submit_once("/v1/calls", meta,
                                       [("function", function), *(("args", a) for a in args)],
                                       wait=wait, key=key)

    async def submit_deployed(self, name: str, *, args: Sequence[bytes], spec: dict[str, Any],
                              versions: dict[str, str]) -> list[str]:
        return (await self.submit_deployed_waiting(name, args=args, spec=spec,
                                                   versions=versions)).ids

    async def submit_deployed_waiting(self, name: str, *, args: Sequence[bytes],
                                      spec: dict[str, Any], versions: dict[str, str],
                                      wait: float | None = None,
                                      key: str | None = None) -> Submitted:
        meta = {"spec": spec, "client": versions}
        return await self._submit_once(f"/v1/functions/{quote(name, safe='')}/calls", meta,
                                       [("args", a) for a in args], wait=wait, key=key)

    async def wait(self, ids: Sequence[str], wait: float, *, max_bytes: int | None = None,
                   linger: float = 0.0) -> list[dict[str, Any]]:
        """As APIClient.wait, in the event loop."""
        request = _wait_request(ids, wait, max_bytes, linger)
        return await self._post_streamed("/v1/calls/wait", lambda: request, _from_frames,
                                         _calls_json)

    async def _download(self, path: str) -> bytes:
        """As APIClient._download, in the event loop: the whole streamed body."""
        import httpx

        async def fetch() -> bytes:
            try:
                async with self._http.stream("GET", path) as response:
                    body = await response.aread()
            except httpx.TransportError as exc:
                raise PlatformUnreachable(
                    f"lost the podfn API at {self.url} while reading {path} "
                    f"({type(exc).__name__}: {exc})") from exc
            if response.status_code >= 400:
                raise _error_from(response)
            return body
        return await self._idempotent(fetch)  # type: ignore[no-any-return]

    async def complete(self, call: dict[str, Any]) -> dict[str, Any]:
        """A finished call from `wait` with the result or error pickle that `wait` left
        out fetched, so that `outcome(call, None)` needs no (blocking) client."""
        path = f"/v1/calls/{quote(call['id'], safe='')}"
        if call["state"] == "succeeded" and "value" not in call:
            if call.get("result_format") == "json":
                call["value"] = json.loads(await self._download(path + "/result"))["value"]
            elif call.get("result") is None:
                call["result"] = await self._download(path + "/result")
        error = call.get("error")
        if error and error.get("pickle") is None and error.get("pickle_size") is not None:
            error["pickle"] = await self._download(path + "/error")
        return call

    async def cancel_many(self, *, ids: Sequence[str]) -> dict[str, Any]:
        return dict(await self._idempotent(lambda: self._request(
            "POST", "/v1/calls/cancel", json={"ids": list(ids)})))


def _tls() -> ssl.SSLContext:
    """httpx's default TLS settings (its CA bundle, or SSL_CERT_FILE / SSL_CERT_DIR as
    they are now), built once per process and setting: building them is ~20 ms
    (loading the CA bundle), which each `.aio` operation paid when its client built
    its own. httpcore sets the same ALPN protocols on it for each connection."""
    return _tls_for(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))


@functools.cache
def _tls_for(cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    import httpx

    return httpx.create_ssl_context()  # (it reads the two variables itself)


def _headers(token: str | None) -> dict[str, str]:
    headers = {"User-Agent": "podfn-client"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def _framed_submission(meta: dict[str, Any], parts: list[tuple[str, bytes]],
                       ) -> tuple[dict[str, str], list[bytes | memoryview]]:
    """(headers, body pieces) of a submission as frames (api/forms.py): `meta` and the
    parts' field names in the JSON header, then each part's bytes. No boundary for
    the API to search for.

    A large payload goes in SEND_STEP views of itself, never copied: httpcore sends a
    piece with `send()` in a loop that re-slices the rest of it after each partial
    send, a copy of the rest every time; a 100 MB piece cost 1.6 s of copying that
    way. Pieces under JOIN_BYTES are joined with their neighbours, up to JOIN_BYTES in
    all: a trivial call's header, length prefixes and payloads are one `send()` and
    one read for the API, not five (issue 12, eighth round).
    """
    head = json.dumps({"meta": meta, "parts": [field for field, _ in parts]}).encode()
    raw: list[bytes | memoryview] = [frames.prefix(len(head)), head]
    for _field, blob in parts:
        raw.append(frames.prefix(len(blob)))
        if len(blob) <= SEND_STEP:
            raw.append(blob)
            continue
        view = memoryview(blob)
        raw += [view[at:at + SEND_STEP] for at in range(0, len(blob), SEND_STEP)]
    pieces: list[bytes | memoryview] = []
    run = bytearray()
    for piece in raw:
        large = len(piece) >= JOIN_BYTES
        if run and (large or len(run) + len(piece) > JOIN_BYTES):
            pieces.append(bytes(run))
            run.clear()
        if large:
            pieces.append(piece)
        else:
            run += piece
    if run:
        pieces.append(bytes(run))
    headers = {"Content-Type": frames.MEDIA_TYPE,
               "Content-Length": str(sum(map(len, pieces)))}
    return headers, pieces


@dataclass(frozen=True)
class Submitted:
    """A submission's answer: the calls' ids, in order, and, when it waited, those that
    finished meanwhile, as `wait` gives them (payloads as bytes)."""

    ids: list[str]
    finished: list[dict[str, Any]]


def _submit_request(meta: dict[str, Any], parts: list[tuple[str, bytes]], wait: float | None,
                    key: str | None) -> dict[str, Any]:
    headers, pieces = _framed_submission(meta, parts)
    headers["Idempotency-Key"] = key or uuid.uuid4().hex
    request: dict[str, Any] = {"content": pieces, "headers": headers}
    if wait is not None:
        # An API from before `?wait=` ignores it and answers JSON without `finished`.
        request["headers"]["Accept"] = _WAIT_ACCEPT
        request["params"] = {"wait": wait}
        request["timeout"] = wait + _WAIT_SLACK
    return request


def _submitted_frames(body: list[bytearray]) -> Submitted:
    ids = [c["id"] for c in frames.header(body)["calls"]]
    return Submitted(ids, _from_frames(body, key="finished"))


def _submitted_json(body: dict[str, Any]) -> Submitted:
    return Submitted([c["id"] for c in body["calls"]], _decoded(body.get("finished") or []))


def _wait_request(ids: Sequence[str], wait: float, max_bytes: int | None,
                  linger: float = 0.0) -> dict[str, Any]:
    params: dict[str, Any] = {} if max_bytes is None else {"max_bytes": max_bytes}
    if linger > 0:
        params["linger"] = linger
    return {"json": {"ids": list(ids), "wait": wait}, "headers": {"Accept": _WAIT_ACCEPT},
            "params": params, "timeout": wait + linger + _WAIT_SLACK}


def _framed(response: httpx.Response) -> bool:
    return str(response.headers.get("content-type", "")).startswith(frames.MEDIA_TYPE)


def _lost(url: str, path: str, exc: Exception) -> PlatformUnreachable:
    return PlatformUnreachable(f"lost the podfn API at {url} while reading {path} "
                               f"({type(exc).__name__}: {exc})")


def _from_frames(body: list[bytearray], *, key: str = "calls") -> list[dict[str, Any]]:
    """Finished calls from a framed `wait` (or submission: `key`), each payload frame put
    where JSON had it."""
    calls: list[dict[str, Any]] = frames.header(body)[key]
    try:
        for call in calls:
            if "result_frame" in call:
                call["result"] = body[call.pop("result_frame")]
            error = call.get("error")
            if error and "pickle_frame" in error:
                error["pickle"] = body[error.pop("pickle_frame")]
    except (IndexError, TypeError) as exc:
        raise frames.FramingError(f"the header names a frame the body lacks: {exc}") from None
    return calls


def _calls_json(body: dict[str, Any]) -> list[dict[str, Any]]:
    """A JSON `wait` answer's calls, payloads decoded."""
    return _decoded(body["calls"])


def _decoded(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Finished calls from /v1/calls/wait with their pickles as bytes again."""
    for call in calls:
        if call.get("result") is not None:
            call["result"] = base64.b64decode(call["result"])
        error = call.get("error")
        if error and error.get("pickle") is not None:
            error["pickle"] = base64.b64decode(error["pickle"])
    return list(calls)


def _unreachable(url: str, exc: Exception) -> PlatformUnreachable:
    return PlatformUnreachable(
        f"cannot reach the podfn API at {url} ({type(exc).__name__}: {exc}); "
        "check PODFN_URL, or start a local platform with `podfn dev`")


def _error_from(response: httpx.Response) -> PlatformError:
    """The API's JSON error as a podfn error (NotAuthorized for 401/403, NotFound for 404)."""
    return _error(response.status_code, response.reason_phrase, response.content,
                  str(response.request.url))


def _error(status: int, reason: str, body: bytes, url: str) -> PlatformError:
    """`_error_from` for an answer's parts."""
    try:
        error = json.loads(body)["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "http_error", body.decode("utf-8", "replace")[:500] or reason
    text = f"{message} (HTTP {status} from {url})"
    if status == 404:
        return NotFound(text, status=404, code=code)
    if status in (401, 403):
        return NotAuthorized(text, status=status, code=code)
    return PlatformError(text, status=status, code=code)
