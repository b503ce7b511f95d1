"""Batches and bytes (issue 12): framed `wait` answers, payloads as raw bytes, in batches."""

from __future__ import annotations

import base64
import os
import random
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from attempts import UNARMED, Runtime
from conftest import TEST_TOKEN, Platform
from podfn import frames, remote, serialization
from podfn.function import Function
from podfn.http import APIClient
from podfn_platform.api import results, waiting
from podfn_platform.database import Database

PAYLOADS = [b"", b"\x00", b"".join(bytes([i]) for i in range(256)) * 3, os.urandom(70_000), b""]


def _split(body: bytes, rng: random.Random) -> Iterator[bytes]:
    at = 0
    while at < len(body):
        step = rng.choice([1, 2, 3, 7, 8, 9, 100, 65_536])
        yield body[at:at + step]
        at += step


def test_frames_round_trip_arbitrary_bytes_in_pieces_of_any_size() -> None:
    header = {"calls": [{"id": "a", "result_frame": 1}], "note": "é"}
    body = b"".join(frames.encode(header, PAYLOADS))
    rng = random.Random(12)
    for pieces in ([body], [bytes([b]) for b in body[:400]] + [body[400:]],
                   list(_split(body, rng)), [b"", body, b""]):
        got = frames.decode(pieces)
        assert frames.header(got) == header
        assert [bytes(f) for f in got[1:]] == PAYLOADS


def test_a_body_cut_short_is_not_taken_for_a_whole_one() -> None:
    body = b"".join(frames.encode({"calls": []}, [b"abc"]))
    for cut in range(len(body)):
        if cut == len(body) - 3 - frames.PREFIX_BYTES:
            continue  # ends between frames: Content-Length tells (the API always sends it)
        with pytest.raises(frames.FramingError):
            frames.decode([body[:cut]])
    with pytest.raises(frames.FramingError):
        frames.decode([])
    with pytest.raises(frames.FramingError):
        frames.header(frames.decode([b"".join(frames.encode({}, []))[:-2] + b"]]"]))


def test_a_framed_submission_sends_large_parts_as_views_and_joins_small_pieces() -> None:
    from podfn import http

    big = os.urandom(http.SEND_STEP * 2 + 5)
    parts = [("function", b"fn"), ("args", big), ("args", b""), ("args", b"small")]
    headers, pieces = http._framed_submission({"function_name": "f"}, parts)
    assert headers["Content-Type"] == frames.MEDIA_TYPE
    assert int(headers["Content-Length"]) == sum(map(len, pieces))
    assert max(map(len, pieces)) <= http.SEND_STEP
    # The large part goes as views of itself (never copied), the small pieces around it
    # joined: header and function before it; its 5-byte tail and the two small parts'
    # frames after it.
    views = [p for p in pieces if isinstance(p, memoryview)]
    assert len(views) == 2 and all(v.obj is big and len(v) == http.SEND_STEP for v in views)
    assert len(pieces) == 4
    got = frames.decode(pieces)
    assert frames.header(got) == {"meta": {"function_name": "f"},
                                  "parts": ["function", "args", "args", "args"]}
    assert [bytes(f) for f in got[1:]] == [blob for _, blob in parts]


def test_a_small_submission_is_one_piece_and_joined_pieces_stay_bounded() -> None:
    from podfn import http

    _, pieces = http._framed_submission({"function_name": "f"},
                                        [("function", b"fn"), ("args", b"x" * 100)])
    assert len(pieces) == 1
    many = [("args", os.urandom(http.JOIN_BYTES // 3)) for _ in range(10)]
    _, pieces = http._framed_submission({"function_name": "f"}, [("function", b"fn"), *many])
    assert len(pieces) > 1 and max(map(len, pieces)) <= http.JOIN_BYTES
    assert [bytes(f) for f in frames.decode(pieces)[2:]] == [blob for _, blob in many]


@pytest.fixture
def api(api_only: str) -> str:
    """The API alone, in a thread (conftest's api_only)."""
    return api_only


@pytest.fixture
def runtime(db: Database, runtime_database_url: str) -> Runtime:
    return Runtime(db, runtime_database_url)


def _finish(db: Database, runtime: Runtime, call_id: str, result: bytes) -> None:
    db.all("claim_queued", {"limit": 10_000, **UNARMED})
    assert runtime.claim(call_id, 1) is not None
    assert runtime.succeed(call_id, 1, result=result) is not None


def _submit(client: APIClient, n: int) -> list[str]:
    return client.submit(function_name="t.f", function=b"fn", args=[b"a"] * n, spec={},
                         versions=serialization.client_versions())


def test_wait_brings_results_as_raw_bytes_in_order_independent_batches(
        api: str, db: Database, runtime: Runtime) -> None:
    client = APIClient(api, TEST_TOKEN)
    ids = _submit(client, len(PAYLOADS))
    for i in (3, 0, 4, 1, 2):  # finished out of order
        _finish(db, runtime, ids[i], PAYLOADS[i])
    got: dict[str, bytes] = {}
    round_trips = 0
    while len(got) < len(ids):
        batch = client.wait([i for i in ids if i not in got], 0, max_bytes=1000)
        round_trips += 1
        assert batch and sum(len(c["result"]) for c in batch[:-1]) < 1000
        got.update({c["id"]: bytes(c["result"]) for c in batch})
    assert [got[i] for i in ids] == PAYLOADS
    assert 1 < round_trips < len(ids)  # a budget splits the answers, small ones share one

    # One request carries every result when the budget allows; JSON clients still get JSON.
    assert {c["id"] for c in client.wait(ids, 0)} == set(ids)
    with httpx.Client(base_url=api, headers={"Authorization": f"Bearer {TEST_TOKEN}"}) as http:
        answer = http.post("/v1/calls/wait", json={"ids": ids, "wait": 0})
        assert answer.headers["content-type"] == "application/json"
        framed = http.post("/v1/calls/wait", json={"ids": ids[:1], "wait": 0},
                           headers={"Accept": frames.MEDIA_TYPE})
        assert framed.headers["content-type"] == frames.MEDIA_TYPE
        assert int(framed.headers["content-length"]) == len(framed.content)
        [only] = frames.header(frames.decode([framed.content]))["calls"]
        assert only["result_frame"] == 1 and "result" not in only
    client.close()


def test_a_failed_calls_exception_comes_as_a_frame(api: str, db: Database,
                                                    runtime: Runtime) -> None:
    client = APIClient(api, TEST_TOKEN)
    [call_id] = _submit(client, 1)
    db.all("claim_queued", {"limit": 1, **UNARMED})
    runtime.claim(call_id, 1)
    pickled = serialization.dumps(ValueError("no"))
    runtime.call("fail", call_id, 1, retryable=False, reason="boom", error_type="ValueError",
                 error_message="no", error_traceback="tb", error_pickle=pickled, stdout="",
                 stderr="")
    [call] = client.wait([call_id], 0)
    assert call["state"] == "failed" and bytes(call["error"]["pickle"]) == pickled
    client.close()


def test_a_20_mb_result_is_streamed_in_chunks_never_held_whole(
        api: str, db: Database, runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    client = APIClient(api, TEST_TOKEN, timeout=120)
    [call_id] = _submit(client, 1)
    big = os.urandom(20 * 1024 * 1024)
    _finish(db, runtime, call_id, big)
    reads: list[int] = []
    held: list[Any] = []
    one, query_all = Database.one, Database.all

    def spy_one(self: Database, name: str, params: Any = None, **kw: Any) -> Any:
        row = one(self, name, params, **kw)
        if name == "result_chunk":
            reads.append(len(row["chunk"]))
        return row

    def spy_all(self: Database, name: str, params: Any = None, **kw: Any) -> Any:
        rows = query_all(self, name, params, **kw)
        if name == "finished_outcomes":
            held.extend(r["result"] for r in rows)
        return rows

    monkeypatch.setattr(Database, "one", spy_one)
    monkeypatch.setattr(Database, "all", spy_all)
    [call] = client.wait([call_id], 0)
    assert bytes(call["result"]) == big
    assert held == [None]  # the row did not carry it
    assert len(reads) == len(big) // results.CHUNK_BYTES
    assert max(reads) == results.CHUNK_BYTES
    client.close()


def test_a_result_of_just_over_a_mib_comes_with_the_query_that_finds_it(
        api: str, db: Database, runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    client = APIClient(api, TEST_TOKEN, timeout=120)
    [call_id] = _submit(client, 1)
    value = serialization.dumps(os.urandom(1024 * 1024))  # 1 MiB and its pickle framing
    assert results.CHUNK_BYTES < len(value) <= results.INLINE_BYTES
    _finish(db, runtime, call_id, value)
    queries: list[str] = []
    query_one, query_all = Database.one, Database.all

    def spy_one(self: Database, name: str, params: Any = None, **kw: Any) -> Any:
        queries.append(name)
        return query_one(self, name, params, **kw)

    def spy_all(self: Database, name: str, params: Any = None, **kw: Any) -> Any:
        queries.append(name)
        return query_all(self, name, params, **kw)

    monkeypatch.setattr(Database, "one", spy_one)
    monkeypatch.setattr(Database, "all", spy_all)
    [call] = client.wait([call_id], 0)
    assert bytes(call["result"]) == value
    assert "finished_outcomes" in queries and "result_chunk" not in queries
    client.close()


@remote
def echo(i: int, size: int) -> bytes:
    return bytes([i % 256]) * size


def test_map_gets_every_result_in_order_through_small_batches(
        platform: Platform, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(results, "FRAMES_BUDGET_BYTES", 3000)
    sizes = [0, 1, 2000, 10, 5000, 3, 1500, 1500, 7, 0, 4000, 9]
    fn: Function[Any, bytes] = echo
    assert list(fn.map(range(len(sizes)), sizes)) == [
        bytes([i]) * size for i, size in enumerate(sizes)]
    unordered = list(fn.map(range(len(sizes)), sizes, order_outputs=False))
    assert sorted(unordered) == sorted(bytes([i]) * size for i, size in enumerate(sizes))


def test_generator_items_come_as_frames_or_as_base64_json(api: str, db: Database,
                                                          runtime: Runtime) -> None:
    client = APIClient(api, TEST_TOKEN)
    [call_id] = _submit(client, 1)
    db.all("claim_queued", {"limit": 1, **UNARMED})
    runtime.claim(call_id, 1)
    for index, data in enumerate(PAYLOADS):
        assert runtime.call("yield_item", call_id, 1, index=index, data=data) is not None
    body = client.items_from(call_id, 1)
    assert [bytes(i["data"]) for i in body["items"]] == PAYLOADS[1:]
    assert [i["index"] for i in body["items"]] == [1, 2, 3, 4] and body["next"] == 5
    with httpx.Client(base_url=api, headers={"Authorization": f"Bearer {TEST_TOKEN}"}) as http:
        answer = http.get(f"/v1/calls/{call_id}/items", params={"start": 3})
        assert answer.headers["content-type"] == "application/json"
        assert [base64.b64decode(i["data"]) for i in answer.json()["items"]] == PAYLOADS[3:]
    client.close()


def test_the_client_still_reads_an_api_that_answers_json(
        api: str, db: Database, runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    from podfn.call import Call
    from podfn_platform.api import calls

    monkeypatch.setattr(calls, "wants_frames", lambda: False)  # an API from before frames
    client = APIClient(api, TEST_TOKEN)
    [small, large] = _submit(client, 2)
    values = {small: serialization.dumps(b"s"), large: serialization.dumps(os.urandom(100_000))}
    for call_id, value in values.items():
        _finish(db, runtime, call_id, value)
    by_id = {c["id"]: c for c in client.wait([small, large], 0)}
    assert bytes(by_id[small]["result"]) == values[small]
    assert by_id[large].get("result") is None  # over 64 KiB: fetched on its own
    for call_id, value in values.items():
        assert Call(call_id, client=client).result(timeout=10) == serialization.loads(value)
    client.close()


def test_a_wait_lingers_for_the_calls_that_finish_meanwhile(
        api: str, db: Database, runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the API and Postgres' notifications: a wait whose first look found one
    call finished, told to linger, brings the one that finishes meanwhile too."""
    lingering = threading.Event()
    linger = waiting.Watch.linger

    def noticed(self: waiting.Watch, rows: Any, seconds: float, *args: Any) -> Any:
        if seconds > 0:
            # A fresh API's listener may still be connecting (no linger without it).
            assert self._listener.connected.wait(30)
            lingering.set()
        return linger(self, rows, seconds, *args)

    monkeypatch.setattr(waiting.Watch, "linger", noticed)
    client = APIClient(api, TEST_TOKEN)
    first, second = _submit(client, 2)
    _finish(db, runtime, first, b"1")

    def finish_second() -> None:
        assert lingering.wait(30)
        _finish(db, runtime, second, b"2")

    finisher = threading.Thread(target=finish_second)
    finisher.start()
    try:
        got = client.wait([first, second], 30, linger=1.0)
    finally:
        finisher.join()
    assert sorted(bytes(c["result"]) for c in got) == [b"1", b"2"]
    with httpx.Client(base_url=api, headers={"Authorization": f"Bearer {TEST_TOKEN}"}) as http:
        for bad in ("-1", "1.5", "nan", "inf", "soon"):
            answer = http.post("/v1/calls/wait", params={"linger": bad},
                               json={"ids": [first], "wait": 0})
            assert answer.status_code == 400, bad
            assert answer.json()["error"]["field"] == "linger"
    client.close()


def test_a_small_framed_answer_is_one_piece_and_a_large_one_is_streamed() -> None:
    import flask

    app = flask.Flask("frames")
    app.extensions["podfn.db"] = None  # payloads in their rows: nothing is read
    for size, streamed in ((10, False), (results.WHOLE_BYTES + 1, True)):
        payload = os.urandom(size)
        row = {"id": "c", "state": "succeeded", "result_size": size, "result": payload}
        with app.test_request_context():
            answer = results.frames_response([row], [{"id": "c", "result_format": "pickle"}])
            assert answer.is_streamed is streamed
            body = b"".join(answer.response)  # type: ignore[arg-type]
        assert int(answer.headers["Content-Length"]) == len(body)
        got = frames.decode([body])
        assert frames.header(got)["calls"] == [{"id": "c", "result_format": "pickle",
                                                "result_frame": 1}]
        assert bytes(got[1]) == payload
