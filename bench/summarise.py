#!/usr/bin/env python3
"""Helper for bench/registrations.sh: records wrk runs and writes the Markdown report.

Subcommands
  record    parse one wrk output (the BENCH_RESULT line printed by registrations.lua), add the
            run's labels and append it as one JSON line to a runs file; prints a progress line.
  ok-count  sum of successful (2xx with expected body) responses of one system over runs files.
  report    median per (system, connections) over the recorded runs, ratios Cairn/etcd, print the
            Markdown section to stdout and replace it in BENCHMARKS.md between the markers.

Only the standard library is used, so nothing needs installing beyond python3.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

# Run as a script from any directory: find benchlib.py next to this file.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402

START, END = benchlib.markers("registrations")
SYSTEMS = ("cairn", "etcd")


def derive(run: dict) -> dict:
    """Adds the figures the report uses. Throughput counts only good responses: a server that
    fails fast must not look faster. wrk's latency percentiles cover every response it timed."""
    secs = run["duration_us"] / 1e6
    ok = run["requests"] - run["non2xx"] - run["bad_body"]
    socket_errors = run["connect_errors"] + run["read_errors"] + run["write_errors"] + run["timeouts"]
    run["ok"] = ok
    run["ok_rps"] = ok / secs if secs > 0 else 0.0
    run["errors"] = run["non2xx"] + run["bad_body"] + socket_errors
    return run


def cmd_record(args: argparse.Namespace) -> int:
    text = Path(args.wrk_output).read_text(errors="replace")
    lines = [l for l in text.splitlines() if l.startswith("BENCH_RESULT ")]
    if len(lines) != 1:
        print(f"error: expected one BENCH_RESULT line in {args.wrk_output}, found {len(lines)}",
              file=sys.stderr)
        return 1
    run = json.loads(lines[0][len("BENCH_RESULT "):])
    run.update(system=args.system, connections=args.connections, run=args.run,
               threads=args.threads, target=args.target, label=args.label)
    derive(run)
    with open(args.runs, "a") as f:
        f.write(json.dumps(run, sort_keys=True) + "\n")
    err = ""
    if run["errors"]:
        err = (f"  ERRORS={run['errors']} (non2xx={run['non2xx']} statuses={run['statuses']} "
               f"bad_body={run['bad_body']} connect={run['connect_errors']} read={run['read_errors']} "
               f"write={run['write_errors']} timeout={run['timeouts']}) sample={run['sample_error']!r}")
    print(f"{args.system:5} c={args.connections:<3} {args.label:>7}: {run['ok_rps']:9.1f} ok req/s  "
          f"p50 {run['lat_p50_us'] / 1000:7.2f} ms  p99 {run['lat_p99_us'] / 1000:7.2f} ms{err}")
    return 0


def load_runs(paths: list[str]) -> list[dict]:
    runs = []
    for p in paths:
        if not os.path.exists(p):
            continue
        with open(p) as f:
            runs.extend(derive(json.loads(l)) for l in f if l.strip())
    return runs


def cmd_ok_count(args: argparse.Namespace) -> int:
    runs = [r for r in load_runs(args.runs) if r["system"] == args.system]
    ok = sum(r["ok"] for r in runs)
    # Requests still in flight when wrk stops (at most one per connection) or that timed out
    # may have been committed without wrk counting them, so the store may hold up to this many
    # more keys than `ok`.
    slack = sum(r["connections"] + r["timeouts"] + r["read_errors"] for r in runs)
    print(f"{ok} {slack}")
    return 0


def fmt_ms(us: float) -> str:
    ms = us / 1000
    return f"{ms:.2f}" if ms < 100 else f"{ms:.0f}"


def fmt_ratio(num: float, den: float) -> str:
    return f"{num / den:.2f}×" if den > 0 and num > 0 else "n/a"


def cell_stats(runs: list[dict]) -> dict:
    return {
        "rps": statistics.median(r["ok_rps"] for r in runs),
        "p50": statistics.median(r["lat_p50_us"] for r in runs),
        "p99": statistics.median(r["lat_p99_us"] for r in runs),
        "errors": sum(r["errors"] for r in runs),
        "n": len(runs),
    }


def error_cell(runs: list[dict], total: int) -> str:
    if total == 0:
        return "0"
    parts = []
    for r in sorted(runs, key=lambda r: r["run"]):
        if not r["errors"]:
            continue
        kinds = [f"HTTP {code}×{n}" for code, n in sorted(r["statuses"].items())]
        for key, name in (("bad_body", "bad body"), ("connect_errors", "connect"),
                          ("read_errors", "read"), ("write_errors", "write"), ("timeouts", "timeout")):
            if r[key]:
                kinds.append(f"{name}×{r[key]}")
        parts.append(f"run {r['run']}: " + ", ".join(kinds))
    return f"**⚠ {total}** ({'; '.join(parts)})"


def build_section(runs: list[dict], meta: dict[str, str]) -> tuple[str, str]:
    """Returns (section with markers, table only)."""
    cells: dict[tuple[str, int], list[dict]] = {}
    for r in runs:
        cells.setdefault((r["system"], r["connections"]), []).append(r)
    conns = sorted({c for _, c in cells})
    systems = [s for s in SYSTEMS if any(k[0] == s for k in cells)]

    rows = ["| System | Conns | Req/s (median) | Req/s per run | p50 ms | p99 ms | Errors |",
            "|---|---:|---:|---|---:|---:|---|"]
    stats = {}
    for s in systems:
        for c in conns:
            rs = cells.get((s, c))
            if not rs:
                continue
            st = stats[(s, c)] = cell_stats(rs)
            per_run = " / ".join(f"{r['ok_rps']:.0f}" for r in sorted(rs, key=lambda r: r["run"]))
            rows.append(f"| {s} | {c} | {st['rps']:.0f} | {per_run} | {fmt_ms(st['p50'])} | "
                        f"{fmt_ms(st['p99'])} | {error_cell(rs, st['errors'])} |")
    table = "\n".join(rows)

    ratio = ""
    if "cairn" in systems and "etcd" in systems:
        rrows = ["| Conns | Throughput Cairn/etcd | p50 etcd/Cairn | p99 etcd/Cairn |",
                 "|---:|---:|---:|---:|"]
        for c in conns:
            a, e = stats.get(("cairn", c)), stats.get(("etcd", c))
            if not a or not e:
                continue
            warn = " ⚠ errors, see above" if a["errors"] or e["errors"] else ""
            rrows.append(f"| {c} | {fmt_ratio(a['rps'], e['rps'])}{warn} | "
                         f"{fmt_ratio(e['p50'], a['p50'])} | {fmt_ratio(e['p99'], a['p99'])} |")
        ratio = "\n".join(rrows)
    table_all = table + ("\n\n" + ratio if ratio else "")

    only = "" if len(systems) == 2 else f" (only {', '.join(systems)} was run)"
    lines = [
        START,
        "## Registrations: Cairn vs etcd",
        "",
        "_Written by `bench/registrations.sh`; do not edit by hand, re-run the script._",
        "",
        f"- Date: {meta.get('date', '?')}",
        f"- Machine: {meta.get('nproc', '?')} CPUs ({meta.get('cpu', '?')}), kernel {meta.get('kernel', '?')}, "
        f"{meta.get('os', '?')}; data dirs on {meta.get('fs', '?')}; load average at start {meta.get('load', '?')}",
        f"- etcd {meta.get('etcd_version', '?')}: 3 members on 127.0.0.1, default durability (fsync on "
        "every commit); load via the JSON gateway `POST /v3/kv/put`",
        f"- Cairn commit {meta.get('cairn_commit', '?')}: 3 nodes on 127.0.0.1; load via "
        "`PUT /v1/services/bench/instances/<id>`",
        f"- Load: {meta.get('wrk_version', 'wrk')}, {meta.get('duration', '?')} s per run, "
        f"{meta.get('runs', '?')} runs per row, {meta.get('warmup', '?')} s warm-up per system, "
        "threads = min(connections, 2), every request a new id, all load sent to the current leader",
        f"- Command{only}: `{meta.get('command', '?')}`",
        "",
        table_all,
        "",
        "Req/s counts only successful responses (2xx with the expected body), median over the runs; "
        "p50/p99 are the medians of wrk's per-run percentiles over all responses (wrk does not "
        "correct for coordinated omission). Ratios above 1 mean Cairn is better. Both clusters and "
        "wrk share the same cores, and one system runs at a time. Raw wrk output: "
        f"`{meta.get('results_dir', 'bench/results/')}` (not committed).",
        END,
    ]
    return "\n".join(lines), table_all


def cmd_report(args: argparse.Namespace) -> int:
    runs = load_runs([args.runs])
    if not runs:
        print(f"error: no runs recorded in {args.runs}", file=sys.stderr)
        return 1
    meta = dict(kv.split("=", 1) for kv in args.meta)
    section, table = build_section(runs, meta)
    print(table)
    if args.output:
        benchlib.replace_section(Path(args.output), "registrations", section)
        print(f"\nwrote section to {args.output}", file=sys.stderr)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("record")
    r.add_argument("--runs", required=True)
    r.add_argument("--wrk-output", required=True)
    r.add_argument("--system", required=True, choices=SYSTEMS)
    r.add_argument("--connections", type=int, required=True)
    r.add_argument("--threads", type=int, required=True)
    r.add_argument("--run", type=int, required=True)
    r.add_argument("--label", required=True)
    r.add_argument("--target", required=True)
    r.set_defaults(func=cmd_record)

    o = sub.add_parser("ok-count")
    o.add_argument("--system", required=True, choices=SYSTEMS)
    o.add_argument("runs", nargs="+")
    o.set_defaults(func=cmd_ok_count)

    rep = sub.add_parser("report")
    rep.add_argument("--runs", required=True)
    rep.add_argument("--output", help="BENCHMARKS.md to update; omit to only print")
    rep.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE")
    rep.set_defaults(func=cmd_report)

    args = p.parse_args()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
