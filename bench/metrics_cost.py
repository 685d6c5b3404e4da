#!/usr/bin/env python3
"""What metrics and request ids cost per request, counted in instructions: two builds compared.

  bench/metrics_cost.py --base PATH --bin PATH [--runs N] [--reads N] [--writes N] [--queries N]

Issue 18 allows the metrics 3% on the hot paths. Throughput runs on this 2-core machine spread
by 10-30% from run to run, so, as bench/acl_cost.py does for ACLs, this counts the instructions
the node executes under valgrind's callgrind and divides by the requests served. Each run starts
one single-node cluster per binary (--base: the build without the metrics, e.g. main; --bin: the
build with them), seeds the service's 10 instances, restarts the node under callgrind, and with
callgrind's counters zeroed before and dumped after each phase measures:

1. idle: --idle seconds without requests, subtracted from the phases in proportion to their
   length;
2. reads: --reads (5,000) `GET /v1/services/web` over 4 keep-alive connections (every answer 200);
3. writes: --writes (1,000) `PUT /v1/services/web/instances/web-1` over 4 connections;
4. dns: --queries (20,000) UDP `web.service.cairn. A` queries, one at a time (every answer NOERROR with
   10 addresses).

The runs alternate the two binaries. Prints a Markdown table with the median over --runs of each
binary's instructions per request and of the per-run ratios bin/base. Needs valgrind.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from acl_cost import (CONNECTIONS, SERVICE, Fail, Node, callgrind, dumped_ir,  # noqa: E402
                      http_request, load, log, median)


def dns_query(qid: int) -> bytes:
    name = b"".join(bytes([len(p)]) + p for p in f"{SERVICE}.service.cairn".encode().split(b".")) + b"\0"
    return struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + name + struct.pack(">HH", 1, 1)


def dns_load(port: int, count: int) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(30)
    try:
        for i in range(count):
            qid = i & 0xFFFF
            s.sendto(dns_query(qid), ("127.0.0.1", port))
            reply = s.recv(4096)
            rid, flags, _, ancount = struct.unpack(">HHHH", reply[:8])
            if rid != qid or flags & 0x0F != 0 or ancount != 10:
                raise Fail(f"DNS answer {rid} flags {flags:#x} with {ancount} answers")
    finally:
        s.close()


def measure(binary: str, work: str, name: str, port_base: int, a: argparse.Namespace) -> dict:
    n = Node(binary, work, name, port_base, acl=False)
    n.start([], wait=60)
    try:
        subprocess.run([sys.executable, os.path.join(HERE, "reads_tool.py"), "seed-cairn",
                        "--port", str(n.http), "--service", SERVICE, "--count", "10"],
                       check=True, timeout=300, stdout=subprocess.DEVNULL)
    finally:
        n.stop()
    prefix = os.path.join(work, f"cg-{name}")
    seen: set[str] = set()
    under = ["valgrind", "--tool=callgrind", "--fair-sched=yes", f"--callgrind-out-file={prefix}.%p",
             "--dump-instr=no", "--dump-line=no"]
    n.start(under, wait=600)
    assert n.proc is not None
    pid = n.proc.pid
    body = json.dumps({"address": "10.0.0.1", "port": 8080}).encode()
    get = http_request("GET", f"/v1/services/{SERVICE}", n.http, None)
    put = http_request("PUT", f"/v1/services/{SERVICE}/instances/{SERVICE}-1", n.http, None, body)
    # Warm-up, not counted.
    asyncio.run(load(n.http, get, 200, CONNECTIONS, b'"instances"'))
    asyncio.run(load(n.http, put, 50, CONNECTIONS, b'"index"'))
    dns_load(n.dns, 200)
    result = {}
    phases = (("idle", None, 0),
              ("reads", lambda: asyncio.run(load(n.http, get, a.reads, CONNECTIONS, b'"instances"')), a.reads),
              ("writes", lambda: asyncio.run(load(n.http, put, a.writes, CONNECTIONS, b'"index"')), a.writes),
              ("dns", lambda: dns_load(n.dns, a.queries), a.queries))
    try:
        for phase, run, count in phases:
            callgrind(pid, "-z")
            t0 = time.monotonic()
            if run is None:
                time.sleep(a.idle)
            else:
                run()
            secs = time.monotonic() - t0
            callgrind(pid, "-d")
            result[phase] = {"ir": dumped_ir(prefix, seen), "seconds": secs, "requests": count}
    finally:
        n.stop()
        for path in glob.glob(prefix + "*") if not a.keep else ():
            os.remove(path)
    idle_rate = result["idle"]["ir"] / result["idle"]["seconds"]
    per = {}
    for phase in ("reads", "writes", "dns"):
        r = result[phase]
        per[phase] = (r["ir"] - idle_rate * r["seconds"]) / r["requests"]
    log(f"{name}: " + ", ".join(f"{k} {v:,.0f}" for k, v in per.items()) + " instructions/request")
    return per


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="the cairn binary without the change")
    p.add_argument("--bin", required=True, help="the cairn binary with the change")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--reads", type=int, default=5000)
    p.add_argument("--writes", type=int, default=1000)
    p.add_argument("--queries", type=int, default=20000)
    p.add_argument("--idle", type=float, default=5.0)
    p.add_argument("--port-base", type=int, default=26000)
    p.add_argument("--out", default=None)
    p.add_argument("--keep", action="store_true", help="keep callgrind's dumps (for callgrind_annotate)")
    a = p.parse_args()
    for b in (a.base, a.bin):
        if not os.access(b, os.X_OK):
            raise Fail(f"no cairn binary at {b}")
    if a.runs < 1 or a.reads < 100 or a.writes < 10 or a.queries < 100:
        raise Fail("--runs >= 1, --reads >= 100, --writes >= 10, --queries >= 100")
    work = tempfile.mkdtemp(prefix="cairn-metrics-cost-")
    runs: dict = {"base": [], "bin": []}
    for r in range(a.runs):
        order = [("base", a.base), ("bin", a.bin)]
        if r % 2:
            order.reverse()
        for name, binary in order:
            runs[name].append(measure(binary, work, f"{name}{r}", a.port_base + 10 * r +
                                      (0 if name == "base" else 5), a))
    rows = ["| phase | base, instructions/request | with metrics | ratio (median of runs) | ratios of the runs |",
            "| --- | --- | --- | --- | --- |"]
    for phase in ("reads", "writes", "dns"):
        base = [x[phase] for x in runs["base"]]
        new = [x[phase] for x in runs["bin"]]
        ratios = [y / x for x, y in zip(base, new)]
        rows.append(f"| {phase} | {median(base):,.0f} | {median(new):,.0f} | {median(ratios):.3f} | "
                    + ", ".join(f"{x:.3f}" for x in ratios) + " |")
    print("\n".join(rows))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(runs, f, indent=1)
    log(f"logs left in {work}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (Fail, subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        print(f"metrics_cost.py: {e}", file=sys.stderr)
        sys.exit(1)
