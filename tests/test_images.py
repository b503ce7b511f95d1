"""The Dockerfiles (no image can be built here: no container engine), read as text.

What they must keep true: non-root users, the runtime image holds only
podfn_runtime and its two dependencies in the ranges setup.cfg pins, and
its tag scheme is the one the controller asks for.
"""

from __future__ import annotations

import configparser
import re
import shlex
from pathlib import Path

import pytest

from podfn_platform.kube.manifest import RUNTIME_UID, runtime_image

ROOT = Path(__file__).resolve().parents[1]
RUNTIME, PLATFORM = ROOT / "runtime" / "Dockerfile", ROOT / "platform" / "Dockerfile"


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    # As Docker does: comment lines go first (even inside a continued RUN), then `\` joins lines.
    lines = [line for line in path.read_text().splitlines() if not line.strip().startswith("#")]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line:
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def final_stage(path: Path) -> list[tuple[str, str]]:
    steps = instructions(path)
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def setup_cfg_requirement(extra: str, name: str) -> str:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    section = "options" if extra == "" else "options.extras_require"
    key = "install_requires" if extra == "" else extra
    for line in cfg[section][key].split("\n"):
        if re.match(rf"{name}\b", line.strip()):
            return line.strip()
    raise AssertionError(f"{name} not in setup.cfg {extra or 'install_requires'}")


@pytest.mark.parametrize("path", [RUNTIME, PLATFORM], ids=["runtime", "platform"])
def test_final_stage_runs_as_a_non_root_user(path: Path) -> None:
    users = [args for word, args in final_stage(path) if word == "USER"]
    assert users, f"{path} has no USER in its final stage"
    user = users[-1].split(":")[0]
    assert user.isdigit() and int(user) == RUNTIME_UID  # numeric: runAsNonRoot can check it
    steps = final_stage(path)
    assert steps[-1][0] in ("CMD", "ENTRYPOINT")
    # Nothing after USER switches back to root.
    after = steps[[w for w, _ in steps].index("USER"):]
    assert all(w != "USER" or not a.startswith(("0", "root")) for w, a in after)


@pytest.mark.parametrize("path", [RUNTIME, PLATFORM], ids=["runtime", "platform"])
def test_slim_python_base_chosen_by_a_build_arg(path: Path) -> None:
    steps = instructions(path)
    assert ("ARG", "PYTHON_VERSION=3.12") in steps
    bases = [args.split()[0] for word, args in steps if word == "FROM"]
    assert bases and all(b == "python:${PYTHON_VERSION}-slim" for b in bases)


def test_runtime_installs_only_cloudpickle_and_psycopg_in_setup_cfg_ranges() -> None:
    steps = final_stage(RUNTIME)
    installs = [shlex.split(args) for word, args in steps if word == "RUN" and "pip install" in args]
    assert len(installs) == 1
    [words] = installs
    requirements = [w for w in words[words.index("install") + 1:] if not w.startswith("-")]
    assert requirements == [setup_cfg_requirement("", "cloudpickle"),
                            setup_cfg_requirement("runtime", "psycopg").replace(
                                "psycopg", "psycopg[binary]", 1)]
    copies = [args for word, args in steps if word in ("COPY", "ADD")]
    assert copies == ["runtime/podfn_runtime /opt/podfn/podfn_runtime"]
    assert ("CMD", '["python", "-m", "podfn_runtime"]') in steps


def test_runtime_tag_scheme_is_the_one_the_controller_asks_for() -> None:
    header = RUNTIME.read_text()
    [tag] = re.findall(r"-t (\S+)", header)
    [version] = re.findall(r"--build-arg PYTHON_VERSION=(\S+) ", header)
    assert tag == runtime_image("ghcr.io/podfn/runtime", f"{version}.4")
    deploy = (ROOT / "docs" / "deploy.md").read_text()
    assert "runtime:py${PY}" in deploy or "runtime:py3.12" in deploy


def test_platform_image_has_every_command_the_chart_runs() -> None:
    from podfn.cli import cli

    steps = final_stage(PLATFORM)
    assert ("CMD", '["podfn", "serve"]') in steps
    chart = "".join(p.read_text() for p in (ROOT / "charts" / "podfn" / "templates").glob("*.yaml"))
    commands = set(re.findall(r'command: \["podfn", "(\w+)"\]', chart))
    assert commands == {"serve", "controller", "migrate"}
    assert commands <= set(cli.commands)


def test_dockerignore_keeps_the_context_small() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", "tests", "**/__pycache__"} <= set(ignored)
