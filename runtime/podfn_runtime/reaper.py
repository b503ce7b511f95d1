"""Nothing a call starts outlives the call: find and kill a process's descendants.

A function may start processes, and a process that calls `setsid` leaves the
process group the launcher kills on timeout or cancel. So the runtime makes
itself a *child subreaper* (Linux `PR_SET_CHILD_SUBREAPER`): a descendant
whose parent exits is re-parented to the runtime rather than to init, and
stays in the runtime's process tree however it detached. When the call ends,
whatever its outcome, the runtime kills that whole tree. The local
forkserver is a subreaper too, for the descendants of a runtime that was
itself killed (timeout, cancel, a crash).

The tree is read from /proc (each process's parent id). To kill a tree that
may still be forking, it is frozen first: SIGSTOP to every member until a
pass finds no new one, then SIGKILL to all. Elsewhere than Linux this module
does nothing (the local launcher's other guarantees still hold).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import signal
import sys
import time

_PR_SET_CHILD_SUBREAPER = 36
_PROC = "/proc"


@functools.cache
def _libc() -> ctypes.CDLL:
    """Loaded once per process image: find_library runs `ldconfig -p`, milliseconds a
    cold call would pay again in every child the local forkserver forks."""
    return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def become_subreaper() -> bool:
    """Adopt orphaned descendants of this process; False where that is not possible."""
    if sys.platform != "linux":
        return False
    return bool(_libc().prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)


def parent_of(pid: int | str) -> int | None:
    """`pid`'s parent, or None if it is gone."""
    try:
        with open(f"{_PROC}/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    fields = stat[stat.rfind(b")") + 2:].split()
    return int(fields[1]) if len(fields) > 1 else None


def _parents() -> dict[int, int]:
    """{pid: parent pid} of every process visible in /proc."""
    parents: dict[int, int] = {}
    try:
        names = os.listdir(_PROC)
    except OSError:
        return parents
    for name in names:
        if name.isdigit() and (parent := parent_of(name)) is not None:
            parents[int(name)] = parent
    return parents


def children() -> set[int] | None:
    """This process's live children (any of its threads may have forked them), or
    None where the kernel does not list them (CONFIG_PROC_CHILDREN unset).

    Read with os.open/os.read: a warm worker asks after every call, and a Python
    file object per thread cost twice as much as the reads themselves."""
    kids: set[int] = set()
    try:
        tasks = os.listdir(f"{_PROC}/self/task")
    except OSError:
        return None
    for task in tasks:
        try:
            fd = os.open(f"{_PROC}/self/task/{task}/children", os.O_RDONLY)
        except FileNotFoundError:
            if os.path.exists(f"{_PROC}/self/task/{task}"):
                return None  # the thread lives on: the kernel has no children file
            continue
        except OSError:
            return None
        try:
            listed = b""
            while chunk := os.read(fd, 4096):
                listed += chunk
        except OSError:
            return None
        finally:
            os.close(fd)
        kids.update(int(pid) for pid in listed.split())
    return kids


# Helpers of the runtime's own that must outlive the call's processes (the
# output tee of capture.py): never killed here, nor waited for.
_spared: set[int] = set()


def spare(pid: int) -> None:
    _spared.add(pid)


def unspare(pid: int) -> None:
    _spared.discard(pid)


def descendants(root: int) -> list[int]:
    """Every live descendant of `root` (children first)."""
    children: dict[int, list[int]] = {}
    for pid, parent in _parents().items():
        children.setdefault(parent, []).append(pid)
    found: list[int] = []
    frontier = [root]
    while frontier:
        kids = [k for pid in frontier for k in children.get(pid, ())
                if k != root and k not in _spared]
        found += kids
        frontier = kids
    return found


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def kill_tree(root: int, *, include_root: bool = False) -> list[int]:
    """Freeze, then SIGKILL, every descendant of `root` (and `root` itself if asked); the pids."""
    if sys.platform != "linux":
        return []
    frozen: set[int] = set()
    if include_root:
        _signal(root, signal.SIGSTOP)
        frozen.add(root)
    for _ in range(100):  # a fork bomb could outrun us forever; stop trying at some point
        new = [pid for pid in descendants(root) if pid not in frozen]
        if not new:
            break
        for pid in new:
            _signal(pid, signal.SIGSTOP)
        frozen.update(new)
    for pid in frozen:
        _signal(pid, signal.SIGKILL)
    return sorted(frozen)


def kill_descendants(timeout: float = 5.0) -> int:
    """Kill every descendant of this process and reap our children; how many were killed."""
    if sys.platform != "linux":
        return 0
    try:
        # Fast path (most calls start nothing): as a subreaper, any live
        # descendant means at least one child of ours, so none means none.
        os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return 0
    kids = children()
    if kids is not None and kids <= _spared:
        # The same reasoning with our own helpers alive (the output tee): a
        # descendant would show as a child of ours that is not one of them.
        # Reading /proc/self/task/*/children beats a scan of all of /proc,
        # which costs milliseconds on a busy machine, on every call.
        return 0
    me = os.getpid()
    killed: set[int] = set()
    deadline = time.monotonic() + timeout
    while True:
        killed.update(kill_tree(me))
        try:
            while os.waitpid(-1, os.WNOHANG)[0] != 0:
                pass
        except ChildProcessError:
            return len(killed)  # no children left: the tree is gone
        if _spared and not descendants(me):
            return len(killed)  # only our spared helpers are left
        if time.monotonic() >= deadline:
            return len(killed)
        time.sleep(0.005)
