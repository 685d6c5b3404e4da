#!/usr/bin/env python3
"""Failover after kill -9 of the leader, for bench/failover.sh: starts a three-node cluster
(Cairn or etcd), then N times kills the leader with SIGKILL and times the first write accepted
through a surviving node, then restarts the killed node and lets it catch up.

    failover_tool.py cairn|etcd --bin PATH --dir DIR --port-base P --kills N --out FILE.json

Prints one line per kill; writes {"system", "kills", "ms": [...]} to --out. Signals only the
processes it started.
"""
import argparse
import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

WRITE_TIMEOUT_S = 1.0  # one write attempt; the next starts at once
POLL_S = 0.01


def http(method, url, body=None, timeout=WRITE_TIMEOUT_S):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, None
    except Exception:  # refused, reset, time-out: no answer
        return 0, None


class Cluster:
    def __init__(self, args):
        self.args, self.procs, self.logs = args, {}, {}

    def start_all(self):
        for n in (1, 2, 3):
            self.start(n)

    def kill(self, n):
        p = self.procs.pop(n)
        p.send_signal(signal.SIGKILL)
        p.wait()

    def stop_all(self):
        for p in self.procs.values():
            p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs.clear()

    def spawn(self, n, argv, env=None):
        log = open(os.path.join(self.args.dir, f"{self.name}{n}.log"), "ab")
        self.procs[n] = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                         env=env)


class Cairn(Cluster):
    name = "cairn"

    def port(self, kind, n):
        return self.args.port_base + {"http": 0, "rpc": 10, "dns": 20}[kind] + n

    def start(self, n):
        b = self.args.port_base
        peers = ",".join(f"{i}=127.0.0.1:{self.port('rpc', i)}" for i in (1, 2, 3))
        env = dict(os.environ, CAIRN_LOG=os.environ.get("BENCH_CAIRN_LOG", "warn"))
        self.spawn(n, [self.args.bin, "agent", "--node-id", str(n),
                       "--data-dir", os.path.join(self.args.dir, f"cairn{n}"),
                       "--http-addr", f"127.0.0.1:{self.port('http', n)}",
                       "--rpc-addr", f"127.0.0.1:{self.port('rpc', n)}",
                       "--dns-addr", f"127.0.0.1:{self.port('dns', n)}",
                       "--peers", peers], env)

    def leader(self):
        for n in list(self.procs):
            s, body = http("GET", f"http://127.0.0.1:{self.port('http', n)}/v1/cluster")
            if s == 200 and body.get("leader") in self.procs:
                return body["leader"]
        return None

    def caught_up(self, n):
        s, body = http("GET", f"http://127.0.0.1:{self.port('http', n)}/v1/cluster")
        return s == 200 and body.get("leader") is not None and body["leader"] != n \
            and body["applied_index"] >= body["commit_index"] > 0

    def write(self, n, i):
        s, _ = http("PUT", f"http://127.0.0.1:{self.port('http', n)}"
                    f"/v1/services/failover/instances/w{i}", {"address": "10.0.0.1", "port": 80})
        return s == 200


class Etcd(Cluster):
    name = "etcd"

    def port(self, kind, n):
        return self.args.port_base + {"client": 40, "peer": 50}[kind] + n

    def start(self, n):
        peers = ",".join(f"e{i}=http://127.0.0.1:{self.port('peer', i)}" for i in (1, 2, 3))
        # Defaults otherwise: heartbeat 100 ms, election time-out 1000 ms.
        self.spawn(n, [self.args.bin, "--name", f"e{n}",
                       "--data-dir", os.path.join(self.args.dir, f"etcd{n}"),
                       "--listen-client-urls", f"http://127.0.0.1:{self.port('client', n)}",
                       "--advertise-client-urls", f"http://127.0.0.1:{self.port('client', n)}",
                       "--listen-peer-urls", f"http://127.0.0.1:{self.port('peer', n)}",
                       "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.port('peer', n)}",
                       "--initial-cluster", peers, "--initial-cluster-state", "new",
                       "--log-level", "error"])

    def status(self, n):
        return http("POST", f"http://127.0.0.1:{self.port('client', n)}/v3/maintenance/status", {})

    def leader(self):
        for n in list(self.procs):
            s, body = self.status(n)
            if s == 200 and body.get("leader"):
                # The leader's member id: the member whose status says it is itself.
                for m in self.procs:
                    s2, b2 = self.status(m)
                    if s2 == 200 and b2["header"]["member_id"] == body["leader"]:
                        return m
        return None

    def caught_up(self, n):
        s, body = self.status(n)
        return s == 200 and body.get("leader") not in (None, "0") \
            and body["header"]["member_id"] != body["leader"]

    def write(self, n, i):
        key = base64.b64encode(f"failover/w{i}".encode()).decode()
        s, _ = http("POST", f"http://127.0.0.1:{self.port('client', n)}/v3/kv/put",
                    {"key": key, "value": base64.b64encode(b"x").decode()})
        return s == 200


def wait(what, check, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    sys.exit(f"timed out waiting for {what}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("system", choices=["cairn", "etcd"])
    ap.add_argument("--bin", required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--port-base", type=int, required=True)
    ap.add_argument("--kills", type=int, required=True)
    ap.add_argument("--settle", type=float, default=2.0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    c = Cairn(args) if args.system == "cairn" else Etcd(args)
    c.start_all()
    ms, i = [], 0
    try:
        wait("a leader", lambda: c.leader() is not None)
        for k in range(args.kills):
            time.sleep(args.settle)  # a steady cluster, leader lease and all
            leader = c.leader()
            wait("a leader", lambda: c.leader() is not None)
            leader = c.leader()
            survivor = next(n for n in (1, 2, 3) if n != leader)
            i += 1
            if not c.write(survivor, i):
                sys.exit("the cluster took no write before the kill")
            c.kill(leader)
            t0 = time.monotonic()
            while True:
                i += 1
                if c.write(survivor, i):
                    break
                time.sleep(POLL_S)
            took = (time.monotonic() - t0) * 1000
            ms.append(took)
            print(f"{args.system} kill {k + 1}/{args.kills}: node {leader} killed, first write "
                  f"through node {survivor} after {took:.0f} ms", flush=True)
            c.start(leader)
            wait(f"node {leader} back", lambda: c.caught_up(leader))
    finally:
        c.stop_all()
    with open(args.out, "w") as f:
        json.dump({"system": args.system, "kills": args.kills, "ms": ms}, f)


if __name__ == "__main__":
    main()
