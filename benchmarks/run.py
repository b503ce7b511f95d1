"""Run podfn's benchmarks and write docs/benchmarks.md.

    python benchmarks/run.py                 # every figure
    python benchmarks/run.py trivial map     # some figures, by name
    python benchmarks/run.py --list

Peers (ray, lithops) come from benchmarks/requirements.txt, never from
podfn's own dependencies; a peer that is not installed is reported as such.
Each measurement runs in a fresh process of its own (benchmarks/peers.py and
the per-figure scripts), one after another, so peers never share a machine
with each other's workers. Results are merged into docs/benchmarks.json
(figures not run keep their last results) and the Markdown report is
rendered from it: median and p95 (nearest rank) of the repeated values,
ratios within one run, the machine, versions, date, and the command behind
every figure.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import math
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = ROOT / "docs" / "benchmarks.json"
REPORT = ROOT / "docs" / "benchmarks.md"

Row = dict[str, Any]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def run_json(args: list[str], timeout: float = 3600) -> Any:
    """Run a benchmark script; its last stdout line is JSON."""
    env = {**os.environ, "PODFN_LOG_LEVEL": os.environ.get("PODFN_LOG_LEVEL", "WARNING")}
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def installed(module: str) -> bool:
    try:
        importlib.metadata.version(module)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


PEER_LABELS = {
    "podfn": "podfn `f.remote` (embedded default: local launcher)",
    "podfn-warm": "podfn warm workers (`max_calls_per_worker=None`)",
    "podfn-fork": "podfn warm workers, a process forked per call (`fork_per_call=True`)",
    "ray": "Ray, local, warm workers",
    "lithops": "Lithops localhost",
    "pool": "warm `ProcessPoolExecutor`",
    "python-c": "fresh `python -c` per call",
    "python-c-imports": "fresh `python -c 'import cloudpickle, psycopg'` per call",
}
PEER_PACKAGES = {"ray": "ray", "lithops": "lithops"}


def peer_rows(kind: str, count: int, repeats: int, unit_scale: float, unit: str,
              counts: dict[str, int] | None = None) -> list[Row]:
    rows = []
    for peer, label in PEER_LABELS.items():
        package = PEER_PACKAGES.get(peer)
        n = (counts or {}).get(peer, count)
        args = ["benchmarks/peers.py", peer, kind, str(n), str(repeats)]
        row: Row = {"name": label, "unit": unit, "command": "python " + shlex.join(args),
                    "peer": peer, "calls": n if kind == "map" else 1}
        if package and not installed(package):
            row["error"] = f"{package} is not installed (pip install -r benchmarks/requirements.txt)"
        else:
            try:
                row["values"] = [v * unit_scale for v in run_json(args)]
            except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
                row["error"] = str(exc).splitlines()[0][:300]
        if kind == "map" and "values" in row:
            row["extra"] = f"{n / median(row['values']) * unit_scale:,.0f} calls/s"
            if n != count:
                row["extra"] += f" (over {n} calls, not {count}: it is that slow)"
        rows.append(row)
    return rows


def fig_trivial(quick: bool) -> list[Row]:
    n = 10 if quick else 50
    return peer_rows("call", n, 1, 1000.0, "ms", counts={"lithops": max(5, n // 5)})


def fig_map(quick: bool) -> list[Row]:
    n, repeats = (100, 2) if quick else (1000, 3)
    slow = {"lithops": n // 5, "python-c-imports": n // 5}
    return peer_rows("map", n, repeats, 1.0, "s", counts=slow)


def fig_kube(quick: bool) -> list[Row]:
    args = ["benchmarks/kube_launcher.py", "--pods", "50" if quick else "200",
            "--repeats", "2" if quick else "3", "--latency", "0.02"]
    rows: list[Row] = run_json(args)
    for row in rows:
        row["command"] = "python " + shlex.join(args)
    return rows


def fig_kube_warm(quick: bool) -> list[Row]:
    args = ["benchmarks/kube_warm.py", "--calls", "200" if quick else "1000",
            "--repeats", "2", "--max-concurrency", "8"]
    rows: list[Row] = run_json(args)
    for row in rows:
        row["command"] = "python " + shlex.join(args)
    return rows


def fig_memory(quick: bool) -> list[Row]:
    args = ["benchmarks/memory.py"] + (["--pods", "1000", "--seconds", "3"] if quick else [])
    rows: list[Row] = run_json(args)
    for row in rows:
        row["command"] = "python " + shlex.join(args)
    return rows


def fig_api(which: str, *extra: str) -> Callable[[bool], list[Row]]:
    def run(quick: bool) -> list[Row]:
        args = ["benchmarks/api.py", which, *extra]
        if quick:
            args += ["--repeats", "1", "--calls", "10", "--seconds", "2"]
        rows: list[Row] = run_json(args)
        baselines = {r["group"]: r for r in rows if r.get("role") == "baseline"}
        for row in rows:
            row["command"] = "python " + shlex.join(args)
            base = baselines.get(row.get("group", ""))
            if row.get("role") == "podfn" and base is not None:
                row["extra"] = (f"{median(row['values']) / median(base['values']):.2g}x "
                                "the raw bytea write+read")
        return rows
    return run


FIGURES: dict[str, tuple[str, str, Callable[[bool], list[Row]]]] = {
    "trivial": ("1. A trivial call end to end",
                "`f(1)` for the identity function, one call after another, after warm-up. "
                "Values are per call.", fig_trivial),
    "map": ("2. `.map` over 1,000 trivial calls",
            "Wall time of one map over 1,000 identity calls (results gathered in order), "
            "repeated; calls/s from the median.", fig_map),
    "kube": ("5. Kubernetes launcher against the API stand-in, 20 ms per request",
             "kubesim (tests/kubesim) as its own process with `set_request_latency(0.02)`; "
             "pods stay Pending (unschedulable), so only API traffic is measured. Values are "
             "one rate per repeated run.", fig_kube),
    "kube-warm": ("5b. A warm pool through the Kubernetes stand-in",
                  "The whole platform (PODFN_LAUNCHER=kubernetes) against kubesim, whose kubelet "
                  "runs each pod's runtime as a local process; a `.map` over an identity "
                  "function with `max_calls_per_worker=None`, PODFN_MAX_CONCURRENCY=8. The "
                  "first map starts the pods, the second runs on the pods it left warm.",
                  fig_kube_warm),
    "submit": ("3. API submit throughput",
               "`podfn serve` (gunicorn, default 2 workers x 16 threads) over the embedded "
               "Postgres, no controller; N client processes each submit one call per request "
               "for 5 s. Values are one rate per repeated run. The clients share the 2 cores "
               "with the API and Postgres.", fig_api("submit")),
    "wakeup": ("4. Result wake-up latency",
               "From the runtime's `succeed` transition committing to a client blocked in "
               "`Call.result()` (long-poll on `POST /v1/calls/wait`, LISTEN/NOTIFY in the API) "
               "returning. The runtime's part is done by the benchmark process itself so both "
               "ends read one clock. Values are per call.", fig_api("wakeup")),
    "sizes": ("6. Argument and result sizes",
              "A call whose argument and result are both S MB (random bytes): submit, the "
              "runtime's claim (reads the argument) and `succeed` (writes the result), the "
              "client's read of the result; the runtime's part is done in-process as in "
              "figure 4. Beside it, one raw bytea INSERT + SELECT of S MB on one psycopg "
              "connection. PODFN_MAX_REQUEST_BYTES is raised for 100 MB (the default refuses "
              "more than 64 MiB).", fig_api("sizes")),
    "memory": ("7. Memory",
               "RSS from /proc (VmRSS). See benchmarks/memory.py for the method: the controller "
               "figure feeds synthetic launches and pod events to a KubernetesLauncher whose "
               "Kubernetes client does nothing. One value per worker (API) or one run "
               "(controller).", fig_memory),
}


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem = next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal"))
        memory = f"{int(mem) / 1024 / 1024:.1f} GiB"
    except (OSError, StopIteration):
        memory = "?"
    versions = {}
    for dist in ("podfn", "cloudpickle", "psycopg", "ray", "lithops"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, cwd=ROOT).stdout.strip()
    except OSError:
        commit = "?"
    return {"cpu": cpu, "cores": os.cpu_count(), "memory": memory,
            "os": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(), "versions": versions, "commit": commit}


def fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def render(results: dict[str, Any]) -> str:
    out = ["# Benchmarks", "",
           "Generated by `python benchmarks/run.py` (see its docstring); do not edit by hand.",
           "Peers: `pip install -r benchmarks/requirements.txt`. Every figure is the median and "
           "the p95 (nearest rank) of the values listed as *n*; comparisons are ratios within "
           "one run, since the machine is shared and noisy: absolute times are context.", ""]
    notes = HERE / "notes.md"
    if notes.exists():
        out += [notes.read_text().strip(), ""]
    for name, (title, description, _) in FIGURES.items():
        fig = results["figures"].get(name)
        if fig is None:
            continue
        m = fig["machine"]
        out += [f"## {title}", "", description, "",
                f"Run {fig['date']} on {m['cpu']}, **{m['cores']} cores**, {m['memory']}, "
                f"{m['os']}, Python {m['python']}, commit {m['commit']}; "
                + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ".", ""]
        rows = fig["rows"]
        higher = any(r.get("higher_is_better") for r in rows)
        ref = next((r for r in rows if r.get("peer") == "podfn" and r.get("values")), None)
        ratio_head = "ratio to podfn (median)" if ref else ""
        head = ["what", "median", "p95", "n", *([ratio_head] if ratio_head else []), "notes",
                "command"]
        out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rows:
            if "values" not in r:
                cells = [r["name"], "—", "—", "0", *([""] if ref else []),
                         f"not measured: {r['error']}", f"`{r['command']}`"]
            else:
                vals = r["values"]
                med = median(vals)
                # p95 is the slow tail: the high value for times, the low one for rates
                p95 = percentile(vals, 0.05) if higher else percentile(vals, 0.95)
                cells = [r["name"], f"{fmt(med)} {r['unit']}", f"{fmt(p95)} {r['unit']}",
                         str(len(vals))]
                if ref:  # per call, when maps ran over different numbers of calls
                    per = med / r.get("calls", 1)
                    cells.append(f"{per / (median(ref['values']) / ref.get('calls', 1)):.3g}x")
                cells += [r.get("extra", ""), f"`{r['command']}`"]
            out.append("| " + " | ".join(cells) + " |")
        if higher:
            out += ["", "For rates, the p95 column is the 5th percentile (the slow tail)."]
        out.append("")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("figures", nargs="*", help=f"some of: {', '.join(FIGURES)}")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--quick", action="store_true", help="fewer calls and repeats (a smoke run)")
    parser.add_argument("--render", action="store_true", help="only rewrite the report")
    ns = parser.parse_args()
    if ns.list:
        for name, (title, _, _) in FIGURES.items():
            print(f"{name}: {title}")
        return
    unknown = [f for f in ns.figures if f not in FIGURES]
    if unknown:
        parser.error(f"unknown figure(s) {', '.join(unknown)}; choose from {', '.join(FIGURES)}")
    results: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results.setdefault("figures", {})
    if not ns.render:
        info = machine()
        for name in ns.figures or list(FIGURES):
            print(f"running {name} ...", file=sys.stderr, flush=True)
            rows = FIGURES[name][2](ns.quick)
            results["figures"][name] = {
                "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                "machine": info, "quick": ns.quick, "rows": rows}
            RESULTS.write_text(json.dumps(results, indent=1) + "\n")
            for r in rows:
                shown = f"{fmt(median(r['values']))} {r['unit']}" if "values" in r else r["error"]
                print(f"  {r['name']}: {shown}", file=sys.stderr, flush=True)
    REPORT.write_text(render(results))
    print(f"wrote {REPORT.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
