"""The supervisor's wire format and what it forwards (podfn_runtime/proxy.py), without a process.

End to end, through a real forkserver and a hostile call, see
test_hostile.py::test_a_cold_call_reaches_only_its_own_call_through_the_supervisor.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
from typing import Any

import pytest

from podfn_runtime.proxy import ProxyConnection, ProxyError, ProxyUnavailable, check, encode

MINE = {"id": "c1", "attempt": 2, "secret": "s"}


@pytest.mark.parametrize(("name", "params", "why"), [
    ("claim", {**MINE, "id": "c2"}, "not this process's call"),
    ("claim", {**MINE, "attempt": 3}, "not this process's call"),
    ("claim", {**MINE, "attempt": "2"}, "not this process's call"),
    ("claim", {**MINE, "attempt": 2.0}, "not this process's call"),
    ("record", {"id": "c1", "attempt": 2}, "no secret"),
    ("next", {**MINE, "secret_hash": "h"}, "not forwarded"),
    ("next_standing", {**MINE}, "not forwarded"),
    ("DELETE FROM podfn_calls", {**MINE}, "not forwarded"),
    (None, {**MINE}, "not forwarded"),
    ("record", {**MINE, "secret": ["s"]}, "not a plain value"),
    ("record", {**MINE, "x": {"a": 1}}, "not a plain value"),
    ("succeed_next", {**MINE, "secret_hash": "h"}, "takes no next call"),
])
def test_the_supervisor_refuses(name: Any, params: dict[str, Any], why: str) -> None:
    assert why in (check(name, params, "c1", 2) or "")


def test_the_supervisor_forwards_the_protocol_for_its_own_attempt() -> None:
    for name in ("claim", "claimed", "record", "succeed", "fail", "usage", "append_output",
                 "yield_item"):
        assert check(name, MINE, "c1", 2) is None
    assert check("succeed_next", {**MINE, "secret_hash": None, "result": b"\x00"}, "c1",
                 2) is None


def _serve_one(sock: socket.socket, reply: list[bytes]) -> dict[str, Any]:
    """Read one request as the supervisor would, answer with `reply`'s frames."""
    (size,) = struct.unpack(">I", sock.recv(4, socket.MSG_WAITALL))
    header = json.loads(sock.recv(size, socket.MSG_WAITALL))
    blobs = [sock.recv(n, socket.MSG_WAITALL) for n in header["n"]]
    sock.sendall(b"".join(reply))
    return {"header": header, "blobs": blobs}


def test_bytes_travel_raw_and_rows_come_back_typed() -> None:
    ours, theirs = socket.socketpair()
    proxy = ProxyConnection(ours)
    payload = bytes(range(256)) * 1000
    row = {"id": "c1", "attempt": 2, "function": payload, "spec": {"env": {"$b": 0}},
           "written": True, "none": None}
    seen: list[dict[str, Any]] = []
    server = threading.Thread(target=lambda: seen.append(_serve_one(
        theirs, encode({}, row, "row"))))
    server.start()
    got = proxy.execute("claim", {**MINE, "result": payload}, True)
    server.join()
    proxy.close()
    theirs.close()
    assert got == row
    header = seen[0]["header"]
    assert header["q"] == "claim" and header["bin"] is True
    assert header["p"]["result"] == ["b", 0] and seen[0]["blobs"] == [payload]
    assert header["p"]["id"] == ["v", "c1"]


def test_a_refusal_and_a_lost_supervisor_are_told_apart() -> None:
    ours, theirs = socket.socketpair()
    proxy = ProxyConnection(ours)
    server = threading.Thread(target=lambda: _serve_one(
        theirs, encode({"error": "refused by the supervisor: x", "row": None}, None, "row")))
    server.start()
    with pytest.raises(ProxyError, match="refused"):
        proxy.execute("record", MINE, False)
    server.join()
    theirs.close()
    with pytest.raises(ProxyUnavailable):
        proxy.execute("record", MINE, False)
    assert proxy.closed
