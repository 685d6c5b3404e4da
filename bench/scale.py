#!/usr/bin/env python3
"""Cairn with a million instances: memory, restart, Consul lookups by id, writes under snapshots.

    python3 bench/scale.py --cairn-bin target/release/cairn [--instances 1000000]
        [--services 100000] [--nodes 1|3] [--runs 3] [--write BENCHMARKS.md]

Everything runs on 127.0.0.1 (ports from --port-base) with data folders under --work-dir (not
tmpfs: fsync must cost what it costs) and stops by itself. Each run, on fresh folders:

1. load: a cluster of --nodes nodes; --instances registrations (`PUT
   /v1/services/s<i mod S>/instances/i<i>`, an address, a port, one tag, one meta key) sent to the
   leader by wrk over --conns keep-alive connections (bench/scale.lua), each instance once;
   every answer must be 2xx. The time from the first to the last answer gives the rate.
2. memory: once every node has applied the load and 5 s have passed, the leader's RSS
   (VmRSS) and RSS / instances; also the growth over the RSS of the empty node, per instance.
3. Consul lookups by id on the big registry, then on a small one (--small-instances in
   --small-services, a cluster of the same shape started in the same run): --calls
   `GET /v1/agent/service/i<k>` and --calls `PUT /v1/agent/service/deregister/i<k>` (k drawn
   over the whole registry), one after the other on one keep-alive connection to the leader;
   p50/p99 of each and the ratio small/big (1.0: no slower on the big registry).
4. writes under a snapshot: --write-conns connections re-register instances of the big registry
   (a Raft write each) until the nodes have built a snapshot (every --snapshot-threshold log
   entries) and --write-seconds have passed; each write's latency is put in "during a snapshot"
   when its interval overlaps a build (a `*.tmp` file in a node's `snapshots/` folder, polled
   every 10 ms) and in "without" otherwise; p99 of each.
5. restart: every node killed with SIGKILL and started again on its folder; the time from the
   start until `GET /v1/services/s<last>` on node 1 answers 200 with all its instances, and the
   RSS after the restart.

Figures are medians over --runs runs. With --write FILE, the table replaces the section between
<!-- bench:scale:start --> and <!-- bench:scale:end --> markers (appended when absent). Needs
wrk (installed with apt-get when missing and run as root) and python3's standard library.
The agents get the per-client connection caps lifted through the environment, as bench/lib.sh
does for every driver (one address opens every connection here).
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import http.client
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import benchlib  # noqa: E402

REPO = os.path.dirname(HERE)
# The longest a load may take before it is given up (seconds).
LOAD_TIMEOUT = 1800


def log(msg: str) -> None:
    print(f"[scale {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Fail(Exception):
    pass


def get_json(port: int, path: str, timeout: float = 5) -> tuple[int, object]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, None
    except (OSError, ValueError):
        return 0, None


def rss_kib(pid: int) -> tuple[int, int]:
    """VmRSS and VmHWM (peak) of PID, in KiB."""
    rss = hwm = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    return rss, hwm


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of VALUES."""
    s = sorted(values)
    if not s:
        return float("nan")
    k = max(0, min(len(s) - 1, int(round(p / 100 * len(s) + 0.5)) - 1))
    return s[k]


class Node:
    def __init__(self, binary: str, work: str, name: str, node_id: int, base: int, peers: str):
        self.binary, self.name, self.node_id, self.peers = binary, name, node_id, peers
        self.dir = os.path.join(work, name)
        self.http, self.rpc, self.dns = base, base + 1, base + 2
        self.proc: subprocess.Popen | None = None
        self.log_path = os.path.join(work, f"{name}.log")

    def args(self, threshold: int) -> list[str]:
        a = [self.binary, "agent", "--node-id", str(self.node_id), "--data-dir", self.dir,
             "--http-addr", f"127.0.0.1:{self.http}", "--rpc-addr", f"127.0.0.1:{self.rpc}",
             "--dns-addr", f"127.0.0.1:{self.dns}", "--snapshot-threshold", str(threshold)]
        return a + (["--peers", self.peers] if self.peers else ["--bootstrap"])

    def start(self, threshold: int) -> None:
        env = dict(os.environ, CAIRN_LOG="warn", CAIRN_HTTP_MAX_CONNS="20000",
                   CAIRN_HTTP_MAX_CONNS_PER_CLIENT="20000")
        logf = open(self.log_path, "a")
        self.proc = subprocess.Popen(self.args(threshold), stdout=logf, stderr=logf, env=env)
        logf.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Cluster:
    def __init__(self, binary: str, work: str, name: str, nodes: int, base: int, threshold: int):
        peers = ",".join(f"{i}=127.0.0.1:{base + 10 * i + 1}" for i in range(1, nodes + 1))
        self.nodes = [Node(binary, work, f"{name}-{i}", i, base + 10 * i, peers if nodes > 1 else "")
                      for i in range(1, nodes + 1)]
        self.threshold = threshold

    def start(self, wait: float = 120) -> None:
        for n in self.nodes:
            n.start(self.threshold)
        deadline = time.monotonic() + wait
        for n in self.nodes:
            while get_json(n.http, "/v1/ready", 2)[0] != 200:
                if not n.alive():
                    raise Fail(f"{n.name} exited; see {n.log_path}")
                if time.monotonic() > deadline:
                    raise Fail(f"{n.name} not ready after {wait:.0f} s; see {n.log_path}")
                time.sleep(0.2)

    def leader(self) -> Node:
        for _ in range(100):
            status, body = get_json(self.nodes[0].http, "/v1/cluster")
            if status == 200 and isinstance(body, dict) and body.get("leader"):
                for n in self.nodes:
                    if n.node_id == body["leader"]:
                        return n
            time.sleep(0.1)
        raise Fail("no leader")

    def wait_applied(self, wait: float = 300) -> None:
        """Until every node has applied what the leader has committed."""
        deadline = time.monotonic() + wait
        target = get_json(self.leader().http, "/v1/cluster")[1]["commit_index"]
        for n in self.nodes:
            while True:
                _, st = get_json(n.http, "/v1/cluster")
                if isinstance(st, dict) and st.get("applied_index", 0) >= target:
                    break
                if time.monotonic() > deadline:
                    raise Fail(f"{n.name} did not apply index {target} within {wait:.0f} s")
                time.sleep(0.2)

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()


def ensure_wrk() -> str:
    path = shutil.which("wrk")
    if path:
        return path
    if os.geteuid() != 0:
        raise Fail("wrk is missing: sudo apt-get install -y wrk")
    log("installing wrk with apt-get")
    subprocess.run(["timeout", "900", "apt-get", "install", "-y", "-qq", "wrk"], check=True,
                   stdout=subprocess.DEVNULL, env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    path = shutil.which("wrk")
    if not path:
        raise Fail("wrk still missing after apt-get install wrk")
    return path


def load(wrk: str, node: Node, instances: int, services: int, conns: int, threads: int) -> float:
    """Registers instances 0..INSTANCES-1 through NODE with wrk; answers the seconds it took."""
    cmd = [wrk, "-t", str(threads), "-c", str(max(conns, threads)), "-d", "3600s",
           "--timeout", "30s", "-s", os.path.join(HERE, "scale.lua"),
           f"http://127.0.0.1:{node.http}", "--", str(instances), str(services), str(threads)]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    done: set[str] = set()
    result = None
    assert proc.stdout is not None
    # A lost answer must not hang the benchmark: wrk is stopped after LOAD_TIMEOUT seconds.
    watchdog = threading.Timer(LOAD_TIMEOUT, lambda: proc.send_signal(signal.SIGINT))
    watchdog.start()
    elapsed = 0.0
    for line in proc.stdout:
        if line.startswith("SCALE_THREAD_DONE"):
            done.add(line.split()[1])
            if len(done) == threads:
                elapsed = time.monotonic() - start
                proc.send_signal(signal.SIGINT)
        elif line.startswith("SCALE_RESULT "):
            result = json.loads(line[len("SCALE_RESULT "):])
    proc.wait()
    watchdog.cancel()
    if result is None or len(done) < threads:
        raise Fail(f"wrk ended before every registration was answered: {result}")
    if result["ok"] != instances or result["failed"]:
        raise Fail(f"registrations: {result}")
    return elapsed


def timed_calls(port: int, method: str, paths: list[str]) -> list[float]:
    """Each request in turn on one keep-alive connection; their latencies in ms. Every answer
    must be 200."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    out = []
    try:
        for p in paths:
            t = time.perf_counter()
            conn.request(method, p)
            r = conn.getresponse()
            body = r.read()
            out.append((time.perf_counter() - t) * 1000)
            if r.status != 200:
                raise Fail(f"{method} {p}: {r.status} {body[:200]!r}")
    finally:
        conn.close()
    return out


def consul_calls(node: Node, instances: int, calls: int, seed: int) -> dict[str, float]:
    """p50/p99 of GET /v1/agent/service/{id} and PUT /v1/agent/service/deregister/{id} over
    CALLS ids drawn from the whole registry."""
    ids = random.Random(seed).sample(range(instances), calls)
    reads = timed_calls(node.http, "GET", [f"/v1/agent/service/i{i}" for i in ids])
    dereg = timed_calls(node.http, "PUT", [f"/v1/agent/service/deregister/i{i}" for i in ids])
    return {"read_p50": pct(reads, 50), "read_p99": pct(reads, 99),
            "dereg_p50": pct(dereg, 50), "dereg_p99": pct(dereg, 99)}


class SnapshotWatch:
    """Polls the nodes' snapshot folders every 10 ms; records when a build's temp file was
    there."""

    def __init__(self, cluster: Cluster):
        self.patterns = [os.path.join(n.dir, "**", "snapshots", "*.tmp") for n in cluster.nodes]
        self.windows: list[list[float]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def building(self) -> bool:
        return any(glob.glob(p, recursive=True) for p in self.patterns)

    def run(self) -> None:
        open_since = None
        while not self.stop.is_set():
            now = time.monotonic()
            if self.building():
                if open_since is None:
                    open_since = now
            elif open_since is not None:
                self.windows.append([open_since, now])
                open_since = None
            time.sleep(0.01)
        if open_since is not None:
            self.windows.append([open_since, time.monotonic()])


async def write_load(node: Node, instances: int, services: int, conns: int, seconds: float,
                     watch: SnapshotWatch, max_seconds: float) -> list[tuple[float, float]]:
    """Re-registrations over CONNS connections until a snapshot was built and SECONDS passed
    (at most MAX_SECONDS); every (start, end) in time.monotonic()."""
    out: list[tuple[float, float]] = []
    begin = time.monotonic()
    stop = False
    rng = random.Random(7)

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", node.http)
        try:
            while not stop:
                i = rng.randrange(instances)
                body = (f'{{"address":"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}",'
                        f'"port":8080,"tags":["v1"],"meta":{{"version":"1.4.3"}}}}').encode()
                req = (f"PUT /v1/services/s{i % services}/instances/i{i} HTTP/1.1\r\n"
                       f"Host: 127.0.0.1\r\nContent-Type: application/json\r\n"
                       f"Content-Length: {len(body)}\r\n\r\n").encode() + body
                t = time.monotonic()
                writer.write(req)
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                payload = await reader.readexactly(length)
                out.append((t, time.monotonic()))
                status = int(head.split(b" ", 2)[1])
                if status != 200:
                    raise Fail(f"re-registration: {status} {payload[:200]!r}")
        finally:
            writer.close()

    async def stopper() -> None:
        nonlocal stop
        while True:
            await asyncio.sleep(0.2)
            elapsed = time.monotonic() - begin
            built = any(w[0] > begin for w in watch.windows)
            if (built and elapsed >= seconds) or elapsed >= max_seconds:
                stop = True
                return

    await asyncio.gather(stopper(), *(worker() for _ in range(conns)))
    return out


def snapshot_index(cluster: Cluster) -> int:
    st = get_json(cluster.leader().http, "/v1/cluster")[1]
    return st.get("snapshot_index", 0) if isinstance(st, dict) else 0


def snapshot_phase(cluster: Cluster, args) -> dict[str, float]:
    before = snapshot_index(cluster)
    watch = SnapshotWatch(cluster)
    watch.thread.start()
    try:
        writes = asyncio.run(write_load(cluster.leader(), args.instances, args.services,
                                        args.write_conns, args.write_seconds, watch,
                                        args.write_max_seconds))
    finally:
        watch.stop.set()
        watch.thread.join()
    during: list[float] = []
    without: list[float] = []
    for t0, t1 in writes:
        overlaps = any(t0 < w1 and t1 > w0 for w0, w1 in watch.windows)
        (during if overlaps else without).append((t1 - t0) * 1000)
    built = sum(w[1] - w[0] for w in watch.windows)
    log(f"writes: {len(writes)}, {len(during)} during {len(watch.windows)} snapshot builds "
        f"({built:.1f} s in all); the leader's snapshot index went from {before} to "
        f"{snapshot_index(cluster)}")
    during_n = len(during)
    if not during:
        # Reported as n/a for this run, not made up.
        log("no write overlapped a snapshot build in this run")
        during = [float("nan")]
    return {"writes": len(writes), "during_n": during_n, "builds": len(watch.windows),
            "build_s": built, "p99_during": pct(during, 99), "p99_without": pct(without, 99),
            "p50_during": pct(during, 50), "p50_without": pct(without, 50)}


def instances_of(body: object) -> list:
    return body if isinstance(body, list) else (body or {}).get("instances", [])


def restart(cluster: Cluster, instances: int, services: int, wait: float = 300) -> float:
    """Kills every node, starts them again; the seconds until node 1 answers the last-registered
    service with the instances it had before."""
    last = (instances - 1) % services
    first = cluster.nodes[0]
    status, body = get_json(first.http, f"/v1/services/s{last}")
    want = len(instances_of(body))
    if status != 200 or not want:
        raise Fail(f"s{last} before the restart: {status}")
    for n in cluster.nodes:
        n.kill()
    start = time.monotonic()
    for n in cluster.nodes:
        n.start(cluster.threshold)
    while True:
        status, body = get_json(first.http, f"/v1/services/s{last}", 2)
        if status == 200:
            if len(instances_of(body)) == want:
                return time.monotonic() - start
        if not first.alive():
            raise Fail(f"{first.name} exited after the restart; see {first.log_path}")
        if time.monotonic() - start > wait:
            raise Fail(f"s{last} not served {wait:.0f} s after the restart")
        time.sleep(0.02)


def one_run(args, wrk: str, work: str, run: int) -> dict[str, float]:
    base = args.port_base
    big = Cluster(args.cairn_bin, work, f"big{run}", args.nodes, base, args.snapshot_threshold)
    small = Cluster(args.cairn_bin, work, f"small{run}", args.nodes, base + 100,
                    args.snapshot_threshold)
    res: dict[str, float] = {"load_avg_start": os.getloadavg()[0]}
    try:
        big.start()
        leader = big.leader()
        empty_rss = rss_kib(leader.proc.pid)[0]
        log(f"run {run}: loading {args.instances} instances in {args.services} services "
            f"over {args.conns} connections")
        secs = load(wrk, leader, args.instances, args.services, args.conns, args.threads)
        res["load_s"] = secs
        res["load_rate"] = args.instances / secs
        big.wait_applied()
        time.sleep(5)
        rss, hwm = rss_kib(leader.proc.pid)
        res["rss_mib"] = rss / 1024
        res["hwm_mib"] = hwm / 1024
        res["bytes_per_instance"] = rss * 1024 / args.instances
        res["growth_per_instance"] = (rss - empty_rss) * 1024 / args.instances
        log(f"run {run}: loaded in {secs:.1f} s ({res['load_rate']:.0f}/s); leader RSS "
            f"{rss / 1024:.0f} MiB (peak {hwm / 1024:.0f}), {res['bytes_per_instance']:.0f} B/instance")

        small.start()
        sleader = small.leader()
        load(wrk, sleader, args.small_instances, args.small_services, 16, 1)
        small.wait_applied()
        s = consul_calls(sleader, args.small_instances, args.calls, run)
        small.stop()
        b = consul_calls(leader, args.instances, args.calls, run)
        for k, v in b.items():
            res[f"big_{k}"] = v
        for k, v in s.items():
            res[f"small_{k}"] = v
        log(f"run {run}: deregister p50/p99 big {b['dereg_p50']:.2f}/{b['dereg_p99']:.2f} ms, "
            f"small {s['dereg_p50']:.2f}/{s['dereg_p99']:.2f} ms; read p50 big "
            f"{b['read_p50']:.3f}, small {s['read_p50']:.3f} ms")

        snap = snapshot_phase(big, args)
        res.update(snap)
        log(f"run {run}: write p99 {snap['p99_during']:.2f} ms during a snapshot, "
            f"{snap['p99_without']:.2f} ms without")

        big.wait_applied()
        res["restart_s"] = restart(big, args.instances, args.services)
        res["restart_rss_mib"] = rss_kib(big.nodes[0].proc.pid)[0] / 1024
        res["load_avg_end"] = os.getloadavg()[0]
        log(f"run {run}: restart to serving {res['restart_s']:.2f} s; RSS after "
            f"{res['restart_rss_mib']:.0f} MiB")
    finally:
        big.stop()
        small.stop()
        shutil.rmtree(os.path.join(work), ignore_errors=True)
        os.makedirs(work, exist_ok=True)
    return res


def table(runs: list[dict[str, float]], args, command: str) -> str:
    def median(k: str) -> float:
        seen = [r[k] for r in runs if r[k] == r[k]]  # NaN (not measured) left out
        return statistics.median(seen) if seen else float("nan")

    med = {k: median(k) for k in runs[0]}
    each = {k: " / ".join(f"{r[k]:.2f}" for r in runs) for k in runs[0]}
    n, s = args.instances, args.services
    read_ratio = med["small_read_p50"] / med["big_read_p50"]
    dereg50 = med["small_dereg_p50"] / med["big_dereg_p50"]
    dereg99 = med["small_dereg_p99"] / med["big_dereg_p99"]
    snap_ratio = med["p99_during"] / med["p99_without"]
    shape = "one node" if args.nodes == 1 else f"{args.nodes} nodes"

    def yes(ok: bool) -> str:
        return "**met**" if ok else "**no**"

    rows = [
        "| figure | median | per run | goal |",
        "|---|---:|---|---|",
        f"| load: {n:,} registrations over {args.conns} connections, s | {med['load_s']:.1f} | "
        f"{each['load_s']} | |",
        f"| load rate, registrations/s | {med['load_rate']:,.0f} | {each['load_rate']} | |",
        f"| leader RSS after the load, MiB (peak) | {med['rss_mib']:.0f} ({med['hwm_mib']:.0f}) | "
        f"{each['rss_mib']} | |",
        f"| RSS ÷ instances, bytes | {med['bytes_per_instance']:.0f} | "
        f"{each['bytes_per_instance']} | ≤ 400: {yes(med['bytes_per_instance'] <= 400)} |",
        f"| (RSS − RSS of the empty node) ÷ instances, bytes | {med['growth_per_instance']:.0f} | "
        f"{each['growth_per_instance']} | |",
        f"| restart to serving (SIGKILL, start, `GET /v1/services/s<last>` complete), s | "
        f"{med['restart_s']:.2f} | {each['restart_s']} | ≤ 3: {yes(med['restart_s'] <= 3)} |",
        f"| RSS after the restart, MiB | {med['restart_rss_mib']:.0f} | {each['restart_rss_mib']} | |",
        f"| Consul `PUT /v1/agent/service/deregister/{{id}}` p50 / p99, ms, {n:,} instances | "
        f"{med['big_dereg_p50']:.2f} / {med['big_dereg_p99']:.2f} | {each['big_dereg_p50']} | |",
        f"| the same, {args.small_instances:,} instances | {med['small_dereg_p50']:.2f} / "
        f"{med['small_dereg_p99']:.2f} | {each['small_dereg_p50']} | |",
        f"| speed on {n:,} ÷ speed on {args.small_instances:,} (p50; p99) | {dereg50:.2f}; "
        f"{dereg99:.2f} | | ≥ 0.9: {yes(dereg50 >= 0.9)} |",
        f"| Consul `GET /v1/agent/service/{{id}}` p50, ms, {n:,} / {args.small_instances:,} "
        f"instances (lookup without the write) | {med['big_read_p50']:.3f} / "
        f"{med['small_read_p50']:.3f} ({read_ratio:.2f}) | {each['big_read_p50']} | |",
        f"| write p99 during a snapshot build / without, ms ({args.write_conns} connections) | "
        f"{med['p99_during']:.2f} / {med['p99_without']:.2f} ({snap_ratio:.2f}×) | "
        f"{each['p99_during']} | ≤ 2×: {yes(snap_ratio <= 2)} |",
        f"| snapshot builds seen in the write phase (s building) | {med['builds']:.0f} "
        f"({med['build_s']:.1f}) | {each['build_s']} | |",
    ]
    start, end = benchlib.markers("scale")
    return "\n".join([
        start,
        "## Scale: a million instances" if n >= 1_000_000 else
        f"## Scale: a million instances (this run: {n:,})",
        "",
        f"{n:,} instances in {s:,} services ({n // s} each; an address, a port, one tag, one meta "
        f"key), {shape}, `--snapshot-threshold {args.snapshot_threshold}`; medians of "
        f"{len(runs)} runs, each on fresh data folders. Machine: {os.cpu_count()} CPUs, "
        f"{os.uname().sysname} {os.uname().release}. Command:",
        "",
        "```sh",
        command,
        "```",
        "",
        *rows,
        "",
        "The small registry runs in the same run, as a separate cluster of the same shape: "
        f"{args.small_instances:,} instances in {args.small_services:,} services. Each Consul "
        f"figure is {args.calls} calls one after the other on one keep-alive connection to the "
        "leader, ids drawn over the whole registry; a deregistration is a Raft write (one "
        "fsync). A write counts as during a snapshot when its interval overlaps the time a "
        "node's snapshot file was being written (its `.tmp` file present, polled every 10 ms). "
        f"1-minute load average at the start / end of each run: {each['load_avg_start']} / "
        f"{each['load_avg_end']} (other work on the machine skews every figure).",
        end,
    ])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cairn-bin", default=os.path.join(REPO, "target/release/cairn"))
    ap.add_argument("--instances", type=int, default=1_000_000)
    ap.add_argument("--services", type=int, default=100_000)
    ap.add_argument("--nodes", type=int, choices=(1, 3), default=1)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--conns", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2, help="wrk threads")
    ap.add_argument("--small-instances", type=int, default=1000)
    ap.add_argument("--small-services", type=int, default=100)
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--write-conns", type=int, default=16)
    ap.add_argument("--write-seconds", type=float, default=10)
    ap.add_argument("--write-max-seconds", type=float, default=90)
    # Log entries, not registrations: group commit puts many registrations in one entry (1M
    # registrations over 256 connections made about 30,000 entries), so the agent's default of
    # 100,000 would build no snapshot in a run.
    ap.add_argument("--snapshot-threshold", type=int, default=10_000)
    ap.add_argument("--port-base", type=int, default=21000)
    ap.add_argument("--work-dir", default="/var/tmp")
    ap.add_argument("--write", metavar="FILE", help="put the table into FILE (BENCHMARKS.md)")
    args = ap.parse_args()
    for name in ("instances", "services", "runs", "conns", "threads", "small_instances",
                 "small_services", "calls", "write_conns"):
        if getattr(args, name) < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be at least 1")
    if args.calls > min(args.instances, args.small_instances):
        raise SystemExit("error: --calls must not exceed either registry's instances")
    if not os.access(args.cairn_bin, os.X_OK):
        raise SystemExit(f"error: {args.cairn_bin} is not an executable; cb build --release")
    args.cairn_bin = os.path.abspath(args.cairn_bin)
    command = "python3 bench/scale.py " + " ".join(a for a in sys.argv[1:])
    try:
        wrk = ensure_wrk()
        runs = []
        with tempfile.TemporaryDirectory(prefix="cairn-scale-", dir=args.work_dir) as work:
            for run in range(1, args.runs + 1):
                runs.append(one_run(args, wrk, work, run))
                # The table of the runs so far, so an interrupted series still leaves its figures.
                if args.write and run < args.runs:
                    benchlib.replace_section(Path(args.write), "scale", table(runs, args, command))
    except Fail as e:
        log(f"error: {e}")
        return 1
    text = table(runs, args, command)
    print(text)
    print(json.dumps(runs), file=sys.stderr)
    if args.write:
        benchlib.replace_section(Path(args.write), "scale", text)
        log(f"wrote the table to {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
