"""podfn's exceptions: one root, `PodfnError`, so callers can catch them all.

Each message says what went wrong and, where there is one, what to do next.
A remote exception that can be unpickled is re-raised as itself (chained to a
`RemoteTraceback` cause); everything else the platform reports is one of these.
"""

from __future__ import annotations


class PodfnError(Exception):
    """Root of every error podfn raises."""


class ConfigurationError(PodfnError):
    """Settings are missing or malformed (a `PODFN_*` variable, the profile)."""


class InvalidSpec(PodfnError, ValueError):
    """A hint or spec field is malformed. `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class Unpicklable(PodfnError, TypeError):
    """A function or argument cannot be pickled; the message names the variable or argument."""


class PlatformError(PodfnError):
    """The platform answered with an error."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code


class PlatformUnreachable(PlatformError):
    """The API could not be reached at all."""


class NotAuthorized(PlatformError):
    """401 (no valid token) or 403 (the token lacks a scope)."""


class NotFound(PlatformError):
    """The platform has no such call (or function)."""


class DatabaseError(PodfnError):
    """Postgres refused a statement (the platform's side)."""

    def __init__(self, message: str, *, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class DatabaseUnavailable(DatabaseError):
    """Postgres could not be reached (the platform's side)."""


class CallError(PodfnError):
    """A call ended without a result."""

    def __init__(self, message: str, *, call_id: str, state: str, reason: str | None) -> None:
        super().__init__(message)
        self.call_id = call_id
        self.state = state
        self.reason = reason


class CallFailed(CallError):
    """The call failed for a reason other than an exception we could re-raise."""


class CallTimeout(CallError, TimeoutError):
    """The call ran past its `timeout` and was stopped."""


class CallCancelled(CallError):
    """The call was cancelled."""


class ResultTimeout(PodfnError, TimeoutError):
    """`Call.result(timeout=...)` gave up waiting; the call itself goes on."""


def logs_hint(call_id: str) -> str:
    """The command that shows a call's output (named in every remote error)."""
    return f"see its output with: podfn logs {call_id}"


class RemoteTraceback(PodfnError):
    """Carries the remote traceback text as the `__cause__` of a re-raised exception."""

    def __init__(self, traceback_text: str, *, call_id: str | None = None) -> None:
        super().__init__(traceback_text)
        self.traceback_text = traceback_text
        self.call_id = call_id

    def __str__(self) -> str:
        where = f" of call {self.call_id} ({logs_hint(self.call_id)})" if self.call_id else ""
        return f"\n\nRemote traceback{where}:\n\n" + self.traceback_text.rstrip()


class KubernetesError(PodfnError):
    """The Kubernetes API refused a request or could not be reached (the platform's side)."""

    def __init__(self, message: str, *, status: int | None = None, reason: str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.retry_after = retry_after


class KubernetesTransient(KubernetesError):
    """429, 5xx or a broken connection: worth retrying after a pause."""


class KubernetesConflict(KubernetesTransient):
    """409 reason `Conflict`: a concurrent write got there first (e.g. quota admission
    updating its ResourceQuota); nothing was created, so the request is worth repeating."""


class KubernetesAlreadyExists(KubernetesError):
    """409 reason `AlreadyExists`: an object of that name is there (a repeated create)."""


class KubernetesUnauthorized(KubernetesError):
    """401: the controller's credentials were refused (expired token): reload and retry;
    a problem of the controller, not of any call."""


class KubernetesNotFound(KubernetesError):
    """404."""


class KubernetesGone(KubernetesError):
    """410: the resourceVersion asked for is no longer in the server's history."""


class KubernetesQuotaExceeded(KubernetesError):
    """403 'exceeded quota': the cluster may have room later."""


class KubernetesInvalid(KubernetesError):
    """422 or another 4xx: the request itself is wrong and retrying will not help."""
