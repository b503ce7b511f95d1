"""Run one attempt of one call, and record its outcome in Postgres.

Exit status is 0 whenever the outcome was recorded (the function's own
failure included) or the attempt turned out to be stale; it is non-zero only
when the runtime itself could not do its job, so the controller can tell the
two apart. EXIT_DISRUPTED (75, EX_TEMPFAIL from sysexits.h) says the database
stayed out of reach for the whole retry budget: the launchers map it to a
disruption, which requeues the call without spending the user's `retries`.

Whatever the outcome, every process the call started (setsid ones included)
is killed before the runtime writes the outcome and exits (reaper.py).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import inspect
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cloudpickle

from podfn_runtime import capture, items, reaper, termination, usage
from podfn_runtime.capture import capture_fds
from podfn_runtime.database import (
    DEFAULT_RETRY_SECONDS,
    DatabaseUnavailable,
    RuntimeDatabase,
    RuntimeDatabaseError,
)
from podfn_runtime.output import Output, OutputWriter

log = logging.getLogger("podfn.runtime")

EXIT_RECORDED = 0
EXIT_RUNTIME_FAILED = 1
EXIT_USAGE = 2
EXIT_DISRUPTED = 75  # EX_TEMPFAIL: the database was unreachable; not the user's failure
# The largest result (pickled or JSON) recorded; the launchers pass the
# platform's PODFN_MAX_RESULT_BYTES as --max-result-bytes.
DEFAULT_MAX_RESULT_BYTES = 64 * 1024 * 1024


@dataclass
class Failure:
    reason: str
    retryable: bool
    error_type: str
    error_message: str
    error_traceback: str
    error_pickle: bytes | None


def _major_minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def version_mismatch(client_python: str, client_cloudpickle: str) -> str | None:
    """Why this runtime cannot load the client's payload, or None."""
    here_python = f"{sys.version_info.major}.{sys.version_info.minor}"
    here_cloudpickle = cloudpickle.__version__
    problems = []
    if _major_minor(client_python) != here_python:
        problems.append(f"Python {client_python} on the client, {here_python} in the runtime")
    if _major_minor(client_cloudpickle) != _major_minor(here_cloudpickle):
        problems.append(
            f"cloudpickle {client_cloudpickle} on the client, {here_cloudpickle} in the runtime"
        )
    if not problems:
        return None
    return (
        "version mismatch: "
        + "; ".join(problems)
        + ". Use a runtime image built for your Python version (the `image` hint), "
        "or run the client with the runtime's versions."
    )


def _pickled_exception(exc: BaseException) -> bytes | None:
    """The exception pickled, if the client will be able to load it back."""
    try:
        blob: bytes = cloudpickle.dumps(exc)
        cloudpickle.loads(blob)
    except Exception:
        return None
    return blob


def failure_from(exc: BaseException, *, reason: str, retryable: bool) -> Failure:
    return Failure(
        reason=reason,
        retryable=retryable,
        error_type=f"{type(exc).__module__}.{type(exc).__qualname__}",
        error_message=str(exc),
        error_traceback="".join(traceback.format_exception(exc)),
        error_pickle=_pickled_exception(exc),
    )


_ASYNCIO_DIR = os.path.dirname(asyncio.__file__)


def _from_user_frame(exc: BaseException) -> BaseException:
    """`exc` with its traceback starting at the user's function, not in this runtime
    (nor in asyncio, for an `async def`)."""
    tb = exc.__traceback__
    if tb is not None and tb.tb_frame.f_code in (execute.__code__, _invoke.__code__):
        tb = tb.tb_next
        while tb is not None and (tb.tb_frame.f_code is _invoke.__code__ or
                                  tb.tb_frame.f_code.co_filename.startswith(_ASYNCIO_DIR)):
            tb = tb.tb_next
        exc.__traceback__ = tb
    return exc


def _invoke(fn: Any, args: Any, kwargs: Any, on_item: items.OnItem | None = None) -> Any:
    """Call the user's function; an `async def` (any coroutine it returns) runs to its
    end in an event loop of this process, as `asyncio.run` would run a script's main.
    A generator (or async generator) is drained, each item handed to `on_item` as it
    is produced (items.py); the call's result is then how many it yielded."""
    value = fn(*args, **kwargs)
    if inspect.iscoroutine(value):
        value = asyncio.run(value)
    elif on_item is not None and inspect.isgenerator(value):
        value = items.drain(value, on_item)
    elif on_item is not None and inspect.isasyncgen(value):
        value = asyncio.run(items.drain_async(value, on_item))
    return value


def missing_module_hint(exc: ModuleNotFoundError) -> str:
    """What to do when the runtime lacks a module the call imports."""
    module = (exc.name or "").partition(".")[0] or "the module"
    return (f"the runtime image does not have {module!r} installed: build an image FROM the "
            f"podfn runtime image that installs it (e.g. `RUN pip install {module}` or a "
            "requirements file) and name it with the `image` hint, "
            "@remote(image=\"registry/you/runtime-with-deps:tag\")")


@dataclass
class Result:
    pickled: bytes | None = None
    json: str | None = None


def execute(function: bytes, args: bytes, spec: dict[str, Any],
            result_format: str = "pickle",
            on_item: items.OnItem | None = None,
            load: Callable[[bytes], Any] = cloudpickle.loads) -> Result | Failure:
    """Load and run the call; its result (pickled, or JSON for HTTP invokes), or why it failed.
    `load` unpickles the function (a warm worker's FunctionCache loads it once)."""
    try:
        fn = load(function)
        call_args, call_kwargs = cloudpickle.loads(args)
    except Exception as exc:
        reason = f"could not load the function or its arguments: {type(exc).__name__}: {exc}"
        if isinstance(exc, ModuleNotFoundError):
            exc.add_note(missing_module_hint(exc))
            reason += f"; {missing_module_hint(exc)}"
        return failure_from(exc, reason=reason, retryable=False)
    try:
        value = _invoke(fn, call_args, call_kwargs, on_item)
    except RuntimeDatabaseError:
        raise  # storing a generator's item failed: ours to report, not the user's failure
    except items.ItemTooLarge as exc:  # would be as large again on a retry
        return failure_from(exc, reason=str(exc), retryable=False)
    except MemoryError as exc:
        limit = spec.get("memory")
        reason = f"memory limit {limit} exceeded" if limit else "out of memory (MemoryError)"
        if limit and not exc.args:
            exc.args = (f"memory limit {limit} exceeded",)
        if limit:
            exc.add_note(f"the call ran out of its memory limit, memory={limit!r}: ask for more "
                         "with the `memory` hint, e.g. f.options(memory=\"2Gi\")")
        return failure_from(_from_user_frame(exc), reason=reason, retryable=True)
    except BaseException as exc:  # SystemExit and KeyboardInterrupt are the call's outcome too
        reason = f"the function raised {type(exc).__name__}: {exc}"
        if isinstance(exc, ModuleNotFoundError):
            exc.add_note(missing_module_hint(exc))
            reason += f"; {missing_module_hint(exc)}"
        return failure_from(_from_user_frame(exc), reason=reason, retryable=True)
    if result_format == "json":
        try:
            return Result(json=json.dumps(value))
        except (TypeError, ValueError) as exc:
            return failure_from(
                exc,
                reason=f"the result ({type(value).__name__}) is not JSON serializable: {exc}; "
                "return lists, dicts, strings, numbers, booleans or None from functions "
                "invoked over HTTP",
                retryable=False,
            )
    try:
        return Result(pickled=cloudpickle.dumps(value))
    except Exception as exc:
        return failure_from(
            exc,
            reason=f"the result ({type(value).__name__}) could not be pickled: {exc}",
            retryable=False,
        )


def within_limit(outcome: Result | Failure, limit: int) -> Result | Failure:
    """`outcome`, unless it is larger than the platform stores: then a clear failure."""
    if isinstance(outcome, Failure):
        if outcome.error_pickle is not None and len(outcome.error_pickle) > limit:
            outcome.error_pickle = None  # the type, message and traceback still tell the story
        return outcome
    size = len(outcome.pickled or b"") + len((outcome.json or "").encode())
    if size <= limit:
        return outcome
    reason = (f"the result is {size} bytes, more than the platform's limit of {limit} bytes "
              "(PODFN_MAX_RESULT_BYTES); return something smaller, e.g. write large data to "
              "object storage and return its key")
    return Failure(reason, False, "ResultTooLarge", reason, "", None)


def _on_sigterm(writer: OutputWriter) -> Callable[[], None]:
    def write() -> None:
        writer.flush(retry=False)
    return write


def run_attempt(db: RuntimeDatabase, call_id: str, attempt: int,
                max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES) -> int:
    claimed = db.transition("claim", id=call_id, attempt=attempt)
    if claimed is None:
        log.info("stale attempt: call %s is no longer at attempt %d (or its secret is not "
                 "this attempt's); exiting", call_id, attempt)
        return EXIT_RECORDED
    return run_claimed(db, claimed, max_result_bytes)


def run_claimed(db: RuntimeDatabase, claimed: dict[str, Any],
                max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES) -> int:
    """Run a call this runtime holds (`claim`, or a standing worker's `next_standing`);
    record its outcome: a failure with `fail`, a success with its usage in one round trip
    (`succeed_next` asking for no next call)."""
    call_id, attempt = claimed["id"], claimed["attempt"]
    log.info("running call %s attempt %d", call_id, attempt)
    ran = run_only(db, claimed, max_result_bytes)
    if isinstance(ran.outcome, Failure):
        row = record_failure(db, ran)
    else:
        # The usage rides along, recorded before the outcome spends the secret.
        used = ran.used
        row = db.transition("succeed_next", id=call_id, attempt=attempt,
                            result=ran.outcome.pickled, result_json=ran.outcome.json,
                            **ran.columns, peak_bytes=used.peak_bytes,
                            cpu_seconds=used.cpu_seconds, wall_seconds=used.wall_seconds,
                            secret_hash=None)
    log_recorded(call_id, attempt, row)
    return EXIT_RECORDED


class FunctionCache:
    """A warm worker's function, checked against its digest and unpickled once.

    Every call of a pool has the same payload (the pool key includes its digest),
    so hashing and unpickling it per call was pure cost. The loaded function is
    reused from call to call, like the modules it imported: state it keeps in its
    own globals stays with the worker (docs/warm-workers.md, the isolation
    trade-off)."""

    def __init__(self) -> None:
        self._payload: bytes | None = None
        self._digest: str | None = None
        self._loaded: list[Any] = []

    def verified(self, payload: bytes, digest: str) -> bool:
        """Whether `payload` hashes to `digest` (hashed once per distinct payload)."""
        if digest == self._digest and (payload is self._payload or payload == self._payload):
            return True
        if hashlib.sha256(payload).hexdigest() != digest:
            return False
        self._payload, self._digest, self._loaded = payload, digest, []
        return True

    def load(self, payload: bytes) -> Any:
        if payload is not self._payload and payload != self._payload:
            return cloudpickle.loads(payload)
        if not self._loaded:
            self._loaded.append(cloudpickle.loads(payload))
        return self._loaded[0]


@dataclass
class Ran:
    """A call that ran, its outcome not recorded yet."""

    claimed: dict[str, Any]
    outcome: Result | Failure
    columns: dict[str, str]
    used: usage.Usage


def run_only(db: RuntimeDatabase, claimed: dict[str, Any], max_result_bytes: int,
             functions: FunctionCache | None = None, *, fork: bool = False) -> Ran:
    """Run a call this runtime holds, with its output captured and stored as it goes;
    the outcome is for the caller to record (a warm worker records several at once).
    `fork`: in a child forked for the call (forked.py, the `fork_per_call` hint)."""
    call_id, attempt = claimed["id"], claimed["attempt"]
    log.debug("running call %s attempt %d", call_id, attempt)
    meter = usage.Meter()
    mismatch = version_mismatch(claimed["client_python"], claimed["client_cloudpickle"])
    output = Output()
    function = claimed["function"]
    functions = functions or FunctionCache()  # (a fresh one hashes and loads once)
    if not functions.verified(function, claimed["function_digest"]):
        why = (f"the function payload does not match its digest "
               f"({hashlib.sha256(function).hexdigest()} is not "
               f"{claimed['function_digest']}); it was not loaded")
        outcome: Result | Failure = Failure(why, False, "PayloadDigestMismatch", why, "", None)
    elif mismatch:
        outcome = Failure(mismatch, False, "VersionMismatch", mismatch, "", None)
    else:
        writer = OutputWriter(db, call_id, attempt, output)
        on_item = items.ItemWriter(db, call_id, attempt, max_result_bytes)
        with capture_fds(output), writer.periodically(), \
                termination.recording(_on_sigterm(writer)):
            try:
                if fork:
                    from podfn_runtime.forked import execute_forked

                    outcome = execute_forked(function, claimed["args"], claimed["spec"],
                                             claimed["result_format"], on_item, functions.load)
                else:
                    outcome = execute(function, claimed["args"], claimed["spec"],
                                      claimed["result_format"], on_item, functions.load)
            finally:
                # The call is over: what it started must not outlive it (or see its
                # result written), nor keep the captured descriptors open.
                reaper.kill_descendants()
        writer.flush(retry=True)
        outcome = within_limit(outcome, max_result_bytes)
    # The chunks hold the whole output unless it went past their cap: then the columns
    # keep each stream's tail (output.py).
    columns = ({"stdout": output.stdout, "stderr": output.stderr} if output.capped
               else {"stdout": "", "stderr": ""})
    return Ran(claimed, outcome, columns, meter.read())


def record_failure(db: RuntimeDatabase, ran: Ran) -> dict[str, Any] | None:
    """Usage, then `fail` (which spends the secret) for a run that failed: two
    statements, signed with the secret in use (`use_secret`)."""
    failure = ran.outcome
    assert isinstance(failure, Failure)
    call_id, attempt = ran.claimed["id"], ran.claimed["attempt"]
    usage.record(db, ran.used, call_id, attempt)
    if failure.error_traceback:
        sys.stderr.write(failure.error_traceback)
    return db.transition(
        "fail",
        id=call_id,
        attempt=attempt,
        retryable=failure.retryable,
        reason=failure.reason,
        error_type=failure.error_type,
        error_message=failure.error_message,
        error_traceback=failure.error_traceback,
        error_pickle=failure.error_pickle,
        **ran.columns,
    )


def log_recorded(call_id: str, attempt: int, row: dict[str, Any] | None) -> None:
    if row is None:
        log.info("stale attempt: call %s moved on while attempt %d ran", call_id, attempt)
    else:
        log.info("call %s attempt %d recorded: %s", call_id, attempt, row["state"])



_LOG_FORMAT = "%(asctime)s podfn-runtime %(levelname)s %(message)s"
# The descriptor under the runtime's log handler when `prepare_log` built it ahead.
_prepared_log: list[int] = []


def _install_log(fd: int) -> logging.Logger:
    stream = os.fdopen(fd, "w", buffering=1, encoding="utf-8", errors="backslashreplace")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(_LOG_FORMAT))
    logger = logging.getLogger("podfn.runtime")
    logger.handlers[:] = [handler]
    logger.propagate = False
    return logger


def prepare_log() -> int:
    """For the local forkserver's zygote: the runtime's logger and handler built once,
    on a descriptor of their own, at the default level. An attempt then only
    repoints a descriptor: building them, and `setLevel`, which walks every logger of
    the process, was ~0.3 ms of each cold call, most of it copying the zygote's pages.
    Until `_log_apart` points it at a forked attempt's stderr, the descriptor is a
    copy of this process's stderr (the controller's), so what the zygote or a spare
    waiting for its attempt logs is seen, not lost. The descriptor, which a forked
    attempt keeps open."""
    fd = os.dup(2)
    _install_log(fd).setLevel("INFO")
    _prepared_log[:] = [fd]
    return fd


def prepared_log_descriptors() -> list[int]:
    return list(_prepared_log)


def _log_apart() -> None:
    """The runtime's log lines go to a duplicate of stderr taken now, before the call's
    output is captured, through a handler of its own logger: the root logger stays
    free for the call's `logging`, and what the call logs is stored with it."""
    level = os.environ.get("PODFN_LOG_LEVEL", "INFO").upper()
    if _prepared_log:
        os.dup2(2, _prepared_log.pop(), inheritable=False)
        logger = logging.getLogger("podfn.runtime")
    else:
        logger = _install_log(os.dup(2))
    if logging.getLevelName(logger.level) != level:
        logger.setLevel(level)


_preconnected: list[Any] = []
_proxied: list[Any] = []


def use_connection(connection: Any) -> None:
    """A connection to the runtime's database made before the attempt was known (the
    local forkserver's spare child, forkserver.py): `main` uses it instead of connecting."""
    _preconnected[:] = [connection]


def use_proxy(proxy: Any) -> None:
    """The local forkserver's supervisor runs this runtime's statements (proxy.py): `main`
    connects to nothing (the supervisor is its tee too, capture.use_shared_tee)."""
    _proxied[:] = [proxy]


def _ahead_of_claim() -> None:
    """A cold call on the local forkserver waits for its claim, which the supervisor
    started before this process had its request (proxy.py). Meanwhile it does what
    its run would do first: start the capture's reader thread, and build and format
    (without writing it) a log record like the one that says it runs, whose first
    formatting in a forked process copies pages of the zygote's: work the call would
    otherwise wait for after the claim."""
    capture.start_reader()
    record = log.makeRecord(log.name, logging.INFO, __file__, 0, "running call %s attempt %d",
                            ("", 0), None)
    for handler in log.handlers:
        handler.format(record)


def _connect_with_tee(url: str, secret: str, retry_seconds: float) -> RuntimeDatabase:
    """The runtime's connection, made on a thread while this one forks the output tee:
    the connection mostly waits for Postgres to start a backend, the fork is CPU, and a
    cold call waits for both before it runs."""
    if _proxied:
        capture.start_tee()  # (none to fork when the supervisor is the tee)
        _ahead_of_claim()
        return RuntimeDatabase(url, secret, retry_seconds=retry_seconds, proxy=_proxied.pop())
    if _preconnected:
        connection = _preconnected.pop()
        capture.start_tee()
        return RuntimeDatabase(url, secret, retry_seconds=retry_seconds, connection=connection)
    made: list[RuntimeDatabase | BaseException] = []

    def connect() -> None:
        try:
            made.append(RuntimeDatabase(url, secret, retry_seconds=retry_seconds))
        except BaseException as exc:  # re-raised on the main thread
            made.append(exc)

    connecting = capture.start_thread(connect, "podfn-connect")
    capture.start_tee()
    connecting.join()
    if isinstance(made[0], BaseException):
        raise made[0]
    return made[0]


def _from_environment() -> argparse.Namespace | None:
    """The options as `main` would parse them from no flags at all, without building
    the parser (a millisecond of a forked cold call's CPU); None if a value is not
    well-formed, so that the parser reports it."""
    env = os.environ
    try:
        attempt = env.get("PODFN_ATTEMPT")
        return argparse.Namespace(
            call_id=env.get("PODFN_CALL_ID"),
            attempt=None if attempt is None else int(attempt),
            database_url=env.get("PODFN_RUNTIME_DATABASE_URL"),
            max_result_bytes=int(env.get("PODFN_MAX_RESULT_BYTES") or DEFAULT_MAX_RESULT_BYTES),
            write_retry_seconds=float(env.get("PODFN_RUNTIME_WRITE_RETRY_SECONDS")
                                      or DEFAULT_RETRY_SECONDS))
    except ValueError:
        return None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m podfn_runtime",
        description="Run one attempt of a podfn call and record its outcome in Postgres.",
    )
    parser.add_argument("--call-id", default=os.environ.get("PODFN_CALL_ID"))
    parser.add_argument("--attempt", type=int, default=os.environ.get("PODFN_ATTEMPT"))
    parser.add_argument(
        "--database-url",
        default=os.environ.get("PODFN_RUNTIME_DATABASE_URL"),
        help="the runtime role's database URL; default: $PODFN_RUNTIME_DATABASE_URL",
    )
    parser.add_argument(
        "--max-result-bytes", type=int,
        default=int(os.environ.get("PODFN_MAX_RESULT_BYTES") or DEFAULT_MAX_RESULT_BYTES),
        help="a larger result fails the call (default: $PODFN_MAX_RESULT_BYTES, else 64 MiB)",
    )
    parser.add_argument(
        "--write-retry-seconds", type=float,
        default=os.environ.get("PODFN_RUNTIME_WRITE_RETRY_SECONDS") or DEFAULT_RETRY_SECONDS,
        help="how long to keep retrying a database write before exiting with code "
             f"{EXIT_DISRUPTED} (default: $PODFN_RUNTIME_WRITE_RETRY_SECONDS or "
             f"{DEFAULT_RETRY_SECONDS:g})",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    ns = _from_environment() if argv == [] else None
    if ns is None:
        ns = _parser().parse_args(argv)
    _log_apart()
    # A standing worker (docs/warm-workers.md) has a name and a secret of its own
    # instead of an attempt's; its secret leaves the environment at once, so what
    # a call starts does not inherit it.
    worker = os.environ.get("PODFN_WORKER", "")
    worker_secret = os.environ.pop("PODFN_WORKER_SECRET", "")
    # The secret is never a flag: argv is visible to every user of the machine.
    secret = os.environ.get("PODFN_ATTEMPT_SECRET", "")
    required = ((("--database-url", ns.database_url), ("PODFN_WORKER_SECRET", worker_secret))
                if worker else
                (("--call-id", ns.call_id), ("--attempt", ns.attempt),
                 ("--database-url", ns.database_url), ("PODFN_ATTEMPT_SECRET", secret)))
    missing = [flag for flag, value in required if value in (None, "")]
    if missing:
        _parser().error("missing " + ", ".join(missing) + " (or PODFN_CALL_ID, PODFN_ATTEMPT, "
                     "PODFN_RUNTIME_DATABASE_URL in the environment; the controller sets "
                     "them, with PODFN_ATTEMPT_SECRET, for each attempt)")
    reaper.become_subreaper()
    termination.install()  # one SIGTERM handler for the process's whole life
    try:
        db = _connect_with_tee(ns.database_url, secret or worker_secret, ns.write_retry_seconds)
    except DatabaseUnavailable as exc:
        log.error("%s", exc)
        return EXIT_DISRUPTED
    except RuntimeDatabaseError as exc:
        log.error("%s", exc)
        return EXIT_RUNTIME_FAILED
    try:
        from podfn_runtime import worker as warm  # the warm loop around run_claimed
        if worker:
            return warm.stand(db, worker, worker_secret, ns.database_url, ns.max_result_bytes)
        return warm.serve(db, ns.call_id, int(ns.attempt), ns.database_url,
                          ns.max_result_bytes)
    except DatabaseUnavailable as exc:
        log.error("could not record the outcome of call %s: %s", ns.call_id, exc)
        return EXIT_DISRUPTED
    except RuntimeDatabaseError as exc:
        log.error("could not record the outcome of call %s: %s", ns.call_id, exc)
        return EXIT_RUNTIME_FAILED
    finally:
        reaper.kill_descendants()
        db.close()
        capture.stop_tee()
