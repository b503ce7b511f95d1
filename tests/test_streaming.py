"""End to end: following output line by line, and generator items, while the call runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from podfn import remote
from podfn.cli import cli
from podfn.errors import PlatformError, RemoteTraceback
from podfn.http import APIClient
from podfn.streaming import follow_lines

pytestmark = pytest.mark.e2e


@remote
def speak_then_wait(release: str) -> str:
    """Writes a line two ways, then waits for the test to let it finish."""
    import logging
    import os
    import time

    print("first line", flush=True)
    logging.getLogger("app").warning("a warning")
    while not os.path.exists(release):
        time.sleep(0.02)
    os.write(1, b"last line\n")
    return "done"


@remote
def count_up(n: int, release: str):  # type: ignore[no-untyped-def]
    """Yields one item, waits for the test, then yields the rest (or fails)."""
    import os
    import time

    yield "first"
    while not os.path.exists(release):
        time.sleep(0.02)
    yield from range(n)
    if n < 0:
        raise ValueError("negative")


@remote
async def count_async(n: int):  # type: ignore[no-untyped-def]
    for i in range(n):
        yield i * i


def test_call_logs_follow_streams_lines_before_the_call_ends(platform: object,
                                                             tmp_path: Path) -> None:
    release = tmp_path / "release"
    call = speak_then_wait.spawn(str(release))
    lines = call.logs(follow=True)
    first, second = next(lines), next(lines)
    # Seen while the call still waits for the release file: streamed, not at the end.
    # (Across the two pipes the order is the order the runtime read them in.)
    assert {(first.stream, first.text), (second.stream, second.text)} == {
        ("stdout", "first line\n"), ("stderr", "a warning\n")}
    assert first.attempt == 1 and first.at is not None
    assert call.client.get_call(call.id)["state"] == "running"
    release.touch()
    assert [(line.stream, line.text) for line in lines] == [("stdout", "last line\n")]
    assert call.result() == "done"
    assert call.logs().stdout == "first line\nlast line\n"


def test_logs_endpoint_reads_from_an_offset(platform: object, tmp_path: Path) -> None:
    release = tmp_path / "release"
    release.touch()
    call = speak_then_wait.spawn(str(release))
    assert call.result() == "done"
    client: APIClient = call.client
    whole = client.logs_from(call.id, 0)
    text = "".join(c["data"] for c in whole["chunks"])
    assert whole["done"] and whole["next_offset"] == len(text)
    assert text.count("first line\n") == 1 and "last line\n" in text
    # From inside a chunk: the rest of it, with the offset where it starts.
    part = client.logs_from(call.id, 3)
    assert "".join(c["data"] for c in part["chunks"]) == text[3:]
    assert part["chunks"][0]["offset"] == 3
    # Past the end of a finished call: nothing, and done, at once even with a wait.
    end = client.logs_from(call.id, len(text), wait=30)
    assert end["chunks"] == [] and end["done"]
    with pytest.raises(PlatformError, match="offset must be between 0 and") as info:
        client.logs_from(call.id, -1)
    assert info.value.status == 400


def test_logs_cli_timestamps_and_follow(platform: object, tmp_path: Path) -> None:
    release = tmp_path / "release"
    release.touch()
    call = speak_then_wait.spawn(str(release))
    assert call.result() == "done"
    stamped = CliRunner().invoke(cli, ["logs", call.id, "--timestamps"])
    assert stamped.exit_code == 0, stamped.output
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z "
    assert re.search(stamp + "first line\n", stamped.output)
    assert re.search(stamp + "last line\n", stamped.output)
    followed = CliRunner().invoke(cli, ["logs", call.id, "--follow"])
    # CliRunner mixes stderr in; the order across two pipes written at once is the
    # order the runtime read them in, so compare each stream's lines.
    assert followed.exit_code == 0
    assert [ln for ln in followed.output.splitlines() if "line" in ln] == ["first line",
                                                                          "last line"]
    assert "a warning\n" in followed.output
    refused = CliRunner().invoke(cli, ["logs", call.id, "--timestamps", "-o", "json"])
    assert refused.exit_code == 2


def test_remote_gen_yields_items_before_the_call_ends(platform: object, tmp_path: Path) -> None:
    release = tmp_path / "release"
    items = count_up.remote_gen(3, str(release))
    assert next(items) == "first"  # the call is still waiting for the release file
    release.touch()
    assert list(items) == [0, 1, 2]


def test_remote_gen_raises_the_failure_after_the_items(platform: object,
                                                       tmp_path: Path) -> None:
    release = tmp_path / "release"
    release.touch()
    got = []
    with pytest.raises(ValueError, match="negative") as info:
        for item in count_up.remote_gen(-1, str(release)):
            got.append(item)
    assert got == ["first"]
    assert isinstance(info.value.__cause__, RemoteTraceback)


def test_async_generator(platform: object) -> None:
    assert list(count_async.remote_gen(4)) == [0, 1, 4, 9]


def test_follow_lines_of_a_finished_call_without_follow(platform: object,
                                                        tmp_path: Path) -> None:
    release = tmp_path / "release"
    release.touch()
    call = speak_then_wait.spawn(str(release))
    call.result()
    lines = list(follow_lines(call.client, call.id, follow=False))
    assert [line.text for line in lines if line.stream == "stdout"] == ["first line\n",
                                                                        "last line\n"]


@remote(retries=1)
def flaky() -> str:
    import os

    attempt = os.environ["PODFN_ATTEMPT"]
    print(f"attempt {attempt}")
    if attempt == "1":
        raise RuntimeError("first attempt fails")
    return "ok"


def test_following_a_retried_call_goes_on_with_the_next_attempt(platform: object) -> None:
    call = flaky.spawn()
    lines = [(line.attempt, line.text) for line in call.logs(follow=True)
             if line.stream == "stdout"]
    assert lines == [(1, "attempt 1\n"), (2, "attempt 2\n")]
    assert call.result() == "ok"
