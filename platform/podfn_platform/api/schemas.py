"""The request and response bodies of the API, as pydantic models: the one description of the contract.

Each model is used twice: /openapi.json is generated from its JSON Schema,
and the views check what clients send against that very schema before
reading it into the model (`api/contract.py`), so the document cannot drift
from what the API enforces.

Strings a client sends are described without NUL (Postgres text cannot hold
it; api/inputs.py answers 400 for one), so a schema-valid request is never
refused for it. Patterns are ECMA-262, as JSON Schema means them, written so
that Python reads them the same way: no `\\w`, `\\d`, `\\s` or `\\Z`, and a
final `$` (which Python also lets match before a newline) only where the
schema check, an ECMA-262 engine, decides. CPU and memory hints are described
by the forms the API takes, each within podfn.spec's bounds: a regular
expression cannot bound every spelling of a Kubernetes quantity.
"""

from __future__ import annotations

import unicodedata
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from podfn import spec as spec_rules

STATES = ("queued", "launching", "running", "succeeded", "failed", "timed_out", "cancelled")
CANCELLABLE = ("queued", "launching", "running")
SCOPES = ("submit", "invoke", "deploy", "read", "admin")
MAX_CALLS_PER_REQUEST = 10_000

NO_NUL = r"^[^\x00]*$"
Text = Annotated[str, Field(pattern=NO_NUL)]
State = Literal["queued", "launching", "running", "succeeded", "failed", "timed_out",
                "cancelled"]
Cancellable = Literal["queued", "launching", "running"]
Scope = Literal["submit", "invoke", "deploy", "read", "admin"]


def _visible_bmp() -> str:
    """Ranges, as a character class body, of the non-ASCII BMP characters that are neither
    control, format, surrogate nor space characters.

    Spelled out with \\u escapes because `\\w` is ASCII in ECMA-262 (what JSON Schema's
    `pattern` means, and what the API checks with) but Unicode in Python (what fuzzers
    generate from): one class must mean one set everywhere.
    """
    hidden = {"Cc", "Cf", "Cs", "Zs", "Zl", "Zp"}
    ranges: list[tuple[int, int]] = []
    for code in range(0xA0, 0x10000):
        if unicodedata.category(chr(code)) in hidden:
            continue
        if ranges and ranges[-1][1] == code - 1:
            ranges[-1] = (ranges[-1][0], code)
        else:
            ranges.append((code, code))
    return "".join(f"\\u{a:04x}-\\u{b:04x}" if a != b else f"\\u{a:04x}" for a, b in ranges)


# A function name is part of a URL: 1 to 200 of ASCII letters, digits, `_ . : -`, inner spaces
# and visible non-ASCII characters of the BMP (Python identifiers may be non-ASCII); no '/' or
# '\\', no control or format characters, no space at either end, not '.' or '..'.
_NAME_END = rf"[A-Za-z0-9_.:{_visible_bmp()}-]"
_NAME_INNER = _NAME_END[:-2] + " -]"
FUNCTION_NAME = rf"^(?!\.\.?$){_NAME_END}(?:{_NAME_INNER}{{0,198}}{_NAME_END})?$"
TOKEN_NAME = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,99}$"
LABEL_KEY = r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
# Not NUL and not a space in either reading of `\s` (Python's takes \x1c-\x1f and \x85,
# ECMA-262's \ufeff): at least one such character makes a name that is not blank.
VISIBLE = r"[^\x00\t\n\v\f\r \x1c-\x1f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]"
# A Kubernetes label value: empty, or up to 63 of [A-Za-z0-9._-] with alphanumeric ends. A node
# selector or label outside it is refused here, not left to fail the pod's creation later.
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$"
# The forms of a CPU or memory quantity the API takes: podfn.spec's, so the client refuses
# the same spellings when the hint is given.
CPU = spec_rules.CPU_FORMS
MEMORY = spec_rules.MEMORY_FORMS
ENV_NAME = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
SECRET_NAME = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"


# Any JSON value without NUL in a string or key (Postgres jsonb cannot hold it): pod_patch and
# tolerations are free-form Kubernetes objects. Added to the document's components by contract.py.
JSON_VALUE: dict[str, Any] = {  # one schema, no anyOf: each keyword applies to its own kind of value
    "type": ["null", "boolean", "number", "string", "array", "object"], "pattern": NO_NUL,
    "items": {"$ref": "#/components/schemas/JsonValue"}, "propertyNames": {"pattern": NO_NUL},
    "additionalProperties": {"$ref": "#/components/schemas/JsonValue"}}
JSON_OBJECT: dict[str, Any] = {
    "type": "object", "propertyNames": {"pattern": NO_NUL},
    "additionalProperties": {"$ref": "#/components/schemas/JsonValue"}}


LABEL_VALUE_WORDS = ("a Kubernetes label value: empty, or up to 63 letters, digits, '-', '_' or "
                     "'.', beginning and ending with a letter or digit")


def _strings(keys: str, values: str = NO_NUL) -> Any:
    value: dict[str, Any] = {"type": "string", "pattern": values}
    if values == LABEL_VALUE:
        value["description"] = LABEL_VALUE_WORDS
    return Field(default=None, json_schema_extra={
        "propertyNames": {"pattern": keys}, "additionalProperties": value})


class Model(BaseModel):
    """A response body: the API may add fields, so clients must ignore ones they do not know."""

    model_config = ConfigDict(extra="allow", regex_engine="python-re")


class Request(BaseModel):
    """A request body: a field the API does not know is refused (422), not silently ignored."""

    model_config = ConfigDict(extra="forbid", strict=True, regex_engine="python-re")


def _absent(**options: Any) -> Any:
    """An optional field: null only if its type says `| None` (else no null default either)."""
    return Field(default=None, **options)


class Toleration(Request):
    """A Kubernetes toleration, as the pod's `tolerations` takes it."""

    key: str = _absent(pattern=LABEL_KEY,
                     description="absent, with operator Exists: every taint")
    operator: Literal["Exists", "Equal"] = _absent()
    value: str = _absent(pattern=LABEL_VALUE, description=LABEL_VALUE_WORDS)
    effect: Literal["", "NoSchedule", "PreferNoSchedule", "NoExecute"] = _absent()
    tolerationSeconds: int = _absent(ge=-(2**63), le=2**63 - 1)


def _number(low: float, high: float) -> Any:
    """A number (a whole one stays an int: the runtime's messages say "1 s", not "1.0 s")."""
    def number(schema: dict[str, Any]) -> None:
        schema.clear()
        schema.update(type="number", minimum=low, maximum=high)

    return _absent(ge=low, le=high, json_schema_extra=number)


class Spec(Request):
    """Hints for a call's pod (podfn.spec checks each one; these are the forms it accepts).

    Only the hints whose default is "none" (podfn.spec.DEFAULTS) may be null, as
    the client sends them; the others are absent or a value. A null the API would
    take anyway is still not said: a fuzzer cannot check that a value it meant to
    break inside a container did not come out null (multipart bodies with byte
    parts are not re-validated), so a nullable container hides broken values.
    """

    model_config = ConfigDict(extra="allow", strict=True, regex_engine="python-re",
                              json_schema_extra={
        "additionalProperties": False})
    cpu: str | None = _absent(json_schema_extra={"pattern": CPU},
                            description="a Kubernetes CPU quantity, 1m to 1024 cores: millicores "
                            "('250m') or cores with up to 3 decimals ('2', '0.5')")
    cpu_limit: bool = _absent()
    memory: str | None = _absent(json_schema_extra={"pattern": MEMORY},
                               description="a Kubernetes memory quantity, 32Mi to 1Ti: a whole "
                               "number of Mi or M, or Gi or G with up to 3 decimals ('512Mi', "
                               "'1.5Gi')")
    gpu: int = _absent(ge=0, le=64)
    gpu_vendor: str = _absent(pattern=r"^[a-z0-9][a-z0-9.-]*$",
                                   description="the GPU resource's domain, e.g. nvidia.com")
    image: str | None = _absent(pattern=r"^[A-Za-z0-9][A-Za-z0-9./:@_-]*$",
                              description="an image reference")
    env: dict[str, str] = _strings(ENV_NAME)
    secrets: list[str] = _absent(json_schema_extra={
        "items": {"type": "string", "pattern": SECRET_NAME}})
    # int | float: a whole number stays one (the runtime's messages say "1 s", not "1.0 s").
    timeout: int | float | None = _absent(ge=0.001, le=604800, json_schema_extra={
        "anyOf": [{"type": "number", "minimum": 0.001, "maximum": 604800}, {"type": "null"}]})
    retries: int = _absent(ge=0, le=100)
    retry_backoff: int | float = _number(0, 3600)
    node_selector: dict[str, str] = _strings(LABEL_KEY, LABEL_VALUE)
    tolerations: list[Toleration] = _absent()
    labels: dict[str, str] = _strings(LABEL_KEY, LABEL_VALUE)
    annotations: dict[str, str] = _strings(LABEL_KEY)
    service_account: str | None = _absent(pattern=SECRET_NAME)
    pod_patch: dict[str, Any] | None = _absent(json_schema_extra={
        "anyOf": [JSON_OBJECT, {"type": "null"}]})
    # Warm workers (docs/warm-workers.md); null max_calls_per_worker means no limit.
    max_calls_per_worker: int | None = _absent(ge=1, le=10**9)
    idle_timeout: int | float = _number(0.1, 86400)
    min_workers: int = _absent(ge=0, le=1000)
    fork_per_call: bool = _absent(description="in a warm worker, run each call in a process "
                                  "forked from the warmed worker (docs/warm-workers.md)")


class Client(Request):
    """The Python and cloudpickle versions that made the pickles (the runtime must match)."""

    python: Text
    cloudpickle: Text


# Examples in the document: what a client sends (schemathesis' examples phase sends them too).
CLIENT = {"python": "3.11.9", "cloudpickle": "3.1.1"}


def _example(*examples: dict[str, Any]) -> ConfigDict:
    return ConfigDict(json_schema_extra={"examples": list(examples)})


class SubmitMeta(Request):
    model_config = _example({"function_name": "example.double", "client": CLIENT,
                             "spec": {"cpu": "500m", "memory": "512Mi", "timeout": 60}})
    function_name: Annotated[str, Field(min_length=1, max_length=256,
                                        pattern=rf"^[^\x00]*{VISIBLE}[^\x00]*$")]
    client: Client
    spec: Spec | None = None


class DeployMeta(Request):
    model_config = _example({"name": "example.double", "client": CLIENT,
                             "spec": {"memory": "1Gi", "retries": 2}})
    name: Annotated[str, Field(pattern=FUNCTION_NAME)]
    client: Client
    spec: Spec | None = None


class DeployedCallsMeta(Request):
    model_config = _example({"client": CLIENT}, {"client": CLIENT, "spec": {"cpu": "2"}})
    client: Client
    spec: Spec | None = Field(default=None, description="overrides of the live version's hints")


class WaitBody(Request):
    model_config = _example({"ids": ["0f8e5a5c9f6d4e7a"], "wait": 1})
    ids: Annotated[list[Text], Field(min_length=1, max_length=MAX_CALLS_PER_REQUEST)]
    wait: Annotated[float, Field(ge=0)] = 0


class CancelBody(Request):
    """Which calls to cancel; at least one of ids, function, state, or mine=true."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"anyOf": [
        {"required": ["ids"], "properties": {"ids": {"type": "array"}}},
        {"required": ["function"], "properties": {"function": {"type": "string"}}},
        {"required": ["state"], "properties": {"state": {"type": "string"}}},
        {"required": ["mine"], "properties": {"mine": {"const": True}}}],
        "examples": [{"function": "example.double", "state": "queued", "dry_run": True},
                     {"mine": True}]})
    ids: Annotated[list[Text], Field(max_length=MAX_CALLS_PER_REQUEST)] | None = None
    function: Text | None = None
    state: Cancellable | None = None
    mine: bool = Field(default=False, description="only calls made with this token")
    dry_run: bool = Field(default=False, description="say what would be cancelled, change "
                          "nothing")


class RollbackBody(Request):
    model_config = _example({"version": 1}, {})
    version: int | None = Field(default=None, description="default: the version before the "
                                "live one")


class InvokeBody(Request):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"args": [21], "kwargs": {}}]})
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)


class TokenBody(Request):
    model_config = _example({"name": "ci-bot", "scopes": ["submit", "read"]})
    name: Annotated[str, Field(pattern=TOKEN_NAME)]
    scopes: Annotated[list[Scope], Field(min_length=1)]


# Responses


class ErrorDetail(Model):
    code: str
    message: str
    field: str | None = None


class Error(Model):
    error: ErrorDetail


class CallError(Model):
    type: str | None = None
    message: str | None = None
    traceback: str | None = None
    pickle_size: int | None = Field(default=None, description="bytes of the pickled exception "
                                    "(GET /v1/calls/{id}/error)")


class Call(Model):
    id: str
    function: str | None = None
    state: State
    attempt: int | None = None
    reason: str | None = None
    error: CallError | None = None


class Outcome(Call):
    result_format: Literal["pickle", "json"] | None = None
    result_size: int | None = Field(default=None, description="bytes of the stored result")
    result: str | None = Field(default=None, description="base64 of a small pickled result "
                               "(in `wait` answers only)")
    value: Any = Field(default=None, description="the JSON result of an HTTP invoke")


class CallId(Model):
    id: str


class CallsCreated(Model):
    calls: list[CallId]
    replayed: bool
    finished: list[Outcome] | None = Field(
        default=None, description="with `wait`: the calls that finished meanwhile, as "
                                  "`POST /v1/calls/wait` answers them")


class CallList(Model):
    calls: list[Call]


class Outcomes(Model):
    calls: list[Outcome]


class Cancelled(Model):
    cancelled: list[str]
    matched: list[str]
    count: int
    dry_run: bool


class CancelledCall(Call):
    cancelled: bool


class Logs(Model):
    """The whole text of each stream; with `offset` or `wait`, the chunks from an offset."""

    stdout: str | None = None
    stderr: str | None = None
    state: str | None = None
    chunks: list[LogChunk] | None = None
    next_offset: int | None = None
    done: bool | None = None


class LogChunk(Model):
    stream: str
    offset: int
    data: str
    at: str | None = None


class Items(Model):
    """Items a generator call yielded: `data` is a base64 pickle (the API never unpickles)."""

    id: str
    state: str
    items: list[dict[str, Any]]
    next: int
    done: bool


class Usage(Model):
    """Median and p95 of what a function's last calls used, its hints, and a suggestion."""


class UsageList(Model):
    functions: list[Usage]


class Pending(Call):
    location: str | None = None


class Deployed(Model):
    name: str
    version: int
    live_version: int
    unchanged: bool
    deployed_at: str | None = None


class Function(Model):
    name: str
    live_version: int
    spec: dict[str, Any] | None = None
    deployed_at: str | None = None
    deployed_by: str | None = None


class FunctionList(Model):
    functions: list[Function]


class Token(Model):
    id: str
    name: str
    scopes: list[str]
    created_at: str | None = None
    revoked_at: str | None = None


class NewToken(Token):
    token: str = Field(description="the secret; shown once")


class TokenList(Model):
    tokens: list[Token]


class Health(Model):
    ok: bool
