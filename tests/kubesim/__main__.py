"""Run kubesim as its own process: ``python tests/kubesim --kubeconfig PATH``.

Prints the URL it listens on (one line, flushed), writes a kubeconfig, and
serves until SIGTERM or SIGINT. Container processes inherit this process's
environment as their base env. Fault injection is available over HTTP at
``POST /_sim/faults/<method>`` (see faults.py).
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):
    # Run as a directory (``python tests/kubesim``): Python put this folder on
    # sys.path, where selectors.py would shadow the stdlib module of that name.
    # Replace it with its parent (tests/) so ``import kubesim`` works - never
    # the repo root, whose ``platform/`` folder would shadow the stdlib too.
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
    sys.path.insert(0, os.path.dirname(_here))
    __package__ = "kubesim"

import argparse
import signal
import threading

from kubesim import KubeSim


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kubesim", description=__doc__)
    p.add_argument("--kubeconfig", required=True, help="where to write the kubeconfig")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--bookmark-interval", type=float, default=60.0)
    p.add_argument("--gone-mode", choices=["http", "event"], default="event")
    p.add_argument("--workdir", default=None, help="cwd of container processes")
    p.add_argument("--verbose", action="store_true", help="log requests to stderr")
    args = p.parse_args(argv)

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    sim = KubeSim(host=args.host, port=args.port, bookmark_interval=args.bookmark_interval,
                  gone_mode=args.gone_mode, workdir=args.workdir, verbose=args.verbose)
    with sim:
        sim.kubeconfig(args.kubeconfig)
        print(sim.url, flush=True)
        while not done.wait(1.0):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
