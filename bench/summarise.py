#!/usr/bin/env python3
"""Helper for bench/registrations.sh: records wrk runs and writes the Markdown report.

Subcommands
  record    parse one wrk output (the BENCH_RESULT line printed by registrations.lua), add the
            run's labels and append it as one JSON line to a runs file; prints a progress line.
  ok-count  sum of successful (2xx with expected body) responses of one system and transport
            over runs files.
  report    median per (system, transport, connections) over the recorded runs, ratios
            Cairn/etcd per transport and the cost of TLS against plaintext, print the Markdown
            section to stdout and replace it in BENCHMARKS.md between the markers.

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
# A phase's "transport": plaintext, TLS, or plaintext with ACLs on (BENCH_ACL=1) with few or
# many tokens in the registry.
TRANSPORTS = ("plain", "tls", "acl", "acl-many")
TRANSPORT_NAMES = {"plain": "plaintext", "tls": "TLS", "acl": "ACLs, few tokens", "acl-many": "ACLs, many tokens"}
SYSTEM_NAMES = {"cairn": "Cairn", "etcd": "etcd"}
# The goal of the TLS issue: TLS costs Cairn at most this share of its plaintext throughput at
# TLS_GOAL_CONNECTIONS connections.
TLS_GOAL_COST = 0.10
TLS_GOAL_CONNECTIONS = 64


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
    run.update(system=args.system, transport=args.transport, connections=args.connections, run=args.run,
               threads=args.threads, target=args.target, label=args.label)
    derive(run)
    with open(args.runs, "a") as f:
        f.write(json.dumps(run, sort_keys=True) + "\n")
    err = ""
    if run["errors"]:
        err = (f"  ERRORS={run['errors']} (non2xx={run['non2xx']} statuses={run['statuses']} "
               f"bad_body={run['bad_body']} connect={run['connect_errors']} read={run['read_errors']} "
               f"write={run['write_errors']} timeout={run['timeouts']}) sample={run['sample_error']!r}")
    print(f"{args.system:5} {args.transport:5} c={args.connections:<3} {args.label:>7}: {run['ok_rps']:9.1f} ok req/s  "
          f"p50 {run['lat_p50_us'] / 1000:7.2f} ms  p99 {run['lat_p99_us'] / 1000:7.2f} ms{err}")
    return 0


def load_runs(paths: list[str]) -> list[dict]:
    runs = []
    for p in paths:
        if not os.path.exists(p):
            continue
        with open(p) as f:
            runs.extend(derive(json.loads(l)) for l in f if l.strip())
    for r in runs:
        r.setdefault("transport", "plain")  # runs recorded before the TLS mode
    return runs


def cmd_ok_count(args: argparse.Namespace) -> int:
    runs = [r for r in load_runs(args.runs)
            if r["system"] == args.system and r["transport"] == args.transport]
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


def tls_cost(plain: dict, tls: dict) -> float | None:
    """The share of plaintext throughput TLS costs (negative: TLS was faster), or None."""
    return 1 - tls["rps"] / plain["rps"] if plain["rps"] > 0 else None


def fmt_cost(cost: float | None) -> str:
    return "n/a" if cost is None else f"{cost * 100:.1f}%".replace("-", "−")


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
    """Returns (section with markers, tables only)."""
    cells: dict[tuple[str, str, int], list[dict]] = {}
    for r in runs:
        cells.setdefault((r["system"], r["transport"], r["connections"]), []).append(r)
    conns = sorted({c for _, _, c in cells})
    systems = [s for s in SYSTEMS if any(k[0] == s for k in cells)]
    transports = [t for t in TRANSPORTS if any(k[1] == t for k in cells)]
    with_tls = "tls" in transports
    with_acl = "acl" in transports or "acl-many" in transports
    names = dict(TRANSPORT_NAMES, acl=f"ACLs, {meta.get('acl_tokens_few', '?')} tokens",
                 **{"acl-many": f"ACLs, {meta.get('acl_tokens_many', '?')} tokens"})
    many_columns = with_tls or with_acl

    head = "| System | Mode | Conns |" if many_columns else "| System | Conns |"
    rows = [head + " Req/s (median) | Req/s per run | p50 ms | p99 ms | Errors |",
            ("|---|---|---:|" if many_columns else "|---|---:|") + "---:|---|---:|---:|---|"]
    stats = {}
    for s in systems:
        for t in transports:
            for c in conns:
                rs = cells.get((s, t, c))
                if not rs:
                    continue
                st = stats[(s, t, c)] = cell_stats(rs)
                per_run = " / ".join(f"{r['ok_rps']:.0f}" for r in sorted(rs, key=lambda r: r["run"]))
                label = f"| {s} | {names[t]} | {c} |" if many_columns else f"| {s} | {c} |"
                rows.append(f"{label} {st['rps']:.0f} | {per_run} | {fmt_ms(st['p50'])} | "
                            f"{fmt_ms(st['p99'])} | {error_cell(rs, st['errors'])} |")
    tables = ["\n".join(rows)]

    def warn(*cells_: dict | None) -> str:
        return " ⚠ errors, see above" if any(x and x["errors"] for x in cells_) else ""

    if "cairn" in systems and "etcd" in systems:
        if with_tls and "plain" in transports:
            rrows = ["| Conns | Throughput Cairn/etcd, plaintext | Throughput Cairn/etcd, TLS | "
                     "Goal: TLS ratio ≥ plaintext ratio | p50 etcd/Cairn, plaintext | p50 etcd/Cairn, TLS | "
                     "p99 etcd/Cairn, plaintext | p99 etcd/Cairn, TLS |",
                     "|---:|---:|---:|---|---:|---:|---:|---:|"]
            for c in conns:
                ap, ep = stats.get(("cairn", "plain", c)), stats.get(("etcd", "plain", c))
                at, et = stats.get(("cairn", "tls", c)), stats.get(("etcd", "tls", c))
                if not (ap and ep and at and et):
                    continue
                goal = "n/a"
                if ep["rps"] > 0 and et["rps"] > 0 and ap["rps"] > 0:
                    plain_ratio, tls_ratio = ap["rps"] / ep["rps"], at["rps"] / et["rps"]
                    change = tls_ratio / plain_ratio - 1
                    goal = ("met" if tls_ratio >= plain_ratio else "**no**") + \
                        f" ({change * 100:+.1f}%)".replace("-", "−")
                rrows.append(
                    f"| {c} | {fmt_ratio(ap['rps'], ep['rps'])}{warn(ap, ep)} | "
                    f"{fmt_ratio(at['rps'], et['rps'])}{warn(at, et)} | {goal} | "
                    f"{fmt_ratio(ep['p50'], ap['p50'])} | {fmt_ratio(et['p50'], at['p50'])} | "
                    f"{fmt_ratio(ep['p99'], ap['p99'])} | {fmt_ratio(et['p99'], at['p99'])} |")
        else:
            t = transports[0]
            rrows = ["| Conns | Throughput Cairn/etcd | p50 etcd/Cairn | p99 etcd/Cairn |",
                     "|---:|---:|---:|---:|"]
            for c in conns:
                a, e = stats.get(("cairn", t, c)), stats.get(("etcd", t, c))
                if not a or not e:
                    continue
                rrows.append(f"| {c} | {fmt_ratio(a['rps'], e['rps'])}{warn(a, e)} | "
                             f"{fmt_ratio(e['p50'], a['p50'])} | {fmt_ratio(e['p99'], a['p99'])} |")
        tables.append("\n".join(rrows))

    # The cost of TLS, per system measured both ways.
    both = [s for s in systems if any(k[0] == s and k[1] == "tls" for k in cells)
            and any(k[0] == s and k[1] == "plain" for k in cells)]
    if both:
        head = "| Conns |" + "".join(
            f" {SYSTEM_NAMES[s]} plaintext req/s | {SYSTEM_NAMES[s]} TLS req/s | {SYSTEM_NAMES[s]} TLS cost |"
            for s in both)
        crows = [head, "|---:|" + "---:|---:|---:|" * len(both)]
        for c in conns:
            row = f"| {c} |"
            for s in both:
                p, t = stats.get((s, "plain", c)), stats.get((s, "tls", c))
                if p and t:
                    row += f" {p['rps']:.0f} | {t['rps']:.0f} | {fmt_cost(tls_cost(p, t))}{warn(p, t)} |"
                else:
                    row += " | | n/a |"
            crows.append(row)
        table = "\n".join(crows)
        if "cairn" in both:
            p = stats.get(("cairn", "plain", TLS_GOAL_CONNECTIONS))
            t = stats.get(("cairn", "tls", TLS_GOAL_CONNECTIONS))
            cost = tls_cost(p, t) if p and t else None
            verdict = "not measured" if cost is None else \
                f"{fmt_cost(cost)}: **{'met' if cost <= TLS_GOAL_COST else 'no'}**"
            table += (f"\n\nGoal: TLS costs Cairn ≤ {TLS_GOAL_COST * 100:.0f}% of its plaintext "
                      f"throughput at {TLS_GOAL_CONNECTIONS} connections → {verdict}.")
        tables.append(table)
    if with_acl and "plain" in transports:
        acl_stats = {(v, c): {"rps": st["rps"], "p50_ms": st["p50"] / 1000, "p99_ms": st["p99"] / 1000,
                              "errors": st["errors"]}
                     for (s, t, c), st in stats.items() if s == "cairn"
                     for v in [{"plain": "off", "acl": "acl", "acl-many": "acl-many"}.get(t)] if v}
        tables.append("\n".join(benchlib.acl_table(acl_stats, {**meta, "acl_cluster": "3-node cluster"})))
    table_all = "\n\n".join(tables)

    only = "" if len(systems) == 2 else f" (only {', '.join(systems)} was run)"
    tls_lines = []
    if with_tls:
        sessions = ", ".join(f"{SYSTEM_NAMES[s]} {meta[f'tls_session_{s}']}"
                             for s in systems if f"tls_session_{s}" in meta)
        tls_lines = [
            f"- TLS rows: certificates from `cairn tls` ({meta.get('tls_key', '?')}, one CA): "
            f"{meta.get('tls_certs', '?')}. Cairn: `{meta.get('cairn_tls_flags', '?')}`, mutual TLS on "
            "the cluster RPC and the load over HTTPS. etcd: "
            f"`{meta.get('etcd_tls_flags', '?')}`, mutual TLS between members and the load over "
            "HTTPS. Before the load, the script checks that a peer port answers a client with a "
            "certificate and none without. Clients are server-authenticated only on both (Cairn without `--tls-client-ca`, "
            "etcd without `--client-cert-auth` or `--trusted-ca-file`): wrk 4.1 cannot present a "
            "client certificate (nor does it check the server's). wrk offers no ALPN, so HTTP/1.1 "
            "over keep-alive connections, one handshake per connection; session as OpenSSL "
            f"negotiates it with wrk's defaults: {sessions or '?'}",
            f"- Order: {meta.get('phases', '?')}, each on a fresh cluster, so each pair compared "
            "below ran back to back",
        ]
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
        f"{meta.get('runs', '?')} runs per row, {meta.get('warmup', '?')} s warm-up per cluster, "
        "threads = min(connections, 2), every request a new id, all load sent to the current leader",
        *tls_lines,
        f"- Command{only}: `{meta.get('command', '?')}`",
        "",
        table_all,
        "",
        "Req/s counts only successful responses (2xx with the expected body), median over the runs; "
        "p50/p99 are the medians of wrk's per-run percentiles over all responses (wrk does not "
        "correct for coordinated omission). Ratios above 1 mean Cairn is better"
        + ("; a TLS cost is 1 − TLS req/s ÷ plaintext req/s, from the medians of the same run. "
           if with_tls else ". ") +
        "All clusters and wrk share the same cores, and one system runs at a time. Raw wrk output: "
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
    r.add_argument("--transport", required=True, choices=TRANSPORTS)
    r.add_argument("--connections", type=int, required=True)
    r.add_argument("--threads", type=int, required=True)
    r.add_argument("--run", type=int, required=True)
    r.add_argument("--label", required=True)
    r.add_argument("--target", required=True)
    r.set_defaults(func=cmd_record)

    o = sub.add_parser("ok-count")
    o.add_argument("--system", required=True, choices=SYSTEMS)
    o.add_argument("--transport", required=True, choices=TRANSPORTS)
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
