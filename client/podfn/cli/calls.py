"""`podfn calls | call | logs | cancel | invoke`: inspecting and managing calls."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any

import click

from podfn.cli.support import (
    EXIT_FAILED,
    api,
    fail,
    output_option,
    print_json,
    print_table,
    reports_errors,
    with_exit_codes,
)
from podfn.streaming import follow_lines

STATES = ("queued", "launching", "running", "succeeded", "failed", "timed_out", "cancelled")


def _duration(call: dict[str, Any]) -> str:
    start, end = call.get("started_at"), call.get("finished_at")
    if not start:
        return ""
    finished = datetime.fromisoformat(end) if end else None
    if finished is None:
        return "running"
    return f"{(finished - datetime.fromisoformat(start)).total_seconds():.2f}s"


def _first_line(text: str | None, width: int = 70) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= width else line[: width - 1] + "…"


def mebibytes(value: float | None) -> str:
    return "" if value is None else f"{value / 2**20:.1f}Mi"


def seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def used(attempt: dict[str, Any]) -> tuple[str, str, str]:
    """What an attempt really used, as the runtime reported it (blank if it never did)."""
    return (mebibytes(attempt.get("peak_bytes")), seconds(attempt.get("cpu_seconds")),
            seconds(attempt.get("wall_seconds")))


@click.command("calls")
@click.option("--state", type=click.Choice(STATES), help="only calls in this state")
@click.option("--function", "function", help="only calls of this function")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@output_option
@reports_errors
def calls_(state: str | None, function: str | None, limit: int, output: str) -> None:
    """List recent calls, newest first.

    \b
    Example: podfn calls --state failed --function train
    """
    rows = api().list_calls(state=state, function=function, limit=limit)
    if output == "json":
        print_json(rows)
        return
    print_table([(c["id"], c["function"], c["state"], c["attempt"], _duration(c),
                  _first_line(c.get("reason"))) for c in rows],
                ["id", "function", "state", "attempt", "duration", "reason"])


@click.command("call")
@click.argument("call_id")
@output_option
@reports_errors
def call_(call_id: str, output: str) -> None:
    """Show one call: its state, reason, error, and the timeline of its attempts.

    \b
    Example: podfn call 3f2a9c0d1e2b4c5d6e7f8a9b0c1d2e3f
    """
    info = api().get_call(call_id)
    if output == "json":
        print_json(info)
        return
    click.echo(f"call      {info['id']}")
    click.echo(f"function  {info['function']}"
               + (f" (version {info['function_version']})" if info.get("function_version") else ""))
    click.echo(f"state     {info['state']}")
    if info.get("reason"):
        click.echo(f"reason    {info['reason']}")
    for key in ("created_at", "launched_at", "started_at", "finished_at"):
        if info.get(key):
            click.echo(f"{key.replace('_at', ''):<9} {info[key]}")
    error = info.get("error")
    if error:
        click.echo(f"error     {error['type']}: {error['message']}")
    click.echo("attempts:")
    print_table([(a["attempt"], a["state"], a.get("ref"), a.get("exit_code"),
                  a.get("launched_at"), a.get("finished_at"), *used(a),
                  _first_line(a.get("reason"), 60))
                 for a in info.get("attempts", [])],
                ["#", "state", "ref", "exit", "launched", "finished", "peak mem", "cpu s",
                 "wall s", "reason"])
    if error and error.get("traceback"):
        click.echo("\nremote traceback:\n" + error["traceback"].rstrip())


@click.command("logs")
@click.argument("call_id")
@click.option("--follow", "-f", is_flag=True, help="keep printing output until the call ends")
@click.option("--timestamps", "-t", is_flag=True,
              help="start each line with the time it was stored (UTC)")
@output_option
@reports_errors
def logs_(call_id: str, follow: bool, timestamps: bool, output: str) -> None:
    """Print what a call wrote to stdout and stderr.

    \b
    Example: podfn logs 3f2a9c0d1e2b4c5d6e7f8a9b0c1d2e3f --follow
             podfn logs 3f2a9c0d1e2b4c5d6e7f8a9b0c1d2e3f --timestamps
             podfn logs 3f2a9c0d1e2b4c5d6e7f8a9b0c1d2e3f --output json
    """
    if (follow or timestamps) and output == "json":
        raise click.UsageError("--follow and --timestamps print lines as text; they cannot be "
                               "combined with --output json (drop one of them)")
    client = api()
    if output == "json":
        print_json(client.logs(call_id))
        return
    if not follow and not timestamps:
        body = client.logs(call_id)
        for stream, sink in (("stdout", sys.stdout), ("stderr", sys.stderr)):
            sink.write(body[stream] or "")
            sink.flush()
        return
    # Lines as they are stored, each read once (streaming.py).
    for line in follow_lines(client, call_id, follow=follow):
        sink = sys.stderr if line.stream == "stderr" else sys.stdout
        if timestamps:
            when = line.at.astimezone(UTC) if line.at else None
            stamp = when.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z" if when else "-"
            sink.write(f"{stamp} {line.text}")
        else:
            sink.write(line.text)
        sink.flush()


CANCELLABLE = ("queued", "launching", "running")


@click.command("cancel")
@click.argument("call_ids", nargs=-1, metavar="[CALL_ID]...")
@click.option("--function", "function", help="cancel the unfinished calls of this function")
@click.option("--state", type=click.Choice(CANCELLABLE), help="only calls in this state")
@click.option("--all-mine", is_flag=True, help="every unfinished call made with this token")
@click.option("--yes", "-y", is_flag=True, help="do not ask before cancelling several calls")
@output_option
@reports_errors
def cancel_(call_ids: tuple[str, ...], function: str | None, state: str | None, all_mine: bool,
            yes: bool, output: str) -> None:
    """Cancel calls that have not finished (their processes or pods are stopped).

    Give call ids, or filters, or both (ids and filters together cancel the
    given calls that match the filters). Several calls are counted and
    confirmed first; --yes skips the question. Tokens without the admin
    scope only ever cancel their own calls.

    \b
    Examples:
      podfn cancel 3f2a9c0d1e2b4c5d6e7f8a9b0c1d2e3f
      podfn cancel ID1 ID2 ID3
      podfn cancel --function train --state queued
      podfn cancel --all-mine --yes
    """
    filtered = function is not None or state is not None or all_mine
    if not call_ids and not filtered:
        raise click.UsageError("say which calls to cancel: CALL_ID..., --function, --state "
                               "or --all-mine")
    client = api()
    if len(call_ids) == 1 and not filtered:
        [call_id] = call_ids
        answer = client.cancel(call_id)
        if output == "json":
            print_json(answer)
        elif answer.get("cancelled"):
            click.echo(f"cancelled {call_id}")
        else:
            click.echo(f"{call_id} had already finished: {answer['state']}")
        return
    matched = client.cancel_many(ids=list(call_ids) or None, function=function, state=state,
                                 mine=all_mine, dry_run=True)["matched"]
    if not matched:
        if output == "json":
            print_json({"cancelled": [], "count": 0})
        else:
            click.echo("no unfinished calls match; nothing to cancel")
        return
    if not yes:
        click.confirm(f"cancel {len(matched)} call(s)?", abort=True, err=True)
    done = client.cancel_many(ids=matched)
    if output == "json":
        print_json({"cancelled": done["cancelled"], "count": done["count"]})
        return
    finished = len(matched) - done["count"]
    click.echo(f"cancelled {done['count']} call(s)"
               + (f"; {finished} finished in the meantime" if finished else ""))


@click.command("invoke")
@click.argument("name")
@click.argument("body", default="{}")
@click.option("--wait", type=click.FloatRange(0, 3600), default=30.0, show_default=True,
              help="seconds to wait for the result before printing the call id")
@output_option
@reports_errors
def invoke_(name: str, body: str, wait: float, output: str) -> None:
    """Invoke a deployed function with JSON arguments and print its JSON result.

    \b
    Example: podfn invoke add '{"args": [1, 2]}'
             podfn invoke train '{"kwargs": {"epochs": 3}}' --wait 600
    """
    try:
        parsed = json.loads(body)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="BODY") from None
    if not isinstance(parsed, dict):
        raise click.BadParameter(
            f"must be a JSON object such as '{{\"args\": {body.strip()}}}', not a "
            f"{type(parsed).__name__}: positional arguments go in \"args\", keyword arguments "
            "in \"kwargs\"", param_hint="BODY")
    status, answer = api().invoke(name, parsed, wait)
    if output == "json":
        print_json(answer)
    elif status == 202:
        click.echo(f"call {answer['id']} is {answer['state']}; follow it with: "
                   f"podfn call {answer['id']}")
    elif answer["state"] == "succeeded":
        click.echo(json.dumps(answer.get("value")))
    if status == 200 and answer["state"] != "succeeded":
        error = answer.get("error") or {}
        detail = f"{error.get('type')}: {error.get('message')}" if error else answer.get("reason")
        fail(f"call {answer['id']} {answer['state']}: {detail}", EXIT_FAILED)


COMMANDS = [calls_, call_, logs_, cancel_, invoke_]
for _command in COMMANDS:
    _command.help = with_exit_codes(_command.help)
