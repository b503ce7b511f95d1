"""A remote failure's traceback shows the user's file, line and source text, where that file is absent.

The user's module is written to a temporary file, pickled by the client,
then deleted before anything runs it: the runtime process (as in a pod)
has no copy of it, so every source line in these tracebacks travelled
inside the payload.
"""

from __future__ import annotations

import importlib.util
import linecache
import sys
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from click.testing import CliRunner

from conftest import Platform
from podfn import RemoteTraceback, remote, serialization
from podfn.call import Call, default_client
from podfn.cli import cli

pytestmark = pytest.mark.e2e

USER_CODE = '''\
def divide(a, b):
    return ratio(a, b)


def ratio(a, b):
    return a / b  # the line that fails
'''


@dataclass
class GoneModule:
    path: Path
    payload: bytes  # the pickled `divide`, made while the file existed


@pytest.fixture
def gone_module(tmp_path: Path) -> Iterator[GoneModule]:
    name = f"userapp_{uuid.uuid4().hex[:8]}"
    path = tmp_path / f"{name}.py"
    path.write_text(USER_CODE)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module: ModuleType = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        payload = serialization.dumps(module.divide)
        path.unlink()
        linecache.checkcache(str(path))
        assert not linecache.getlines(str(path)), "the source must be gone from this machine"
        yield GoneModule(path, payload)
    finally:
        del sys.modules[name]


def assert_user_frames(traceback_text: str, path: Path) -> None:
    assert f'File "{path}", line 2, in divide\n    return ratio(a, b)' in traceback_text
    assert f'File "{path}", line 6, in ratio\n    return a / b  # the line that fails' \
        in traceback_text
    assert "ZeroDivisionError: division by zero" in traceback_text
    assert "<dynamic-code>" not in traceback_text
    assert "podfn_runtime" not in traceback_text, "the runtime's own frames are not the user's"


def test_source_travels_with_code_pickled_by_value(gone_module: GoneModule) -> None:
    """Independent of cloudpickle's own handling of co_filename (3.1.3 sets "<dynamic-code>")."""
    fn = serialization.loads(gone_module.payload)
    assert fn.__code__.co_filename == str(gone_module.path)
    with pytest.raises(ZeroDivisionError) as info:
        fn(1, 0)
    text = "".join(traceback.format_exception(info.value))
    assert f'File "{gone_module.path}", line 6, in ratio' in text
    assert "return a / b  # the line that fails" in text


def test_remote_traceback_in_client_and_cli(platform: Platform, gone_module: GoneModule) -> None:
    fn = remote(lambda a, b: None)
    [call_id] = default_client().submit(
        function_name="userapp.divide", function=gone_module.payload,
        args=[serialization.dumps(((1, 0), {}))], spec=fn.hints,
        versions=serialization.client_versions())
    with pytest.raises(ZeroDivisionError) as info:
        Call(call_id).result(timeout=60)
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert_user_frames(cause.traceback_text, gone_module.path)

    shown = CliRunner().invoke(cli, ["call", call_id], catch_exceptions=False)
    assert_user_frames(shown.output, gone_module.path)


def test_http_invoke_error_traceback(platform: Platform, gone_module: GoneModule) -> None:
    fn = remote(lambda a, b: None)
    default_client().deploy(name="divide", function=gone_module.payload, spec=fn.hints,
                            versions=serialization.client_versions())
    with httpx.Client(base_url=platform.url, timeout=60,
                      headers={"Authorization": f"Bearer {platform.token}"}) as client:
        body = client.post("/v1/functions/divide/invoke", json={"args": [1, 0]}).json()
    assert body["state"] == "failed"
    assert_user_frames(body["error"]["traceback"], gone_module.path)
