"""The client's one connection to the podfn API.

Every transport or HTTP error becomes a podfn error here, with the URL and a
next step, so the rest of the client never sees httpx.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any

import httpx

from podfn.errors import NotFound, PlatformError, PlatformUnreachable
from podfn.settings import Settings

# Seconds the server may hold a long-poll beyond what we asked for before we
# call the connection dead.
_WAIT_SLACK = 15.0


class APIClient:
    def __init__(self, url: str, token: str | None, *, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        headers = {"User-Agent": "podfn-client"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> APIClient:
        url, token = (settings or Settings.from_env()).platform()
        return cls(url, token)

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, *, timeout: float | None = None,
                 **kwargs: Any) -> Any:
        try:
            response = self._http.request(
                method, path, timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
                **kwargs,
            )
        except httpx.TransportError as exc:
            raise PlatformUnreachable(
                f"cannot reach the podfn API at {self.url} ({type(exc).__name__}: {exc}); "
                "check PODFN_URL, or start a local platform with `podfn dev`"
            ) from exc
        if response.status_code >= 400:
            raise _error_from(response)
        return response.json()

    def submit(self, *, function_name: str, function: bytes, args: Sequence[bytes],
               spec: dict[str, Any], versions: dict[str, str]) -> list[str]:
        """Record one call per element of `args`, all running `function`; their ids."""
        meta = {"function_name": function_name, "spec": spec, "client": versions}
        files = [("function", ("function", function, "application/octet-stream"))]
        files += [("args", (f"args{i}", blob, "application/octet-stream"))
                  for i, blob in enumerate(args)]
        body = self._request("POST", "/v1/calls", data={"meta": json.dumps(meta)}, files=files)
        return [c["id"] for c in body["calls"]]

    def get_call(self, call_id: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/v1/calls/{call_id}"))

    def wait(self, ids: Sequence[str], wait: float) -> list[dict[str, Any]]:
        """The finished calls among `ids` with their results, waiting up to `wait` s for one."""
        body = self._request("POST", "/v1/calls/wait", json={"ids": list(ids), "wait": wait},
                             timeout=wait + _WAIT_SLACK)
        calls = body["calls"]
        for call in calls:
            for key in ("result",):
                if call.get(key) is not None:
                    call[key] = base64.b64decode(call[key])
            error = call.get("error")
            if error and error.get("pickle") is not None:
                error["pickle"] = base64.b64decode(error["pickle"])
        return list(calls)

    def cancel(self, call_id: str) -> dict[str, Any]:
        return dict(self._request("POST", f"/v1/calls/{call_id}/cancel"))

    def logs(self, call_id: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/v1/calls/{call_id}/logs"))

    def list_calls(self, **filters: Any) -> list[dict[str, Any]]:
        params = {k: v for k, v in filters.items() if v is not None}
        return list(self._request("GET", "/v1/calls", params=params)["calls"])


def _error_from(response: httpx.Response) -> PlatformError:
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        code, message = "http_error", response.text[:500] or response.reason_phrase
    text = f"{message} (HTTP {response.status_code} from {response.request.url})"
    if response.status_code == 404:
        return NotFound(text, status=404, code=code)
    return PlatformError(text, status=response.status_code, code=code)
