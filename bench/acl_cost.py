#!/usr/bin/env python3
"""What ACLs cost per request, counted in instructions, not seconds.

  bench/acl_cost.py [--bin PATH] [--reads N] [--writes N] [--tokens N] [--out FILE]

The throughput comparison of bench/reads.sh and bench/registrations.sh (BENCH_ACL=1) runs each
system once after the other on a 2-core machine; their run-to-run spread (10-30%) is larger than
the 5% it has to resolve. This script measures the cost itself: it runs the node under
valgrind's callgrind, which counts the instructions the node executes whatever else the machine
is doing, and divides by the requests served. The same binary, the same requests, three nodes:

- `off`:  ACLs off (no --acl);
- `acl`:  --acl (default deny), 10 tokens in the registry, the load token's policy
          `service_prefix "<svc>" write` (write implies read);
- `many`: the same with --tokens tokens (100,000 by default).

For each node: a fresh data folder, started natively; ACL bootstrap, policy and tokens
(bench/acl_tool.py) and the service's 10 instances (bench/reads_tool.py seed-cairn); the node is
stopped and started again on the same folder under callgrind (so the 100,000 token creations
are not counted and do not take an hour). Then, with callgrind's counters zeroed before and
dumped after each phase:

1. idle: 10 s without requests (timers, Raft ticks), to subtract from the phases below in
   proportion to their length;
2. reads: --reads `GET /v1/services/<svc>` over 4 keep-alive connections, every answer 200
   with the 10 instances;
3. writes: --writes `PUT /v1/services/<svc>/instances/<svc>-1` (the same registration again: a
   Raft write of the same size each time) over 4 connections, every answer 200.

Prints a Markdown table: instructions per request for each node and phase, and the ratios
acl/off and many/acl. Writes the raw figures as JSON to --out. Needs valgrind (with
callgrind_control) and python3; the node's flags are those of bench/reads.sh.

`--mode cpu` counts CPU time instead, natively, which includes what instructions miss (the
kernel's part of a request, cache misses): the three nodes run side by side, and in each of
--rounds rounds every node in turn (the order rotating) serves --reads reads and --writes
writes; the node's CPU time (utime + stime of /proc/<pid>/stat, all its threads) per request is
taken for each, and the table gives the median over rounds of each node's figure and of the
per-round ratios. Interleaving puts every node under the same machine load, whatever else runs.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
SERVICE = "web"
CONNECTIONS = 4


def log(msg: str) -> None:
    print(f"[acl-cost {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Fail(Exception):
    pass


def get_status(port: int, path: str, token: str | None) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token:
        req.add_header("X-Cairn-Token", token)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


class Node:
    """One single-node cluster on loopback ports base+1..base+3."""

    def __init__(self, binary: str, work: str, name: str, base: int, acl: bool):
        self.binary, self.name, self.acl = binary, name, acl
        self.dir = os.path.join(work, name)
        self.http, self.rpc, self.dns = base + 1, base + 2, base + 3
        self.proc: subprocess.Popen | None = None
        self.log_path = os.path.join(work, f"{name}.log")

    def args(self) -> list[str]:
        a = [self.binary, "agent", "--node-id", "1", "--data-dir", self.dir, "--bootstrap",
             "--http-addr", f"127.0.0.1:{self.http}", "--rpc-addr", f"127.0.0.1:{self.rpc}",
             "--dns-addr", f"127.0.0.1:{self.dns}"]
        return a + (["--acl"] if self.acl else [])

    def start(self, under: list[str], wait: float) -> None:
        env = dict(os.environ, CAIRN_LOG="warn")
        logf = open(self.log_path, "a")
        self.proc = subprocess.Popen(under + self.args(), stdout=logf, stderr=logf, env=env)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise Fail(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}")
            if get_status(self.http, "/v1/ready", None) == 200:
                return
            time.sleep(0.5)
        raise Fail(f"{self.name} not ready after {wait:.0f} s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


async def load(port: int, request: bytes, count: int, conns: int, want: bytes) -> None:
    """COUNT requests over CONNS keep-alive HTTP/1.1 connections; every answer must be 200 and
    contain WANT."""
    remaining = count

    async def worker() -> None:
        nonlocal remaining
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while remaining > 0:
                remaining -= 1
                writer.write(request)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 120)
                status = int(head.split(b" ", 2)[1])
                length = None
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if length is None:
                    raise Fail(f"answer without Content-Length: {head[:200]!r}")
                body = await reader.readexactly(length)
                if status != 200 or want not in body:
                    raise Fail(f"HTTP {status} {body[:200]!r}")
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(min(conns, count))))


def http_request(method: str, path: str, port: int, token: str | None, body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
    if token:
        head += f"X-Cairn-Token: {token}\r\n"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def callgrind(pid: int, flag: str) -> None:
    r = subprocess.run(["callgrind_control", flag, str(pid)], capture_output=True, text=True,
                       timeout=300)
    if r.returncode != 0:
        raise Fail(f"callgrind_control {flag} {pid}: {r.stdout} {r.stderr}")


def dumped_ir(out_prefix: str, seen: set[str]) -> int:
    """Ir of the newest dump not in SEEN (callgrind writes <prefix>.<pid>.<n>)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for path in sorted(glob.glob(out_prefix + "*"), key=os.path.getmtime):
            if path in seen:
                continue
            with open(path) as f:
                text = f.read()
            m = re.search(r"^(?:summary|totals):\s*(\d+)", text, re.M)
            if m:
                seen.add(path)
                return int(m.group(1))
        time.sleep(0.5)
    raise Fail(f"no new callgrind dump under {out_prefix}*")


def measure(n: Node, work: str, token: str | None, reads: int, writes: int, idle: float) -> dict:
    prefix = os.path.join(work, f"cg-{n.name}")
    seen: set[str] = set()
    under = ["valgrind", "--tool=callgrind", "--fair-sched=yes", f"--callgrind-out-file={prefix}.%p",
             "--dump-instr=no", "--dump-line=no"]
    log(f"{n.name}: starting under callgrind")
    n.start(under, wait=600)
    assert n.proc is not None
    pid = n.proc.pid
    get_path = f"/v1/services/{SERVICE}"
    body = json.dumps({"address": "10.0.0.1", "port": 8080}).encode()
    put_path = f"/v1/services/{SERVICE}/instances/{SERVICE}-1"
    get = http_request("GET", get_path, n.http, token)
    put = http_request("PUT", put_path, n.http, token, body)
    # Warm-up (allocator, caches, connections' first requests), not counted.
    asyncio.run(load(n.http, get, 200, CONNECTIONS, b'"instances"'))
    asyncio.run(load(n.http, put, 50, CONNECTIONS, b'"index"'))
    result = {}
    for phase, run in (("idle", None), ("reads", (get, reads, b'"instances"')),
                       ("writes", (put, writes, b'"index"'))):
        callgrind(pid, "-z")
        t0 = time.monotonic()
        if run is None:
            time.sleep(idle)
        else:
            req, count, want = run
            asyncio.run(load(n.http, req, count, CONNECTIONS, want))
        secs = time.monotonic() - t0
        callgrind(pid, "-d")
        ir = dumped_ir(prefix, seen)
        result[phase] = {"ir": ir, "seconds": round(secs, 2), "requests": run[1] if run else 0}
        log(f"{n.name} {phase}: {ir:,} instructions in {secs:.1f} s")
    n.stop()
    idle_rate = result["idle"]["ir"] / result["idle"]["seconds"]
    for phase in ("reads", "writes"):
        r = result[phase]
        r["ir_per_request"] = round((r["ir"] - idle_rate * r["seconds"]) / r["requests"])
        r["idle_share"] = round(idle_rate * r["seconds"] / r["ir"], 4)
    return result


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of the line; fields[0] here is field 3.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def measure_cpu(nodes: list[tuple[str, "Node", str | None]], reads: int, writes: int,
                rounds: int) -> dict:
    body = json.dumps({"address": "10.0.0.1", "port": 8080}).encode()
    per: dict = {name: {"reads": [], "writes": []} for name, _, _ in nodes}
    for r in range(rounds):
        order = nodes[r % len(nodes):] + nodes[:r % len(nodes)]
        for name, n, token in order:
            assert n.proc is not None
            get = http_request("GET", f"/v1/services/{SERVICE}", n.http, token)
            put = http_request("PUT", f"/v1/services/{SERVICE}/instances/{SERVICE}-1", n.http,
                               token, body)
            for phase, req, count, want in (("reads", get, reads, b'"instances"'),
                                            ("writes", put, writes, b'"index"')):
                c0 = cpu_seconds(n.proc.pid)
                asyncio.run(load(n.http, req, count, CONNECTIONS, want))
                us = (cpu_seconds(n.proc.pid) - c0) / count * 1e6
                per[name][phase].append(us)
        log(f"round {r + 1}/{rounds}: " + ", ".join(
            f"{name} {per[name]['reads'][-1]:.1f}/{per[name]['writes'][-1]:.1f} us"
            for name, _, _ in nodes))
    return per


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(HERE, "..", "target"))
    p.add_argument("--bin", default=os.path.join(target, "release", "cairn"))
    p.add_argument("--reads", type=int, default=20000)
    p.add_argument("--writes", type=int, default=2000)
    p.add_argument("--tokens", type=int, default=100000)
    p.add_argument("--idle", type=float, default=10.0)
    p.add_argument("--port-base", type=int, default=25000)
    p.add_argument("--out", default=None)
    p.add_argument("--mode", choices=("instructions", "cpu"), default="instructions")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--keep", action="store_true", help="keep callgrind's dumps (for callgrind_annotate)")
    a = p.parse_args()
    if not os.access(a.bin, os.X_OK):
        raise Fail(f"no cairn binary at {a.bin} (cargo build --release, or --bin)")
    for tool in ("valgrind", "callgrind_control") if a.mode == "instructions" else ():
        if not shutil.which(tool):
            raise Fail(f"{tool} not found (apt-get install valgrind)")
    if not (11 <= a.tokens <= 1_000_000) or a.reads < 100 or a.writes < 10:
        raise Fail("--tokens must be 11..1000000, --reads >= 100, --writes >= 10")
    if a.rounds < 1:
        raise Fail("--rounds must be at least 1")
    work = tempfile.mkdtemp(prefix="cairn-acl-cost-")
    results = {}
    nodes = [("off", False, None), ("acl", True, 10), ("many", True, a.tokens)]
    running: list[tuple[str, Node, str | None]] = []
    try:
        for i, (name, acl, tokens) in enumerate(nodes):
            n = Node(a.bin, work, name, a.port_base + 10 * i, acl)
            n.start([], wait=60)
            token = None
            try:
                if acl:
                    out = os.path.join(work, f"acl-{name}.json")
                    subprocess.run([sys.executable, os.path.join(HERE, "acl_tool.py"), "setup",
                                    "--url", f"http://127.0.0.1:{n.http}", "--service", SERVICE,
                                    "--access", "write", "--tokens", str(tokens), "--out", out],
                                   check=True, timeout=1800)
                    with open(out) as f:
                        token = json.load(f)["load"]
                seed = [sys.executable, os.path.join(HERE, "reads_tool.py"), "seed-cairn",
                        "--port", str(n.http), "--service", SERVICE, "--count", "10"]
                subprocess.run(seed + (["--token", token] if token else []), check=True,
                               timeout=300, stdout=subprocess.DEVNULL)
            except BaseException:
                n.stop()
                raise
            if a.mode == "instructions":
                n.stop()
                results[name] = measure(n, work, token, a.reads, a.writes, a.idle)
                results[name]["tokens"] = tokens or 0
            else:
                running.append((name, n, token))
        if a.mode == "cpu":
            return report_cpu(measure_cpu(running, a.reads, a.writes, a.rounds), a)
    finally:
        for _, n, _ in running:
            n.stop()
        for path in glob.glob(os.path.join(work, "cg-*")) if not a.keep else ():
            os.remove(path)
        log(f"data and logs left in {work}")
    rows = ["| phase | ACLs off | ACLs on, 10 tokens | ACLs on, {:,} tokens | on/off | {:,}/10 tokens |"
            .format(a.tokens, a.tokens), "| --- | --- | --- | --- | --- | --- |"]
    for phase in ("reads", "writes"):
        off, on, many = (results[k][phase]["ir_per_request"] for k in ("off", "acl", "many"))
        rows.append(f"| {phase} | {off:,} | {on:,} | {many:,} | {on / off:.3f} | {many / on:.3f} |")
    print("\n".join(rows))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(results, f, indent=1)
    return 0


def report_cpu(per: dict, a: argparse.Namespace) -> int:
    rows = ["| phase | ACLs off, us/request | ACLs on, 10 tokens | ACLs on, {:,} tokens | on/off "
            "(median of rounds) | {:,}/10 tokens |".format(a.tokens, a.tokens),
            "| --- | --- | --- | --- | --- | --- |"]
    for phase in ("reads", "writes"):
        off, on, many = (per[k][phase] for k in ("off", "acl", "many"))
        on_off = median([x / y for x, y in zip(on, off)])
        many_on = median([x / y for x, y in zip(many, on)])
        rows.append(f"| {phase} | {median(off):.1f} | {median(on):.1f} | {median(many):.1f} | "
                    f"{on_off:.3f} | {many_on:.3f} |")
    print("\n".join(rows))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(per, f, indent=1)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (Fail, subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        print(f"acl_cost.py: {e}", file=sys.stderr)
        sys.exit(1)
