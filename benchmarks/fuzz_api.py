"""A longer schemathesis run than the test suite's: every check, every phase, a random seed.

    python benchmarks/fuzz_api.py [--examples 100] [--seed N] [--url URL --token T]

Without --url it starts `podfn serve` (gunicorn) on a migrated embedded
Postgres, as benchmarks/api.py does, and fuzzes that. The seed is printed by
schemathesis; pass it back with --seed to replay a run. Exits with
schemathesis' status (0: no failures). tests/test_openapi.py runs the same
command with a fixed seed and fewer examples.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path


def command(url: str, token: str, examples: int, seed: int | None) -> list[str]:
    st = shutil.which("st") or str(Path(sys.executable).with_name("st"))
    out = [st, "run", f"{url}/openapi.json", "-H", f"Authorization: Bearer {token}",
           "--checks", "all", "--phases", "examples,coverage,fuzzing,stateful",
           "--max-examples", str(examples), "--request-timeout", "30"]
    return out + (["--seed", str(seed)] if seed is not None else [])


@contextlib.contextmanager
def server(url: str | None, token: str | None) -> Iterator[tuple[str, str]]:
    if url:
        yield url, token or ""
        return
    sys.path.insert(0, str(Path(__file__).parent))
    import api

    # Long polls (invoke waits 30 s by default) capped below schemathesis' 10 s response limit.
    with api.api_server(extra_env={"PODFN_MAX_WAIT_SECONDS": "2"}) as (started, _):
        yield started, api.TOKEN


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=100)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--url")
    parser.add_argument("--token")
    args = parser.parse_args()
    with server(args.url, args.token) as (url, token):
        # tests/schemathesis_frames.py makes the framed submissions' bodies.
        tests = str(Path(__file__).resolve().parent.parent / "tests")
        env = {**os.environ, "SCHEMATHESIS_HOOKS": "schemathesis_frames",
               "PYTHONPATH": os.pathsep.join(filter(None, (tests, os.environ.get("PYTHONPATH"))))}
        return subprocess.run(command(url, token, args.examples, args.seed), env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
