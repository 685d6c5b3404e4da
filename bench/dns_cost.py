#!/usr/bin/env python3
"""What a DNS query costs the node, counted in instructions: several cairn binaries, the same
queries.

  bench/dns_cost.py --bin before=PATH --bin after=PATH [--queries N] [--rounds N] [--out FILE]

For comparing two builds (before and after a change to the answer path) on a busy 2-core
machine, where dnsperf's QPS moves by more than the change: each binary's node runs under
valgrind's callgrind (which counts instructions whatever else the machine does), seeded with
service `web` of 10 instances (native API). Then, per round, with callgrind's counters zeroed
before and dumped after each phase: 5 s idle (timers, Raft ticks; subtracted from the phases in
proportion to their length), then --queries UDP queries of each kind, one at a time, each
answer checked:

- `a`:   `web.service.cairn.` A (10 answers)
- `srv`: `_web._tcp.service.cairn.` SRV (10 answers, 10 addresses)
- `nx`:  `nosuch.service.cairn.` A (NXDOMAIN)
- `out`: `example.org.` A (outside the zone: REFUSED)

Prints a Markdown table of the median over --rounds of instructions per query for each binary
and kind, and the ratio of each binary to the first: the whole node's (idle subtracted; its
spread is a few per cent) and `<kind>_answer`, the inclusive cost of `Zone::answer` alone (the
answer path, exact from run to run; from callgrind_annotate). Uses bench/acl_cost.py's node and
callgrind helpers; needs valgrind (callgrind_control) and python3.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import os
import random
import socket
import statistics
import struct
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from acl_cost import Fail, Node, callgrind, dumped_ir, log  # noqa: E402

KINDS = {
    "a": ("web.service.cairn.", 1, 0, 10),
    "srv": ("_web._tcp.service.cairn.", 33, 0, 10),
    "nx": ("nosuch.service.cairn.", 1, 3, 0),
    "out": ("example.org.", 1, 5, 0),
}


def query(name: str, qtype: int) -> bytes:
    q = struct.pack(">HHHHHH", random.randrange(65536), 0x0100, 1, 0, 0, 0)
    for label in name.rstrip(".").split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\x00" + struct.pack(">HH", qtype, 1)


def ask(sock: socket.socket, port: int, kind: str, count: int) -> None:
    name, qtype, rcode, answers = KINDS[kind]
    for _ in range(count):
        q = query(name, qtype)
        sock.sendto(q, ("127.0.0.1", port))
        data = sock.recv(65535)
        got_rcode = data[3] & 0x0F
        got_answers = struct.unpack(">H", data[6:8])[0]
        if data[:2] != q[:2] or got_rcode != rcode or got_answers != answers:
            raise Fail(f"{kind}: rcode {got_rcode}, {got_answers} answers")


def answer_ir(dump: str) -> int | None:
    """Inclusive instructions of `Zone::answer` in one callgrind dump: the answer path alone,
    without the socket, the runtime or idle timers (None if the symbol is not in the dump)."""
    out = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", dump],
                         capture_output=True, text=True, timeout=300).stdout
    for line in out.splitlines():
        if re.search(r"cairn_dns::answer::Zone::answer(\s|$| \[)", line):
            m = re.match(r"\s*([\d,]+)", line)
            if m:
                return int(m.group(1).replace(",", ""))
    return None


def seed(port: int) -> None:
    for n in range(10):
        body = json.dumps({"address": f"10.0.0.{n + 1}", "port": 8080}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/services/web/instances/web-{n}",
                                     data=body, method="PUT",
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            if r.status >= 300:
                raise Fail(f"registration: {r.status}")


def measure(name: str, binary: str, work: str, base: int, queries: int, rounds: int) -> dict:
    n = Node(binary, work, name, base, acl=False)
    prefix = os.path.join(work, f"cg-{name}")
    seen: set[str] = set()
    under = ["valgrind", "--tool=callgrind", "--fair-sched=yes", f"--callgrind-out-file={prefix}.%p",
             "--dump-instr=no", "--dump-line=no"]
    log(f"{name}: starting under callgrind")
    n.start(under, wait=600)
    assert n.proc is not None
    pid = n.proc.pid
    seed(n.http)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(30)
    for kind in KINDS:
        ask(sock, n.dns, kind, 50)  # warm-up: caches, the record sets, first-query paths
    per: dict[str, list[float]] = {k: [] for k in KINDS}
    zone: dict[str, list[float]] = {k: [] for k in KINDS}
    for r in range(rounds):
        callgrind(pid, "-z")
        t0 = time.monotonic()
        time.sleep(5)
        secs = time.monotonic() - t0
        callgrind(pid, "-d")
        idle_rate = dumped_ir(prefix, seen) / secs
        for kind in KINDS:
            callgrind(pid, "-z")
            t0 = time.monotonic()
            ask(sock, n.dns, kind, queries)
            secs = time.monotonic() - t0
            callgrind(pid, "-d")
            before = set(seen)
            ir = dumped_ir(prefix, seen)
            per[kind].append((ir - idle_rate * secs) / queries)
            inclusive = answer_ir((seen - before).pop())
            if inclusive is not None:
                zone[kind].append(inclusive / queries)
        log(f"{name} round {r + 1}/{rounds}: " + ", ".join(
            f"{k} {per[k][-1]:,.0f} (answer {zone[k][-1] if zone[k] else 0:,.0f})" for k in KINDS))
    n.stop()
    return ({k: statistics.median(v) for k, v in per.items()}
            | {f"{k}_answer": statistics.median(v) if v else 0.0 for k, v in zone.items()}
            | {"rounds": per, "answer_rounds": zone})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", action="append", required=True, help="NAME=PATH, in table order")
    p.add_argument("--queries", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--port-base", type=int, default=26000)
    p.add_argument("--out", default="")
    args = p.parse_args()
    bins = [b.split("=", 1) for b in args.bin]
    results = {}
    with tempfile.TemporaryDirectory(prefix="cairn-dns-cost.") as work:
        for name, binary in bins:
            results[name] = measure(name, binary, work, args.port_base, args.queries, args.rounds)
    first = bins[0][0]
    cols = list(KINDS) + [f"{k}_answer" for k in KINDS]
    print("| binary | " + " | ".join(f"{k} Ir/query" for k in cols) + " |")
    print("| --- |" + " ---: |" * len(cols))
    for name, _ in bins:
        cells = []
        for k in cols:
            v = results[name][k]
            ratio = "" if name == first or not results[first][k] else f" ({v / results[first][k]:.3f}x)"
            cells.append(f"{v:,.0f}{ratio}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
