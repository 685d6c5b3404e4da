#!/usr/bin/env python3
"""Helper for bench/dns.sh: the data set, the registration and churn clients, the correctness
check, dnsperf output parsing and the Markdown report.

Subcommands
  dataset   write the zone file (for Knot and hickory-dns) and the dnsperf query file.
  register  register every instance of the data set with a Cairn node over HTTP, many requests
            in flight (Cairn batches concurrent writes into one log append).
  verify    dig each server for a sample of names and compare rcode, flags and record sets with
            what the data set says they must be; exits 1 on any difference.
  record    parse one dnsperf output (and, for latency runs, its -v per-query lines) and append
            it as one JSON line to a runs file; prints a progress line.
  peak      median peak QPS of one server over the recorded runs (for the half-peak rate).
  churn     write load against Cairn for a bounded time: re-registrations plus health flips at a
            fixed rate; writes a JSON summary.
  report    medians and ratios, print the Markdown tables and replace the DNS section of
            BENCHMARKS.md between its markers.
  doh-uris  the dnsperf query file as DNS-over-HTTPS GET URIs, one a line, for h2load.
  tls-report  the same for the encrypted DNS runs (BENCH_DNS_TLS=1: Cairn and unbound over TCP,
            DNS over TLS and DNS over HTTPS), into the dns-tls section.

The data set is a pure function of (services, instances per service, tags): service s is
`svc<s>`, its instance i has id `i<i>`, port 8080, weight 1, tag tags[i % len(tags)] and the
address 10.0.0.0 + (s * instances + i + 1), so all addresses are distinct. Every subcommand
derives the same records from those numbers, so the zone, the registrations and the expected
answers cannot drift apart.

Only the standard library is used.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import ipaddress
import json
import os
import random
import re
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

# Run as a script from any directory: find benchlib.py next to this file.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402

START, END = benchlib.markers("dns")
SERVERS = ("cairn", "knot", "hickory", "unbound")
MODES = ("udp", "tcp", "dot", "doh")
MODE_LABEL = {"udp": "UDP", "tcp": "TCP", "dot": "DoT", "doh": "DoH"}
# dig's flags for each transport; +https is a POST to /dns-query.
DIG_MODE = {"udp": [], "tcp": ["+tcp"], "dot": ["+tls"], "doh": ["+https"]}
QTYPES = ("a", "srv", "tag", "nx")
QTYPE_LABEL = {"a": "A", "srv": "SRV", "tag": "tag A", "nx": "NXDOMAIN"}
CLIENT_BOUND_PCT = 95  # dnsperf at or above this share of its CPU: the client set the pace
OTHER_CPU_PCT = 15  # other processes took more than this share of a benchmark CPU: skewed
LABEL = {"cairn": "Cairn", "knot": "Knot DNS", "hickory": "hickory-dns", "unbound": "unbound"}
ZONE = "cairn."
TTL = 5
PORT = 8080
WEIGHT = 1
SRV_PRIORITY = 1


# --- The data set. -------------------------------------------------------------------------

class DataSet:
    def __init__(self, services: int, instances: int, tags: list[str]):
        if services < 1 or instances < 1:
            raise SystemExit("error: services and instances per service must be at least 1")
        if services * instances > (1 << 24) - 2:
            raise SystemExit("error: at most 16,777,214 instances fit in 10.0.0.0/8")
        if not tags:
            raise SystemExit("error: at least one tag is needed")
        self.services, self.instances, self.tags = services, instances, tags

    def ip(self, s: int, i: int) -> str:
        return str(ipaddress.IPv4Address((10 << 24) + s * self.instances + i + 1))

    def tag(self, i: int) -> str:
        return self.tags[i % len(self.tags)]

    def members(self, s: int, tag: str | None = None) -> list[int]:
        return [i for i in range(self.instances) if tag is None or self.tag(i) == tag]

    def service_tags(self) -> list[str]:
        """Tags that at least one instance of every service carries."""
        return [t for t in self.tags if self.members(0, t)]

    @staticmethod
    def hexname(ip: str) -> str:
        return f"{int(ipaddress.IPv4Address(ip)):08x}.addr.{ZONE}"

    def registration(self, s: int, i: int, port: int = PORT) -> bytes:
        return json.dumps({"address": self.ip(s, i), "port": port, "tags": [self.tag(i)]},
                          separators=(",", ":")).encode()


def dataset_of(args: argparse.Namespace) -> DataSet:
    return DataSet(args.services, args.instances, [t for t in args.tags.split(",") if t])


def cmd_dataset(args: argparse.Namespace) -> int:
    ds = dataset_of(args)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tags = ds.service_tags()
    with open(out / "cairn.zone", "w") as z:
        # Same SOA as Cairn's (serial aside: Cairn's is its applied index) and one name server,
        # node-1, as a single-node Cairn announces itself.
        z.write(f"$ORIGIN {ZONE}\n$TTL {TTL}\n")
        z.write(f"@ SOA ns.{ZONE} hostmaster.{ZONE} 1 3600 600 86400 {TTL}\n")
        z.write(f"@ NS node-1.node.{ZONE}\n")
        z.write("node-1.node A 127.0.0.1\n")
        for s in range(ds.services):
            svc = f"svc{s}.service"
            for i in range(ds.instances):
                z.write(f"{svc} A {ds.ip(s, i)}\n")
            for i in range(ds.instances):
                z.write(f"_svc{s}._tcp.service SRV {SRV_PRIORITY} {WEIGHT} {PORT} "
                        f"{ds.hexname(ds.ip(s, i))}\n")
            for t in tags:
                for i in ds.members(s, t):
                    z.write(f"{t}.{svc} A {ds.ip(s, i)}\n")
            for i in range(ds.instances):
                z.write(f"{ds.hexname(ds.ip(s, i))[:-len(ZONE) - 1]} A {ds.ip(s, i)}\n")

    # The query mix: A for a service, SRV, A for a tag, NXDOMAIN; services drawn uniformly.
    mix = [float(x) for x in args.mix.split(",")]
    if len(mix) != 4 or any(x < 0 for x in mix) or sum(mix) <= 0:
        raise SystemExit("error: --mix takes four non-negative weights: A,SRV,tag A,NXDOMAIN")
    rng = random.Random(args.seed)
    kinds = rng.choices(range(4), weights=mix, k=args.queries)
    counts = Counter()
    lines: dict[int, list[str]] = {k: [] for k in range(4)}
    with open(out / "queries.txt", "w") as q:
        for k in kinds:
            s = rng.randrange(ds.services)
            if k == 0:
                line = f"svc{s}.service.{ZONE} A\n"
            elif k == 1:
                line = f"_svc{s}._tcp.service.{ZONE} SRV\n"
            elif k == 2:
                line = f"{rng.choice(tags)}.svc{s}.service.{ZONE} A\n"
            else:
                line = f"nosuch{s}.service.{ZONE} A\n"
            q.write(line)
            lines[k].append(line)
            counts[k] += 1
    # One file per query type for the by-type runs; a type the mix leaves out gets its own
    # draw so that every file has queries.
    for k, name in enumerate(QTYPES):
        if not lines[k]:
            for _ in range(1000):
                s = rng.randrange(ds.services)
                lines[k].append([f"svc{s}.service.{ZONE} A\n", f"_svc{s}._tcp.service.{ZONE} SRV\n",
                                 f"{rng.choice(tags)}.svc{s}.service.{ZONE} A\n",
                                 f"nosuch{s}.service.{ZONE} A\n"][k])
        (out / f"queries-{name}.txt").write_text("".join(lines[k]))
    summary = {"queries": args.queries, "a": counts[0], "srv": counts[1], "tag_a": counts[2],
               "nxdomain": counts[3], "records": ds.services * (1 + 2 * ds.instances
                                                                 + sum(len(ds.members(0, t)) for t in tags)
                                                                 + ds.instances) + 3}
    (out / "queries.json").write_text(json.dumps(summary) + "\n")
    print(f"zone: {summary['records']} records for {ds.services} services x {ds.instances} "
          f"instances; queries: {args.queries} ({counts[0]} A, {counts[1]} SRV, {counts[2]} tag A, "
          f"{counts[3]} NXDOMAIN)")
    return 0


# --- Registration and churn over Cairn's HTTP API. ------------------------------------------

class Client:
    """One keep-alive HTTP/1.1 connection; reconnects after an error."""

    def __init__(self, host: str, port: int, timeout: float):
        self.host, self.port, self.timeout = host, port, timeout
        self.conn: http.client.HTTPConnection | None = None

    def put(self, path: str, body: bytes) -> tuple[int, bytes]:
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self.conn.request("PUT", path, body, {"Content-Type": "application/json"})
                r = self.conn.getresponse()
                return r.status, r.read()
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


def split_url(url: str) -> tuple[str, int]:
    m = re.fullmatch(r"http://([^:/]+):(\d+)/?", url)
    if not m:
        raise SystemExit(f"error: expected http://HOST:PORT, got {url}")
    return m.group(1), int(m.group(2))


def good(status: int, body: bytes) -> bool:
    return status == 200 and re.search(rb'"index"\s*:\s*\d', body) is not None


def cmd_register(args: argparse.Namespace) -> int:
    ds = dataset_of(args)
    host, port = split_url(args.url)
    total = ds.services * ds.instances
    lock = threading.Lock()
    state = {"next": 0, "done": 0, "failed": None}
    deadline = time.monotonic() + args.deadline

    def worker() -> None:
        client = Client(host, port, args.timeout)
        while True:
            with lock:
                n = state["next"]
                if n >= total or state["failed"]:
                    return
                state["next"] = n + 1
            s, i = divmod(n, ds.instances)
            path, body = f"/v1/services/svc{s}/instances/i{i}", ds.registration(s, i)
            tries = 0
            while True:
                tries += 1
                if time.monotonic() > deadline:
                    with lock:
                        state["failed"] = state["failed"] or f"deadline of {args.deadline} s passed"
                    return
                try:
                    status, resp = client.put(path, body)
                except (OSError, http.client.HTTPException) as e:
                    status, resp = 0, str(e).encode()
                if good(status, resp):
                    break
                # 503 (no leader yet, write timeout) is worth a retry; anything else is a bug.
                if status not in (0, 503) or tries >= 5:
                    with lock:
                        state["failed"] = state["failed"] or f"PUT {path} -> {status} {resp[:200]!r}"
                    return
                time.sleep(0.2 * tries)
            with lock:
                state["done"] += 1

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(args.concurrency)]
    for t in threads:
        t.start()
    last = t0
    while any(t.is_alive() for t in threads):
        for t in threads:
            t.join(timeout=1)
        if time.monotonic() - last >= 10:
            last = time.monotonic()
            print(f"  registered {state['done']}/{total}", file=sys.stderr, flush=True)
    secs = time.monotonic() - t0
    if state["failed"]:
        print(f"error: registration failed after {state['done']} of {total}: {state['failed']}",
              file=sys.stderr)
        return 1
    print(f"registered {total} instances in {secs:.1f} s ({total / secs:.0f}/s, "
          f"{args.concurrency} in flight)")
    return 0


def cmd_churn(args: argparse.Namespace) -> int:
    """Until --duration passes (or SIGTERM): --rate re-registrations per second of random
    instances (the port alternates 8080/8081, so the service's record set changes each time),
    and after every --flip-every of them one health flip: a random instance goes critical and
    the one that worker flipped before goes back to passing. --workers threads share the rate,
    each on its own connection and fixed schedule, so one slow write does not stall the rest."""
    ds = dataset_of(args)
    host, port = split_url(args.url)
    counts: Counter = Counter()
    errors: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    import signal
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    start = time.monotonic()
    end = start + args.duration
    interval = args.workers / args.rate

    def worker(k: int) -> None:
        client = Client(host, port, args.timeout)
        rng = random.Random(args.seed * 1000 + k)
        critical: tuple[int, int] | None = None

        def put(kind: str, path: str, body: bytes) -> None:
            try:
                status, resp = client.put(path, body)
            except (OSError, http.client.HTTPException) as e:
                status, resp = 0, str(e).encode()
            with lock:
                if good(status, resp):
                    counts[kind] += 1
                else:
                    counts[kind + "_errors"] += 1
                    if len(errors) < 5:
                        errors.append(f"PUT {path} -> {status} {resp[:120]!r}")

        t0 = start + k * interval / args.workers  # spread the workers over one interval
        tick = 0
        while not stop.is_set() and time.monotonic() < end:
            s, i = rng.randrange(ds.services), rng.randrange(ds.instances)
            put("registrations", f"/v1/services/svc{s}/instances/i{i}",
                ds.registration(s, i, PORT + rng.randrange(2)))
            tick += 1
            if args.flip_every and tick % args.flip_every == 0:
                if critical:
                    put("health_flips", "/v1/services/svc%d/instances/i%d/health" % critical,
                        b'{"status":"passing"}')
                critical = (rng.randrange(ds.services), rng.randrange(ds.instances))
                put("health_flips", "/v1/services/svc%d/instances/i%d/health" % critical,
                    b'{"status":"critical"}')
            # Fixed schedule without catch-up bursts: when behind, the schedule shifts.
            delay = t0 + tick * interval - time.monotonic()
            if delay > 0:
                stop.wait(delay)
            else:
                t0 -= delay
        if critical:  # leave every instance passing
            put("health_flips", "/v1/services/svc%d/instances/i%d/health" % critical,
                b'{"status":"passing"}')

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(args.workers)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        for t in threads:
            t.join(timeout=0.2)
    secs = time.monotonic() - start
    summary = {"seconds": round(secs, 2), "workers": args.workers, **counts,
               "registrations_per_s": round(counts["registrations"] / secs, 1),
               "health_flips_per_s": round(counts["health_flips"] / secs, 1),
               "errors": sum(v for k, v in counts.items() if k.endswith("_errors")),
               "sample_errors": errors}
    Path(args.out).write_text(json.dumps(summary) + "\n")
    return 0


# --- Correctness check. -----------------------------------------------------------------------

def dig(port: int, name: str, qtype: str, mode: str = "udp") -> dict:
    cmd = ["dig", f"@127.0.0.1", "-p", str(port), "+tries=2", "+time=2", "+nocookie", "+norec",
           *DIG_MODE[mode], "+noall", "+comments", "+answer", "+authority", "+additional", name,
           qtype]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=15).stdout
    res = {"rcode": None, "flags": set(), "answer": set(), "authority": set(),
           "additional": set(), "raw": out}
    section = None
    for line in out.splitlines():
        m = re.search(r"status: (\w+)", line)
        if line.startswith(";; ->>HEADER<<-") and m:
            res["rcode"] = m.group(1)
        elif line.startswith(";; flags:"):
            res["flags"] = set(line.split(";")[2].split(":")[1].split())
        elif line.startswith(";; ANSWER SECTION"):
            section = "answer"
        elif line.startswith(";; AUTHORITY SECTION"):
            section = "authority"
        elif line.startswith(";; ADDITIONAL SECTION"):
            section = "additional"
        elif line.startswith(";") or not line.strip():
            continue
        elif section:
            f = line.split()
            owner, ttl, _cls, rtype, rdata = f[0].lower(), f[1], f[2], f[3], " ".join(f[4:])
            if rtype == "SOA":  # serials differ (Cairn's is its applied index); compare the rest
                rdata = " ".join(rdata.split()[:2])
            if rtype == "OPT":
                continue
            res[section].add((owner, int(ttl), rtype, rdata.lower()))
    return res


def expected_answers(ds: DataSet, s: int) -> list[tuple[str, str, dict]]:
    name = f"svc{s}.service.{ZONE}"
    a = {(name, TTL, "A", ds.ip(s, i)) for i in ds.members(s)}
    cases = [(name, "A", {"rcode": "NOERROR", "answer": a, "additional": set()})]
    srv_name = f"_svc{s}._tcp.service.{ZONE}"
    cases.append((srv_name, "SRV", {
        "rcode": "NOERROR",
        "answer": {(srv_name, TTL, "SRV", f"{SRV_PRIORITY} {WEIGHT} {PORT} {ds.hexname(ds.ip(s, i))}")
                   for i in ds.members(s)},
        "additional": {(ds.hexname(ds.ip(s, i)), TTL, "A", ds.ip(s, i)) for i in ds.members(s)},
    }))
    for t in ds.service_tags():
        tname = f"{t}.svc{s}.service.{ZONE}"
        cases.append((tname, "A", {"rcode": "NOERROR", "additional": set(),
                                   "answer": {(tname, TTL, "A", ds.ip(s, i)) for i in ds.members(s, t)}}))
    hexname = ds.hexname(ds.ip(s, 0))
    cases.append((hexname, "A", {"rcode": "NOERROR", "additional": set(),
                                 "answer": {(hexname, TTL, "A", ds.ip(s, 0))}}))
    cases.append((f"nosuch{s}.service.{ZONE}", "A", {
        "rcode": "NXDOMAIN", "answer": set(), "additional": set(),
        "authority": {(ZONE, TTL, "SOA", f"ns.{ZONE} hostmaster.{ZONE}")}}))
    return cases


def cmd_verify(args: argparse.Namespace) -> int:
    ds = dataset_of(args)
    # NAME=PORT, or NAME/MODE=PORT to ask over another transport than UDP.
    servers = dict(kv.split("=", 1) for kv in args.server)
    for key in servers:
        mode = key.partition("/")[2] or "udp"
        if mode not in DIG_MODE:
            raise SystemExit(f"error: --server {key}: the transport must be one of {', '.join(MODES)}")
    rng = random.Random(args.seed)
    sample = sorted({0, ds.services - 1, ds.services // 2,
                     *(rng.randrange(ds.services) for _ in range(max(0, args.sample - 3)))})
    failures, checked = [], 0
    partial = set(args.partial_additional)
    no_glue = set(args.no_additional)
    glue = {srv: [0, 0] for srv in partial}
    for s in sample:
        for name, qtype, want in expected_answers(ds, s):
            for server, port in servers.items():
                base, _, mode = server.partition("/")
                got = dig(int(port), name, qtype, mode or "udp")
                checked += 1
                problems = []
                if got["rcode"] != want["rcode"]:
                    problems.append(f"rcode {got['rcode']}, want {want['rcode']}")
                if "aa" not in got["flags"] or "tc" in got["flags"]:
                    problems.append(f"flags {sorted(got['flags'])}, want aa and no tc")
                for sec in ("answer", "additional", "authority"):
                    if sec not in want:
                        continue
                    if sec == "additional" and base in no_glue and not got[sec]:
                        continue
                    if sec == "additional" and base in partial and want[sec]:
                        # Allowed to carry only part of the glue, but nothing else and not none.
                        if got[sec] and got[sec] <= want[sec]:
                            glue[base][0] += len(got[sec])
                            glue[base][1] += len(want[sec])
                            continue
                    if got[sec] != want[sec]:
                        missing, extra = want[sec] - got[sec], got[sec] - want[sec]
                        problems.append(f"{sec} differs: missing {sorted(missing)[:3]}"
                                        f"{'...' if len(missing) > 3 else ''} ({len(missing)}), "
                                        f"unexpected {sorted(extra)[:3]}"
                                        f"{'...' if len(extra) > 3 else ''} ({len(extra)})")
                if problems:
                    failures.append(f"{server}: {name} {qtype}: " + "; ".join(problems))
                    if args.verbose:
                        print(got["raw"], file=sys.stderr)
    if failures:
        print(f"error: {len(failures)} of {checked} answers differ from the data set:", file=sys.stderr)
        for f in failures[:40]:
            print(f"  {f}", file=sys.stderr)
        return 1
    notes = []
    for srv, (got_n, want_n) in sorted(glue.items()):
        if want_n and got_n < want_n:
            notes.append(f"{LABEL.get(srv, srv)} puts only {got_n} of the {want_n} glue A records "
                         "into the additional sections of the checked SRV answers (the rest of each "
                         "answer matches), so its SRV responses are smaller than the others'")
    for n in notes:
        print(f"note: {n}")
    if args.notes_out:
        Path(args.notes_out).write_text("".join(n + "\n" for n in notes))
    print(f"verified {checked} answers ({len(sample)} services x "
          f"{len(expected_answers(ds, 0))} names x {len(servers)} servers: "
          f"{', '.join(servers)}): rcodes, aa flag and record sets all match the data set")
    return 0


# --- dnsperf output. --------------------------------------------------------------------------

def parse_dnsperf(text: str) -> dict:
    def num(pattern: str, cast=float, default=None):
        m = re.search(pattern, text, re.M)
        return cast(m.group(1)) if m else default

    run = {
        "sent": num(r"^\s*Queries sent:\s+(\d+)", int),
        "completed": num(r"^\s*Queries completed:\s+(\d+)", int),
        "lost": num(r"^\s*Queries lost:\s+(\d+)", int),
        "runtime_s": num(r"^\s*Run time \(s\):\s+([\d.]+)"),
        "qps": num(r"^\s*Queries per second:\s+([\d.]+)"),
        "lat_avg_s": num(r"^\s*Average Latency \(s\):\s+([\d.]+)"),
        "lat_min_s": num(r"^\s*Average Latency \(s\):.*\(min ([\d.]+)"),
        "lat_max_s": num(r"^\s*Average Latency \(s\):.*max ([\d.]+)\)"),
        "lat_stddev_s": num(r"^\s*Latency StdDev \(s\):\s+([\d.]+)"),
        "req_bytes": num(r"^\s*Average packet size:\s+request (\d+)", int),
        "resp_bytes": num(r"^\s*Average packet size:.*response (\d+)", int),
    }
    m = re.search(r"^\s*Response codes:\s+(.*)$", text, re.M)
    run["rcodes"] = {k: int(v) for k, v in re.findall(r"(\w+) (\d+) \(", m.group(1))} if m else {}
    if run["qps"] is None or run["completed"] is None:
        raise SystemExit("error: no statistics in the dnsperf output")
    return parse_measurements(text, run)


def parse_h2load(text: str) -> dict:
    """h2load's summary as the fields parse_dnsperf gives (DoH runs with BENCH_DOH_CLIENT=h2load).
    h2load sees HTTP only: a query counts as answered on a 2xx response; the DNS rcodes were
    checked with dig before the runs."""
    def num(pattern: str, cast=float, default=None):
        m = re.search(pattern, text, re.M)
        return cast(m.group(1)) if m else default

    def dur(v: str) -> float:
        m = re.fullmatch(r"([\d.]+)(us|ms|s)", v)
        if not m:
            raise SystemExit(f"error: h2load duration {v!r}")
        return float(m.group(1)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0}[m.group(2)]

    req = re.search(r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                    r"(\d+) failed, (\d+) errored, (\d+) timeout", text, re.M)
    lat = re.search(r"^time for request:\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", text, re.M)
    qps = num(r"^finished in [\d.]+m?s, ([\d.]+) req/s")
    if not req or qps is None:
        raise SystemExit("error: no statistics in the h2load output")
    total, started, done, ok, failed, errored, timeout = (int(x) for x in req.groups())
    data = num(r"^traffic: .* total, .* headers .*, [\d.]+[KMG]?B \((\d+)\) data", int)
    two = num(r"^status codes: (\d+) 2xx", int, 0)
    run = {
        "sent": started, "completed": ok, "lost": failed + errored + timeout, "qps": qps,
        "runtime_s": num(r"^finished in ([\d.]+)s"),
        "lat_min_s": dur(lat.group(1)) if lat else None, "lat_max_s": dur(lat.group(2)) if lat else None,
        "lat_avg_s": dur(lat.group(3)) if lat else None, "lat_stddev_s": dur(lat.group(4)) if lat else None,
        "req_bytes": None, "resp_bytes": round(data / done) if data and done else None,
        # A 2xx for each request done (a response whose body was still on its way when the run
        # ended counts in the 2xx but not in done), and no failure.
        "rcodes": {}, "http_2xx": two, "rcode_ok": two >= done and not (failed + errored + timeout),
    }
    return run


def parse_measurements(text: str, run: dict) -> dict:
    """The lines run_dnsperf appends to a client's output: how busy both CPUs were, the server's
    CPU time and the client's."""
    cpu = re.search(r"^# cpu\d+ busy (\d+)%, cpu\d+ busy (\d+)%", text, re.M)
    if cpu:
        run["server_core_busy_pct"], run["client_core_busy_pct"] = int(cpu.group(1)), int(cpu.group(2))
    t = re.search(r"^# dnsperf process real ([\d.]+) user ([\d.]+) sys ([\d.]+)", text, re.M)
    if t and float(t.group(1)) > 0:
        run["wall_s"] = float(t.group(1))
        run["client_cpu_pct"] = round((float(t.group(2)) + float(t.group(3))) * 100 / run["wall_s"])
    ticks = re.search(r"^# server process cpu ticks (\d+) hz (\d+)", text, re.M)
    if ticks and run["completed"]:
        run["server_cpu_s"] = int(ticks.group(1)) / int(ticks.group(2))
        run["cpu_us_per_query"] = run["server_cpu_s"] * 1e6 / run["completed"]
        if run.get("wall_s"):
            run["server_cpu_pct"] = round(run["server_cpu_s"] * 100 / run["wall_s"])
    return run


def encode_query(name: str, qtype: str) -> bytes:
    """A query as dnsperf -e sends it (RD, EDNS0 with a 4096-byte payload), with ID 0 as RFC 8484
    asks of GET requests."""
    types = {"A": 1, "AAAA": 28, "SRV": 33, "SOA": 6, "NS": 2, "TXT": 16}
    q = struct.pack(">HHHHHH", 0, 0x0100, 1, 0, 0, 1)
    for label in name.rstrip(".").split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\0" + struct.pack(">HH", types[qtype.upper()], 1)
    return q + b"\0" + struct.pack(">HHIH", 41, 4096, 0, 0)


def cmd_doh_uris(args: argparse.Namespace) -> int:
    with open(args.queries) as src, open(args.out, "w") as out:
        for line in src:
            if not line.strip():
                continue
            name, qtype = line.split()[:2]
            encoded = base64.urlsafe_b64encode(encode_query(name, qtype)).decode().rstrip("=")
            out.write(f"{args.url}?dns={encoded}\n")
    return 0


def latency_percentiles(path: str) -> dict:
    """Percentiles over dnsperf -v lines `> RCODE NAME TYPE SECONDS` (µs resolution). Timed out
    queries (`> T ...`) are counted, not ranked: dnsperf reports no latency for them."""
    hist: Counter = Counter()
    timeouts = 0
    with open(path, errors="replace") as f:
        for line in f:
            if not line.startswith("> "):
                continue
            parts = line.split()
            if parts[1] == "T" or parts[1] == "I":
                timeouts += 1
                continue
            try:
                hist[round(float(parts[-1]) * 1e6)] += 1
            except ValueError:
                continue
    n = sum(hist.values())
    out = {"samples": n, "timeouts": timeouts}
    if not n:
        return out
    keys = sorted(hist)
    for q, name in ((0.5, "p50"), (0.9, "p90"), (0.99, "p99"), (0.999, "p999")):
        rank, seen = q * n, 0
        for k in keys:
            seen += hist[k]
            if seen >= rank:
                out[f"{name}_us"] = k
                break
    out["max_us"] = keys[-1]
    return out


def cmd_record(args: argparse.Namespace) -> int:
    text = Path(args.dnsperf_output).read_text(errors="replace")
    try:
        run = parse_h2load(text) if args.format == "h2load" else parse_dnsperf(text)
        if args.format == "h2load":
            parse_measurements(text, run)
    except SystemExit as e:
        print(f"{e} ({args.dnsperf_output})", file=sys.stderr)
        return 1
    run.update(server=args.server, kind=args.kind, run=args.run, clients=args.clients,
               target_qps=args.target_qps, qtype=args.qtype, mode=args.mode, client=args.format)
    # CPU that other processes took from the two benchmark CPUs (busy minus our process).
    if "server_cpu_pct" in run and "server_core_busy_pct" in run and "client_cpu_pct" in run:
        run["other_cpu_pct"] = max(run["server_core_busy_pct"] - run["server_cpu_pct"],
                                   run["client_core_busy_pct"] - run["client_cpu_pct"], 0)
    if args.verbose_output:
        run.update(latency_percentiles(args.verbose_output))
    if args.churn:
        run["churn"] = json.loads(Path(args.churn).read_text())
    # Sanity check under load: the share of NXDOMAIN must match the query file's.
    mix = json.loads(Path(args.mix).read_text())
    if args.qtype:
        mix = {"queries": 1, "nxdomain": 1 if args.qtype == "nx" else 0}
    total = sum(run["rcodes"].values())
    if total:
        want = mix["nxdomain"] / mix["queries"]
        got = run["rcodes"].get("NXDOMAIN", 0) / total
        other = {k: v for k, v in run["rcodes"].items() if k not in ("NOERROR", "NXDOMAIN")}
        run["rcode_ok"] = abs(got - want) < 0.02 + 3 / total ** 0.5 and not other
        if not run["rcode_ok"]:
            print(f"warning: {args.server} {args.kind} run {args.run}: rcodes {run['rcodes']} "
                  f"(want {want:.1%} NXDOMAIN, the rest NOERROR)", file=sys.stderr)
    with open(args.runs, "a") as f:
        f.write(json.dumps(run, sort_keys=True) + "\n")
    lost = run["lost"] / run["sent"] if run["sent"] else 0
    kind = f"{args.kind}:{args.qtype}" if args.qtype else args.kind
    if args.mode != "udp":
        kind = f"{args.kind}:{args.mode}/{args.clients}"
    line = (f"{args.server:7} {kind:10} run {args.run}: {run['qps']:9.0f} qps  "
            f"avg {run['lat_avg_s'] * 1e3:6.3f} ms  sd {run['lat_stddev_s'] * 1e3:6.3f} ms  "
            f"lost {lost:.2%}")
    if "cpu_us_per_query" in run:
        line += f"  server {run['cpu_us_per_query']:.1f} µs CPU/query"
    if "client_cpu_pct" in run:
        line += (f"  CPU: server {run.get('server_cpu_pct', '?')}%, dnsperf {run['client_cpu_pct']}%"
                 f" (cores busy {run.get('server_core_busy_pct', '?')}% / {run.get('client_core_busy_pct', '?')}%)")
    if "p99_us" in run:
        line += f"  p50 {run['p50_us'] / 1e3:.3f} ms  p99 {run['p99_us'] / 1e3:.3f} ms"
    if args.target_qps:
        line += f"  (target {args.target_qps} qps)"
    if run.get("other_cpu_pct", 0) > OTHER_CPU_PCT:
        line += f"  WARNING: other processes took ~{run['other_cpu_pct']}% of a benchmark CPU"
    if "churn" in run:
        c = run["churn"]
        line += (f"  churn {c['registrations_per_s']} reg/s + {c['health_flips_per_s']} flips/s, "
                 f"{c['errors']} errors")
    print(line)
    return 0


def load_runs(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]


def cmd_peak(args: argparse.Namespace) -> int:
    qps = [r["qps"] for r in load_runs(args.runs) if r["server"] == args.server and r["kind"] == "peak"]
    if not qps:
        print(f"error: no peak runs for {args.server}", file=sys.stderr)
        return 1
    print(round(statistics.median(qps)))
    return 0


# --- Report. ---------------------------------------------------------------------------------

def med(runs: list[dict], key: str) -> float | None:
    vals = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def ms(v: float | None, scale: float = 1e3) -> str:
    if v is None:
        return "n/a"
    v *= scale
    return f"{v:.3f}" if v < 1 else f"{v:.2f}" if v < 100 else f"{v:.0f}"


def num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}" if v < 10 else f"{v:.1f}"


def cpu(runs: list[dict]) -> str:
    srv, cli = med(runs, "server_cpu_pct"), med(runs, "client_cpu_pct")
    return f"{srv:.0f}% / {cli:.0f}%" if srv is not None and cli is not None else "n/a"


def per_run(runs: list[dict]) -> str:
    return " / ".join(f"{r['qps']:.0f}" for r in runs)


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}×" if a and b else "n/a"




def client_bound(runs: list[dict]) -> bool:
    c = med(runs, "client_cpu_pct")
    return c is not None and c >= CLIENT_BOUND_PCT


def contended(runs: list[dict]) -> bool:
    o = med(runs, "other_cpu_pct")
    return o is not None and o > OTHER_CPU_PCT


def build_section(runs: list[dict], meta: dict[str, str]) -> tuple[str, str]:
    servers = [s for s in SERVERS if any(r["server"] == s for r in runs)]

    def by(s: str, k: str) -> list[dict]:
        return sorted((r for r in runs if r["server"] == s and r["kind"] == k), key=lambda r: r["run"])

    stats: dict[tuple[str, str], dict] = {}
    any_bound = any_busy = False

    peak = ["| Server | QPS (median) | QPS per run | Server CPU µs/query | CPU server / dnsperf | "
            "Avg latency ms | Latency stddev ms | Max ms | Lost | Avg response bytes | Rcodes as expected |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for s in servers:
        rs = by(s, "peak")
        if not rs:
            continue
        st = stats[(s, "peak")] = {"qps": med(rs, "qps"), "avg": med(rs, "lat_avg_s"),
                                   "sd": med(rs, "lat_stddev_s"), "max": med(rs, "lat_max_s"),
                                   "cpu_q": med(rs, "cpu_us_per_query")}
        bound = client_bound(rs)
        any_bound |= bound
        busy = contended(rs)
        any_busy |= busy
        sent, lost = sum(r["sent"] for r in rs), sum(r["lost"] for r in rs)
        ok = "yes" if all(r.get("rcode_ok", True) for r in rs) else "**no**"
        peak.append(f"| {LABEL[s]} | {st['qps']:.0f}{' ⚠' if bound else ''}{' †' if busy else ''} | {per_run(rs)} | "
                    f"{num(st['cpu_q'])} | {cpu(rs)} | {ms(st['avg'])} | {ms(st['sd'])} | {ms(st['max'])} | "
                    f"{lost / sent if sent else 0:.2%} | {rs[0]['resp_bytes']} | {ok} |")
    tables = ["**Peak throughput** (no rate limit):", "", "\n".join(peak)]
    if any_bound:
        tables += ["", f"⚠ dnsperf used at least {CLIENT_BOUND_PCT}% of its CPU: the load generator, "
                       "not the server, set the pace, so this QPS is a lower bound for the server "
                       "and QPS ratios between such servers say little. Compare their CPU cost per "
                       "query instead."]

    def busy_note() -> list[str]:
        return ["", f"† Other processes on this machine took more than {OTHER_CPU_PCT}% of a "
                    "benchmark CPU during these runs (that CPU's busy time per /proc/stat, which "
                    "the kernel samples per tick, minus the benchmark process's own CPU time), so "
                    "they are skewed; see the raw output and re-run on a quiet machine."]

    lat_rows = ["| Server | Offered QPS | Achieved QPS | p50 ms | p90 ms | p99 ms | p99.9 ms | Max ms | "
                "Avg ms | Server CPU µs/query | Lost |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    have_lat = False
    for s in servers:
        rs = by(s, "latency")
        if not rs:
            continue
        have_lat = True
        st = stats[(s, "latency")] = {k: med(rs, k) for k in
                                      ("qps", "p50_us", "p90_us", "p99_us", "p999_us", "max_us",
                                       "lat_avg_s", "cpu_us_per_query")}
        sent, lost = sum(r["sent"] for r in rs), sum(r["lost"] for r in rs)
        busy = contended(rs)
        any_busy |= busy
        lat_rows.append(f"| {LABEL[s]} | {rs[0]['target_qps']} | {st['qps']:.0f}{' †' if busy else ''} | "
                        f"{ms(st['p50_us'], 1e-3)} | {ms(st['p90_us'], 1e-3)} | {ms(st['p99_us'], 1e-3)} | "
                        f"{ms(st['p999_us'], 1e-3)} | {ms(st['max_us'], 1e-3)} | {ms(st['lat_avg_s'])} | "
                        f"{num(st['cpu_us_per_query'])} | {lost / sent if sent else 0:.2%} |")
    bt_rows = ["| Server | " + " | ".join(f"{QTYPE_LABEL[q]} QPS | {QTYPE_LABEL[q]} µs/query" for q in QTYPES) + " |",
               "|---|" + "---:|---:|" * len(QTYPES)]
    have_bt = False
    for s in servers:
        rs = by(s, "bytype")
        if not rs:
            continue
        have_bt = True
        cells = []
        for q in QTYPES:
            qr = [r for r in rs if r.get("qtype") == q]
            mark = (" ⚠" if client_bound(qr) else "") + (" †" if contended(qr) else "")
            any_busy |= contended(qr)
            cells.append(f"{med(qr, 'qps'):.0f}{mark} | {num(med(qr, 'cpu_us_per_query'))}"
                         if qr else "n/a | n/a")
        bt_rows.append(f"| {LABEL[s]} | " + " | ".join(cells) + " |")
    if have_bt:
        tables += ["", f"**By query type** (full speed, one query type per run, "
                       f"{meta.get('bytype_duration', '?')} s each; QPS and server CPU per query):",
                   "", "\n".join(bt_rows)]

    if have_lat:
        tables += ["", f"**Latency at {meta.get('latency_rate') or 'a fixed rate'}** (`-Q`; "
                       "percentiles over every answered query, from dnsperf's per-query `-v` lines):",
                   "", "\n".join(lat_rows)]

    if "cairn" in servers and len(servers) > 1:
        rr = ["| Cairn vs | Peak QPS, Cairn/other (>1: Cairn faster) | "
              "CPU µs/query at peak, Cairn/other (<1: Cairn cheaper) | "
              "p99 at the latency rate, Cairn/other (<1: Cairn faster) |",
              "|---|---:|---:|---:|"]
        c_peak, c_lat = stats.get(("cairn", "peak"), {}), stats.get(("cairn", "latency"), {})
        for s in servers:
            if s == "cairn":
                continue
            o_peak, o_lat = stats.get((s, "peak"), {}), stats.get((s, "latency"), {})
            bound = client_bound(by("cairn", "peak")) and client_bound(by(s, "peak"))
            rr.append(f"| {LABEL[s]} | {ratio(c_peak.get('qps'), o_peak.get('qps'))}"
                      f"{' ⚠ both client-bound' if bound else ''} | "
                      f"{ratio(c_peak.get('cpu_q'), o_peak.get('cpu_q'))} | "
                      f"{ratio(c_lat.get('p99_us'), o_lat.get('p99_us'))} |")
        tables += ["", "\n".join(rr)]
        if meta.get("latency_rate", "").startswith("half"):
            tables += ["", "Each server's latency runs are at half of its own peak, so the p99 ratio "
                           "compares servers at equal relative load, not at equal QPS "
                           "(BENCH_LATENCY=<qps> runs all of them at one rate)."]

    churn = by("cairn", "churn")
    if churn:
        quiet = by("cairn", "peak")
        q, c = med(quiet, "qps"), med(churn, "qps")
        regs = statistics.median(r["churn"]["registrations_per_s"] for r in churn)
        flips = statistics.median(r["churn"]["health_flips_per_s"] for r in churn)
        errs = sum(r["churn"]["errors"] for r in churn)
        rows = ["| Cairn | QPS (median) | QPS per run | Server CPU µs/query | CPU server / dnsperf | "
                "Avg latency ms | Latency stddev ms | Max ms | Writes during the runs |",
                "|---|---:|---|---:|---:|---:|---:|---:|---|"]
        if quiet:
            rows.append(f"| quiet | {q:.0f}{' †' if contended(quiet) else ''} | {per_run(quiet)} | {num(med(quiet, 'cpu_us_per_query'))} | "
                        f"{cpu(quiet)} | {ms(med(quiet, 'lat_avg_s'))} | {ms(med(quiet, 'lat_stddev_s'))} | "
                        f"{ms(med(quiet, 'lat_max_s'))} | none |")
        any_busy |= contended(churn)
        rows.append(f"| churn | {c:.0f}{' †' if contended(churn) else ''} | {per_run(churn)} | {num(med(churn, 'cpu_us_per_query'))} | "
                    f"{cpu(churn)} | {ms(med(churn, 'lat_avg_s'))} | {ms(med(churn, 'lat_stddev_s'))} | "
                    f"{ms(med(churn, 'lat_max_s'))} | {regs:.0f} registrations/s + {flips:.0f} health "
                    f"writes/s (median), {errs} failed |")
        tables += ["", "**Cairn under churn** (full-speed dnsperf while a client re-registers random "
                       "instances and flips their health on the same node; the server CPU time "
                       "includes the writes):", "", "\n".join(rows),
                   "", f"Churn/quiet peak QPS: {ratio(c, q)}."]
    if any_busy:
        tables += busy_note()
    table_all = "\n".join(tables)

    only = "" if len(servers) == 3 else f" (only {', '.join(LABEL[s] for s in servers)})"
    notes = [n for n in meta.get("notes", "").splitlines() if n.strip()]
    lines = [
        START,
        "## DNS: Cairn vs Knot DNS vs hickory-dns",
        "",
        "_Written by `bench/dns.sh`; do not edit by hand, re-run the script._",
        "",
        f"- Date: {meta.get('date', '?')}",
        f"- Machine: {meta.get('nproc', '?')} CPUs ({meta.get('cpu', '?')}), kernel {meta.get('kernel', '?')}, "
        f"{meta.get('os', '?')}; load average at start {meta.get('load', '?')}",
        f"- Servers: Cairn commit {meta.get('cairn_commit', '?')} (one node, `--bootstrap`, loaded over "
        f"HTTP); {meta.get('knot_version', 'Knot DNS ?')} (1 UDP + 1 TCP + 1 background worker, "
        f"`answer-rotation: on`, no journal); hickory-dns {meta.get('hickory_version', '?')} "
        "(`--workers 1`, the zone file as a primary zone, built without default features)",
        f"- Pinning: each server on CPU {meta.get('server_cpu', '?')} (`taskset`), dnsperf "
        f"{meta.get('dnsperf_version', '?')} (and the HTTP clients) on CPU {meta.get('client_cpu', '?')}; "
        "one server measured at a time",
        f"- Data: {meta.get('dataset', '?')}",
        f"- Queries: {meta.get('mix', '?')}",
        f"- Load: `{meta.get('dnsperf_cmd', 'dnsperf')}`, {meta.get('duration', '?')} s per run, "
        f"{meta.get('runs', '?')} run{'' if meta.get('runs') == '1' else 's'} per row, "
        f"{meta.get('warmup', '?')} s unrecorded warm-up per server",
        f"- Command{only}: `{meta.get('command', '?')}`",
        "",
        table_all,
        "",
        *[f"- Note: {n}." for n in notes],
        *([""] if notes else []),
        "Cairn answers from each node's local replica (no Raft round trip per query), so one node "
        "stands for any node of a cluster. It shuffles the records of every answer (weighted random "
        "order); Knot rotates them by query id; hickory-dns answers in a fixed order. Before the runs "
        "every server is checked with dig to give the rcodes, AA flag and record sets the data set "
        "prescribes for a sample of names (answer, additional and authority sections; SOA serials "
        "aside). QPS is dnsperf's completed queries per second, the median over the runs; latency "
        "is over completed queries; a lost query is one unanswered within dnsperf's 1 s timeout. "
        "Server CPU µs/query is the server process's user+system CPU time during a run divided by "
        "the queries it answered; CPU server / dnsperf is each process's CPU time over the run's "
        "wall time (100% = one core; the kernel's share of the loopback traffic is partly "
        "outside both; /proc/stat figures for the two cores are in the raw output). "
        f"dnsperf {meta.get('dnsperf_version', '')} prints only average, stddev, min and max "
        "latency, so the percentiles come from its per-query lines, which are recorded only in the "
        "rate-limited runs (printing them slows dnsperf). Raw output: "
        f"`{meta.get('results_dir', 'bench/results/')}` (not committed).",
        END,
    ]
    return "\n".join(lines), table_all


def cmd_report(args: argparse.Namespace) -> int:
    runs = load_runs(args.runs)
    if not runs:
        print(f"error: no runs recorded in {args.runs}", file=sys.stderr)
        return 1
    meta = dict(kv.split("=", 1) for kv in args.meta)
    section, table = build_section(runs, meta)
    print(table)
    if args.output:
        benchlib.replace_section(Path(args.output), "dns", section)
        print(f"\nwrote section to {args.output}", file=sys.stderr)
    return 0


# --- Encrypted DNS report (BENCH_DNS_TLS=1). ---------------------------------------------------

TLS_START, TLS_END = benchlib.markers("dns-tls")
# The issue's goal: Cairn serves at least unbound's queries per second over TLS.
TLS_GOAL = 1.0


def build_tls_section(runs: list[dict], meta: dict[str, str]) -> tuple[str, str]:
    peak = [r for r in runs if r["kind"] == "peak"]
    servers = [s for s in SERVERS if any(r["server"] == s for r in peak)]
    modes = [m for m in MODES if any(r.get("mode", "udp") == m for r in peak)]
    conns = sorted({r["clients"] for r in peak})

    def cell(s: str, m: str, c: int) -> list[dict]:
        return sorted((r for r in peak if r["server"] == s and r.get("mode", "udp") == m
                       and r["clients"] == c), key=lambda r: r["run"])

    def marks(rs: list[dict]) -> str:
        return (" ⚠" if client_bound(rs) else "") + (" †" if contended(rs) else "")

    any_bound = any(client_bound(cell(s, m, c)) for s in servers for m in modes for c in conns)
    any_busy = any(contended(cell(s, m, c)) for s in servers for m in modes for c in conns)

    head = ["| Connections | Server | " + " | ".join(f"{MODE_LABEL[m]} QPS" for m in modes) + " | "
            + " | ".join(f"{MODE_LABEL[m]} µs/query" for m in modes) + " |",
            "|---:|---|" + "---:|" * (2 * len(modes))]
    for c in conns:
        for s in servers:
            qps, cpu_q = [], []
            for m in modes:
                rs = cell(s, m, c)
                q = med(rs, "qps")
                qps.append(f"{q:.0f}{marks(rs)}" if q is not None else "n/a")
                cpu_q.append(num(med(rs, "cpu_us_per_query")))
            head.append(f"| {c} | {LABEL[s]} | " + " | ".join(qps) + " | " + " | ".join(cpu_q) + " |")
    tables = ["**Peak throughput** (no rate limit; QPS the median of the runs, server CPU time per "
              "answered query):", "", "\n".join(head)]

    verdicts = []
    if "cairn" in servers and "unbound" in servers:
        rr = ["| Connections | " + " | ".join(f"{MODE_LABEL[m]} QPS, Cairn/unbound" for m in modes)
              + " | " + " | ".join(f"{MODE_LABEL[m]} CPU µs/query, Cairn/unbound" for m in modes) + " |",
              "|---:|" + "---:|" * (2 * len(modes))]
        tls_ratios = []
        for c in conns:
            q_cells, c_cells = [], []
            for m in modes:
                a, b = cell("cairn", m, c), cell("unbound", m, c)
                qa, qb = med(a, "qps"), med(b, "qps")
                both = client_bound(a) and client_bound(b)
                q_cells.append(ratio(qa, qb) + (" ⚠ both client-bound" if both else ""))
                c_cells.append(ratio(med(a, "cpu_us_per_query"), med(b, "cpu_us_per_query")))
                if m in ("dot", "doh") and qa and qb:
                    tls_ratios.append((m, c, qa / qb))
            rr.append(f"| {c} | " + " | ".join(q_cells) + " | " + " | ".join(c_cells) + " |")
        tables += ["", "**Cairn against unbound** (>1 QPS: Cairn faster; <1 CPU: Cairn cheaper):", "",
                   "\n".join(rr)]
        if tls_ratios:
            worst = min(tls_ratios, key=lambda t: t[2])
            listed = ", ".join(f"{MODE_LABEL[m]} {x:.2f}× at {c}" for m, c, x in tls_ratios)
            verdicts.append(f"Goal: Cairn ≥ {TLS_GOAL:.1f}× unbound's queries per second over TLS → "
                            f"{listed}; lowest {worst[2]:.2f}×: "
                            f"**{'met' if worst[2] >= TLS_GOAL else 'no'}**.")

    if "tcp" in modes and len(modes) > 1:
        enc = [m for m in modes if m in ("dot", "doh")]
        cost = ["| Connections | Server | " + " | ".join(f"{MODE_LABEL[m]} QPS / TCP QPS" for m in enc)
                + " | " + " | ".join(f"{MODE_LABEL[m]} − TCP, µs/query" for m in enc) + " |",
                "|---:|---|" + "---:|" * (2 * len(enc))]
        for c in conns:
            for s in servers:
                base = cell(s, "tcp", c)
                qt, ct = med(base, "qps"), med(base, "cpu_us_per_query")
                q_cells, c_cells = [], []
                for m in enc:
                    rs = cell(s, m, c)
                    q, cq = med(rs, "qps"), med(rs, "cpu_us_per_query")
                    q_cells.append(f"{q / qt:.2f}" if q and qt else "n/a")
                    c_cells.append(f"{cq - ct:+.1f}".replace("-", "−") if cq is not None and ct is not None
                                   else "n/a")
                cost.append(f"| {c} | {LABEL[s]} | " + " | ".join(q_cells) + " | " + " | ".join(c_cells) + " |")
        tables += ["", "**What TLS costs** (each server against its own plain TCP, same connections):",
                   "", "\n".join(cost)]

    detail = ["| Connections | Server | Transport | QPS per run | CPU server / dnsperf | Avg latency ms "
              "| Latency stddev ms | Lost | Avg response bytes | Rcodes as expected |",
              "|---:|---|---|---|---:|---:|---:|---:|---:|---|"]
    for c in conns:
        for s in servers:
            for m in modes:
                rs = cell(s, m, c)
                if not rs:
                    continue
                sent, lost = sum(r["sent"] for r in rs), sum(r["lost"] for r in rs)
                ok = "yes" if all(r.get("rcode_ok", True) for r in rs) else "**no**"
                detail.append(f"| {c} | {LABEL[s]} | {MODE_LABEL[m]} | {per_run(rs)} | {cpu(rs)} | "
                              f"{ms(med(rs, 'lat_avg_s'))} | {ms(med(rs, 'lat_stddev_s'))} | "
                              f"{lost / sent if sent else 0:.2%} | {rs[0]['resp_bytes']} | {ok} |")
    tables += ["", "**Every run:**", "", "\n".join(detail)]
    if any_bound:
        tables += ["", f"⚠ dnsperf used at least {CLIENT_BOUND_PCT}% of its CPU: the load generator, "
                       "not the server, set the pace, so this QPS is a lower bound for the server; "
                       "compare CPU per query instead."]
    if any_busy:
        tables += ["", f"† Other processes took more than {OTHER_CPU_PCT}% of a benchmark CPU during "
                       "these runs, so they are skewed; see the raw output and re-run on a quiet machine."]
    if verdicts:
        tables += ["", *verdicts]
    table_all = "\n".join(tables)

    notes = [n for n in meta.get("notes", "").splitlines() if n.strip()]
    lines = [
        TLS_START,
        "## Encrypted DNS: Cairn vs unbound over TCP, DNS over TLS and DNS over HTTPS",
        "",
        "_Written by `BENCH_DNS_TLS=1 bench/dns.sh`; do not edit by hand, re-run the script._",
        "",
        f"- Date: {meta.get('date', '?')}",
        f"- Machine: {meta.get('nproc', '?')} CPUs ({meta.get('cpu', '?')}), kernel {meta.get('kernel', '?')}, "
        f"{meta.get('os', '?')}; load average at start {meta.get('load', '?')}",
        f"- Servers: Cairn commit {meta.get('cairn_commit', '?')} (one node, `--bootstrap`, loaded over "
        "HTTP, `--dns-tls-addr` and `--dns-https-addr`); unbound "
        f"{meta.get('unbound_version', '?')} (`num-threads: 1`, the records as `local-data` of a "
        "static `local-zone`, `tls-port` and `https-port` on the same certificate, OpenSSL "
        f"{meta.get('openssl_version', '?')})",
        f"- TLS: one node certificate from `cairn tls cert create` ({meta.get('cert', '?')}), "
        "served by both (rustls / OpenSSL); DoH over HTTP/2 (ALPN h2; h2load reports TLS 1.3 with both)",
        f"- Pinning: each server on CPU {meta.get('server_cpu', '?')} (`taskset`), dnsperf "
        f"{meta.get('dnsperf_version', '?')} on CPU {meta.get('client_cpu', '?')}; one server measured "
        "at a time",
        f"- Data: {meta.get('dataset', '?')}",
        f"- Queries: {meta.get('mix', '?')}",
        f"- Load: `{meta.get('dnsperf_cmd', 'dnsperf')}`, {meta.get('duration', '?')} s per run, "
        f"{meta.get('runs', '?')} run{'' if meta.get('runs') == '1' else 's'} per cell, "
        f"{meta.get('warmup', '?')} s unrecorded warm-up per cell; connections open once per run "
        "(the handshakes are in the run, not per query)",
        f"- Command: `{meta.get('command', '?')}`",
        "",
        table_all,
        "",
        *[f"- Note: {n}." for n in notes],
        *([""] if notes else []),
        "Every server is checked with dig over each measured transport (`+tcp`, `+tls`, `+https`) "
        "against the data set before the runs. QPS is dnsperf's completed queries per second; server "
        "CPU µs/query is the server process's user+system CPU time during a run over the queries "
        "it answered; CPU server / dnsperf is each process's CPU time over the run's wall time "
        "(100% = one core). dnsperf shares its -q outstanding queries among the connections, so "
        "few connections carry many pipelined queries each (a resolver forwarding to Cairn) and "
        f"many carry one or two (many stub clients). Raw output: "
        f"`{meta.get('results_dir', 'bench/results/')}` (not committed).",
        TLS_END,
    ]
    return "\n".join(lines), table_all


def cmd_tls_report(args: argparse.Namespace) -> int:
    runs = load_runs(args.runs)
    if not runs:
        print(f"error: no runs recorded in {args.runs}", file=sys.stderr)
        return 1
    meta = dict(kv.split("=", 1) for kv in args.meta)
    section, table = build_tls_section(runs, meta)
    print(table)
    if args.output:
        benchlib.replace_section(Path(args.output), "dns-tls", section)
        print(f"\nwrote section to {args.output}", file=sys.stderr)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    def data_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--services", type=int, required=True)
        sp.add_argument("--instances", type=int, required=True)
        sp.add_argument("--tags", default="v1,v2")

    d = sub.add_parser("dataset")
    data_args(d)
    d.add_argument("--out-dir", required=True)
    d.add_argument("--queries", type=int, default=200_000)
    d.add_argument("--mix", default="40,30,20,10", help="weights: A, SRV, tag A, NXDOMAIN")
    d.add_argument("--seed", type=int, default=1)
    d.set_defaults(func=cmd_dataset)

    r = sub.add_parser("register")
    data_args(r)
    r.add_argument("--url", required=True)
    r.add_argument("--concurrency", type=int, default=64)
    r.add_argument("--timeout", type=float, default=10)
    r.add_argument("--deadline", type=float, default=900, help="give up after this many seconds")
    r.set_defaults(func=cmd_register)

    c = sub.add_parser("churn")
    data_args(c)
    c.add_argument("--url", required=True)
    c.add_argument("--rate", type=float, default=100, help="registrations per second")
    c.add_argument("--flip-every", type=int, default=5,
                   help="one health flip (two writes) after every N registrations of a worker")
    c.add_argument("--workers", type=int, default=4)
    c.add_argument("--duration", type=float, required=True)
    c.add_argument("--timeout", type=float, default=5)
    c.add_argument("--seed", type=int, default=2)
    c.add_argument("--out", required=True)
    c.set_defaults(func=cmd_churn)

    v = sub.add_parser("verify")
    data_args(v)
    v.add_argument("--server", action="append", required=True, metavar="NAME=PORT")
    v.add_argument("--sample", type=int, default=6, help="services to check")
    v.add_argument("--seed", type=int, default=3)
    v.add_argument("--verbose", action="store_true")
    v.add_argument("--partial-additional", action="append", default=[], metavar="NAME",
                   help="server allowed to return a non-empty subset of the SRV glue")
    v.add_argument("--no-additional", action="append", default=[], metavar="NAME",
                   help="server allowed to return no additional section (no SRV glue) at all")
    v.add_argument("--notes-out", help="write notes on allowed differences here, one a line")
    v.set_defaults(func=cmd_verify)

    rec = sub.add_parser("record")
    rec.add_argument("--runs", required=True)
    rec.add_argument("--dnsperf-output", required=True)
    rec.add_argument("--verbose-output")
    rec.add_argument("--server", required=True, choices=SERVERS)
    rec.add_argument("--kind", required=True, choices=("peak", "latency", "churn", "warmup", "bytype"))
    rec.add_argument("--qtype", choices=QTYPES, help="for bytype runs: which query file")
    rec.add_argument("--run", type=int, required=True)
    rec.add_argument("--clients", type=int, required=True)
    rec.add_argument("--mode", choices=MODES, default="udp", help="dnsperf -m")
    rec.add_argument("--format", choices=("dnsperf", "h2load"), default="dnsperf",
                     help="the load generator whose output --dnsperf-output holds")
    rec.add_argument("--target-qps", type=int, default=0)
    rec.add_argument("--churn", help="churn summary JSON to attach")
    rec.add_argument("--mix", required=True, help="queries.json written by `dataset`")
    rec.set_defaults(func=cmd_record)

    pk = sub.add_parser("peak")
    pk.add_argument("--runs", required=True)
    pk.add_argument("--server", required=True, choices=SERVERS)
    pk.set_defaults(func=cmd_peak)

    du = sub.add_parser("doh-uris")
    du.add_argument("--queries", required=True, help="dnsperf query file: NAME TYPE per line")
    du.add_argument("--url", required=True, help="e.g. https://127.0.0.1:443/dns-query")
    du.add_argument("--out", required=True)
    du.set_defaults(func=cmd_doh_uris)

    tr = sub.add_parser("tls-report")
    tr.add_argument("--runs", required=True)
    tr.add_argument("--output", help="BENCHMARKS.md to update; omit to only print")
    tr.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE")
    tr.set_defaults(func=cmd_tls_report)

    rep = sub.add_parser("report")
    rep.add_argument("--runs", required=True)
    rep.add_argument("--output", help="BENCHMARKS.md to update; omit to only print")
    rep.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE")
    rep.set_defaults(func=cmd_report)

    args = p.parse_args()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
