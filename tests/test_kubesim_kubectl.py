"""A second client checks the stand-in's wire format: kubectl (Go's client-go).

The machine image ships kubectl binaries (1.27-1.33) with the Google Cloud
SDK; where they are, the oldest and the newest create, list (in chunks),
watch and delete pods against the stand-in. Where none is, the test says so
and is skipped. `--validate=false` because the stand-in serves no OpenAPI
documents (kubectl's client-side validation downloads them).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kubesim import KubeSim
from kubesim.pytest_fixtures import base_env

SDK_DIRS = ("/usr/lib/google-cloud-sdk/bin", "/opt/google-cloud-sdk/bin")


def _kubectls() -> list[Path]:
    found: dict[tuple[int, int], Path] = {}
    for folder in SDK_DIRS:
        for path in sorted(Path(folder).glob("kubectl.1.*")) if os.path.isdir(folder) else []:
            m = re.fullmatch(r"kubectl\.1\.(\d+)", path.name)
            if m and os.access(path, os.X_OK):
                found.setdefault((1, int(m.group(1))), path)
    versions = sorted(found)
    return [found[v] for v in {versions[0], versions[-1]}] if versions else []


KUBECTLS = _kubectls()


@pytest.mark.skipif(not KUBECTLS, reason="no kubectl binary under " + " or ".join(SDK_DIRS)
                    + " (the Google Cloud SDK's); the Python client's contract tests still run")
@pytest.mark.parametrize("kubectl", KUBECTLS or [Path("kubectl")], ids=lambda p: p.name)
def test_kubectl_creates_lists_watches_and_deletes_pods(kubectl: Path, tmp_path: Path) -> None:
    with KubeSim(base_env=base_env(), bookmark_interval=0.5) as sim:
        config = sim.kubeconfig(tmp_path / "kubeconfig")

        def run(*args: str, stdin: str | None = None) -> str:
            result = subprocess.run([str(kubectl), f"--kubeconfig={config}", *args],
                                    input=stdin, capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
            return result.stdout

        for name in ("kc-1", "kc-2", "kc-3"):
            pod = {"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": name, "labels": {"app": "kubectl"}},
                   "spec": {"restartPolicy": "Never", "containers": [{
                       "name": "main", "image": "python:3.11",
                       "command": [sys.executable, "-c", "print('hello')"]}]}}
            assert run("create", "--validate=false", "-f", "-", stdin=json.dumps(pod)) == \
                f"pod/{name} created\n"
        listed = json.loads(run("get", "pods", "-l", "app=kubectl", "--chunk-size=2",
                                "-o", "json"))
        assert [p["metadata"]["name"] for p in listed["items"]] == ["kc-1", "kc-2", "kc-3"]
        # Watch (a chunked stream of events) until every pod has succeeded, then stop
        # it: the watch itself would run until its request timeout.
        want = {"kc-1 Succeeded", "kc-2 Succeeded", "kc-3 Succeeded"}
        seen: set[str] = set()
        with subprocess.Popen([str(kubectl), f"--kubeconfig={config}", "get", "pods", "-l",
                               "app=kubectl", "--watch", "-o",
                               "jsonpath={.metadata.name} {.status.phase}{'\\n'}",
                               "--request-timeout=30s"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True) as watch:
            assert watch.stdout is not None
            for line in watch.stdout:
                seen.add(line.strip())
                if want <= seen:
                    break
            watch.terminate()
        assert want <= seen, f"kubectl's watch ended after {sorted(seen)}"
        assert run("logs", "kc-1") == "hello\n"
        assert run("delete", "pod", "kc-1", "kc-2", "kc-3", "--wait=true",
                   "--timeout=30s").count("deleted") == 3
        assert run("get", "pods", "-o", "name") == ""
