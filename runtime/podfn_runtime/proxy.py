"""The local forkserver's supervisor: runtime-protocol calls and output tees for its children.

A cold call on the local launcher is one forked process that makes two or
three protocol calls and exits. Connecting it to Postgres was most of its
cost: a backend forked per call, SCRAM on both ends, catalog caches and the
protocol's PL/pgSQL compiled again in every new backend (~7 ms of Postgres
CPU per call, more than the rest of a map's Postgres work). Forking its own
output tee (capture.py) cost it another fork. So the forkserver starts one
*supervisor* process (trusted, like the forkserver itself; it never runs a
call's code nor unpickles anything) that:

- holds a few connections as the runtime role and runs, for each child, the
  protocol statements the child asks for over a socket of its own. The child
  never holds a connection. Only the statements a one-call runtime needs are
  forwarded, by name (protocol.sql), with plain values (text, numbers,
  booleans, bytes, null) for their parameters, and only for the call and
  attempt the forkserver started that child for; each statement still needs
  the attempt's own secret, which only the child has. So a child can do
  through the supervisor at most what its attempt could do with a connection
  of its own (tests/test_forkserver_proxy.py tries the rest);
- is the output tee of every child (capture.py's tee loop, a thread per
  child): a child hands over its capture's pipes as it would to a tee process
  of its own, and what it wrote before dying still reaches its log, since
  the tee is not the child.

Messages on a child's socket: a 4-byte big-endian length, a JSON header,
then the raw bytes of each `bytes` value the header refers to (lengths in
the header), so payloads are never base64'd and nothing is ever unpickled.
A value is `["v", json]` or `["b", index]`.
"""

from __future__ import annotations

import _thread
import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
from typing import Any

from podfn_runtime.capture import tee_loop

log = logging.getLogger("podfn.runtime")

# What a one-call runtime sends; `next` and `next_standing` (a warm worker's)
# are not forwarded: a warm attempt connects by itself.
FORWARDED = frozenset({"claim", "claimed", "record", "succeed", "fail", "usage",
                       "append_output", "yield_item", "succeed_next"})
# The statements that record an attempt's outcome: once one of them returns a row for
# the child's call and attempt, nothing the controller could send for that attempt
# when its process ends would change anything (see Supervisor._recorded).
RECORDING = frozenset({"succeed", "succeed_next", "fail"})
# Connections the supervisor keeps; each child's statement waits for a free one.
CONNECTIONS = 2 * (os.cpu_count() or 1)
_HEADER = struct.Struct(">I")
_MAX_HEADER = 1 << 20
_MAX_BLOBS = 1 << 30  # bytes of one request's values (Postgres takes no larger bytea)
_PLAIN = (str, int, float, bool, type(None), bytes)


class ProxyError(Exception):
    """The supervisor refused a request, or the statement failed for good."""


class ProxyUnavailable(Exception):
    """The supervisor's connection to Postgres is in trouble (worth a retry), or it is gone."""


# -- the wire format -----------------------------------------------------------


def _pack(values: dict[str, Any], blobs: list[bytes]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for key, value in values.items():
        if isinstance(value, bytes | bytearray | memoryview):
            blobs.append(bytes(value) if not isinstance(value, bytes) else value)
            out[key] = ["b", len(blobs) - 1]
        else:
            out[key] = ["v", value]
    return out


def _unpack(packed: Any, blobs: list[bytes]) -> dict[str, Any]:
    if not isinstance(packed, dict):
        raise ProxyError("malformed message")
    out: dict[str, Any] = {}
    for key, item in packed.items():
        if not (isinstance(item, list) and len(item) == 2 and item[0] in ("v", "b")):
            raise ProxyError("malformed message")
        if item[0] == "b":
            if not isinstance(item[1], int) or not 0 <= item[1] < len(blobs):
                raise ProxyError("malformed message")
            out[key] = blobs[item[1]]
        else:
            out[key] = item[1]
    return out


def encode(header: dict[str, Any], values: dict[str, Any] | None, key: str) -> list[bytes]:
    """The frames of one message: `values` (text, numbers, bytes...) packed under `key`."""
    blobs: list[bytes] = []
    if values is not None:
        header = {**header, key: _pack(values, blobs)}
    header["n"] = [len(b) for b in blobs]
    raw = json.dumps(header).encode()
    return [_HEADER.pack(len(raw)), raw, *blobs]


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:], size - got)
        if n == 0:
            raise EOFError
        got += n
    return bytes(buffer)


def _decode_header(raw: bytes) -> tuple[dict[str, Any], list[int]]:
    header = json.loads(raw)
    sizes = header.get("n") if isinstance(header, dict) else None
    if not isinstance(sizes, list) or not all(isinstance(n, int) and n >= 0 for n in sizes):
        raise ProxyError("malformed message")
    return header, sizes


# -- the child's side ----------------------------------------------------------


class ProxyConnection:
    """A child's way to Postgres through the supervisor (database.RuntimeDatabase uses it)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.closed = False

    def fileno(self) -> int:
        return self._sock.fileno()

    def execute(self, name: str, params: dict[str, Any], binary: bool) -> dict[str, Any] | None:
        if self.closed:
            raise ProxyUnavailable("the supervisor is gone")
        try:
            self._sock.sendall(b"".join(encode({"q": name, "bin": binary}, params, "p")))
            (size,) = _HEADER.unpack(_recv_exactly(self._sock, _HEADER.size))
            header, sizes = _decode_header(_recv_exactly(self._sock, size))
            blobs = [_recv_exactly(self._sock, n) for n in sizes]
        except (OSError, EOFError, ValueError) as exc:
            self.close()
            raise ProxyUnavailable(f"lost the supervisor: {exc or type(exc).__name__}") from exc
        if "error" in header:
            if header.get("transient"):
                raise ProxyUnavailable(str(header["error"]))
            raise ProxyError(str(header["error"]))
        row = header.get("row")
        return None if row is None else _unpack(row, blobs)

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(OSError):
            self._sock.close()


# -- the supervisor's side -----------------------------------------------------


def check(name: Any, params: dict[str, Any], call_id: str, attempt: int) -> str | None:
    """Why the supervisor refuses to forward this request of the child started for
    `call_id` / `attempt`, or None."""
    if name not in FORWARDED:
        return f"{name!r} is not forwarded"
    for key, value in params.items():
        if not isinstance(value, _PLAIN):
            return f"parameter {key!r} is not a plain value"
    if params.get("id") != call_id or type(params.get("attempt")) is not int \
            or params.get("attempt") != attempt:
        return "not this process's call"
    if not isinstance(params.get("secret"), str):
        return "no secret"
    if name == "succeed_next" and params.get("secret_hash") is not None:
        return "a cold attempt takes no next call"
    return None


class Supervisor:
    """Run by the forkserver's supervisor process: see the module's docstring."""

    def __init__(self, url: str, control: socket.socket) -> None:
        from podfn_runtime.queries import protocol

        self._url = url
        self._control = control
        self._queries = protocol()
        self._idle: asyncio.Queue[Any] | None = None
        self._made = 0

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._idle = asyncio.Queue()
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self._control.setblocking(False)
        tasks: set[asyncio.Task[None]] = set()

        def on_control() -> None:
            try:
                data, fds, _, _ = socket.recv_fds(self._control, 4096, 4)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data, fds = b"", []
            if not data:
                if not done.done():
                    done.set_result(None)
                return
            try:
                message = json.loads(data)
                db_fd, tee_fd = fds
            except (ValueError, TypeError):
                for fd in fds:
                    os.close(fd)
                return
            secret = message.get("secret") if isinstance(message.get("secret"), str) else None
            call_id, attempt = str(message["id"]), int(message["attempt"])
            # The claim ahead starts first, and on this turn of the loop: the child's
            # start and everything below overlap its round trip, which a call waits for.
            ahead = None if secret is None else loop.create_task(self._execute(
                "claim", {"id": call_id, "attempt": attempt, "secret": secret}, True))
            task = loop.create_task(self._serve(socket.socket(fileno=db_fd), call_id, attempt,
                                                secret, ahead))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            # A thread per child, as its own tee process would be: one child that
            # stops reading its output cannot hold up another's. (Not threading.Thread,
            # whose start() would hold up this loop until the scheduler runs it.)
            _thread.start_new_thread(tee_loop, (socket.socket(fileno=tee_fd),))

        loop.add_reader(self._control.fileno(), on_control)
        await done  # the forkserver closed its end: it is gone

    async def _connection(self) -> Any:
        assert self._idle is not None
        if self._idle.empty() and self._made < CONNECTIONS:
            self._made += 1
            try:
                import psycopg
                from psycopg.rows import dict_row

                return await psycopg.AsyncConnection.connect(
                    self._url, autocommit=True, row_factory=dict_row, prepare_threshold=None,
                    application_name="podfn-runtime-supervisor", connect_timeout=10)
            except BaseException:
                self._made -= 1
                raise
        return await self._idle.get()

    async def _execute(self, name: str, params: dict[str, Any],
                       binary: bool) -> dict[str, Any] | None:
        import psycopg

        from podfn_runtime.sending import execute_async

        assert self._idle is not None
        conn = await self._connection()
        try:
            cursor = await execute_async(conn, self._queries[name], params, binary=binary)
            row: dict[str, Any] | None = await cursor.fetchone()
        except (psycopg.OperationalError, psycopg.InterfaceError):
            self._made -= 1
            with contextlib.suppress(Exception):
                await conn.close()
            raise
        except BaseException:
            if conn.closed:
                self._made -= 1
            else:
                self._idle.put_nowait(conn)
            raise
        self._idle.put_nowait(conn)
        return row

    def _recorded(self, call_id: str, attempt: int) -> None:
        """Tell the forkserver, before the child has the reply (so before it can exit),
        that this attempt's outcome is recorded: the controller then sends no `fail`
        for its clean exit, a statement that could only match nothing (a round trip and
        a PL/pgSQL call per cold call). Best effort: a notice that cannot be sent at
        once is dropped, and the controller sends its (harmless) `fail` as before."""
        with contextlib.suppress(OSError):
            self._control.send(json.dumps({"recorded": [call_id, attempt]}).encode())

    async def _serve(self, sock: socket.socket, call_id: str, attempt: int,
                     secret: str | None,
                     ahead: asyncio.Future[dict[str, Any] | None] | None = None) -> None:
        """Answer one child's requests until it closes its socket.

        With the attempt's `secret` (the forkserver has it from the controller), the
        call is claimed at once, while the child starts: its own `claim`, the first
        thing a runtime sends, is then answered without waiting for Postgres. Only
        that exact request gets the answer; if the claim ahead failed, the child's
        own is forwarded (and finds the claim landed, as after a lost reply)."""
        import psycopg

        mine = {"id": call_id, "attempt": attempt, "secret": secret}
        if ahead is None and secret is not None:
            ahead = asyncio.ensure_future(self._execute("claim", mine, True))
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        first = True
        try:
            while True:
                try:
                    (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
                    if size > _MAX_HEADER:
                        return
                    header, sizes = _decode_header(await reader.readexactly(size))
                    if sum(sizes) > _MAX_BLOBS:
                        return
                    blobs = [await reader.readexactly(n) for n in sizes]
                    params = _unpack(header.get("p"), blobs)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                except (ValueError, ProxyError):
                    return  # not our client's format: nothing more to say to it
                name = header.get("q")
                problem = check(name, params, call_id, attempt)
                reply: dict[str, Any]
                row = None
                answered = False
                if first and ahead is not None and name == "claim" and params == mine:
                    try:
                        row = await ahead
                        reply = {}
                        answered = True
                    except Exception:  # the child's own claim is forwarded instead
                        pass
                first = False
                if answered:
                    pass
                elif problem is not None:
                    log.warning("refused a request of call %s attempt %d: %s", call_id,
                                attempt, problem)
                    reply = {"error": f"refused by the supervisor: {problem}"}
                else:
                    try:
                        row = await self._execute(str(name), params, bool(header.get("bin")))
                        reply = {}
                        if row is not None and name in RECORDING:
                            self._recorded(call_id, attempt)
                    except (psycopg.OperationalError, psycopg.InterfaceError, OSError) as exc:
                        reply = {"error": str(exc) or type(exc).__name__, "transient": True}
                    except psycopg.Error as exc:
                        reply = {"error": str(exc)}
                try:
                    frames = encode(reply, row, "row") if row is not None else encode(
                        {**reply, "row": None}, None, "row")
                except (TypeError, ValueError) as exc:
                    frames = encode({"error": f"cannot send the row: {exc}"}, None, "row")
                writer.writelines(frames)
                await writer.drain()
        finally:
            writer.close()
            if ahead is not None:
                with contextlib.suppress(BaseException):
                    await ahead  # (its connection goes back to the pool)
